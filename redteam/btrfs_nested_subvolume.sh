#!/bin/sh
# MEDIUM/HIGH (btrfs backend, locked or not). A step creates a nested btrfs subvolume with a
# plain ioctl (no capability needed). The sealed layer is a snapshot, which has an empty directory
# where the subvolume was, while the recorded tree digest was computed with its content:
# `envc verify` reports MISMATCH at once. The staging subvolume then cannot be deleted ("Directory
# not empty"): every later apply of the spec fails, and gc leaves it.
# Needs a btrfs store: truncate -s 3G img; mkfs.btrfs img; mount -o loop img /var/tmp/red-b.
set -eu
: "${ENVC:?}" "${RED:?}"
export ENVC_STORE=/var/tmp/red-b/store
mkdir -p "$RED/bt" && cd "$RED/bt"
cp ../a/env.lock .
cat > env.kdl <<'EOT'
name "redbt"
base "debian" suite="bookworm" variant="minbase"
layer "tools" {
    packages "hello"
}
layer "sv" {
    run #"perl -e 'open(my $d, "<", "/opt") or die; ioctl($d, 0x5000940E, pack("q a4088", 0, "sv")) or die "ioctl: $!"' && echo x > /opt/sv/inner"#
}
EOT
"$ENVC" --backend btrfs apply env.kdl 2>&1 | tail -2 || true
"$ENVC" verify env.kdl || true
"$ENVC" apply env.kdl 2>&1 | tail -2 || true
btrfs subvolume list /var/tmp/red-b
