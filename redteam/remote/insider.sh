#!/bin/bash
# Insider (trusted signing key) attacks: for each CASE, craft.py replaces layer "tools" in a
# registry of its own (127.0.0.1:5103, rt/ins) by a crafted, correctly signed archive; a fresh
# store pulls the spec. Checks: the canary directory outside the store is untouched, the layer
# was refused (built here) or, if pulled, `envc verify` passes; no stray mounts.
#   insider.sh [CASE...]
set -u
. "$(dirname "$0")/env.sh"
busybox_tar; keys
export CANARY=$RT/canary
if ! curl -fs http://127.0.0.1:5103/v2/ >/dev/null; then
  start_registry reg-ins 5103
fi
cases=${*:-dotdot dotdot-mid absolute symlink-write symlink-dir-then-file symlink-relative symlink-existing-bin hardlink-host hardlink-dotdot hardlink-lower hardlink-via-symlink hardlink-then-overwrite device setuid xattr-trusted xattr-opaque-user xattr-security whiteout-dotdot whiteout-escape whiteout-slash whiteout-nested opaque-top char00 pax-path gnu-longname fifo-then-write dir-over-symlink-parent proc-fd}
# the real chain, once
ENVC_STORE=$RT/s-push "$ENVC" push "$RT/spec/env.kdl" --remote 127.0.0.1:5103/rt/ins --sign-key "$RT/keys/ci.key" >/dev/null 2>&1
tools=$(ENVC_STORE=$RT/s-push "$ENVC" apply "$RT/spec/env.kdl" --json 2>&1 | python3 -c '
import json,sys
for l in sys.stdin:
    try: e=json.loads(l)
    except ValueError: continue
    if e.get("layer")=="tools" and "id" in e: print(e["id"]); break')
[ -n "$tools" ] || { echo "no tools id"; exit 1; }
for c in $cases; do
  rm -rf "$CANARY"; mkdir -p "$CANARY"; echo original > "$CANARY/target"
  before=$(stat -c '%h %s %Y' /etc/shadow)
  python3 "$HERE/craft.py" 127.0.0.1:5103 rt/ins "envc-$tools" "$RT/keys/ci.key" "$c" 2>/dev/null || { echo "== $c: craft failed"; continue; }
  pull_fresh "ins" 127.0.0.1:5103/rt/ins > "$RT/out-ins-$c" 2>&1; rc=$?
  why=$(grep -o "layer \`tools\`.*" "$RT/out-ins-$c" | sed 's/.*rt\/ins: //' | cut -c1-160)
  pulled=$(grep -c '\[tools\] pulled' "$RT/out-ins-$c")
  v=$(ENVC_STORE=$RT/s-ins "$ENVC" verify "$RT/spec/env.kdl" >/dev/null 2>&1 && echo ok || echo FAILED)
  canary=$(ls -A "$CANARY" | tr '\n' ' ')
  after=$(stat -c '%h %s %Y' /etc/shadow)
  mounts=$(grep -c "$RT/s-ins/" /proc/self/mountinfo)
  echo "== $c: rc=$rc tools-pulled=$pulled verify=$v canary=[$canary] shadow-same=$([ "$before" = "$after" ] && echo y || echo NO) mounts=$mounts"
  [ -n "$why" ] && echo "   $why"
done
