"""podman runs our hook from a hooks directory: ``hooks/oci-nvidia-hook.json`` (a copy whose ``path`` names our
hook wrapper) in ``podman --hooks-dir DIR``, and a container asking for ``NVIDIA_VISIBLE_DEVICES`` gets the Debian
535 driver from the fake GPU host, exactly as with runc in tests/test_e2e_runtimes.py.

What podman 4.3 (Debian 12: podman 4.3.1, conmon 2.1.6, runc 1.1.5) needs on this machine:

* Hook environment: podman puts the hooks.d file's ``env`` list into the OCI spec and runc runs the hook with that
  environment *only* (plus PWD = the bundle); podman's own environment never reaches it. So the host-side
  variables (``NVIDIA_CTK_CONFIG_FILE_PATH``, the stub's ``NVML_STUB_CONFIG``) go into the copy's ``env`` list;
  test_podman_passes_only_the_hook_files_env shows it.
* Rlimits: podman asks for RLIMIT_NOFILE 1048576 and sets its own (and so conmon's and runc's) RLIMIT_NPROC to
  32768; without CAP_SYS_RESOURCE (this sandbox drops it) runc fails with ``error setting rlimits for ready
  process: error setting rlimit type 7: operation not permitted`` (then ``type 6`` for NPROC). ``--ulimit host``
  does not help (it copies 1048576); explicit ``--ulimit`` values within our hard limits do.
* State: private ``--root``/``--runroot``/``--tmpdir``/``--network-config-dir`` (else ``/etc/cni/net.d/cni.lock``
  appears even with ``--network=none``), vfs storage (no overlay mounts), cgroupfs with a per-run
  ``--cgroup-parent`` (else ``libpod_parent/conmon`` stays in every hierarchy), and ``--runtime`` = a runc wrapper
  adding ``--root``: ``--runtime-flag root=...`` is not handed to conmon's exit command (``podman container
  cleanup``), whose ``runc delete`` then looks in ``/run/runc`` and leaves the container's state and cgroup.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from fixtures.host_residue import HostResidue
from fixtures.rootfs import apt_install, mounts_under, safe_rmtree
from fixtures.runtimes import oci_image_tar
from tests.test_e2e_runtimes import PROBE, assert_gpu_container, container_rootfs

pytestmark = [pytest.mark.root, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent
HOOK_JSON = REPO / "hooks" / "oci-nvidia-hook.json"
IMAGE = "localhost/nvc-gpu-probe:latest"
_MIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# What a podman run could create outside its private dirs; nothing new may appear at or below these.
SYSTEM_PATHS = ("/run/runc", "/run/crun", "/run/libpod", "/run/containers", "/var/lib/containers", "/run/netns",
                "/var/lib/cni", "/etc/cni/net.d/cni.lock")
# The one file podman 4.3 as root writes there whatever its flags: containers/image's blob-info cache (c/image 5.23
# hard-codes this path for euid 0). Removed again when this run created it; see fixtures/host_residue.py.
BLOB_INFO_CACHE = "/var/lib/containers/cache/blob-info-cache-v1.boltdb"


def _cgroup_dirs(name: str) -> list[Path]:
    """``name`` in every cgroup hierarchy, deepest directories first (the order to rmdir them)."""
    found = [p for top in Path("/sys/fs/cgroup").glob(f"*/{name}") for p in [top, *top.rglob("*")] if p.is_dir()]
    return sorted(found, key=lambda p: (-len(p.parts), str(p)))


def _processes_naming(needle: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            pids.append(int(entry))
    return pids


def _ulimit_args() -> list[str]:
    """``--ulimit`` values runc can set without CAP_SYS_RESOURCE: at most our hard limits and podman's NPROC."""
    args = []
    for name, rlimit, podman_cap in (("nofile", resource.RLIMIT_NOFILE, 1048576),
                                     ("nproc", resource.RLIMIT_NPROC, 32768)):
        hard = resource.getrlimit(rlimit)[1]
        value = podman_cap if hard == resource.RLIM_INFINITY else min(hard, podman_cap)
        args += ["--ulimit", f"{name}={value}:{value}"]
    return args


class Podman:
    """podman with every piece of its state under ``base``; :meth:`close` removes it all and checks."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.parents: list[str] = []
        for d in ("root", "run", "tmp", "net", "runc", "home", "vartmp", "rt"):
            (base / d).mkdir(parents=True, exist_ok=True)
        (base / "containers.conf").write_text('[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
        (base / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{base}/root"\nrunroot = "{base}/run"\n'
        )
        (base / "registries.conf").write_text("")
        runc = base / "rt" / "runc"
        runc.write_text(f'#!/bin/sh\nexec /usr/sbin/runc --root {base}/runc "$@"\n')
        runc.chmod(0o755)
        self.env = {
            "PATH": _MIN_PATH,
            "LC_ALL": "C",
            "HOME": str(base / "home"),
            "TMPDIR": str(base / "vartmp"),
            "CONTAINERS_CONF": str(base / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(base / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(base / "registries.conf"),
        }
        self.global_args = [
            "--root", str(base / "root"), "--runroot", str(base / "run"), "--tmpdir", str(base / "tmp"),
            "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
            "--network-config-dir", str(base / "net"), "--runtime", str(runc),
        ]

    def __call__(self, *args: str, env: dict[str, str] | None = None,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["podman", *self.global_args, *args], env={**self.env, **(env or {})},
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False)

    def run(self, hooks_dir: Path, container_env: Sequence[str], cmd: Sequence[str] = ("sh", "-c", PROBE),
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``podman --hooks-dir DIR run --rm`` of the probe image; afterwards no container may remain."""
        parent = f"nvc-podman-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.parents.append(parent)
        env_args = [arg for var in container_env for arg in ("--env", var)]
        res = self("--hooks-dir", str(hooks_dir), "run", "--rm", "--network=none", f"--cgroup-parent=/{parent}",
                   *_ulimit_args(), *env_args, IMAGE, *cmd, env=env)
        left = self("ps", "-a", "-q")
        assert left.returncode == 0 and not left.stdout.strip(), f"podman ps -a: {left.stdout}{left.stderr}"
        return res

    def close(self) -> list[str]:
        """Remove every container, wait for conmon and its exit command, remove cgroups, mounts and the dirs.

        Returns what could not be removed (empty when all went)."""
        self("rm", "--all", "--force", timeout=60)
        deadline = time.monotonic() + 15
        while _processes_naming(str(self.base)) and time.monotonic() < deadline:
            time.sleep(0.1)
        problems = [f"process {pid}" for pid in _processes_naming(str(self.base))]
        for pid in _processes_naming(str(self.base)):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for parent in self.parents:
            for cg in _cgroup_dirs(parent):
                with contextlib.suppress(OSError):
                    cg.rmdir()
            problems += [f"cgroup {cg}" for cg in _cgroup_dirs(parent)]
        problems += [f"mount {m}" for m in mounts_under(self.base)]
        safe_rmtree(self.base)
        if self.base.exists():
            problems.append(f"directory {self.base}")
        return problems


@pytest.fixture(scope="module")
def podman_version() -> str:
    try:
        apt_install(["podman"])  # pulls conmon, containernetworking-plugins, golang-github-containers-*, ...
    except Exception as exc:  # no mirror, dpkg broken: nothing here can be tested
        pytest.skip(f"podman cannot be installed here: {exc}")
    try:
        proc = subprocess.run(["podman", "--version"], capture_output=True, text=True, env={"PATH": _MIN_PATH},
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"podman cannot run here: {exc}")
    if proc.returncode != 0:
        pytest.skip(f"podman cannot run here: podman --version exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def hook_env(tmp_path_factory, host) -> tuple[Path, list[str]]:
    """Our hook as an installed nvc would provide it, and the host-side variables it needs."""
    bindir = tmp_path_factory.mktemp("bin")
    hook = bindir / "nvidia-container-runtime-hook"
    hook.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m nvc.commands.hook \"$@\"\n")
    hook.chmod(0o755)
    config = tmp_path_factory.mktemp("etc") / "config.toml"
    config.write_text(f'[nvidia-container-cli]\nroot = "{host.root}"\n')
    cache = [f"NVC_CACHE_DIR={os.environ['NVC_CACHE_DIR']}"] if "NVC_CACHE_DIR" in os.environ else []
    return hook, [f"NVIDIA_CTK_CONFIG_FILE_PATH={config}", *(f"{k}={v}" for k, v in host.env.items()), *cache]


def hooks_dir(dest: Path, hook_path: Path, extra_env: Sequence[str] = ()) -> Path:
    """A hooks.d directory holding a copy of hooks/oci-nvidia-hook.json: our ``path``, ``extra_env`` appended."""
    spec = json.loads(HOOK_JSON.read_text())
    spec["hook"]["path"] = str(hook_path)
    spec["hook"]["env"] = [*spec["hook"].get("env", []), *extra_env]
    dest.mkdir(parents=True)
    (dest / HOOK_JSON.name).write_text(json.dumps(spec, indent=2) + "\n")
    return dest


@pytest.fixture(scope="module")
def podman(tmp_path_factory, podman_version) -> Iterator[Podman]:
    """A private podman with the probe image loaded; on teardown nothing of it may remain on the host."""
    mounts_before = set(mounts_under("/"))
    residue = HostResidue.take(SYSTEM_PATHS, tolerated=[BLOB_INFO_CACHE])
    work = tmp_path_factory.mktemp("podman")
    # podman refuses a runroot longer than 50 characters ("the specified runroot is longer than 50 characters"):
    # its state lives in a short dir of its own.
    lab = Podman(Path(tempfile.mkdtemp(prefix="nvc-podman-", dir="/tmp")))
    try:
        tar = oci_image_tar(container_rootfs(work / "image"), work / "probe.tar", IMAGE)
        loaded = lab("load", "--input", str(tar))
        assert loaded.returncode == 0, loaded.stderr
        assert re.search(rf"Loaded image(\(s\))?: {re.escape(IMAGE)}$", loaded.stdout, re.M), loaded.stdout
        yield lab
    finally:
        problems = lab.close()
        safe_rmtree(work)
        problems += [f"new mount {m}" for m in set(mounts_under("/")) - mounts_before
                     if m.startswith((str(work), str(lab.base))) or any(m.startswith(p) for p in SYSTEM_PATHS)]
        problems += residue.settle()
        assert not problems, "podman left behind:\n  " + "\n  ".join(problems)


def test_podman_hooks_dir_injects_the_driver(tmp_path, podman, hook_env):
    hook, host_env = hook_env
    res = podman.run(hooks_dir(tmp_path / "hooks.d", hook, host_env),
                     ["NVIDIA_VISIBLE_DEVICES=1", "NVML_STUB_CONFIG=/etc/nvml-stub.conf",
                      "LD_PRELOAD=/nonexistent/preload.so"])
    assert res.returncode == 0, res.stderr
    assert_gpu_container(res.stdout)
    assert "nvidia0 nvidiactl" in res.stdout.splitlines()[-1]
    assert "env=/nonexistent/preload.so" in res.stdout  # the container's LD_PRELOAD stays in the container
    assert "preload.so" not in res.stderr


@pytest.mark.parametrize(
    ("env", "expect_libs", "expect_gpu"),
    [
        ([], False, False),  # not a GPU container: the hook runs (when.always) and leaves it untouched
        (["NVIDIA_VISIBLE_DEVICES=void"], False, False),
        (["NVIDIA_VISIBLE_DEVICES=none"], True, False),  # driver files, no GPU node
    ],
)
def test_podman_visible_devices_semantics(tmp_path, podman, hook_env, env, expect_libs, expect_gpu):
    hook, host_env = hook_env
    res = podman.run(hooks_dir(tmp_path / "hooks.d", hook, host_env),
                     [*env, "NVML_STUB_CONFIG=/etc/nvml-stub.conf"])
    assert res.returncode == 0, res.stderr
    assert ("libnvidia-ml.so.1 (libc6,x86-64)" in res.stdout) == expect_libs, res.stdout
    assert ("No such device or address" in res.stdout) == expect_gpu
    assert ("nvidiactl" in res.stdout.splitlines()[-1]) == expect_libs
    if not expect_libs:
        assert "smi=127" in res.stdout  # no nvidia-smi at all: nothing was injected
        assert "nvidia" not in res.stdout.splitlines()[-1]


def test_podman_hook_failure_fails_the_run_with_one_line(tmp_path, podman, hook_env):
    hook, host_env = hook_env
    res = podman.run(hooks_dir(tmp_path / "hooks.d", hook, host_env), ["NVIDIA_VISIBLE_DEVICES=7"], ["true"])
    assert res.returncode != 0
    assert "nvidia-container-runtime-hook: device error: 7: unknown device" in res.stderr
    assert "Traceback" not in res.stderr


def test_podman_passes_only_the_hook_files_env(tmp_path, podman):
    """Why the test's hooks.d copy lists the host variables: podman's own environment never reaches a hook."""
    record = tmp_path / "hook-record"
    probe = tmp_path / "record-hook"
    probe.write_text(f'#!/bin/sh\n{{ env; echo "args=$*"; cat; echo; }} > {record}\n')
    probe.chmod(0o755)
    res = podman.run(hooks_dir(tmp_path / "hooks.d", probe, ["NVC_FROM_HOOK_JSON=yes"]),
                     ["NVIDIA_VISIBLE_DEVICES=1"], ["true"], env={"NVC_FROM_PODMAN_ENV": "yes"})
    assert res.returncode == 0, res.stderr
    lines = record.read_text().splitlines()
    assert "NVC_FROM_HOOK_JSON=yes" in lines
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in lines  # the shipped file's env
    assert not any(line.startswith(("NVC_FROM_PODMAN_ENV=", "CONTAINERS_CONF=", "HOME=")) for line in lines)
    assert "args=prestart" in lines
    state = json.loads(lines[-1])  # the OCI state on stdin, as for runc
    assert state["status"] == "creating" and state["pid"] > 0
    assert state["bundle"].startswith(str(podman.base / "root"))
