#!/usr/bin/env bash
# Regenerates mesh/src/xds/gen.rs and mesh/src/xds/gen/*.rs from proto/*.proto.
#
# Pure Rust (protox + prost-build + tonic-build in scripts/protogen), so no system protoc is
# needed. The output is checked in: normal builds never run this. Run it after editing a
# .proto, then commit the .proto and the generated files together.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# Its own target dir: the generator's dependencies have nothing in common with the workspace's.
export CARGO_TARGET_DIR="${PROTOGEN_TARGET_DIR:-$root/target/protogen}"
cargo run --quiet --locked --manifest-path "$root/scripts/protogen/Cargo.toml" -- \
    "$root/proto" "$root/mesh/src/xds"
# prost-build output is not rustfmt'd the way the rest of the tree is.
rustfmt --edition 2021 "$root/mesh/src/xds/gen.rs" "$root"/mesh/src/xds/gen/*.rs
echo "generated: $(cd "$root" && ls mesh/src/xds/gen.rs mesh/src/xds/gen/*.rs | tr '\n' ' ')"
