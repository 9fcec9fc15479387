#!/bin/bash
# Baseline for the remote-cache attacks: a real registry on 127.0.0.1:5101 (repo rt/cache),
# a key pair $RT/keys/ci.{key,pub}, a spec $RT/spec/env.kdl (busybox base + "tools" + "big"),
# built and pushed from store $RT/s-push.
set -eu
. "$(dirname "$0")/env.sh"
busybox_tar; keys
stop_registry reg || true
start_registry reg 5101
mkspec "$RT/spec" 'layer "tools" {
  run "mkdir -p /opt/t && echo t > /opt/t/f && chmod 4755 /opt/t/f"
}
layer "big" {
  run "dd if=/dev/urandom of=/opt/big bs=1M count=24 2>/dev/null"
}'
ENVC_STORE=$RT/s-push "$ENVC" apply "$RT/spec/env.kdl" --remote 127.0.0.1:5101/rt/cache \
  --sign-key "$RT/keys/ci.key" --push
