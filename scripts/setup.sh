#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine (run as root): system packages the tests use, a virtualenv with
# nvc installed in editable mode plus its test dependencies. Sourced by run.sh and test.sh.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NVC_VENV:-$REPO/.venv}"

apt_packages=(gcc libc6-dev dpkg apt ca-certificates debian-archive-keyring python3-venv util-linux
              runc crun runsc containerd podman busybox-static debootstrap)
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.nvc-installed"
if [ ! -f "$stamp" ] || [ "$REPO/pyproject.toml" -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q -e "$REPO[test]"
    touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
