#!/bin/bash
# A sealed layer's tree changed after sealing (a file under store/layers/ID edited, overlay),
# then pushed under a new repository: does `envc push` notice? does a puller take it?
set -u
. "$(dirname "$0")/env.sh"
S=$RT/s-tamper; R=127.0.0.1:5101/rt/tamper
export ENVC_STORE=$S
rm -rf "$S"
"$ENVC" apply "$RT/spec/env.kdl" > /dev/null 2>&1
tools=$(ls -d "$S"/layers/* | while read d; do [ -f "$d/opt/t/f" ] && basename "$d"; done | head -1)
echo tampered > "$S/layers/$tools/opt/t/f"
echo "-- verify after tampering:"; "$ENVC" verify "$RT/spec/env.kdl" 2>&1 | tail -2
echo "-- push:"; "$ENVC" push "$RT/spec/env.kdl" --remote $R --sign-key "$RT/keys/ci.key"; echo "push rc=$?"
echo "-- a fresh store pulls:"
ENVC_STORE=$RT/s-tamper-pull; rm -rf "$ENVC_STORE"
ENVC_STORE=$RT/s-tamper-pull "$ENVC" apply "$RT/spec/env.kdl" --remote $R --trusted-key "$RT/keys/ci.pub" 2>&1 | cut -c1-260
echo "-- the good store (setup.sh's) pushes the same chain to the same repository:"
ENVC_STORE=$RT/s-push "$ENVC" push "$RT/spec/env.kdl" --remote $R --sign-key "$RT/keys/ci.key" 2>&1 | cut -c1-200
echo "-- another fresh store pulls again:"
rm -rf "$RT/s-tamper-pull2"
ENVC_STORE=$RT/s-tamper-pull2 "$ENVC" apply "$RT/spec/env.kdl" --remote $R --trusted-key "$RT/keys/ci.pub" 2>&1 | grep -o "^envc: warning: layer \`[a-z]*\`\|[0-9]* built, [0-9]* pulled"
