#!/usr/bin/env bash
# Installs the system packages ambit's tests and demo need on a fresh Debian machine:
# iptables (the redirect rules), iproute2 (netns, veth), curl (demo), and the real
# containernetworking CNI plugins. Idempotent; skips apt when everything is present.
set -euo pipefail

need=()
command -v iptables-restore >/dev/null 2>&1 || need+=(iptables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v curl >/dev/null 2>&1 || need+=(curl)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)

if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
