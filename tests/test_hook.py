"""The OCI hook: argv, state and spec handling, and an in-process injection into a held mount namespace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.driver_roots import DRIVER_VERSION
from fixtures.gpu_host import make_gpu_host
from nvc.commands.hook import HookUsageError, container_rootfs, parse_args, safe_environment
from nvc.errors import NvcError

V = DRIVER_VERSION


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["prestart"], (None, False, "prestart")),
        (["-config=/x.toml", "-debug", "createRuntime"], ("/x.toml", True, "createRuntime")),
        (["--config", "/x.toml", "prestart"], ("/x.toml", False, "prestart")),
        (["-debug=false", "poststop"], (None, False, "poststop")),
        (["-config", "/c", "--", "prestart"], ("/c", False, "prestart")),
        ([], (None, False, None)),
    ],
)
def test_go_style_flags(argv, expected):
    assert parse_args(argv) == expected


@pytest.mark.parametrize("argv", [["-bogus", "prestart"], ["-config"], ["-h"]])
def test_bad_flags(argv):
    with pytest.raises(HookUsageError):
        parse_args(argv)


def test_rootfs_from_state_or_spec(tmp_path):
    spec = {"root": {"path": "rootfs"}}
    assert container_rootfs({}, spec, "/b") == "/b/rootfs"
    assert container_rootfs({"root": "/abs/r"}, spec, "/b") == "/abs/r"  # crun's state wins
    assert container_rootfs({}, {"root": {"path": "/abs/x/../y"}}, "/b") == "/abs/y"
    with pytest.raises(NvcError):
        container_rootfs({}, {}, "/b")


def test_unsafe_environment_never_reaches_an_exec():
    env = {"PATH": "/usr/bin", "LD_PRELOAD": "/x.so", "LD_LIBRARY_PATH": "/evil", "PYTHONPATH": "/p", "HOME": "/r"}
    assert safe_environment(env) == {"PATH": "/usr/bin", "HOME": "/r"}


REPO = Path(__file__).resolve().parent.parent


def run_hook(args, state, env=None, cwd=None):
    env = dict(env or os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "nvc.commands.hook", *args], input=json.dumps(state),
        capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=120, check=False)


def write_bundle(bundle: Path, env: list[str], rootfs: str = "rootfs", caps: list[str] | None = None) -> Path:
    bundle.mkdir(parents=True, exist_ok=True)
    spec = {"ociVersion": "1.0.2", "process": {"env": env, "capabilities": {"bounding": caps or []}},
            "root": {"path": rootfs}, "mounts": []}
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


def test_poststart_and_not_a_gpu_container_do_nothing(tmp_path):
    assert run_hook(["poststop"], {}).returncode == 0
    bundle = write_bundle(tmp_path / "b", ["PATH=/bin", "LD_PRELOAD=/x.so"])
    res = run_hook(["prestart"], {"pid": os.getpid(), "bundle": str(bundle)},
                   env=dict(os.environ, NVIDIA_CTK_CONFIG_FILE_PATH=str(tmp_path / "missing.toml")))
    assert res.returncode == 1 and "config" in res.stderr  # an explicit config path must exist
    config = tmp_path / "config.toml"
    config.write_text("")
    res = run_hook([f"-config={config}", "prestart"], {"pid": os.getpid(), "bundle": str(bundle)})
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
    bundle = write_bundle(tmp_path / "void", ["NVIDIA_VISIBLE_DEVICES=void"])
    res = run_hook([f"-config={config}", "prestart"], {"pid": os.getpid(), "bundlePath": str(bundle)})
    assert res.returncode == 0


def test_bad_state_and_spec_are_one_line_errors(tmp_path):
    res = subprocess.run([sys.executable, "-m", "nvc.commands.hook", "prestart"], input="not json", capture_output=True,
                         text=True, check=False)
    assert res.returncode == 1 and res.stderr.startswith("nvidia-container-runtime-hook: input error: ")
    assert res.stderr.count("\n") == 1
    res = run_hook(["prestart"], {"pid": 1, "bundle": str(tmp_path / "nope")})
    assert res.returncode == 1 and "failed to read OCI spec" in res.stderr


def test_external_cli_argv_matches_nvidia():
    from nvc.components import Capability
    from nvc.request.container_env import GpuRequest
    from nvc.request.container_request import cli_argv, cli_invocation
    from nvc.request.runtime_config import RuntimeConfig

    gpu = GpuRequest(devices=("0", "1"), capabilities=frozenset({Capability.UTILITY, Capability.COMPUTE}),
                     requirements=("cuda>=12.0",))
    config = RuntimeConfig()
    argv = cli_argv("/usr/bin/nvidia-container-cli", config, cli_invocation(gpu, config, "/r", 42))
    assert argv == ["/usr/bin/nvidia-container-cli", "--load-kmods", "configure", "--cuda-compat-mode=ldconfig",
                    "--ldconfig=@/sbin/ldconfig", "--device=0,1", "--compute", "--utility",
                    "--require=cuda>=12.0", "--pid=42", "/r"]


@pytest.mark.root
def test_hook_injects_in_process(tmp_path):
    host = make_gpu_host(tmp_path / "host")
    bundle = write_bundle(tmp_path / "bundle", ["NVIDIA_VISIBLE_DEVICES=1", "NVIDIA_DRIVER_CAPABILITIES=utility",
                                                "LD_PRELOAD=/nonexistent.so", "PATH=/evil"])
    rootfs = bundle / "rootfs"
    for d in ("usr/lib64", "usr/bin", "dev", "proc", "etc"):
        (rootfs / d).mkdir(parents=True)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[nvidia-container-cli]\nroot = "{host.root}"\nno-cgroups = true\nldconfig = "@/sbin/ldconfig"\n'
    )
    holder = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "600"])
    try:
        while os.readlink(f"/proc/{holder.pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
            subprocess.run(["sleep", "0.01"], check=True)
        res = run_hook([f"-config={config}", "prestart"], {"pid": holder.pid, "bundle": str(bundle)},
                       env=dict(os.environ, **host.env), cwd=bundle)
        assert res.returncode == 0, res.stderr
        view = Path(f"/proc/{holder.pid}/root{rootfs}")
        assert sorted(os.listdir(view / "dev")) == ["nvidia0", "nvidiactl"]  # utility only: no uvm
        assert f"libnvidia-ml.so.{V}" in os.listdir(view / "usr/lib64")
        assert "libcuda.so" not in " ".join(os.listdir(view / "usr/lib64"))
        listing = subprocess.run(["/sbin/ldconfig", "-p", "-C", str(view / "etc/ld.so.cache")], capture_output=True,
                                 text=True, check=True).stdout
        assert "libnvidia-ml.so.1 (libc6,x86-64) => /usr/lib64/libnvidia-ml.so.1" in listing
    finally:
        holder.kill()
        holder.wait()
    shutil.rmtree(tmp_path / "host", ignore_errors=True)
