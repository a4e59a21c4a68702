"""`nvc list` / `nvc info` end to end on the real Debian driver roots, with the stub NVML and with the real one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fixtures.driver_roots import DRIVER_VERSION
from fixtures.gpu_host import DEFAULT_GPUS, DEFAULT_MIGS, make_gpu_host

pytestmark = pytest.mark.root
V = DRIVER_VERSION
LIB = "/usr/lib/x86_64-linux-gnu"
CUR = f"{LIB}/nvidia/current"

GPUS = DEFAULT_GPUS
MIGS = DEFAULT_MIGS

# What the apt-installed Debian layout gives, in NVIDIA's order (utility, compute, ngx, video, graphics).
APT_BINARIES = [
    "/usr/lib/nvidia/current/nvidia-smi",
    "/usr/lib/nvidia/current/nvidia-debugdump",
    "/usr/bin/nvidia-persistenced",
    "/usr/bin/nvidia-cuda-mps-control",
    "/usr/sbin/nvidia-cuda-mps-server",
]
APT_LIBRARIES = [
    f"{CUR}/libnvidia-ml.so.{V}", f"{CUR}/libnvidia-cfg.so.{V}",
    f"{CUR}/libcuda.so.{V}", f"{CUR}/libcudadebugger.so.{V}", f"{CUR}/libnvidia-opencl.so.{V}",
    f"{CUR}/libnvidia-ptxjitcompiler.so.{V}", f"{CUR}/libnvidia-allocator.so.{V}",
    f"{LIB}/libnvidia-pkcs11-openssl3.so.{V}", f"{CUR}/libnvidia-nvvm.so.{V}",
    f"{CUR}/libnvidia-ngx.so.{V}",
    f"{CUR}/libnvidia-encode.so.{V}", f"{CUR}/libnvidia-opticalflow.so.{V}", f"{CUR}/libnvcuvid.so.{V}",
    f"{LIB}/libnvidia-eglcore.so.{V}", f"{LIB}/libnvidia-glcore.so.{V}", f"{LIB}/libnvidia-tls.so.{V}",
    f"{LIB}/libnvidia-glsi.so.{V}", f"{CUR}/libnvidia-fbc.so.{V}", f"{LIB}/libnvidia-rtcore.so.{V}",
    f"{CUR}/libnvoptix.so.{V}", f"{CUR}/libGLX_nvidia.so.{V}", f"{CUR}/libEGL_nvidia.so.{V}",
    f"{CUR}/libGLESv2_nvidia.so.{V}", f"{CUR}/libGLESv1_CM_nvidia.so.{V}", f"{LIB}/libnvidia-glvkspirv.so.{V}",
]
CONTROL = ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"]
FIRMWARE = [f"/lib/firmware/nvidia/{V}/gsp_ga10x.bin", f"/lib/firmware/nvidia/{V}/gsp_tu10x.bin"]


def run_nvc(*args: str, env_extra: dict[str, str] | None = None, prog: str = "nvc") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVML_STUB")}
    env.update(env_extra or {})
    code = f"import sys; sys.argv[0] = {prog!r}; from nvc.commands.cli_main import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          check=False, timeout=60)


@pytest.fixture(scope="module")
def stub_root(tmp_path_factory):
    """The apt-layout root with the stub NVML, real /dev nodes (mknod), /proc files and MIG minors."""
    host = make_gpu_host(tmp_path_factory.mktemp("gpuhost"))
    return host.root, host.env


def test_list_everything_in_nvidia_order(stub_root):
    root, env = stub_root
    res = run_nvc("--root", str(root), "list", env_extra=env)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    # devices=all includes the MIG devices of a MIG-enabled GPU, hence their capability files and nodes.
    assert res.stdout.splitlines() == [
        *CONTROL, "/dev/nvidia3", "/dev/nvidia0",
        "/proc/driver/nvidia/capabilities/gpu3/mig/gi1/access", "/dev/nvidia-caps/nvidia-cap10",
        "/proc/driver/nvidia/capabilities/gpu3/mig/gi1/ci0/access", "/dev/nvidia-caps/nvidia-cap11",
        *APT_BINARIES, *APT_LIBRARIES, "/run/nvidia-persistenced/socket", *FIRMWARE,
    ]


def test_list_selected_device_and_parts(stub_root):
    root, env = stub_root
    res = run_nvc("--root", str(root), "list", "-d", "GPU-9B2E5D7A-3C4F-4E1A-B6D8-2F0C1E3A5B7D", "-b", env_extra=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [*CONTROL, "/dev/nvidia0",
                                       *APT_BINARIES]
    res = run_nvc("--root", str(root), "list", "-i", "-f", "--no-gsp-firmware", env_extra=env)
    assert res.stdout.splitlines() == ["/run/nvidia-persistenced/socket"]
    res = run_nvc("--root", str(root), "list", "-i", "--no-persistenced", env_extra=env)
    assert res.stdout == ""


def test_list_mig_device_brings_parent_and_caps(stub_root):
    root, env = stub_root
    res = run_nvc("--root", str(root), "list", "-d", "0:0", "--mig-config", "0", env_extra=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        *CONTROL, "/dev/nvidia3",
        "/proc/driver/nvidia/capabilities/mig/config", "/dev/nvidia-caps/nvidia-cap1",
        "/proc/driver/nvidia/capabilities/gpu3/mig/gi1/access", "/dev/nvidia-caps/nvidia-cap10",
        "/proc/driver/nvidia/capabilities/gpu3/mig/gi1/ci0/access", "/dev/nvidia-caps/nvidia-cap11",
    ]


def test_list_unknown_device_is_one_line_error(stub_root):
    root, env = stub_root
    res = run_nvc("--root", str(root), "list", "-d", "7", env_extra=env, prog="nvidia-container-cli")
    assert res.returncode == 1
    assert res.stderr == "nvidia-container-cli: device error: 7: unknown device\n"


def test_list_json_items(stub_root, tmp_path):
    root, env = stub_root
    res = run_nvc("--root", str(root), "list", "--json", env_extra=env)
    items = json.loads(res.stdout)
    text = run_nvc("--root", str(root), "list", env_extra=env).stdout.splitlines()
    assert [i["path"] for i in items] == text
    by_path = {i["path"]: i for i in items}
    cuda = by_path[f"{CUR}/libcuda.so.{V}"]
    assert cuda["kind"] == "library" and cuda["capability"] == "compute"
    assert cuda["host_path"] == f"{root}{CUR}/libcuda.so.{V}"
    assert cuda["container_path"] == f"/usr/lib64/libcuda.so.{V}"
    assert by_path["/usr/lib/nvidia/current/nvidia-smi"]["container_path"] == "/usr/bin/nvidia-smi"
    assert by_path["/usr/lib/nvidia/current/nvidia-smi"]["capability"] == "utility"
    assert by_path["/dev/nvidia3"]["minor"] == 3 and by_path["/dev/nvidia-uvm"]["capability"] == "compute"
    assert by_path[FIRMWARE[0]]["capability"] is None
    # With a Debian rootfs the libraries go to the multiarch directory.
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/debian_version").write_text("12.0\n")
    items = json.loads(run_nvc("--root", str(root), "list", "-l", "--json", "--rootfs", str(tmp_path),
                               env_extra=env).stdout)
    assert items[0]["container_path"] == f"{LIB}/libnvidia-ml.so.{V}"


def test_info_text_csv_json(stub_root):
    root, env = stub_root
    res = run_nvc("--root", str(root), "info", env_extra=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout == (
        f"NVRM version:   {V}\nCUDA version:   12.2\n\n"
        "Device Index:   0\nDevice Minor:   3\nModel:          NVIDIA A100-SXM4-40GB\nBrand:          Tesla\n"
        "GPU UUID:       GPU-4a1d6c2e-9f3b-4c8e-a1d2-7b5e3f9c0d11\nBus Location:   00000000:3b:00.0\n"
        "Architecture:   8.0\n\n"
        "Device Index:   1\nDevice Minor:   0\nModel:          NVIDIA GeForce RTX 4090\nBrand:          GeForceRTX\n"
        "GPU UUID:       GPU-9b2e5d7a-3c4f-4e1a-b6d8-2f0c1e3a5b7d\nBus Location:   00000001:af:00.0\n"
        "Architecture:   8.9\n"
    )
    csv = run_nvc("--root", str(root), "info", "--csv", env_extra=env).stdout.splitlines()
    assert csv[3] == "Device Index,Device Minor,Model,Brand,GPU UUID,Bus Location,Architecture"
    assert csv[4] == "0,3,NVIDIA A100-SXM4-40GB,Tesla,GPU-4a1d6c2e-9f3b-4c8e-a1d2-7b5e3f9c0d11,00000000:3b:00.0,8.0"
    data = json.loads(run_nvc("--root", str(root), "info", "--json", env_extra=env).stdout)
    assert data["devices"][0]["mig_devices"][0]["uuid"] == MIGS[0]["uuid"]


@pytest.fixture
def no_host_nvidia_nodes():
    before = {p for p in os.listdir("/dev") if p.startswith("nvidia")}
    yield
    created = {p for p in os.listdir("/dev") if p.startswith("nvidia")} - before
    for name in created:
        os.unlink(f"/dev/{name}")
    assert not created, f"NVML created host device nodes: {created}"


def test_real_nvml_without_kernel_driver(fixture_set, no_host_nvidia_nodes):
    root = str(fixture_set.dpkg_root)
    res = run_nvc("--root", root, "info")
    expected = "nvc: initialization error: nvml error: driver not loaded\n"
    assert (res.returncode, res.stdout, res.stderr) == (1, "", expected)
    res = run_nvc("--root", root, "list")
    assert res.returncode == 0
    assert res.stderr == (f"nvc: warning: initialization error: nvml error: driver not loaded; "
                          f"listing driver {V} files without device nodes\n")
    lines = res.stdout.splitlines()
    assert not any(line.startswith("/dev/") for line in lines)
    assert f"{CUR}/libcuda.so.{V}" in lines and lines[-2:] == FIRMWARE
    # The dpkg -x layout has nvidia-smi outside PATH: only MPS and persistenced are found there.
    assert "/usr/lib/nvidia/current/nvidia-smi" not in lines


def test_multiarch_root_lists_32bit_libraries(fixture_set):
    res = run_nvc("--root", str(fixture_set.multiarch_root), "list", "-l", "--compat32")
    libs32 = [line for line in res.stdout.splitlines() if "/i386-linux-gnu/" in line]
    assert f"/usr/lib/i386-linux-gnu/nvidia/current/libcuda.so.{V}" in libs32
    assert all(line.endswith(V) for line in libs32)
    without = run_nvc("--root", str(fixture_set.multiarch_root), "list", "-l").stdout
    assert "/i386-linux-gnu/" not in without


def test_bad_inputs_are_one_line_errors(tmp_path):
    res = run_nvc("--root", str(tmp_path), "list")
    assert res.returncode == 1
    assert res.stderr.startswith("nvc: detection error: ") and res.stderr.count("\n") == 1
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/ld.so.cache").write_bytes(b"glibc-ld.so.cache1.1" + b"\xff" * 40)
    res = run_nvc("--root", str(tmp_path), "info")
    assert res.returncode == 1 and res.stderr.startswith("nvc: detection error: ") and res.stderr.count("\n") == 1
    res = run_nvc("--root", "relative/path", "list")
    assert (res.returncode, res.stderr) == (1, "nvc: input error: invalid driver root: relative/path\n")
    res = run_nvc("list", "--bogus")
    assert res.returncode == 1 and "Traceback" not in res.stderr


def test_ldcache_command_matches_ldconfig(fixture_set):
    for cache in fixture_set.caches.values():
        ours = subprocess.run([sys.executable, "-m", "nvc", "ldcache", "-C", str(cache)], capture_output=True,
                              check=True).stdout
        theirs = subprocess.run(["/sbin/ldconfig", "-p", "-C", str(cache)], capture_output=True, check=True,
                                env={"LC_ALL": "C"}).stdout
        assert ours == theirs
    ours = subprocess.run([sys.executable, "-m", "nvc", "--root", str(fixture_set.apt_root), "ldcache"],
                          capture_output=True, check=True).stdout
    assert ours.startswith(f"29 libs found in cache `{fixture_set.apt_root}/etc/ld.so.cache'\n".encode())


def test_version_prints_cli_version_first():
    res = run_nvc("--version", prog="nvidia-container-cli")
    assert res.returncode == 0
    assert res.stdout.splitlines()[0].startswith("cli-version: 1.")
