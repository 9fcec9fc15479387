#!/bin/bash
# Two applies pulling the same layers into one store at once, while `envc gc --keep-bytes 0`
# loops; then verify and look for stray mounts and leftovers.  race_pull.sh [ROUNDS]
set -u
. "$(dirname "$0")/env.sh"
S=$RT/s-race; R=127.0.0.1:5101/rt/cache
export ENVC_STORE=$S
for i in $(seq "${1:-5}"); do
  "$ENVC" rm spec >/dev/null 2>&1; "$ENVC" gc --older-than 0 >/dev/null 2>&1
  ( while :; do "$ENVC" gc --keep-bytes 0 >> "$RT/race-gc.out" 2>&1; done ) & gcl=$!
  "$ENVC" apply "$RT/spec/env.kdl" --remote $R --trusted-key "$RT/keys/ci.pub" > "$RT/race-a.out" 2>&1 & a=$!
  "$ENVC" apply "$RT/spec/env.kdl" --remote $R --trusted-key "$RT/keys/ci.pub" > "$RT/race-b.out" 2>&1 & b=$!
  wait $a; ra=$?; wait $b; rb=$?
  kill $gcl; wait $gcl 2>/dev/null; sleep 0.5
  v=$("$ENVC" verify "$RT/spec/env.kdl" > "$RT/race-v.out" 2>&1 && echo ok || echo FAILED)
  m=$(grep " $S/" /proc/self/mountinfo | grep -vc " $S/roots/spec/root ")
  echo "round $i: a rc=$ra ($(grep -o '[0-9]* built, [0-9]* pulled' "$RT/race-a.out")) b rc=$rb ($(grep -o '[0-9]* built, [0-9]* pulled' "$RT/race-b.out")) verify=$v extra-mounts=$m"
  [ $ra = 0 ] && [ $rb = 0 ] && [ $v = ok ] || tail -3 "$RT/race-a.out" "$RT/race-b.out" "$RT/race-v.out"
done
