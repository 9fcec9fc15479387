#!/usr/bin/env bash
# Runs a command as root inside a throwaway QEMU guest booting Debian's own kernel (which has
# device-mapper and dm-thin, unlike the host's), for envc's LVM tests.
#
#   tests/vm/run-in-vm.sh COMMAND [ARG...]
#
# The guest sees the host's / read-only over virtio-9p, with a tmpfs overlay on top (writes are
# discarded), its own empty /tmp and /run (tmpfs) and /dev, the kernel's modules at
# /lib/modules/$(uname -r), and blank sparse scratch disks (virtio-blk, serial envc-disk0..,
# listed in ENVC_VM_DISKS). The directories COMMAND needs stay visible at their host paths even
# where the guest has its own /tmp, /run or /dev (a checkout or target dir under /tmp or /dev/shm):
# the current directory, COMMAND's own directory and those in ENVC_VM_DIRS. It runs COMMAND with
# bash in the current directory, with ENVC_IN_VM=1, and without udev. COMMAND's stdout is printed as
# it comes, its stderr after the guest stops, and its exit status becomes ours; 125 means the VM
# itself failed.
#
# Settings: ENVC_VM_CACHE (kernel and initramfs cache, default /var/cache/envc-vm),
# ENVC_VM_TIMEOUT (seconds, default 900), ENVC_VM_MEM (MiB, default 2048), ENVC_VM_DISKS_N
# (scratch disks, default 1), ENVC_VM_DISK_SIZE (default 4G), ENVC_VM_ENV (names of host
# environment variables to pass in, space-separated), ENVC_VM_DIRS (more host directories COMMAND
# needs, one per line; e.g. a CARGO_TARGET_DIR).
# Needs: qemu-system-x86, busybox-static, cpio, kmod, lvm2, thin-provisioning-tools (.ci/run).
set -euo pipefail

CACHE=${ENVC_VM_CACHE:-/var/cache/envc-vm}
TIMEOUT=${ENVC_VM_TIMEOUT:-900}
MEM=${ENVC_VM_MEM:-2048}
NDISKS=${ENVC_VM_DISKS_N:-1}
DISK_SIZE=${ENVC_VM_DISK_SIZE:-4G}

fail() { echo "run-in-vm: $*" >&2; exit 125; }
[[ $# -ge 1 ]] || fail "usage: run-in-vm.sh COMMAND [ARG...]"
[[ $(id -u) == 0 ]] || fail "needs root"
for tool in qemu-system-x86_64 /bin/busybox cpio depmod modprobe; do
  command -v "$tool" >/dev/null || fail "$tool is missing (see .ci/run for the packages)"
done

# ---- kernel: Debian's own, unpacked (not installed) into the cache, with its module index ----
mkdir -p "$CACHE"
(
  flock 9
  if [[ ! -e $CACHE/ready ]]; then
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    [[ -n $pkg ]] || { apt-get update -qq >&2; pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}'); }
    [[ -n $pkg ]] || fail "cannot find Debian's kernel package (linux-image-amd64's dependency)"
    rm -rf "$CACHE/kpkg" "$CACHE"/*.deb
    (cd "$CACHE" && apt-get download -q "$pkg" >/dev/null 2>&1) || fail "apt-get download $pkg failed"
    dpkg-deb -x "$CACHE"/"$pkg"_*.deb "$CACHE/kpkg"
    ver=$(ls "$CACHE/kpkg/lib/modules")
    depmod -b "$CACHE/kpkg" "$ver"
    cp "$CACHE/kpkg/boot/vmlinuz-$ver" "$CACHE/vmlinuz"
    echo "$ver" > "$CACHE/version"
    touch "$CACHE/ready"
  fi
) 9>"$CACHE/lock"
VER=$(cat "$CACHE/version")
MODROOT=$CACHE/kpkg

# ---- initramfs: busybox, the modules needed to reach the host's root, and /init ----
INITRD=$CACHE/initrd-$(sha256sum "$0" | cut -c1-12).cpio
if [[ ! -e $INITRD ]]; then
  stage=$(mktemp -d)
  mkdir -p "$stage"/{bin,dev,proc,sys,mnt/host,mnt/upper,mnt/root,mnt/xchg,modules}
  cp /bin/busybox "$stage/bin/busybox"
  for a in sh mount umount mkdir insmod cat echo sleep poweroff chroot ls mknod ln; do ln -s busybox "$stage/bin/$a"; done
  n=0
  while read -r _ path _; do
    n=$((n + 1))
    cp "$path" "$stage/modules/$(printf %02d $n)-$(basename "$path")"
  done < <(modprobe -d "$MODROOT" -S "$VER" -a --show-depends virtio_pci virtio_blk 9pnet_virtio 9p overlay | grep '^insmod')
  cat > "$stage/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in /modules/*.ko; do insmod "$m" 2>/dev/null; done
o=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$o,ro,cache=loose" hostroot /mnt/host || { echo "envc-vm: cannot mount the host root" > /dev/console; poweroff -f; }
mount -t 9p -o "$o" xchg /mnt/xchg
mount -t tmpfs tmpfs /mnt/upper
mkdir -p /mnt/upper/u /mnt/upper/w
mount -t overlay overlay -o lowerdir=/mnt/host,upperdir=/mnt/upper/u,workdir=/mnt/upper/w /mnt/root
# The directories the command needs (/mnt/xchg/dirs, one per line, parents first) that lie where the
# guest mounts its own /tmp, /run or /dev: set aside now, put back on top of those mounts below.
kept() { case $1 in /tmp | /tmp/* | /run/* | /dev/*) return 0 ;; esac; return 1; }
n=0
while IFS= read -r d; do
  n=$((n + 1))
  kept "$d" || continue
  mkdir -p "/mnt/keep/$n"
  mount --bind "/mnt/root$d" "/mnt/keep/$n" || echo "envc-vm: cannot keep $d" > /dev/console
done < /mnt/xchg/dirs
mount -t proc proc /mnt/root/proc
mount -t sysfs sys /mnt/root/sys
mount -t devtmpfs dev /mnt/root/dev
mount -t tmpfs tmpfs /mnt/root/run
mount -t tmpfs tmpfs /mnt/root/tmp
mount --bind /mnt/xchg /mnt/root/run/envc-xchg 2>/dev/null || { mkdir -p /mnt/root/run/envc-xchg; mount --bind /mnt/xchg /mnt/root/run/envc-xchg; }
mods=$(cat /mnt/xchg/modroot)
mkdir -p "/mnt/root/lib/modules/$(cat /mnt/xchg/version)"
mount --bind "/mnt/root$mods" "/mnt/root/lib/modules/$(cat /mnt/xchg/version)"
n=0
while IFS= read -r d; do
  n=$((n + 1))
  kept "$d" || continue
  mkdir -p "/mnt/root$d" && mount --move "/mnt/keep/$n" "/mnt/root$d" || echo "envc-vm: cannot keep $d" > /dev/console
done < /mnt/xchg/dirs
chroot /mnt/root /bin/bash /run/envc-xchg/guest.sh
echo $? > /mnt/xchg/status
sync
poweroff -f
INIT
  chmod +x "$stage/init"
  tmp=$(mktemp "$INITRD.XXXXXX")
  (cd "$stage" && find . | cpio -o -H newc --quiet) > "$tmp" && mv "$tmp" "$INITRD"
  rm -rf "$stage"
fi

# ---- this run: exchange directory, scratch disks, the command ----
XCHG=$(mktemp -d /var/tmp/envc-vm-XXXXXX)
trap 'rm -rf "$XCHG"' EXIT
echo "$VER" > "$XCHG/version"
echo "$MODROOT/lib/modules/$VER" > "$XCHG/modroot"
# The host directories the command needs, as physical paths: the guest's init binds them from
# outside the chroot, where an absolute symlink on the way would lead into the initramfs.
dirs=("$(pwd -P)")
if [[ $1 == */* ]]; then
  exe=$(realpath -e -- "$1") || fail "$1 does not exist"
  dirs+=("$(dirname -- "$exe")")
fi
while IFS= read -r d; do
  [[ -n $d ]] || continue
  r=$(realpath -e -- "$d") || fail "ENVC_VM_DIRS: $d does not exist"
  dirs+=("$r")
done <<< "${ENVC_VM_DIRS:-}"
for d in "${dirs[@]}"; do
  case $d in
    *$'\n'*) fail "a directory the command needs has a newline in its name: $d" ;;
    /proc | /proc/* | /sys | /sys/* | /run | /dev) fail "the guest cannot show the host's $d (it has its own)" ;;
  esac
done
printf '%s\n' "${dirs[@]}" | LC_ALL=C sort -u > "$XCHG/dirs"
disks=() names=()
for i in $(seq 0 $((NDISKS - 1))); do
  truncate -s "$DISK_SIZE" "$XCHG/disk$i.img"
  disks+=(-drive "file=$XCHG/disk$i.img,if=none,id=d$i,format=raw,cache=unsafe,discard=unmap" -device "virtio-blk-pci,drive=d$i,serial=envc-disk$i")
  names+=("/dev/disk/by-id/virtio-envc-disk$i")
done
{
  echo "export ENVC_IN_VM=1 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8"
  for v in ${ENVC_VM_ENV:-}; do [[ -n ${!v:-} ]] && printf 'export %s=%q\n' "$v" "${!v}"; done
  echo 'modprobe -a dm_mod dm_thin_pool dm_snapshot dm_bufio loop ext4 xfs 2>/dev/null || true'
  # Without udev there are no /dev/disk/by-id links: make them from the disks' serial numbers.
  echo 'mkdir -p /dev/disk/by-id; for b in /sys/block/vd*; do s=$(cat $b/serial 2>/dev/null); [ -n "$s" ] && ln -sf /dev/${b##*/} /dev/disk/by-id/virtio-$s; done'
  printf 'export ENVC_VM_DISKS=%q\n' "${names[*]}"
  printf 'cd %q\n' "$PWD"
  printf '%q ' "$@"
  echo '> /run/envc-xchg/stdout 2> /run/envc-xchg/stderr'
} > "$XCHG/guest.sh"

console=$XCHG/console.log
# COMMAND's stdout is shown as it is written (the exchange directory is shared with the guest).
touch "$XCHG/stdout"
set +e
timeout "$TIMEOUT" qemu-system-x86_64 \
  -accel tcg,thread=multi -cpu max -machine q35 -m "$MEM" -smp 1 \
  -nographic -no-reboot -serial "file:$console" -monitor none \
  -kernel "$CACHE/vmlinuz" -initrd "$INITRD" \
  -append "console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init" \
  -fsdev "local,id=hostroot,path=/,security_model=passthrough,readonly=on,multidevs=remap" -device "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot" \
  -fsdev "local,id=xchg,path=$XCHG,security_model=passthrough" -device "virtio-9p-pci,fsdev=xchg,mount_tag=xchg" \
  "${disks[@]}" >/dev/null 2>"$XCHG/qemu.err" &
vm=$!
tail -q -n +1 -f --pid="$vm" "$XCHG/stdout" 2>/dev/null &
shown=$!
wait "$vm"
qemu=$?
wait "$shown" 2>/dev/null
set -e
cat "$XCHG/stderr" >&2 2>/dev/null || true
if [[ ! -s $XCHG/status ]]; then
  echo "run-in-vm: the guest did not finish (qemu exit $qemu); console:" >&2
  tail -30 "$console" >&2 || true
  cat "$XCHG/qemu.err" >&2 || true
  exit 125
fi
exit "$(cat "$XCHG/status")"
