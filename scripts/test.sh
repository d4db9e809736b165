#!/usr/bin/env bash
# The whole test suite, as CI runs it. Needs root: the end-to-end tests build network
# namespaces, veths and iptables rules, and they fail (never skip) without them.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh: the data-path tests need root (network namespaces, iptables)" >&2
  exit 1
fi
scripts/install-deps.sh

cargo build --workspace --all-targets --locked
cargo test --workspace --locked --no-fail-fast
