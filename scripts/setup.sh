#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine (run as root): system packages the tests use, a virtualenv with
# nvc installed in editable mode plus its test dependencies. Sourced by run.sh and test.sh.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NVC_VENV:-$REPO/.venv}"

apt_packages=(gcc libc6-dev dpkg apt ca-certificates debian-archive-keyring python3-venv util-linux
              runc crun runsc containerd podman docker.io busybox-static debootstrap
              dpkg-dev debhelper help2man python3-pip lintian)  # the last line: scripts/build-deb.sh
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

# The distribution's interpreter when it is new enough: what an admin installs nvc with on a GPU host, and (built
# with PGO/LTO, libpython linked in) ~2 ms faster per container start than a shared-libpython build such as
# pyenv's. $PYTHON overrides.
if [ -n "${PYTHON:-}" ]; then
    PY="$PYTHON"
elif [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    PY=/usr/bin/python3
else
    PY=python3
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.nvc-installed"
# Reinstalled when pyproject.toml or a launcher changed: pip copies the launchers into the venv's bin/ (an
# editable install links nvc/ but not them), and a stale copy may name a module that has moved.
stale=
for f in "$REPO/pyproject.toml" "$REPO"/scripts/launchers/*; do
    if [ "$f" -nt "$stamp" ]; then stale=1; fi
done
if [ ! -f "$stamp" ] || [ -n "$stale" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q -e "$REPO[test]"
    touch "$stamp"
fi
# The launchers' bytecode bundle (nvc/bytecode_bundle.py): rebuilt when a module changed, else left as it is.
"$VENV/bin/python" -m nvc.bytecode_bundle >/dev/null
# The hook helper's compiled client next to the launchers (hooks/client/): rebuilt when its source changed.
client="$VENV/bin/nvc-hook-client"
if [ ! -x "$client" ] || [ "$REPO/hooks/client/nvc-hook-client.c" -nt "$client" ]; then
    "$REPO/scripts/build-hook-client.sh" "$client"
fi
export PATH="$VENV/bin:$PATH"
