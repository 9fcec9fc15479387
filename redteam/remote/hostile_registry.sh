#!/bin/bash
# Pulls the baseline spec (setup.sh) through hostile.py in MODE; prints what envc said, how long
# it took, and checks the store afterwards (verify, mounts).  hostile_registry.sh MODE [hostile args]
set -u
. "$(dirname "$0")/env.sh"
mode=$1; shift
python3 "$HERE/hostile.py" --port ${HPORT:=5102} --upstream 127.0.0.1:5101 --mode "$mode" "$@" 2> "$RT/hostile-$mode.log" &
hp=$!; sleep 0.7
start=$(date +%s)
pull_fresh "h-$mode" 127.0.0.1:$HPORT/rt/cache > "$RT/out-$mode" 2>&1; rc=$?
echo "== $mode: rc=$rc in $(( $(date +%s) - start )) s"
grep -v '^\[.*\] \(building\|built in\)' "$RT/out-$mode" | cut -c1-400
ENVC_STORE=$RT/s-h-$mode "$ENVC" verify "$RT/spec/env.kdl" >/dev/null 2>&1 && echo "verify: ok" || echo "verify: FAILED"
kill $hp 2>/dev/null; wait $hp 2>/dev/null
grep -c . "$RT/hostile-$mode.log" | sed 's/^/hostile log lines: /'
