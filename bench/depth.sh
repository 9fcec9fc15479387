#!/usr/bin/env bash
# Depth benchmark: how chain depth affects a root. For environments of 1, 10, 50, 100 and 200
# layers on the same Debian base (bookworm minbase, ~8,800 files), hyperfine measures
#   - `envc apply --reset`: unmount + mount of the working root (an overlay of every layer), and
#   - a lookup-heavy workload in a fresh throwaway root: `find / -xdev` plus `stat` of every file
#     (each `envc run` mounts a new overlay, so overlay lookups start cold).
# Needs root, mmdebstrap, hyperfine. Writes bench/depth.md.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${ENVC_BENCH_DIR:-/var/tmp/envc-bench}
ROUNDS=${ROUNDS:-10}
cargo build --release --quiet
ENVC=$PWD/target/release/envc
export ENVC_STORE=$WORK/store ENVC_QUIET=1
mkdir -p "$WORK/depth"
args=()
for n in 1 10 50 100 200; do
  spec=$WORK/depth/depth-$n.kdl
  {
    echo "name \"depth-$n\""
    echo 'base "debian" suite="bookworm" variant="minbase"'
    for i in $(seq 1 "$n"); do echo "layer \"l$i\" { run \"mkdir -p /opt/d$i && echo $i > /opt/d$i/f\" }"; done
  } > "$spec"
  $ENVC apply "$spec" > /dev/null 2>&1
  args+=(--command-name "depth $n: apply --reset (mount)" "$ENVC apply --reset $spec")
  args+=(--command-name "depth $n: cold lookups (find + stat of every file)" "$ENVC run --no-network $spec -- sh -c 'find / -xdev -print0 | xargs -0 stat -c %s > /dev/null'")
done
hyperfine --style basic -N --warmup 1 --runs "$ROUNDS" --export-markdown bench/depth.md "${args[@]}" > /dev/null
cat bench/depth.md
