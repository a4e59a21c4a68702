#!/usr/bin/env bash
# Set up, then show what nvc sees: the host's driver when this machine has one, else a fixture driver root built
# from Debian's real NVIDIA 535 packages with a stub NVML reporting two fake GPUs.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/setup.sh
source "$REPO/scripts/setup.sh"
cd "$REPO"
if [ -e /proc/driver/nvidia/version ] && [ -z "${NVC_DEMO_FIXTURE:-}" ]; then
    echo "== host driver ==" >&2
    nvc info
    nvc list
else
    root="$(python -m fixtures.demo_root)"
    export NVML_STUB_CONFIG="$REPO/fixtures/demo-gpus.conf"
    echo "== no NVIDIA driver here: fixture driver root $root (Debian 535.309.01 files, stub NVML) ==" >&2
    set -x
    nvc --root "$root" info
    nvc --root "$root" list
    nvc --root "$root" list --json --device 1 --binaries
    nvc --root "$root" ldcache | head -n 5
fi
