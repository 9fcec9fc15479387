# Source me: common settings for the remote-cache red-team scripts.
# RT: scratch dir (default /var/tmp/rt-remote); ENVC: the binary.
: "${RT:=/var/tmp/rt-remote}"
: "${ENVC:=/work/wt-redteam/target/debug/envc}"
HERE=$(cd "$(dirname "$0")" && pwd)
export RT ENVC HERE
mkdir -p "$RT"
# busybox root tarball, like tests/common/mod.rs::busybox_tarball()
busybox_tar() {
  [ -f "$RT/busybox.tar.gz" ] && return
  r="$RT/bbroot"; rm -rf "$r"; mkdir -p "$r/bin" "$r/etc" "$r/root" "$r/home/builder" "$r/usr/sbin"
  cp /bin/busybox "$r/bin/busybox"
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$r/bin/$a"; done
  printf 'root:x:0:0:root:/root:/bin/sh\nbuilder:x:1000:1000::/home/builder:/bin/sh\n' > "$r/etc/passwd"
  printf 'root:x:0:\nbuilder:x:1000:\n' > "$r/etc/group"
  chown 1000:1000 "$r/home/builder"
  tar -czf "$RT/busybox.tar.gz" -C "$r" . && rm -rf "$r"
}
# start_registry NAME PORT: a real docker-registry on 127.0.0.1:PORT, storage in $RT/NAME
start_registry() {
  d="$RT/$1"; mkdir -p "$d/storage"
  cat > "$d/config.yml" <<EOT
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $d/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$2
EOT
  docker-registry serve "$d/config.yml" > "$d/log" 2>&1 &
  echo $! > "$d/pid"
  for i in $(seq 50); do curl -fs "http://127.0.0.1:$2/v2/" >/dev/null && return 0; sleep 0.2; done
  echo "registry did not start" >&2; return 1
}
stop_registry() { [ -f "$RT/$1/pid" ] && kill "$(cat "$RT/$1/pid")" 2>/dev/null; rm -f "$RT/$1/pid"; }
# spec DIR BODY: writes DIR/env.kdl with the busybox base
mkspec() {
  mkdir -p "$1"; cp "$RT/busybox.tar.gz" "$1/"
  printf 'name "%s"\nbase "tar" "busybox.tar.gz"\n%s\n' "$(basename "$1")" "$2" > "$1/env.kdl"
}
keys() { mkdir -p "$RT/keys"; [ -f "$RT/keys/ci.key" ] || "$ENVC" key generate ci --dir "$RT/keys" >/dev/null; }
# pull_fresh NAME REMOTE [ARGS...]: a fresh store $RT/s-NAME applies the spec pulling from REMOTE
pull_fresh() {
  n=$1 r=$2; shift 2
  s="$RT/s-$n"; [ -d "$s" ] && { ENVC_STORE=$s "$ENVC" rm spec >/dev/null 2>&1 || true; umount -R "$s"/roots/*/root 2>/dev/null || true; rm -rf "$s"; }
  ENVC_STORE=$s timeout "${PULL_TIMEOUT:-600}" "$ENVC" apply "$RT/spec/env.kdl" --remote "$r" --trusted-key "$RT/keys/ci.pub" "$@"
}
