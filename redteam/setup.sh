#!/bin/sh
# A locked spec to mutate: $RED/a (bookworm minbase + hello), locked and applied in $ENVC_STORE.
set -eu
: "${ENVC:?}" "${ENVC_STORE:?}" "${RED:?}"
mkdir -p "$RED/a" && cd "$RED/a"
cat > env.kdl <<'EOT'
name "reda"
base "debian" suite="bookworm" variant="minbase"
layer "tools" {
    packages "hello"
}
EOT
"$ENVC" lock env.kdl
"$ENVC" apply env.kdl
