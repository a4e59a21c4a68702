#!/usr/bin/env bash
# Build the Debian package: dist/nvc_<version>_amd64.deb (README "Install").
#
#   scripts/build-deb.sh
#
# 1. Fetch the pinned wheels (debian/requirements.txt, hash-checked) into a cache (build/wheels): the only step
#    that needs the network (PyPI, or the index pip is configured for), and only once.
# 2. Copy the source tree (what git tracks, plus new files it does not ignore) to a scratch directory, build
#    nvc's wheel there and put it beside the pinned ones in debian/wheels.
# 3. dpkg-buildpackage -b (debhelper; debian/rules) with no network: a private venv in /usr/lib/nvc.
# 4. lintian on the result, when installed (its tags are printed; they do not fail the build).
#
# Environment: NVC_DEB_VERSION (the Debian version, default: debian/changelog's), NVC_DEB_OUT (output directory,
# default dist/), NVC_WHEEL_CACHE (default build/wheels), NVC_DEB_LINTIAN=0 (skip lintian).
# Needs: dpkg-dev, debhelper, help2man, python3.11 with python3-pip (scripts/setup.sh installs them).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${NVC_DEB_OUT:-$REPO/dist}"
WHEEL_CACHE="${NVC_WHEEL_CACHE:-$REPO/build/wheels}"
PY=/usr/bin/python3.11

die() { echo "build-deb: $*" >&2; exit 1; }
for tool in dpkg-buildpackage dh help2man "$PY"; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install dpkg-dev debhelper help2man python3.11)"
done
"$PY" -m pip --version >/dev/null 2>&1 || die "pip for $PY is missing (apt-get install python3-pip)"

pip_quiet=(--quiet --disable-pip-version-check)
# Step 1: the wheels the package vendors and the build backend nvc's wheel needs. A cache that already holds the
# pinned files is used offline; otherwise pip downloads the missing ones (and checks every hash either way).
mkdir -p "$WHEEL_CACHE"
fetch() {  # fetch REQUIREMENTS DEST: the pinned files of REQUIREMENTS into DEST, hashes checked
    local req=$1 dest=$2
    "$PY" -m pip download "${pip_quiet[@]}" --no-deps --only-binary :all: --require-hashes --no-index \
        --find-links "$WHEEL_CACHE" -r "$req" -d "$dest" 2>/dev/null && return 0
    "$PY" -m pip download "${pip_quiet[@]}" --no-deps --only-binary :all: --require-hashes \
        -r "$req" -d "$WHEEL_CACHE" || die "could not fetch the wheels pinned in $req"
    "$PY" -m pip download "${pip_quiet[@]}" --no-deps --only-binary :all: --require-hashes --no-index \
        --find-links "$WHEEL_CACHE" -r "$req" -d "$dest"
}

work="$(mktemp -d "${TMPDIR:-/tmp}/nvc-deb.XXXXXX")"
trap 'rm -rf "$work"' EXIT
src="$work/nvc"
mkdir -p "$src"
# Step 2: a clean copy of the tree (no .venv, build outputs or caches).
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$REPO" ls-files -z --cached --others --exclude-standard \
        | (cd "$REPO" && tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -C "$src" -xf -
else
    tar -C "$REPO" --exclude=./.venv --exclude=./build --exclude=./dist --exclude=./.git -cf - . | tar -C "$src" -xf -
fi
[ -x "$src/debian/rules" ] || die "$src/debian/rules missing: is $REPO an nvc checkout?"

fetch "$src/debian/requirements.txt" "$src/debian/wheels"
fetch "$src/debian/build-requirements.txt" "$work/build-wheels"
PIP_CONFIG_FILE=/dev/null "$PY" -m pip wheel "${pip_quiet[@]}" --no-deps --no-index --find-links "$work/build-wheels" \
    -w "$src/debian/wheels" "$src" >/dev/null || die "could not build nvc's wheel"
rm -rf "$src/build" "$src"/*.egg-info

if [ -n "${NVC_DEB_VERSION:-}" ]; then  # a new top changelog entry: the version dpkg-buildpackage uses
    entry="nvc ($NVC_DEB_VERSION) unstable; urgency=medium

  * Built by scripts/build-deb.sh with NVC_DEB_VERSION=$NVC_DEB_VERSION.

 -- $(cd "$src" && dpkg-parsechangelog -S Maintainer)  $(date -R)
"
    { printf '%s\n' "$entry"; cat "$src/debian/changelog"; } >"$work/changelog"
    mv "$work/changelog" "$src/debian/changelog"
fi

# Step 3: the package. Root is not needed (Rules-Requires-Root: no).
(cd "$src" && dpkg-buildpackage -b -us -uc --no-sign >"$work/build.log" 2>&1) || {
    tail -n 40 "$work/build.log" >&2
    die "dpkg-buildpackage failed (log above)"
}
debs=("$work"/nvc_*.deb)
[ -f "${debs[0]}" ] || die "dpkg-buildpackage made no .deb"
mkdir -p "$OUT"
for deb in "${debs[@]}"; do
    cp "$deb" "$OUT/"
    echo "$OUT/${deb##*/}"
done

# Step 4.
if [ "${NVC_DEB_LINTIAN:-1}" != 0 ] && command -v lintian >/dev/null; then
    lintian --display-info "${debs[@]}" >&2 || true
fi
