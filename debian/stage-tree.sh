#!/bin/sh
# Lay out the nvc package tree in DEST from the wheels in WHEELS (debian/rules calls this; no network).
#
# /usr/lib/nvc is a virtual environment on Debian's python3.11 that holds nvc and the pinned libraries it needs;
# its bin/ has the `nvc` script and the fast launchers (scripts/launchers/*, every one found there), and
# /usr/bin links to them. The launchers read the shebang of `nvc` next to them and start that interpreter with
# -I -S, so a container start never runs site, never reads PYTHON* variables and sees only this environment.
set -eu

dest=$1
wheels=$2
PY=/usr/bin/python3.11
prefix=/usr/lib/nvc
venv=$dest$prefix
pyver=$($PY -c 'import sys; print("%d.%d" % sys.version_info[:2])')
site=$venv/lib/python$pyver/site-packages

# 1. An empty environment: symlinks to /usr/bin/python3.11, no pip, no activate scripts, no build paths.
$PY -m venv --without-pip "$venv"
rm -f "$venv"/bin/activate* "$venv"/bin/Activate.ps1
rmdir "$venv/include/python$pyver" "$venv/include" 2>/dev/null || true
printf 'home = /usr/bin\ninclude-system-site-packages = false\nversion = %s\n' \
    "$($PY -c 'import platform; print(platform.python_version())')" >"$venv/pyvenv.cfg"

# 2. nvc and its requirements, resolved among the wheels only (a missing pin fails here). No .pyc in the
#    package: postinst compiles them on the target.
PIP_CONFIG_FILE=/dev/null $PY -m pip install --quiet --disable-pip-version-check --no-index --no-compile \
    --no-warn-script-location --find-links "$wheels" --target "$site" nvc
rm -rf "$site/bin"  # pip --target's scripts carry the build interpreter's shebang: ours follow
find "$site" -name direct_url.json -delete

# 3. The commands: `nvc` (the launchers take their interpreter from its shebang) and every fast launcher.
printf '#!%s/bin/python3\nimport sys\n\nfrom nvc.commands.cli_main import main\n\nsys.exit(main())\n' "$prefix" >"$venv/bin/nvc"
chmod 0755 "$venv/bin/nvc"
tools=nvc
for launcher in scripts/launchers/*; do
    install -m 0755 "$launcher" "$venv/bin/"
    tools="$tools ${launcher##*/}"
done
# The hook helper's client (hooks/client/): the launchers exec it from beside themselves; not a command of its own.
scripts/build-hook-client.sh "$venv/bin/nvc-hook-client"
install -d "$dest/usr/bin"
for tool in $tools; do
    ln -s "../lib/nvc/bin/$tool" "$dest/usr/bin/$tool"
done
# Check the tree answers before it becomes a package (run from here, not isolated: it is not installed yet).
for tool in $tools; do
    [ "$tool" = nvc ] || grep -q "nvc's fast launcher" "$venv/bin/$tool"
done
PYTHONPATH=$site $PY "$venv/bin/nvidia-container-cli" --version | grep -q '^cli-version: '
PYTHONPATH=$site $PY -c 'import click, cffi, elftools, pynvml, tomlkit, nvc.commands.cli_main, nvc.commands.cli, nvc.commands.hook, nvc.sys'
$PY -m compileall -q "$site" >/dev/null  # postinst compiles the same files: none may fail there
PYTHONPATH=$site $PY -m nvc.bytecode_bundle >/dev/null  # and writes the bundle the same way
find "$site" -depth -type d -name __pycache__ -exec rm -rf {} +

# 4. Runtime configuration: the hooks.d file naming /usr/bin, config.toml (a conffile: it is in /etc), and the
#    systemd units in hooks/ (enabled or not: see debian/rules).
$PY - "$dest" $tools <<'EOF'
import json, os, sys, glob

dest, tools = sys.argv[1], set(sys.argv[2:])
out = os.path.join(dest, "usr/share/containers/oci/hooks.d")
os.makedirs(out, exist_ok=True)
for path in sorted(glob.glob("hooks/*.json")):
    with open(path) as f:
        doc = json.load(f)
    hook = doc.get("hook") if isinstance(doc, dict) else None
    if not isinstance(hook, dict) or "path" not in hook:
        continue  # not an OCI hooks.d file
    name = os.path.basename(hook["path"])
    if name not in tools:
        sys.exit(f"{path}: hook path {hook['path']} is none of the packaged commands {sorted(tools)}")
    hook["path"] = "/usr/bin/" + name
    with open(os.path.join(out, os.path.basename(path)), "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
EOF
install -D -m 0644 hooks/config.toml "$dest/etc/nvidia-container-runtime/config.toml"
for unit in hooks/*.service hooks/*.path hooks/*.timer; do
    [ -e "$unit" ] || continue
    install -d "$dest/lib/systemd/system"
    sed 's#/usr/local/bin/#/usr/bin/#g' "$unit" >"$dest/lib/systemd/system/${unit##*/}"
done

# 5. Manual pages: debian/man/TOOL.1 where written by hand (the hook and the runtime shim, whose --help is one
#    line or runc's), else help2man from the command's own --help, so the page says what the command says.
install -d "$dest/usr/share/man/man1"
version=$(dpkg-parsechangelog -S Version)
shim=$(mktemp -d)
trap 'rm -rf "$shim"' EXIT
for tool in $tools; do
    if [ -f "debian/man/$tool.1" ]; then
        install -m 0644 "debian/man/$tool.1" "$dest/usr/share/man/man1/"
        continue
    fi
    printf '#!/bin/sh\nPYTHONPATH=%s exec %s %s "$@"\n' "$site" "$PY" "$venv/bin/$tool" >"$shim/$tool"
    chmod 0755 "$shim/$tool"
    name=$(sed -n "s/^$tool: //p" debian/man/names)
    help2man --no-info --no-discard-stderr --version-string="$version" --name="${name:-part of nvc, NVIDIA's container GPU stack}" \
        --output="$dest/usr/share/man/man1/$tool.1" "$shim/$tool" || {
        echo "stage-tree: help2man cannot make $tool.1 from '$tool --help': write debian/man/$tool.1" >&2
        exit 1
    }
done
