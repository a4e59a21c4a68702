"""``nvc doctor``'s driver chain (nvc/commands/doctor_driver.py) on real driver roots: the Debian 535 files with the
stub NVML and real device nodes (a working host), the same files with the real 535 NVML and no kernel module (Driver Not
Loaded), an empty root (nothing installed) — and ``--root`` given globally or to ``doctor``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from fixtures.gpu_host import make_gpu_host
from fixtures.nvml_stub import CONFIG_ENV, write_config
from nvc.commands.doctor import DoctorPaths, Finding, diagnose, format_findings
from nvc.rootpath import DriverRoot

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the NVML stub"),
]
REPO = Path(__file__).resolve().parent.parent
CHAIN = ("driver.kernel-module", "driver.libraries", "driver.nvml", "driver.nvidia-smi", "driver.device-nodes")


def driver_findings(root: Path) -> dict[str, Finding]:
    findings = [f for f in diagnose(DoctorPaths(root=str(root))) if f.check.startswith("driver.")]
    assert len({f.check for f in findings}) == len(findings), format_findings(findings)
    return {f.check: f for f in findings}


def severities(found: dict[str, Finding]) -> dict[str, str]:
    return {check: f.severity for check, f in found.items()}


@pytest.fixture(scope="module")
def gpu_host(tmp_path_factory):
    return make_gpu_host(tmp_path_factory.mktemp("doctorhost"))


@pytest.fixture
def stub_env(gpu_host, monkeypatch, tmp_path):
    monkeypatch.setenv(CONFIG_ENV, gpu_host.env[CONFIG_ENV])
    monkeypatch.setenv("NVC_CACHE_DIR", str(tmp_path / "cache"))
    return gpu_host


@pytest.fixture
def no_host_nvidia_nodes():
    """The real NVML (run by the confined helper as nobody, chrooted) must not create nodes in the host's /dev."""
    before = {p for p in os.listdir("/dev") if p.startswith("nvidia")}
    yield
    created = {p for p in os.listdir("/dev") if p.startswith("nvidia")} - before
    for name in created:
        os.unlink(f"/dev/{name}")
    assert not created, f"NVML created host device nodes: {created}"


def test_working_driver_is_all_ok(stub_env):
    found = driver_findings(stub_env.root)
    assert severities(found) == dict.fromkeys(CHAIN, "ok"), format_findings(list(found.values()))
    assert found["driver.kernel-module"].what == "NVIDIA kernel module 535.309.01 is loaded"
    assert "libcuda.so.1 → /usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.535.309.01" in \
        found["driver.libraries"].what
    assert "driver 535.309.01, CUDA 12.2" in found["driver.nvml"].what
    assert "NVIDIA A100-SXM4-40GB (/dev/nvidia3)" in found["driver.nvml"].what
    assert found["driver.nvidia-smi"].what.startswith("nvidia-smi: /usr/lib/nvidia/current/nvidia-smi")
    assert found["driver.device-nodes"].what == \
        "device nodes: /dev/nvidiactl, /dev/nvidia-uvm, /dev/nvidia3, /dev/nvidia0"


def test_real_nvml_without_kernel_module(fixture_set, no_host_nvidia_nodes):
    found = driver_findings(fixture_set.apt_root)
    assert severities(found) == {"driver.kernel-module": "error", "driver.libraries": "ok", "driver.nvml": "error",
                                 "driver.nvidia-smi": "ok", "driver.device-nodes": "warning"}
    module = found["driver.kernel-module"]
    assert module.what == f"no NVIDIA kernel module is loaded ({fixture_set.apt_root}/proc/driver/nvidia/version " \
                          "is missing)"
    assert "modprobe nvidia" in module.fix
    nvml = found["driver.nvml"]
    assert nvml.what.endswith("initialization error: nvml error: driver not loaded")
    assert "modprobe nvidia" in nvml.fix
    assert "nvidia-modprobe" in found["driver.device-nodes"].fix
    for finding in found.values():
        if finding.severity != "ok":
            assert finding.what and finding.why and finding.fix, finding


def test_empty_root_reports_each_missing_link(tmp_path):
    findings = diagnose(DoctorPaths(root=str(tmp_path)))
    found = {f.check: f for f in findings if f.check.startswith("driver.")}
    assert severities(found) == {"driver.kernel-module": "error", "driver.libraries": "error", "driver.nvml": "error",
                                 "driver.nvidia-smi": "warning", "driver.device-nodes": "warning"}
    assert f"run `ldconfig -r {tmp_path}`" == found["driver.libraries"].fix
    assert "no libnvidia-ml.so.1" in found["driver.nvml"].what
    # Whatever else is set up: the runtime configuration is still reported beside the driver.
    assert any(f.check == "setup.none" for f in findings)


def test_root_with_files_but_no_nvml_in_its_cache(tmp_path):
    (tmp_path / "etc").mkdir()
    subprocess.run(["ldconfig", "-r", str(tmp_path)], check=True)  # an empty but valid cache
    found = driver_findings(tmp_path)
    assert found["driver.libraries"].severity == "error"
    assert "libnvidia-ml1 libcuda1 nvidia-smi" in found["driver.libraries"].fix


def test_missing_node_and_version_mismatch(tmp_path, monkeypatch):
    host = make_gpu_host(tmp_path / "host")
    monkeypatch.setenv(CONFIG_ENV, host.env[CONFIG_ENV])
    (host.root / "dev/nvidia0").unlink()
    version = host.root / "proc/driver/nvidia/version"
    version.write_text(version.read_text().replace("535.309.01", "550.54.15"))
    found = driver_findings(host.root)
    assert found["driver.device-nodes"].severity == "error"
    assert found["driver.device-nodes"].what == "missing NVIDIA device nodes: /dev/nvidia0"
    mismatch = found["driver.version-mismatch"]
    assert mismatch.severity == "error"
    assert mismatch.what == "driver libraries 535.309.01 do not match the kernel module 550.54.15"


def test_fresh_nvml_failure_is_seen_despite_a_warm_cache(stub_env, tmp_path, monkeypatch):
    """Container starts keep using the cached NVML answer; doctor asks the driver now."""
    from nvc.host.inventory import query_nvml

    query_nvml(DriverRoot(str(stub_env.root)))  # a container start: fills the cache
    assert list((tmp_path / "cache").glob("*.json"))
    monkeypatch.setenv(CONFIG_ENV, str(write_config(tmp_path / "failing.conf", gpus=stub_env.gpus, init_error=9)))
    assert query_nvml(DriverRoot(str(stub_env.root))).gpus  # still served from the cache
    nvml = driver_findings(stub_env.root)["driver.nvml"]
    assert nvml.severity == "error" and nvml.what.endswith("nvml error: driver not loaded")


# ------------------------------------------------------------------------------------------------ command line


def run_nvc(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NVML_STUB", "NVC_DRIVER_ROOT"))}
    env.update(env_extra or {})
    code = "import sys; sys.argv[0] = 'nvc'; from nvc.commands.cli_main import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, env=env,
                          check=False, timeout=120)


def test_global_root_and_doctor_root_diagnose_the_same_host(gpu_host):
    root = str(gpu_host.root)
    outputs = []
    for args in (["--root", root, "doctor", "--json"], ["doctor", "--root", root, "--json"],
                 ["--root", root, "doctor", "--root", root + "/", "--json"]):
        res = run_nvc(*args, env_extra=gpu_host.env)
        assert res.returncode == 0, res.stdout + res.stderr  # a working driver; only a warning: no runtime set up
        outputs.append(json.loads(res.stdout))
    assert outputs[0] == outputs[1] == outputs[2]
    checks = Counter((f["severity"], f["check"]) for f in outputs[0]["findings"])
    assert checks == Counter([("ok", c) for c in CHAIN] + [("warning", "setup.none")])
    env_root = run_nvc("doctor", "--json", env_extra={**gpu_host.env, "NVC_DRIVER_ROOT": root})
    assert json.loads(env_root.stdout) == outputs[0]  # $NVC_DRIVER_ROOT is the global --root


def test_two_different_roots_are_refused(gpu_host, tmp_path):
    res = run_nvc("--root", str(gpu_host.root), "doctor", "--root", str(tmp_path), env_extra=gpu_host.env)
    assert (res.returncode, res.stdout) == (1, "")
    assert res.stderr == (f"nvc: input error: doctor --root {tmp_path} and the global --root {gpu_host.root} "
                          "name different hosts: give one\n")
    res = run_nvc("doctor", "--root", "relative", env_extra=gpu_host.env)
    assert (res.returncode, res.stderr) == (1, "nvc: input error: invalid driver root: relative\n")


def test_empty_root_from_the_command_line(tmp_path):
    res = run_nvc("--root", str(tmp_path), "doctor")
    assert res.returncode == 1
    assert res.stdout.startswith(f"ERROR   no NVIDIA kernel module is loaded ({tmp_path}/proc/driver/nvidia/version")
    assert "Traceback" not in res.stderr
