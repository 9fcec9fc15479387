# Runs inside the test VM (tests/vm/run-in-vm.sh): the LVM thin features envc's LVM backend relies
# on, against the real kernel device-mapper. Exits non-zero on the first thing that does not hold.
set -eu
C='activation{udev_sync=0 udev_rules=0}'
d=${ENVC_VM_DISKS%% *}
pvcreate -q --config "$C" "$d"
vgcreate -q --config "$C" envc "$d"
lvcreate -q --config "$C" --type thin-pool -L 1G -n pool envc
lvcreate -q --config "$C" -V 512M -T envc/pool -n base --addtag envc.id=base
mkfs.ext4 -q /dev/envc/base
mkdir -p /tmp/a /tmp/b /tmp/c
mount /dev/envc/base /tmp/a
echo one > /tmp/a/f
sync
# A thin snapshot of a mounted origin, created active (-kn), and a snapshot of that snapshot.
lvcreate -q --config "$C" -s -kn -n snap envc/base
lvcreate -q --config "$C" -s -kn -n snap2 envc/snap
mount /dev/envc/snap /tmp/b
mount /dev/envc/snap2 /tmp/c
echo two > /tmp/b/f
test "$(cat /tmp/a/f)" = one
test "$(cat /tmp/b/f)" = two
test "$(cat /tmp/c/f)" = one
echo "origin=$(cat /tmp/a/f) snapshot=$(cat /tmp/b/f) snapshot-of-snapshot=$(cat /tmp/c/f)"
lvs --config "$C" --reportformat json -o lv_name,origin,lv_tags envc
umount /tmp/a /tmp/b /tmp/c
lvremove -q -y --config "$C" envc
test "$(lvs --config "$C" --noheadings envc | wc -l)" = 0
