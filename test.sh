#!/usr/bin/env bash
# Set up, then run the whole test suite (as root: the tests mount, chroot and mknod for real).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/setup.sh
source "$REPO/scripts/setup.sh"
cd "$REPO"
ruff check nvc tests fixtures bench
exec python -m pytest "$@"
