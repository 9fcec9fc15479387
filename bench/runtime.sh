#!/usr/bin/env bash
# Runtime benchmark: warm `envc apply` of an unchanged spec and `envc apply --reset` of a dirtied
# root, side by side with restoring the same root from a tar.gz (mock's root cache, via pigz) and
# from a plain tar. Medians of interleaved rounds by hyperfine. Needs root, mmdebstrap, hyperfine,
# pigz. Usage: bench/runtime.sh [SPEC] (default specs/hello.kdl). Writes bench/runtime.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SPEC=${1:-specs/hello.kdl}
WORK=${ENVC_BENCH_DIR:-/var/tmp/envc-bench}
ROUNDS=${ROUNDS:-20}
cargo build --release --quiet
ENVC=$PWD/target/release/envc
export ENVC_STORE=$WORK/store ENVC_QUIET=1
mkdir -p "$WORK"
ROOT=$($ENVC apply "$SPEC" 2>/dev/null)
echo "root: $ROOT ($(du -sh --apparent-size "$ROOT" | cut -f1), $(find "$ROOT" -xdev | wc -l) files)"
tar -C "$ROOT" --numeric-owner -cf "$WORK/root.tar" .
tar -C "$ROOT" --numeric-owner -I pigz -cf "$WORK/root.tar.gz" .
RESTORE=$WORK/restore
hyperfine --style basic --warmup 2 --runs "$ROUNDS" --export-markdown bench/runtime.md \
  --command-name "envc apply (warm, unchanged spec)" --prepare "true" "$ENVC apply $SPEC" \
  --command-name "envc apply --reset (dirtied root)" --prepare "dd if=/dev/zero of=$ROOT/dirt bs=1M count=64 status=none" "$ENVC apply --reset $SPEC" \
  --command-name "restore tar.gz (pigz, mock root cache)" --prepare "rm -rf $RESTORE; mkdir -p $RESTORE" "tar -C $RESTORE -I pigz -xf $WORK/root.tar.gz" \
  --command-name "restore plain tar" --prepare "rm -rf $RESTORE; mkdir -p $RESTORE" "tar -C $RESTORE -xf $WORK/root.tar"
rm -rf "$RESTORE"
cat bench/runtime.md

# Size independence: the same two envc operations on the root above and on one 1 GiB and 20,000
# files bigger (a layer on top of it).
BIG=$WORK/hello-big.kdl
cat > "$BIG" <<SPEC
name "hello-big"
extends "$PWD/$SPEC"
layer "big" {
    run "mkdir -p /big/many && dd if=/dev/urandom of=/big/blob bs=1M count=1024 status=none && cd /big/many && seq 1 20000 | xargs touch"
}
SPEC
BIGROOT=$($ENVC apply "$BIG" 2>/dev/null)
echo "big root: $BIGROOT ($(du -sh --apparent-size "$BIGROOT" | cut -f1), $(find "$BIGROOT" -xdev | wc -l) files)"
hyperfine --style basic -N --warmup 2 --runs "$ROUNDS" --export-markdown bench/runtime-size.md \
  --command-name "warm apply, $(du -sh --apparent-size "$ROOT" | cut -f1) root" "$ENVC apply $SPEC" \
  --command-name "warm apply, $(du -sh --apparent-size "$BIGROOT" | cut -f1) root" "$ENVC apply $BIG" \
  --command-name "reset, $(du -sh --apparent-size "$ROOT" | cut -f1) root" "$ENVC apply --reset $SPEC" \
  --command-name "reset, $(du -sh --apparent-size "$BIGROOT" | cut -f1) root" "$ENVC apply --reset $BIG" > /dev/null
cat bench/runtime-size.md
