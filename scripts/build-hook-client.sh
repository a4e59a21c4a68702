#!/bin/sh
# Compile the hook helper's client (hooks/client/nvc-hook-client.c) to OUT: the launchers use it when it lies next
# to them (README "The hook helper"). Optional: without it they start Python to hand a start over, as before.
#
#   scripts/build-hook-client.sh OUT        (CC, default cc; setup.sh and debian/stage-tree.sh call it)
set -eu
out=$1
src="$(cd "$(dirname "$0")/.." && pwd)/hooks/client/nvc-hook-client.c"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
${CC:-cc} -O2 -Wall -Wextra -Werror -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fPIE -pie -Wl,-z,relro,-z,now \
    -o "$tmp" "$src"
chmod 0755 "$tmp"
mv -f "$tmp" "$out"
