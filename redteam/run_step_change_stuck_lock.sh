#!/bin/sh
# LOW/MEDIUM. A run step inserted before a packages step changes what the step installs, but the
# lock stays fresh (by design) and `envc lock` keeps the old set (it re-resolves only when
# packages change), so apply fails ("in the lock but not installed: hello") until
# `envc lock --update`, which nothing suggests.
set -eu
: "${ENVC:?}" "${ENVC_STORE:?}" "${RED:?}"
mkdir -p "$RED/f" && cd "$RED/f"
cat > env.kdl <<'EOT'
name "redf"
base "debian" suite="bookworm" variant="minbase"
layer "tools" {
    run network=#true "apt-get -qq update && apt-get -qq install -y hello >/dev/null"
    packages "hello"
}
EOT
cp ../a/env.lock env.lock
"$ENVC" lock --check env.kdl
"$ENVC" lock env.kdl
"$ENVC" --color never apply env.kdl 2>&1 | grep -v '^\[' | head -4 || true
