#!/usr/bin/env bash
# Builds every fuzz target in fuzz/ (a standalone cargo-fuzz crate) so that CI catches targets
# broken by API changes in mesh. A plain build on stable Rust: no sanitizers, no coverage
# instrumentation, and cargo-fuzz need not be installed. To actually fuzz, see docs/FUZZING.md.
set -euo pipefail
cd "$(dirname "$0")/.."

# libfuzzer-sys compiles libFuzzer's C++ sources; say so plainly rather than failing deep
# inside a build script.
if ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1 && ! command -v clang++ >/dev/null 2>&1; then
  echo "scripts/fuzz-build.sh: a C++ compiler (g++ or clang++) is needed to build libFuzzer" >&2
  exit 1
fi

# The fuzz crate has its own lock file and workspace; keep its artifacts apart from the main
# workspace's (different dependency features would otherwise force rebuilds both ways).
cargo build --locked --manifest-path fuzz/Cargo.toml --target-dir target/fuzz --bins

# Replay the committed seeds through each built target (libFuzzer runs files given by name
# once each, and does not fuzz): cheap, and it keeps the targets' round-trip asserts honest
# against the seeds. Files, never a directory: libFuzzer would start fuzzing a directory.
# Targets that need scratch files (ca_key) make them under TMPDIR: keep them in target/.
export TMPDIR="$PWD/target/fuzz/tmp"
mkdir -p "$TMPDIR"
count=0
for src in fuzz/fuzz_targets/*.rs; do
  target=$(basename "$src" .rs)
  seeds=(fuzz/seeds/"$target"/*)
  [ -e "${seeds[0]}" ] || { echo "scripts/fuzz-build.sh: no seeds in fuzz/seeds/$target" >&2; exit 1; }
  if ! out=$(target/fuzz/debug/"$target" "${seeds[@]}" 2>&1); then
    echo "$out" >&2
    echo "scripts/fuzz-build.sh: fuzz target $target fails on its seeds" >&2
    exit 1
  fi
  count=$((count + 1))
done
echo "fuzz targets built and replayed on their seeds: $count"
