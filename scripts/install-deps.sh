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

# kubernetes-validate, for tests/manifests.rs (scripts/validate-manifests.sh pins the same
# version and checks it). A Debian-managed python refuses plain pip installs (PEP 668), hence
# the fallback.
KUBERNETES_VALIDATE_VERSION=1.33.1
if ! python3 -m pip --version >/dev/null 2>&1; then
  echo "installing: python3-pip"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq python3-pip >/dev/null
fi
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
python3 -m pip install --quiet "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" ||
  python3 -m pip install --quiet --break-system-packages "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
