"""End to end with real runtimes: runc, crun and containerd start busybox/Debian containers; our hook (or our
nvidia-container-cli, called by containerd) injects the Debian 535 driver from the fake GPU host.

Inside the container the proof is the real driver's own tools: `nvidia-smi` finds libnvidia-ml through the
container's ld.so.cache and fails the way it does on a host without a kernel driver (exit 9, "couldn't communicate
with the NVIDIA driver": the container's stub config makes nvmlInit return DRIVER_NOT_LOADED), the selected
GPU's node reads ENXIO (present, allowed by the device cgroup, no driver behind it) and an unselected one is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.rootfs import busybox_rootfs, copy_rootfs, debian_rootfs, safe_rmtree
from fixtures.runtimes import Containerd, make_bundle, oci_image_tar, run_crun, run_runc, unique_id

pytestmark = [pytest.mark.root, pytest.mark.slow]
PROBE = (
    "nvidia-smi > /tmp/smi.out 2>&1; echo smi=$?; head -n 2 /tmp/smi.out; "
    "ldconfig -p | grep 'libnvidia-ml.so.1 '; echo gpus=$(ls /proc/driver/nvidia/gpus 2>&1); "
    "cat /dev/nvidia0 2>&1 | head -n 1; cat /dev/nvidia3 2>&1 | head -n 1; echo env=$LD_PRELOAD; "
    "ls /dev | grep nvidia | tr '\\n' ' '; echo"
)


def container_rootfs(dest: Path, debian: bool = False) -> Path:
    rootfs = copy_rootfs(debian_rootfs() if debian else busybox_rootfs(), dest)
    # The container's own view of NVML: the injected stub answers "driver not loaded", like the real library on
    # a machine without the kernel module.
    (rootfs / "etc/nvml-stub.conf").write_text("driver 535.309.01\ninit_error 9\n")
    return rootfs


def gpu_bundle(tmp_path: Path, env: list[str], hooks: dict, debian: bool = False) -> Path:
    bundle = tmp_path / "bundle"
    rootfs = container_rootfs(bundle / "rootfs", debian)
    make_bundle(bundle, rootfs, ["sh", "-c", PROBE], env=["NVML_STUB_CONFIG=/etc/nvml-stub.conf", *env],
                hooks=hooks)
    return bundle


def hook_entry(bindir: Path, stage: str) -> dict:
    return {"path": str(bindir / "nvidia-container-runtime-hook"), "args": ["nvidia-container-runtime-hook", stage]}


def assert_gpu_container(out: str) -> None:
    assert "smi=9" in out, out
    assert "couldn't communicate with the NVIDIA driver" in out
    assert "libnvidia-ml.so.1 (libc6,x86-64) => " in out
    assert "No such device or address" in out  # /dev/nvidia0: selected (GPU 1 has minor 0), allowed, no driver
    assert "/dev/nvidia3': No such file or directory" in out.replace("nvidia3:", "nvidia3':")  # GPU 0 not selected
    # runc mounts procfs before prestart hooks run and this machine's kernel has no /proc/driver/nvidia, so the
    # driver's /proc tmpfs is skipped here (tests/test_configure.py checks it where ROOTFS/proc is a directory).
    gpus_line = next(line for line in out.splitlines() if line.startswith("gpus="))
    assert "No such file or directory" in gpus_line


@pytest.mark.parametrize("stage", ["prestart", "createRuntime"])
def test_runc_hook(tmp_path, tools, stage):
    bindir, env = tools
    bundle = gpu_bundle(tmp_path, ["NVIDIA_VISIBLE_DEVICES=1", "LD_PRELOAD=/nonexistent/preload.so"],
                        {stage: [hook_entry(bindir, stage)]})
    res = run_runc(bundle, unique_id(), env=env)
    assert res.returncode == 0, res.stderr
    assert_gpu_container(res.stdout)
    assert "env=/nonexistent/preload.so" in res.stdout  # the image's LD_PRELOAD is there, in the container only
    assert "preload.so" not in res.stderr  # ...and never reached a process of ours (ld.so would complain)
    safe_rmtree(bundle)


def test_runc_debian_rootfs(tmp_path, tools):
    bindir, env = tools
    bundle = gpu_bundle(tmp_path, ["NVIDIA_VISIBLE_DEVICES=GPU-9b2e5d7a-3c4f-4e1a-b6d8-2f0c1e3a5b7d"],
                        {"prestart": [hook_entry(bindir, "prestart")]}, debian=True)
    res = run_runc(bundle, unique_id(), env=env)
    assert res.returncode == 0, res.stderr
    assert_gpu_container(res.stdout)
    assert "=> /lib/x86_64-linux-gnu/libnvidia-ml.so.1" in res.stdout or \
        "=> /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1" in res.stdout
    safe_rmtree(bundle)


def test_crun_hook_uses_state_root(tmp_path, tools):
    bindir, env = tools
    bundle = gpu_bundle(tmp_path, ["NVIDIA_VISIBLE_DEVICES=1"], {"prestart": [hook_entry(bindir, "prestart")]})
    res = run_crun(bundle, unique_id(), env=env)
    assert res.returncode == 0, res.stderr
    assert_gpu_container(res.stdout)
    safe_rmtree(bundle)


@pytest.mark.parametrize(
    ("env", "expect_libs", "expect_gpu"),
    [
        ([], False, False),  # not a GPU container: the hook does nothing
        (["NVIDIA_VISIBLE_DEVICES=void"], False, False),
        (["NVIDIA_VISIBLE_DEVICES=none"], True, False),  # driver files, no GPU node
    ],
)
def test_runc_visible_devices_semantics(tmp_path, tools, env, expect_libs, expect_gpu):
    bindir, run_env = tools
    bundle = gpu_bundle(tmp_path, env, {"prestart": [hook_entry(bindir, "prestart")]})
    res = run_runc(bundle, unique_id(), env=run_env)
    assert res.returncode == 0, res.stderr
    assert ("libnvidia-ml.so.1 (libc6,x86-64)" in res.stdout) == expect_libs, res.stdout
    assert ("No such device or address" in res.stdout) == expect_gpu
    assert ("nvidiactl" in res.stdout.splitlines()[-1]) == expect_libs  # control node comes with the driver
    safe_rmtree(bundle)


def test_hook_failure_fails_the_start_with_one_line(tmp_path, tools):
    bindir, env = tools
    bundle = gpu_bundle(tmp_path, ["NVIDIA_VISIBLE_DEVICES=7"], {"prestart": [hook_entry(bindir, "prestart")]})
    res = run_runc(bundle, unique_id(), env=env)
    assert res.returncode != 0
    assert "nvidia-container-runtime-hook: device error: 7: unknown device" in res.stderr
    assert "Traceback" not in res.stderr
    safe_rmtree(bundle)


def test_containerd_ctr_gpus_calls_our_cli(tmp_path, tools):
    _bindir, env = tools
    image_root = container_rootfs(tmp_path / "image")
    with Containerd(base=tmp_path / "containerd") as ctrd:
        image = "docker.io/library/nvc-gpu-probe:latest"
        ctrd.ctr("images", "import", str(oci_image_tar(image_root, tmp_path / "probe.tar", image)))
        res = ctrd.run(image, unique_id(), ["sh", "-c", PROBE],
                       extra_args=["--gpus", "1", "--env", "NVML_STUB_CONFIG=/etc/nvml-stub.conf"],
                       env=env)
    assert res.returncode == 0, res.stderr
    assert_gpu_container(res.stdout)
    safe_rmtree(tmp_path / "image")

