#!/usr/bin/env bash
# Validates every document of the given manifest files (default: manifests/*.yaml) against the
# Kubernetes OpenAPI schemas of a pinned Kubernetes version, strictly (unknown fields are
# errors), with kubernetes-validate. Installs the pinned kubernetes-validate with pip when it
# is missing. Never skips: without python3 or pip it fails, saying what to install.
set -euo pipefail
cd "$(dirname "$0")/.."

# Keep in step with k8s-openapi's feature in the root Cargo.toml (v1_33): the objects are
# built from that version's types and validated against the same version's schemas.
KUBERNETES_VERSION=1.33.0
KUBERNETES_VALIDATE_VERSION=1.33.1

fail() {
  echo "validate-manifests: $*" >&2
  exit 1
}

command -v python3 >/dev/null 2>&1 ||
  fail "python3 is required (Debian: apt-get install python3 python3-pip)"

installed_version() {
  python3 -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))' 2>/dev/null || true
}

if [ "$(installed_version)" != "$KUBERNETES_VALIDATE_VERSION" ]; then
  python3 -m pip --version >/dev/null 2>&1 ||
    fail "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION is not installed and pip is unavailable (Debian: apt-get install python3-pip; or run scripts/install-deps.sh)"
  echo "validate-manifests: installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >&2
  export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
  # A Debian-managed python refuses plain pip installs (PEP 668); the validator's
  # dependencies are self-contained, so fall back to installing over that guard.
  python3 -m pip install --quiet "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" ||
    python3 -m pip install --quiet --break-system-packages "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" ||
    fail "pip could not install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION (is PyPI reachable?)"
  [ "$(installed_version)" = "$KUBERNETES_VALIDATE_VERSION" ] ||
    fail "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION still not importable by python3 after installing"
fi

if [ $# -eq 0 ]; then
  set -- manifests/*.yaml
fi
for f in "$@"; do
  [ -s "$f" ] || fail "$f: missing or empty"
done

# --quiet prints only failures; the exit status is non-zero if any document fails.
python3 -m kubernetes_validate --strict --quiet --kubernetes-version "$KUBERNETES_VERSION" "$@"
echo "validate-manifests: $* valid against Kubernetes $KUBERNETES_VERSION (strict)"
