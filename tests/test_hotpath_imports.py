"""The two container-start paths import nothing they do not use (issue 6).

Every container start on a GPU host runs one of them: our hook (docker --gpus, podman, CRI-O) or
``nvidia-container-cli configure`` (runsc --nvproxy, containerd ``ctr --gpus``). Each stdlib module below costs
2-10 ms of start-up under ``python -I -S`` on a small machine (json 7.5, typing 9.6, shutil 8, re 5.5, enum 4,
threading 3.6, signal 4), so a warm run — NVML answer, inventory and config.toml parse cached — must not load
any of them, nor click, pyelftools, pynvml or tomllib.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

FORBIDDEN = (
    "json", "re", "enum", "typing", "collections", "functools", "contextlib", "shutil", "glob", "fnmatch",
    "threading", "signal", "subprocess", "dataclasses", "inspect", "hashlib", "pathlib", "logging", "tomllib",
    "click", "elftools", "pynvml", "ctypes", "argparse", "tempfile", "random", "weakref", "copy", "string",
    # pure-Python wrappers of C modules imported directly (_struct, _bisect), and the ascii codec's module
    # (UTF-8's is loaded at start-up): each would be one more module to find and run on every start
    "struct", "bisect", "encodings.ascii",
)  # fmt: skip

REPORT = (
    "import atexit, sys\n"
    "def _report():\n"
    f"    bad = sorted(m for m in sys.modules if m in {FORBIDDEN!r} or m.split('.')[0] in {FORBIDDEN!r})\n"
    "    sys.stderr.write('FORBIDDEN-IMPORTS:' + ','.join(bad) + '\\n')\n"
    "atexit.register(_report)\n"
)


def _launcher_path() -> list[str]:
    from fixtures.tools import _site_dirs

    return [str(REPO), *_site_dirs()]


def _bundle(tmp_path: Path) -> Path:
    """A minimal image with an ldconfig (so the in-process cache writer runs) and no ld.so.cache yet."""
    bundle = tmp_path / "bundle"
    rootfs = bundle / "rootfs"
    for d in ("usr/lib64", "usr/bin", "sbin", "dev", "proc", "etc"):
        (rootfs / d).mkdir(parents=True)
    (rootfs / "sbin/ldconfig").write_bytes(b"")
    spec = {"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "mounts": [],
            "process": {"env": ["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
                                "NVIDIA_REQUIRE_CUDA=cuda>=9.0 brand=tesla,driver>=470,driver<471"]}}  # fmt: skip
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


def _run_in_held_namespace(argv_for_pid, stdin_for_pid, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    holder = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "600"])
    try:
        while os.readlink(f"/proc/{holder.pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
            time.sleep(0.01)
        return subprocess.run(argv_for_pid(holder.pid), capture_output=True, text=True, env=env, cwd=cwd,
                              input=stdin_for_pid(holder.pid), timeout=120, check=False)  # fmt: skip
    finally:
        holder.kill()
        holder.wait()


def _forbidden(stderr: str) -> list[str]:
    line = next(line for line in stderr.splitlines() if line.startswith("FORBIDDEN-IMPORTS:"))
    return [m for m in line.split(":", 1)[1].split(",") if m]


@pytest.mark.root
def test_warm_hook_run_imports_nothing_heavy(tmp_path, host, tools):
    _, env = tools
    bundle = _bundle(tmp_path)
    code = (f"import sys; sys.path[:0] = {_launcher_path()!r}; sys.argv[0] = 'nvidia-container-runtime-hook'\n"
            f"{REPORT}from nvc.commands.hook import main; sys.exit(main(['prestart']))")  # fmt: skip
    for attempt in range(2):  # the first run fills the NVML and inventory caches; the second is a usual start
        res = _run_in_held_namespace(
            lambda _pid: [sys.executable, "-I", "-S", "-c", code],
            lambda pid: json.dumps({"pid": pid, "bundle": str(bundle)}), env, bundle,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        if attempt:
            assert _forbidden(res.stderr) == [], res.stderr
    assert (bundle / "rootfs/etc/ld.so.cache").exists()  # the cache writer did run


@pytest.mark.root
def test_warm_cli_configure_imports_nothing_heavy(tmp_path, host, tools):
    _, env = tools
    bundle = _bundle(tmp_path)
    code = (f"import sys; sys.path[:0] = {_launcher_path()!r}; sys.argv[0] = 'nvidia-container-cli'\n"
            f"{REPORT}from nvc.commands.cli_main import main; sys.exit(main())")  # fmt: skip
    for attempt in range(2):
        res = _run_in_held_namespace(
            lambda pid: [sys.executable, "-I", "-S", "-c", code, "--load-kmods", "configure", "--device=0",
                         "--compute", "--utility", f"--pid={pid}", str(bundle / "rootfs")],
            lambda _pid: "", env, bundle,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        if attempt:
            assert _forbidden(res.stderr) == [], res.stderr
    assert (bundle / "rootfs/etc/ld.so.cache").exists()


@pytest.mark.root
def test_not_a_gpu_container_imports_almost_nothing(tmp_path, tools):
    """The common case on a shared host: a container that asks for no GPU costs an interpreter and a JSON read."""
    _, env = tools
    bundle = _bundle(tmp_path)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["env"] = ["PATH=/bin"]
    (bundle / "config.json").write_text(json.dumps(spec))
    code = (f"import sys; sys.path[:0] = {_launcher_path()!r}; sys.argv[0] = 'nvidia-container-runtime-hook'\n"
            "import atexit\n"
            "atexit.register(lambda: sys.stderr.write('NVC-MODULES:' + ','.join(sorted(m for m in sys.modules "
            "if m.startswith('nvc'))) + '\\n'))\n"
            f"{REPORT}from nvc.commands.hook import main; sys.exit(main(['prestart']))")  # fmt: skip
    res = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, env=env,
                         input=json.dumps({"pid": os.getpid(), "bundle": str(bundle)}), timeout=60,
                         check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert _forbidden(res.stderr) == [], res.stderr
    nvc_line = next(line for line in res.stderr.splitlines() if line.startswith("NVC-MODULES:"))
    loaded = set(nvc_line.split(":", 1)[1].split(","))
    assert not loaded & {"nvc.commands.configure", "nvc.apply.executor", "nvc.plan.planner", "nvc.host.inventory",
        "nvc.apply.cgroups",
                         "nvc.apply.container_fs", "nvc.sys.mount", "nvc.host.ldcache"}, loaded  # fmt: skip


@pytest.mark.root
def test_cdi_hook_imports_nothing_heavy(tmp_path, host, tools):
    """Our CDI createContainer hook (issue 10) runs on every start of a CDI GPU container: links, compat check and
    the merged ld.so.cache, and none of the heavy modules — nor the planner, inventory or NVML code, nor the FFI
    (it resolves the root in user space: no openat2) or the debug log."""
    from nvc.emit.cdi.generate import hook_args
    from nvc.emit.listing import ListRequest, _plan_for_listing

    bundle = _bundle(tmp_path)
    from nvc.host.inventory import build_inventory
    from nvc.rootpath import DriverRoot

    inventory = build_inventory(DriverRoot(str(host.root)), environ={**os.environ, **host.env})
    plan, _ = _plan_for_listing(inventory, ListRequest(libraries=True, binaries=True))
    args = hook_args(plan, inventory.driver_version)[1:]
    code = (f"import sys; sys.path[:0] = {_launcher_path()!r}; sys.argv[0] = 'nvidia-cdi-hook'\n"
            "import atexit\n"
            "atexit.register(lambda: sys.stderr.write('NVC-MODULES:' + ','.join(sorted(m for m in sys.modules "
            "if m.startswith(('nvc', '_cffi')))) + '\\n'))\n"
            f"{REPORT}from nvc.commands.cdi_hook import main; sys.exit(main({args!r}))")  # fmt: skip
    res = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60,
                         input=json.dumps({"pid": os.getpid(), "bundle": str(bundle)}), check=False,
                         env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert _forbidden(res.stderr) == [], res.stderr
    nvc_line = next(line for line in res.stderr.splitlines() if line.startswith("NVC-MODULES:"))
    loaded = set(nvc_line.split(":", 1)[1].split(","))
    assert not loaded & {"nvc.plan.planner", "nvc.host.inventory", "nvc.host.nvml", "nvc.host.discovery",
        "nvc.emit.listing", "nvc.commands.cli",
                         "nvc.emit.cdi.generate", "nvc.emit.cdi.spec", "nvc.host.elf", "nvc.debuglog",
                         "nvc.sys._nvc_cffi",
                         "_cffi_backend"}, loaded  # fmt: skip
    assert os.readlink(bundle / "rootfs/usr/lib64/libcuda.so") == "libcuda.so.1"
    assert (bundle / "rootfs/etc/ld.so.cache").exists()  # the cache writer did run
