#!/bin/bash
# kill -9 `envc apply` at random moments while it pulls (registry of setup.sh), then apply again:
# the second apply must succeed, `envc verify` pass, no mount below the store but the working
# root, staging/ and tmp/ empty, and every sealed layer's record present.  crash_pull.sh [ROUNDS]
set -u
. "$(dirname "$0")/env.sh"
S=$RT/s-crash; R=127.0.0.1:5101/rt/cache
export ENVC_STORE=$S
bad=0
for i in $(seq "${1:-10}"); do
  "$ENVC" rm spec >/dev/null 2>&1; "$ENVC" gc --older-than 0 >/dev/null 2>&1
  "$ENVC" apply "$RT/spec/env.kdl" --remote $R --trusted-key "$RT/keys/ci.pub" > "$RT/crash-1.out" 2>&1 &
  pid=$!
  t=$(python3 -c "import random; print(round(random.uniform(0.1, ${MAXWAIT:-4}), 2))")
  sleep "$t"; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  last=$(grep -o '\[[a-z]*\] [a-z]*' "$RT/crash-1.out" | tail -1)
  "$ENVC" apply "$RT/spec/env.kdl" --remote $R --trusted-key "$RT/keys/ci.pub" > "$RT/crash-2.out" 2>&1; rc=$?
  v=$("$ENVC" verify "$RT/spec/env.kdl" > "$RT/crash-v.out" 2>&1 && echo ok || echo FAILED)
  m=$(grep " $S/" /proc/self/mountinfo | grep -vc " $S/roots/spec/root ")
  st=$(ls -A "$S/staging" "$S/tmp" 2>/dev/null | grep -v ':$' | grep -c .)
  nl=$(ls "$S/layers" | wc -l); nm=$(ls "$S/meta" | grep -c .)
  echo "round $i: killed at ${t}s ($last); reapply rc=$rc verify=$v extra-mounts=$m staging+tmp=$st layers=$nl meta-files=$nm $(grep -o '[0-9] pulled' "$RT/crash-2.out")"
  [ $rc = 0 ] && [ $v = ok ] && [ $m = 0 ] || { bad=1; cat "$RT/crash-2.out" "$RT/crash-v.out" | tail -5; }
done
exit $bad
