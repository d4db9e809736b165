#!/usr/bin/env bash
# Runs ztunnel on a small local example (two nodes, two pods, traffic over HBONE) and prints
# the access log and metrics. Needs root (network namespaces, iptables).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked --workspace --bins
exec target/release/ambit demo --ztunnel target/release/ztunnel
