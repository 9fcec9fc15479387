#!/bin/sh
# LOW/MEDIUM. normalize clamps only mtimes later than source-date-epoch: a lock whose
# source-date-epoch is in the future (here u64::MAX, clamped to i64::MAX) is accepted and
# normalizes nothing, so its layers keep their build times (two applies differ) under one id.
set -eu
: "${ENVC:?}" "${ENVC_STORE:?}" "${RED:?}"
mkdir -p "$RED/sde" && cd "$RED/sde"
sed 's/"reda"/"redsde"/' ../a/env.kdl > env.kdl
sed 's/^source-date-epoch = .*/source-date-epoch = 18446744073709551615/' ../a/env.lock > env.lock
root=$("$ENVC" apply env.kdl 2>/dev/null)
find "$root/usr/share/doc/hello" "$root/var/lib/dpkg/status" -newermt '-1 hour' | head
