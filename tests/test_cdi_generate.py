"""``nvc cdi generate`` on the fake GPU host (real Debian 535 driver files, stub NVML, real device nodes).

The spec must hold exactly what ``nvc list`` prints (one planner for both), name its devices by the CDI rules,
declare the lowest cdiVersion carrying its fields, and be written atomically with mode 0644.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fixtures.gpu_host import DEFAULT_GPUS, DEFAULT_MIGS
from nvc.emit.cdi import names

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parent.parent
HOOK = "/opt/nvc/bin/nvidia-cdi-hook"


def nvc(host, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **host.env, **(env or {})}
    return subprocess.run([sys.executable, "-m", "nvc", *args], capture_output=True, text=True, env=full_env,
                          cwd=REPO, timeout=120, check=False)


def generate(host, *args: str, env: dict[str, str] | None = None) -> dict:
    res = nvc(host, "cdi", "generate", "--driver-root", str(host.root), "--hook-path", HOOK, "--format", "json",
              *args, env=env)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def all_nodes(spec: dict) -> list[dict]:
    nodes = list(spec["containerEdits"].get("deviceNodes", []))
    for device in spec["devices"]:
        nodes += device["containerEdits"].get("deviceNodes", [])
    return nodes


def by_name(spec: dict) -> dict[str, dict]:
    return {d["name"]: d for d in spec["devices"]}


def test_devices_by_index_uuid_mig_and_all(host):
    spec = generate(host)
    assert spec["kind"] == "nvidia.com/gpu"
    gpu0, gpu1 = DEFAULT_GPUS
    mig = DEFAULT_MIGS[0]
    assert [d["name"] for d in spec["devices"]] == ["0", gpu0["uuid"], "1", gpu1["uuid"], "0:0", mig["uuid"], "all"]
    devices = by_name(spec)
    for name in devices:
        assert names.is_qualified_name(f"{spec['kind']}={name}")

    def paths(name: str) -> list[str]:
        return [n["path"] for n in devices[name]["containerEdits"]["deviceNodes"]]

    # GPU index 0 has minor 3, index 1 minor 0 (NVML's minor, not the index, names the node).
    assert paths("0") == paths(gpu0["uuid"]) == ["/dev/nvidia3"]
    assert paths("1") == paths(gpu1["uuid"]) == ["/dev/nvidia0"]
    assert paths("0:0") == paths(mig["uuid"]) == ["/dev/nvidia3", "/dev/nvidia-caps/nvidia-cap10",
                                                  "/dev/nvidia-caps/nvidia-cap11"]
    assert sorted(paths("all")) == sorted({*paths("0"), *paths("1"), *paths("0:0")})
    common = [n["path"] for n in spec["containerEdits"]["deviceNodes"]]
    assert common == ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"]
    node = devices["1"]["containerEdits"]["deviceNodes"][0]
    assert node == {"path": "/dev/nvidia0", "hostPath": f"{host.root}/dev/nvidia0", "type": "c", "major": 195,
                    "minor": 0, "fileMode": 0o666}
    assert spec["containerEdits"]["env"] == ["NVIDIA_VISIBLE_DEVICES=void"]


def test_the_spec_holds_exactly_what_nvc_list_prints(host):
    spec = generate(host)
    listed = json.loads(nvc(host, "--root", str(host.root), "list", "--json").stdout)
    files = {(i["host_path"], i["container_path"]) for i in listed if i["kind"] not in ("device", "mig-cap-file")}
    mounts = {(m["hostPath"], m["containerPath"]) for m in spec["containerEdits"]["mounts"] if m["type"] == "bind"}
    assert mounts == files
    nodes = {(n["hostPath"], n["path"]) for n in all_nodes(spec)}
    assert nodes == {(i["host_path"], i["container_path"]) for i in listed if i["kind"] == "device"}
    # nvidia-smi lives in /usr/lib/nvidia/current on Debian, off PATH: the spec puts it at /usr/bin.
    assert (f"{host.root}/usr/lib/nvidia/current/nvidia-smi", "/usr/bin/nvidia-smi") in mounts
    for mount in spec["containerEdits"]["mounts"]:
        if mount["type"] == "bind":
            assert {"ro", "nosuid", "nodev"} <= set(mount["options"]) or mount["containerPath"].startswith("/run/")


def test_one_hook_carries_links_libraries_and_the_driver_version(host):
    spec = generate(host)
    hooks = spec["containerEdits"]["hooks"]
    assert len(hooks) == 1 and hooks[0]["hookName"] == "createContainer" and hooks[0]["path"] == HOOK
    args = hooks[0]["args"]
    assert args[:4] == ["nvidia-cdi-hook", "configure-container", "--host-driver-version", "535.309.01"]
    values = {flag: [args[i + 1] for i in range(len(args) - 1) if args[i] == flag]
              for flag in ("--folder", "--library", "--link")}
    assert values["--folder"] == ["/usr/lib64"]
    libraries = {v.split("::")[0]: v.split("::")[1:] for v in values["--library"]}
    assert libraries["/usr/lib64/libcuda.so.535.309.01"] == ["libcuda.so.1", "0x303"]
    assert libraries["/usr/lib64/libnvidia-nvvm.so.535.309.01"] == ["libnvidia-nvvm.so.4", "0x303"]
    mounted = {m["containerPath"] for m in spec["containerEdits"]["mounts"]}
    assert set(libraries) == {p for p in mounted if p.startswith("/usr/lib64/")}
    assert "libcuda.so.535.309.01::/usr/lib64/libcuda.so.1" in values["--link"]
    assert "libcuda.so.1::/usr/lib64/libcuda.so" in values["--link"]
    assert "libGLX_nvidia.so.535.309.01::/usr/lib64/libGLX_indirect.so.0" in values["--link"]
    assert "/usr/lib64/libGLX_indirect.so.0" not in mounted  # a link made by the hook, not a mount over it


def test_cdi_version_is_the_lowest_carrying_the_fields(host):
    spec = generate(host, "--annotations")
    assert spec["cdiVersion"] == "0.6.0"  # spec-level annotations
    assert spec["annotations"] == {"nvc/driver-version": "535.309.01", "nvc/driver-root": str(host.root)}
    names.validate_annotations(spec["annotations"])
    for bare in (generate(host), generate(host, "--no-annotations")):  # the default: what podman 4.3 accepts
        assert bare["cdiVersion"] == "0.5.0"  # device names starting with a digit, device node hostPath
        assert "annotations" not in bare
    letters = generate(host, "--device-name-strategy", "type-index")
    assert [d["name"] for d in letters["devices"]] == ["gpu0", "gpu1", "mig0:0", "all"]
    assert letters["cdiVersion"] == "0.5.0"  # still: device nodes with a hostPath (driver root is not /)


def test_device_name_strategies_vendor_and_class(host):
    spec = generate(host, "--device-name-strategy", "uuid", "--vendor", "example.com", "--class", "accel")
    assert spec["kind"] == "example.com/accel"
    assert [d["name"] for d in spec["devices"]] == [DEFAULT_GPUS[0]["uuid"], DEFAULT_GPUS[1]["uuid"],
                                                    DEFAULT_MIGS[0]["uuid"], "all"]
    res = nvc(host, "cdi", "generate", "--driver-root", str(host.root), "--vendor", "9bad")
    assert res.returncode == 1
    assert res.stderr == "nvc: input error: invalid vendor '9bad': must start with a letter\n"
    res = nvc(host, "cdi", "generate", "--driver-root", str(host.root), "--device-name-strategy", "name")
    assert res.returncode == 1 and "Traceback" not in res.stderr and "'name' is not one of" in res.stderr


def test_capability_selection_narrows_the_files(host):
    spec = generate(host, "--driver-capabilities", "compute,utility")
    mounted = {os.path.basename(m["containerPath"]) for m in spec["containerEdits"]["mounts"]}
    assert {"libcuda.so.535.309.01", "libnvidia-ml.so.535.309.01", "nvidia-smi"} <= mounted
    assert "libGLX_nvidia.so.535.309.01" not in mounted and "libnvidia-encode.so.535.309.01" not in mounted
    common = [n["path"] for n in spec["containerEdits"]["deviceNodes"]]
    assert "/dev/nvidia-modeset" not in common  # display only
    res = nvc(host, "cdi", "generate", "--driver-root", str(host.root), "--driver-capabilities", "compute,warp")
    assert res.returncode == 1 and res.stderr.startswith("nvc: input error: unknown driver capability")


def test_yaml_is_the_default_and_equals_the_json(host, tmp_path):
    as_json = generate(host)
    res = nvc(host, "cdi", "generate", "--driver-root", str(host.root), "--hook-path", HOOK)
    assert res.returncode == 0, res.stderr
    assert "&id" not in res.stdout and "*id" not in res.stdout  # no YAML anchors: every device spelled out
    assert yaml.safe_load(res.stdout) == as_json
    out = tmp_path / "nvidia.yaml"
    assert nvc(host, "cdi", "generate", "--driver-root", str(host.root), "--hook-path", HOOK,
               "--output", str(out)).returncode == 0
    assert yaml.safe_load(out.read_text()) == as_json


def test_output_is_atomic_with_mode_0644(host, tmp_path):
    out = tmp_path / "spec" / "nvidia.json"
    out.parent.mkdir()
    out.write_text("old")
    os.chmod(out, 0o600)
    old_umask = os.umask(0o077)
    try:
        res = nvc(host, "cdi", "generate", "--driver-root", str(host.root), "--output", str(out))
    finally:
        os.umask(old_umask)
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert json.loads(out.read_text())["kind"] == "nvidia.com/gpu"  # .json extension → JSON
    assert sorted(p.name for p in out.parent.iterdir()) == ["nvidia.json"]
    # A failure leaves the old spec and no temporary file: unknown GPU root → error before writing anything.
    before = out.read_bytes()
    res = nvc(host, "cdi", "generate", "--driver-root", str(host.root), "--output", str(out), "--vendor", "-x")
    assert res.returncode == 1 and out.read_bytes() == before
    res = nvc(host, "cdi", "generate", "--driver-root", str(host.root), "--output", str(tmp_path / "no/such.json"))
    assert res.returncode == 1
    assert res.stderr.splitlines()[-1] == f"nvc: input error: output directory does not exist: {tmp_path}/no"
    assert sorted(p.name for p in out.parent.iterdir()) == ["nvidia.json"]


def test_without_nvml_auto_fails_in_one_line_and_management_uses_the_nodes(host, tmp_path):
    from fixtures.nvml_stub import write_config

    broken = {"NVML_STUB_CONFIG": str(write_config(tmp_path / "broken.conf", init_error=9)),
              "NVC_NO_CACHE": "1"}
    res = nvc(host, "cdi", "generate", "--driver-root", str(host.root), env=broken)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("nvc: initialization error: nvml error: ")
    assert "--mode management" in res.stderr
    spec = generate(host, "--mode", "management", env=broken)
    assert [d["name"] for d in spec["devices"]] == ["all"]
    assert [n["path"] for n in spec["devices"][0]["containerEdits"]["deviceNodes"]] == [
        "/dev/nvidia0", "/dev/nvidia3", "/dev/nvidia-caps/nvidia-cap1", "/dev/nvidia-caps/nvidia-cap2",
        "/dev/nvidia-caps/nvidia-cap10", "/dev/nvidia-caps/nvidia-cap11"]
    mounted = {m["containerPath"] for m in spec["containerEdits"]["mounts"]}
    assert {"/usr/bin/nvidia-smi", "/usr/lib64/libcuda.so.535.309.01"} <= mounted  # version from /proc


def test_driver_root_without_nvml_library(host, tmp_path):
    """A cache that lists no libnvidia-ml: auto says so in one line; management still writes the nodes."""
    from nvc.host.ldcache.writer import serialize_cache

    empty = host.root / "etc/nvc-test-empty.cache"  # --ldcache is a path inside the driver root
    empty.write_bytes(serialize_cache((), "new"))
    try:
        res = nvc(host, "--ldcache", "/etc/nvc-test-empty.cache", "cdi", "generate", "--driver-root",
                  str(host.root), env={"NVC_NO_CACHE": "1"})
        managed = nvc(host, "--ldcache", "/etc/nvc-test-empty.cache", "cdi", "generate", "--driver-root",
                      str(host.root), "--mode", "management", "--format", "json", "--annotations",
                      env={"NVC_NO_CACHE": "1"})
    finally:
        empty.unlink()
    assert res.returncode == 1
    assert res.stderr.startswith("nvc: initialization error: load library failed: libnvidia-ml.so.1")
    assert res.stderr.count("\n") == 1
    assert managed.returncode == 0, managed.stderr
    spec = json.loads(managed.stdout)
    assert spec["devices"][0]["name"] == "all"
    assert spec["annotations"]["nvc/driver-version"] == "535.309.01"  # from /proc/driver/nvidia/version
    assert "/usr/bin/nvidia-smi" in {m["containerPath"] for m in spec["containerEdits"]["mounts"]}


def test_dev_root_moves_the_device_nodes(host, tmp_path):
    from fixtures.gpu_host import _char

    dev_root = tmp_path / "devroot"
    _char(dev_root / "dev/nvidiactl", 195, 255)
    _char(dev_root / "dev/nvidia0", 195, 0)
    spec = generate(host, "--dev-root", str(dev_root))
    assert spec["containerEdits"]["deviceNodes"] == [
        {"path": "/dev/nvidiactl", "hostPath": f"{dev_root}/dev/nvidiactl", "type": "c", "major": 195,
         "minor": 255, "fileMode": 0o666}]
    assert by_name(spec)["1"]["containerEdits"]["deviceNodes"][0]["hostPath"] == f"{dev_root}/dev/nvidia0"


def test_generate_takes_under_a_second(host, tmp_path):
    """Measured as the fastest of three runs of the installed CLI (machine shared: the best run is the cost)."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        res = nvc(host, "cdi", "generate", "--driver-root", str(host.root), "--output", str(tmp_path / "s.yaml"))
        times.append(time.perf_counter() - start)
        assert res.returncode == 0, res.stderr
    assert min(times) < 1.0, times


def test_relative_roots_become_absolute_and_a_missing_hook_is_noted(host, tmp_path):
    rel = os.path.relpath(host.root, REPO)
    res = nvc(host, "cdi", "generate", "--driver-root", rel, "--format", "json", "--hook-path", "/nonexistent/hook",
              "--annotations")
    assert res.returncode == 0, res.stderr
    spec = json.loads(res.stdout)
    assert spec["annotations"]["nvc/driver-root"] == str(host.root)
    binds = [m for m in spec["containerEdits"]["mounts"] if m["type"] == "bind"]
    assert binds and all(m["hostPath"].startswith(f"{host.root}/") for m in binds)
    assert "nvc: note: the hook /nonexistent/hook is not an executable here" in res.stderr
