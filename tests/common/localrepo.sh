#!/bin/sh
# Run inside a Debian root by tests/debian.rs: builds a one-package apt repository in /repo and
# adds it to the root's apt sources, as a user adding a third-party repository would.
set -e
mkdir -p /repo/pkg/DEBIAN /repo/pkg/usr/share/envc
printf 'Package: envc-local-test\nVersion: 1.0\nArchitecture: all\nMaintainer: envc <envc@localhost>\nDescription: envc test package\n' > /repo/pkg/DEBIAN/control
echo installed-from-a-local-repository > /repo/pkg/usr/share/envc/local-test
dpkg-deb --build /repo/pkg /repo/envc-local-test_1.0_all.deb > /dev/null
cd /repo
{
  dpkg-deb --field envc-local-test_1.0_all.deb
  echo "Filename: ./envc-local-test_1.0_all.deb"
  echo "Size: $(stat -c %s envc-local-test_1.0_all.deb)"
  echo "SHA256: $(sha256sum envc-local-test_1.0_all.deb | cut -d' ' -f1)"
  echo
} > Packages
echo 'deb [trusted=yes] file:/repo ./' > /etc/apt/sources.list.d/local.list
