#!/usr/bin/env bash
# The LVM part of bench/run.py, run inside the test VM (tests/vm/run-in-vm.sh): envc's LVM
# operations against the raw LVM commands they are made of, timed side by side in the same guest,
# and the LVM commands envc runs per operation (ENVC_LVM_LOG). Prints `TIME NAME SECONDS` and
# `COUNT NAME N` lines for bench/run.py. Usage: lvm-guest.sh ENVC ROUNDS
set -euo pipefail
ENVC=$1
ROUNDS=${2:-5}
C='activation{udev_sync=0 udev_rules=0}'
disk=${ENVC_VM_DISKS%% *}
lvm pvcreate -q --config "$C" "$disk"
lvm vgcreate -q --config "$C" bench "$disk"

work=/tmp/lvm-bench
mkdir -p "$work/root/bin" "$work/root/etc" "$work/root/tmp"
cp /bin/busybox "$work/root/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$work/root/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$work/root/etc/passwd"
tar -C "$work/root" -czf "$work/base.tar.gz" .
store=$work/store
log=$work/lvm.log
export ENVC_STORE=$store ENVC_QUIET=1
"$ENVC" store init lvm --vg bench --size 3G >/dev/null 2>&1

now() { date +%s.%N; }
timeit() { # NAME COMMAND...
  local t0 t1
  t0=$(now); "${@:2}" >/dev/null 2>&1; t1=$(now)
  echo "TIME $1 $(awk "BEGIN{print $t1 - $t0}")"
}
commands() { wc -l < "$log" 2>/dev/null || echo 0; }

# A 5-layer spec: the build's LVM commands, and its time per layer.
spec=$work/env.kdl
{
  echo 'name "bench"'
  echo "base \"tar\" \"$work/base.tar.gz\""
  for i in 1 2 3 4 5; do echo "layer \"l$i\" { run \"echo $i > /f$i\" }"; done
} > "$spec"
rm -f "$log"
t0=$(now)
ENVC_LVM_LOG=$log "$ENVC" apply "$spec" >/dev/null 2>&1
t1=$(now)
echo "TIME build-6-layers $(awk "BEGIN{print $t1 - $t0}")"
echo "COUNT build-6-layers $(commands)"
echo "COUNT build-lvcreate $(grep -c 'lvm lvcreate' "$log")"
echo "COUNT build-lvchange $(grep -c 'lvm lvchange' "$log")"
echo "COUNT build-lvs $(grep -c 'lvm lvs' "$log" || true)"

layer_dirs=("$store"/layers/*)
top=$(cat "${layer_dirs[0]}/lv")
root=$("$ENVC" apply "$spec" 2>/dev/null)
mkdir -p "$work/mnt"
for r in $(seq 1 "$ROUNDS"); do
  # Warm apply: no LVM command.
  before=$(commands)
  ENVC_LVM_LOG=$log timeit warm-apply "$ENVC" apply "$spec"
  echo "COUNT warm-apply $(( $(commands) - before ))"
  # Reset: one lvcreate in the foreground; the old snapshot is removed in the background.
  echo dirt > "$root/dirt"
  before=$(commands)
  ENVC_LVM_LOG=$log timeit reset "$ENVC" apply --reset "$spec"
  echo "COUNT reset-foreground $(tail -n +$((before + 1)) "$log" | grep -c 'lvm lvcreate' || true)"
  while [ -e "$store/roots/bench/doomed" ]; do sleep 0.2; done
  echo "COUNT reset-total $(( $(commands) - before ))"
  # envc run: a throwaway snapshot, created and removed.
  before=$(commands)
  ENVC_LVM_LOG=$log timeit run "$ENVC" run --no-network "$spec" -- true
  echo "COUNT run $(( $(commands) - before ))"
  # The raw LVM commands these are made of.
  timeit raw-lvcreate-snapshot lvm lvcreate -q --config "$C" -s -kn -n raw "bench/$top"
  timeit raw-mount mount /dev/mapper/bench-raw "$work/mnt"
  umount "$work/mnt" 2>/dev/null || true
  timeit raw-lvremove lvm lvremove -q -y --config "$C" bench/raw
  timeit raw-lvcreate-snapshot lvm lvcreate -q --config "$C" -s -kn -n raw2 "bench/$top"
  timeit raw-lvchange lvm lvchange -q --config "$C" -p r --addtag t bench/raw2
  lvm lvremove -q -y --config "$C" bench/raw2 >/dev/null
  timeit raw-dmsetup-status dmsetup status --target thin-pool
done
