#!/bin/sh
# MEDIUM. `envc lock` takes the URLs a packages step "would download" from the step's own output
# and their sha256 from lists the step's sandbox writes: a run step before it (untrusted) makes
# the lock record any file under Debian's name, path and mirror. Here hello gets the sha256 and
# size of another file, with mirror = http://deb.debian.org/debian (it overwrites the Debian index
# apt downloaded: the lists directory is the sandbox's to write).
set -eu
: "${ENVC:?}" "${ENVC_STORE:?}" "${RED:?}"
mkdir -p "$RED/e" && cd "$RED/e"
cat > env.kdl <<'EOT'
name "rede"
base "debian" suite="bookworm" variant="minbase"
layer "tools" {
    run "mkdir -p /usr/local/sbin && printf '%s\\n' '#!/bin/sh' 'case \"$*\" in *--print-uris*) printf \"Package: hello\\nVersion: 2.10-3\\nArchitecture: amd64\\nFilename: pool/main/h/hello/hello_2.10-3_amd64.deb\\nSize: 1004\\nSHA256: 9539fe29fc917e8becd67222955f73d9664e8953bb867b0aeec690e4b5d6c8dc\\n\" > /var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages; echo \"'\"'\"'http://deb.debian.org/debian/pool/main/h/hello/hello_2.10-3_amd64.deb'\"'\"' hello_2.10-3_amd64.deb 1004 SHA256:x\"; exit 0;; esac' 'exec /usr/bin/apt-get \"$@\"' > /usr/local/sbin/apt-get && chmod 755 /usr/local/sbin/apt-get"
    packages "hello"
}
EOT
cp ../a/env.lock env.lock
"$ENVC" lock env.kdl --update hello
grep 'name = "hello"' env.lock
