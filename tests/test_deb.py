"""The Debian package, installed for real: built by scripts/build-deb.sh, installed with ``dpkg -i`` and
``apt-get -f install`` into a fresh debootstrap'd Debian root (a copy; chroot in a private mount namespace), its
tools run there against the fake GPU host, a real hook run configures a container, then an upgrade and a purge.

The package is built once per session (plus a second version for the upgrade); the root is installed once per
module and the tests run in file order on it: install, use, upgrade, purge. Run under the heavy-test lock
(``flock /tmp/nvc-heavy.lock python -m pytest tests/test_deb.py``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.deb_root import CHROOT_PATH, NVIDIA_PACKAGES, DebRoot, build_deb, deb_field, nvidia_stand_in_debs
from fixtures.rootfs import apt_install
from nvc import CLI_COMPAT_VERSION

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
TOOLS = sorted(["nvc", *(p.name for p in (REPO / "scripts/launchers").iterdir())])
CONFIG = "/etc/nvidia-container-runtime/config.toml"
HOOKS_D = "/usr/share/containers/oci/hooks.d/oci-nvidia-hook.json"
# What apt and dpkg may keep after a purge (policy: their own state, logs and caches), and scratch space.
ALLOWED_LEFTOVERS = ("var/lib/dpkg/", "var/lib/apt/", "var/log/", "var/cache/apt/", "var/cache/debconf/",
                     "var/cache/ldconfig/", "tmp/", "etc/ld.so.cache")  # fmt: skip


@pytest.fixture(scope="session")
def deb_dir(tmp_path_factory):
    apt_install(["dpkg-dev", "debhelper", "help2man", "python3-pip", "python3.11"])  # as scripts/setup.sh
    return tmp_path_factory.mktemp("debs")


@pytest.fixture(scope="session")
def deb(deb_dir) -> Path:
    """The package as scripts/build-deb.sh builds it (version from debian/changelog)."""
    return build_deb(deb_dir / "v1")


@pytest.fixture(scope="session")
def deb_v2(deb, deb_dir) -> Path:
    """A second build, one version higher (NVC_DEB_VERSION), for the upgrade."""
    return build_deb(deb_dir / "v2", deb_field(deb, "Version") + "+test1")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A host directory that the root shows at the same path."""
    return tmp_path_factory.mktemp("debroot-scratch")


@pytest.fixture(scope="module")
def installed(tmp_path_factory, deb, deb_dir, host, scratch):
    """A fresh Debian root with the package installed the documented way; (root, pristine file list, dpkg -i)."""
    root = DebRoot.create(tmp_path_factory.mktemp("debroot") / "root", binds=[deb_dir, host.root.parent, scratch])
    try:
        root.run("apt-get -q update")
        pristine = root.files()
        first = root.run(f"dpkg -i {deb}", check=False)
        root.run("apt-get -q -y -f install")
        yield root, pristine, first
    finally:
        root.remove()


def _merged_usr(path: str) -> str:
    """A path as the root stores it: Debian 12's /bin, /sbin and /lib are links into /usr."""
    path = path.strip().lstrip("/")
    return "usr/" + path if path.split("/", 1)[0] in ("bin", "sbin", "lib", "lib64") and "/" in path else path


def _chroot_env(host) -> dict[str, str]:
    return {"NVML_STUB_CONFIG": host.env["NVML_STUB_CONFIG"]}


def test_package_fields_and_contents(deb):
    assert deb_field(deb, "Package") == "nvc"
    assert deb_field(deb, "Architecture") == "amd64"
    assert "python3.11" in re.split(r"[,\s]+", deb_field(deb, "Depends"))
    for name in ("nvidia-container-toolkit", "libnvidia-container-tools"):
        assert f"{name} (= {CLI_COMPAT_VERSION})" in deb_field(deb, "Provides")
    for field in ("Conflicts", "Replaces"):
        listed = {re.sub(r"\s*\(.*\)", "", p.strip()) for p in deb_field(deb, field).split(",")}
        assert {"nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container-tools"} <= listed
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    paths = {line.split()[5].removeprefix(".") for line in listing.splitlines()}
    for tool in TOOLS:
        assert f"/usr/bin/{tool}" in paths
        assert f"/usr/lib/nvc/bin/{tool}" in paths
        assert f"/usr/share/man/man1/{tool}.1.gz" in paths
    assert {CONFIG, HOOKS_D, "/usr/lib/nvc/pyvenv.cfg"} <= paths
    # The hook helper's compiled client beside the launchers that exec it; not a command on PATH.
    assert "/usr/lib/nvc/bin/nvc-hook-client" in paths and "/usr/bin/nvc-hook-client" not in paths
    assert not [p for p in paths if p.endswith(".pyc") or "__pycache__" in p]  # postinst compiles on the target
    ctrl = subprocess.run(["dpkg-deb", "-I", str(deb), "conffiles"], capture_output=True, text=True, check=True)
    assert ctrl.stdout.split() == [CONFIG]


def test_lintian_reports_no_error_or_warning(deb):
    """debian/nvc.lintian-overrides says why the venv's interpreter path is right; nothing else may be flagged."""
    apt_install(["lintian"])
    res = subprocess.run(["lintian", "--fail-on", "error,warning", str(deb)], capture_output=True, text=True,
                         timeout=300, check=False)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert not re.search(r"(?m)^[EW]: ", res.stdout), res.stdout


def test_replaces_nvidias_packages_keeping_their_config(tmp_path, deb, deb_dir):
    """A host with NVIDIA's toolkit (stand-ins: same names, versions, Depends and paths; its repository is out of
    reach here): ``apt install ./nvc.deb`` removes the toolkit and the CLI package, keeps libnvidia-container1 and
    what depends on the toolkit (our Provides), and keeps the admin's config.toml (dpkg's conffile prompt,
    answered non-interactively with --force-confold as README "Install" says)."""
    stand_ins = nvidia_stand_in_debs(tmp_path / "nvidia")
    root = DebRoot.create(tmp_path / "root", binds=[deb_dir, tmp_path / "nvidia"])
    try:
        root.run(f"apt-get -q update && apt-get -q -y install {' '.join(map(str, stand_ins))}")
        assert root.run(f"dpkg-query -W -f='${{db:Status-Abbrev}}\\n' {' '.join(NVIDIA_PACKAGES)}").stdout.split() == [
            "ii"
        ] * len(NVIDIA_PACKAGES)
        config = root.path / CONFIG.lstrip("/")
        config.write_text(config.read_text() + "[nvidia-container-cli]\nload-kmods = false\n")
        edited = config.read_text()
        root.run(f"apt-get -q -y -o Dpkg::Options::=--force-confold install {deb}")
        states = dict(
            line.split(" ", 1)
            for line in root.run("dpkg-query -W -f='${Package} ${db:Status-Abbrev}\\n'").stdout.splitlines()
        )
        assert states["nvc"].strip() == "ii"
        for name in ("nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container-tools"):
            assert states.get(name, "un").strip() in ("un", "rc"), (name, states.get(name))
        assert states["libnvidia-container1"].strip() == "ii"
        assert states["nvidia-docker2"].strip() == "ii"
        assert config.read_text() == edited
        for path in ("/usr/bin/nvidia-container-cli", "/usr/bin/nvidia-container-runtime-hook"):
            assert root.run(f"readlink -f {path}").stdout.strip().startswith("/usr/lib/nvc/bin/")
        assert not (root.path / "usr/bin/nvidia-ctk").exists()  # -base's own command went with it
        res = root.run("nvidia-container-cli --version")
        assert res.stdout.startswith(f"cli-version: {CLI_COMPAT_VERSION}")
    finally:
        root.remove()


def test_dpkg_then_apt_installs_the_dependencies(installed):
    root, _, first = installed
    assert first.returncode == 1  # dpkg alone: python3.11 is missing in a minimal root
    assert "nvc depends on python3.11" in first.stderr
    status = root.run("dpkg-query -W -f='${Status} ${Version}' nvc python3.11").stdout
    assert status.count("install ok installed") == 2, status
    mark = root.run("apt-mark showauto").stdout.split()
    assert "python3.11" in mark  # pulled in as a dependency: autoremove takes it again after a purge


def test_tools_answer_and_launchers_start_isolated(installed, host, fixture_set):
    root, _, _ = installed
    env = {**_chroot_env(host), "NVC_LAUNCHER_TRACE": "1", "PYTHONPATH": "/nonexistent", "PYTHONSTARTUP": "/x"}
    res = root.run("nvidia-container-cli --version", env=env)
    assert res.stdout.splitlines()[0] == f"cli-version: {CLI_COMPAT_VERSION}"
    assert res.stderr == "nvc-launcher: isolated=1 no_site=1 site=False\n"
    res = root.run("nvidia-container-runtime-hook poststart </dev/null", env=env)
    assert res.stderr == "nvc-launcher: isolated=1 no_site=1 site=False\n"
    # The shim finds no runc in this root: one line, exit 1, after an isolated start.
    res = root.run("nvidia-container-runtime state x", env=env, check=False)
    assert res.returncode == 1
    assert res.stderr.splitlines() == [
        "nvc-launcher: isolated=1 no_site=1 site=False",
        "nvidia-container-runtime: initialization error: no low-level runtime found in PATH (looked for runc, crun)",
    ]
    # nvc (the admin command) lists exactly what the development venv lists for the same driver root.
    res = root.run(f"nvc --root {host.root} list", env=_chroot_env(host))
    dev = subprocess.run([sys.executable, "-m", "nvc", "--root", str(host.root), "list"], capture_output=True,
                         text=True, env={"PATH": CHROOT_PATH, "NVC_CACHE_DIR": os.environ["NVC_CACHE_DIR"], **host.env},
                         check=True)  # fmt: skip
    assert res.stdout == dev.stdout
    lines = res.stdout.splitlines()  # the driver root's files, as paths inside it; the stub's GPUs (minors 3, 0)
    assert {"/dev/nvidia3", "/dev/nvidia0"} <= set(lines)
    assert any(line.endswith("/libnvidia-ml.so.535.309.01") for line in lines)


def test_hook_configures_a_container_without_writing_bytecode(installed, host, scratch):
    """A real prestart run in the installed layout: the held mount namespace stands for the container.

    The bundle is a host directory shown at the same path in the root: once in the container's mount namespace
    (setns), the hook sees that namespace's root, the host's, as a runtime running outside any chroot does.
    """
    root, _, _ = installed
    bundle = scratch / "bundle"
    for d in ("usr/lib64", "usr/bin", "sbin", "dev", "proc", "etc"):
        (bundle / "rootfs" / d).mkdir(parents=True)
    (bundle / "rootfs/sbin/ldconfig").write_bytes(b"")
    spec = {"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "mounts": [],
            "process": {"env": ["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"]}}  # fmt: skip
    (bundle / "config.json").write_text(json.dumps(spec))
    (root.path / "tmp/hook.toml").write_text(
        f'[nvidia-container-cli]\nroot = "{host.root}"\nload-kmods = false\nno-cgroups = true\n'
    )
    root.run("touch /tmp/before-hook")
    script = f"""
        for i in 1 2; do  # a cold start (NVML, inventory) and a warm one, each for a fresh container
            unshare -m --propagation unchanged sleep 600 & holder=$!  # run() made the namespace private already
            while [ "$(readlink /proc/$holder/ns/mnt)" = "$(readlink /proc/self/ns/mnt)" ]; do sleep 0.01; done
            printf '{{"ociVersion": "1.0.2", "id": "c", "pid": %d, "bundle": "{bundle}"}}' $holder \\
                | nvidia-container-runtime-hook prestart || {{ rc=$?; kill $holder; exit $rc; }}
            kill $holder
        done
    """
    root.run(script, env={**_chroot_env(host), "NVIDIA_CTK_CONFIG_FILE_PATH": "/tmp/hook.toml"})
    printed = root.run(f"ldconfig -p -C {bundle}/rootfs/etc/ld.so.cache").stdout
    assert "libnvidia-ml.so.1 (libc6,x86-64) => /usr/lib64/libnvidia-ml.so.1" in printed
    # Nothing was compiled or written under /usr/lib/nvc by these starts: postinst compiled every module.
    assert root.run("find /usr/lib/nvc -newer /tmp/before-hook").stdout == ""
    missing = root.run(
        "cd /usr/lib/nvc/lib/python3.11/site-packages && for f in $(find . -name '*.py'); do "
        'd=${f%/*}; b=${f##*/}; [ -f "$d/__pycache__/${b%.py}.cpython-311.pyc" ] || echo $f; done'
    ).stdout
    assert missing == ""
    # postinst wrote nvc's bytecode bundle (root's, 0644), current for every module: the hook's come from it.
    bundle = "/usr/lib/nvc/lib/python3.11/site-packages/nvc/__pycache__/bundle.cpython-311.marshal"
    assert root.run(f"stat -c '%U %a' {bundle}").stdout.strip() == "root 644"
    probe = ("import sys, nvc.bytecode_bundle as b; f = b.install(); import nvc.commands.hook, nvc.commands.configure, "
        "nvc.apply.executor; "
             "print(f is not None and {'nvc.commands.hook', 'nvc.commands.configure', 'nvc.apply.executor'} <= "
                 "set(f.served))")
    assert root.run(f'/usr/lib/nvc/bin/python3 -I -c "{probe}"', env={"PYTHONPATH": "/nonexistent"}).stdout == (
        "True\n")


def test_hooks_d_file_config_and_man_pages(installed):
    root, _, _ = installed
    hook = json.loads((root.path / HOOKS_D.lstrip("/")).read_text())
    assert hook["hook"]["path"] == "/usr/bin/nvidia-container-runtime-hook"
    assert hook["hook"]["args"][0] == "nvidia-container-runtime-hook"
    assert (root.path / CONFIG.lstrip("/")).read_text() == (REPO / "hooks/config.toml").read_text()
    # The generated pages carry every option the command's --help lists.
    for tool in ("nvc", "nvidia-container-cli"):
        helptext = root.run(f"{tool} --help").stdout
        page = root.run(f"zcat /usr/share/man/man1/{tool}.1.gz").stdout.replace("\\-", "-")
        options = set(re.findall(r"(?m)^\s+(?:-\w, )?(--[a-z][a-z-]+)", helptext))
        assert options and all(opt in page for opt in options), (options, page)
    res = root.run("nvidia-container-runtime-hook --help", check=False)
    usage = res.stdout + res.stderr
    page = root.run("zcat /usr/share/man/man1/nvidia-container-runtime-hook.1.gz").stdout.replace("\\-", "-")
    for word in re.findall(r"-?[a-zA-Z]+", usage.split(" ", 2)[2]):
        assert word in page, word


ENABLED_UNITS = ["nvc-hook-helper.service"]  # changes nothing a runtime sees, only how fast the tools run


def test_units_ship_disabled_but_the_hook_helper(installed):
    """hooks/'s systemd units are installed naming /usr/bin; enabling the CDI ones is left to the admin, the hook
    helper is enabled (debian/rules says why)."""
    root, _, _ = installed
    units = sorted(p.name for p in (REPO / "hooks").iterdir() if p.suffix in (".service", ".path", ".timer"))
    assert set(ENABLED_UNITS) < set(units)
    for unit in units:
        text = (root.path / "lib/systemd/system" / unit).read_text()
        assert "/usr/local/bin/" not in text
    enabled = root.run("find /etc/systemd/system -name 'nvc*'", check=False).stdout.split()
    assert sorted(path.rpartition("/")[2] for path in enabled) == ENABLED_UNITS
    assert all("/multi-user.target.wants/" in path for path in enabled)


def test_bench_startup_runs(installed):
    root, _, _ = installed
    argv = [sys.executable, str(REPO / "bench/bench_deb_startup.py"), "--root", str(root.path), "-n", "2",
            "--wheel-venv", "--json"]  # fmt: skip
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    assert result["launcher"]["installed"] == "nvc-launcher: isolated=1 no_site=1 site=False"
    assert result["launcher"]["venv"] == "nvc-launcher: isolated=1 no_site=1 site=False"
    for figures in result["commands"].values():
        assert figures["installed_wall_ms"] > 0 and figures["dev_wall_ms"] > 0 and figures["venv_wall_ms"] > 0
        assert "paired_diff_median_ms" in figures and "paired_diff_vs_venv_median_ms" in figures


def test_upgrade_keeps_an_edited_config(installed, deb_v2, host):
    root, _, _ = installed
    config = root.path / CONFIG.lstrip("/")
    edited = config.read_text().replace("#load-kmods = true", "load-kmods = false")
    assert edited != config.read_text()
    config.write_text(edited)
    root.run(f"apt-get -q -y install {deb_v2}")
    assert root.run("dpkg-query -W -f='${Version}' nvc").stdout == deb_field(deb_v2, "Version")
    assert config.read_text() == edited
    assert not list(config.parent.glob("config.toml.dpkg-*"))
    res = root.run("nvidia-container-cli --version", env={"NVC_LAUNCHER_TRACE": "1"})
    assert res.stderr == "nvc-launcher: isolated=1 no_site=1 site=False\n"
    site = "/usr/lib/nvc/lib/python3.11/site-packages"
    assert root.run(f"ls {site}/nvc/commands/__pycache__/hook.cpython-311.pyc").returncode == 0


def test_purge_leaves_nothing_behind(installed):
    """``apt-get purge nvc``: every file of the package, the byte-code postinst wrote, the conffile and the
    tools' cache in /run/nvc go; nothing else is touched, nothing is added (apt/dpkg state and logs aside)."""
    root, pristine, _ = installed
    assert (root.path / "run/nvc").is_dir()  # the tools' answer cache, made by the runs above
    owned = {_merged_usr(p) for p in root.run("dpkg -L nvc").stdout.splitlines() if p.strip() not in ("", "/.")}
    before = root.files(skip=ALLOWED_LEFTOVERS)
    root.run("apt-get -q -y purge nvc")
    assert root.run("dpkg-query -W -f='${db:Status-Abbrev}' nvc", check=False).stdout.strip() in ("", "un")
    after = root.files(skip=ALLOWED_LEFTOVERS)
    assert sorted(after - before) == []
    assert {"usr/lib/nvc/", "usr/bin/nvidia-container-cli", CONFIG.lstrip("/")} <= before - after
    owned_paths = {o.rstrip("/") for o in owned}

    made = ("usr/lib/nvc/", "run/nvc/", "etc/nvidia-container-runtime/")

    def ours(path: str) -> bool:  # what the package and its scripts make: files, cache, config, units' state
        units_state = path.startswith(("var/lib/systemd/deb-systemd-helper-", "etc/systemd/system/")) and "nvc" in path
        return path.rstrip("/") in owned_paths or path.startswith(made) or units_state

    assert sorted(p for p in before - after if not ours(p)) == []
    # Nothing of ours is left: no packaged path that the pristine root did not have, no cache, no config.
    leftovers = {p for p in after - pristine if ours(p)}
    assert sorted(leftovers) == []
    assert not (root.path / "run/nvc").exists()
    assert not (root.path / "etc/nvidia-container-runtime").exists()
