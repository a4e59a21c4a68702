"""The runtime shim in CDI mode: which CDI devices a container asks for, the spec handed to a (fake, then real)
low-level runtime, and real containers under runc (exactly their device nodes, the driver files, nvidia-smi) and
gVisor's runsc (the spec it receives, and that it starts).

Two kinds of spec: one these tests write (real character devices made with mknod, the real Debian driver files bound
in, no hook), and the one ``nvc cdi generate`` writes for the fake GPU host, with its one createContainer hook.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from nvc.commands.cdi_shim_mode import annotation_devices, cdi_request, requested_devices
from nvc.errors import NvcError
from nvc.request.runtime_config import parse_config
from tests.test_runtime_shim import Shim, write_bundle

REPO = Path(__file__).resolve().parent.parent


def config(text: str = 'mode = "cdi"'):
    return parse_config(f"[nvidia-container-runtime]\n{text}\n", path_exists=lambda _p: False)


def oci(env=(), annotations=None, privileged=False) -> dict:
    spec = {"process": {"env": list(env), "capabilities": {"bounding": ["CAP_SYS_ADMIN"] if privileged else []}}}
    if annotations is not None:
        spec["annotations"] = annotations
    return spec


# --- which devices ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("env", "devices", "explicit"), [
    (["NVIDIA_VISIBLE_DEVICES=all"], ["nvidia.com/gpu=all"], False),
    (["NVIDIA_VISIBLE_DEVICES=0, 1,0"], ["nvidia.com/gpu=0", "nvidia.com/gpu=1"], False),
    (["NVIDIA_VISIBLE_DEVICES=GPU-4a1d,0:1"], ["nvidia.com/gpu=GPU-4a1d", "nvidia.com/gpu=0:1"], False),
    (["NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=1,vendor.example/x=a"], ["nvidia.com/gpu=1", "vendor.example/x=a"],
     True),
    (["NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=1,2"], ["nvidia.com/gpu=1", "nvidia.com/gpu=2"], False),
    (["NVIDIA_VISIBLE_DEVICES=void"], [], False),
    (["NVIDIA_VISIBLE_DEVICES=none"], [], False),
    ([], [], False),
    (["CUDA_VERSION=12.2"], ["nvidia.com/gpu=all"], False),  # a legacy CUDA image asks for all GPUs
])
def test_devices_from_the_environment(env, devices, explicit):
    assert requested_devices(oci(env), config()) == (devices, explicit)


def test_default_kind_and_unprivileged_rule():
    cfg = config('mode = "cdi"\n[nvidia-container-runtime.modes.cdi]\ndefault-kind = "example.com/accel"')
    assert requested_devices(oci(["NVIDIA_VISIBLE_DEVICES=0"]), cfg)[0] == ["example.com/accel=0"]
    strict = parse_config("accept-nvidia-visible-devices-envvar-when-unprivileged = false\n"
                          '[nvidia-container-runtime]\nmode = "cdi"\n', path_exists=lambda _p: False)
    assert requested_devices(oci(["NVIDIA_VISIBLE_DEVICES=0"]), strict)[0] == []
    assert requested_devices(oci(["NVIDIA_VISIBLE_DEVICES=0"], privileged=True), strict)[0] == ["nvidia.com/gpu=0"]


def test_annotations_win_over_the_environment():
    spec = oci(["NVIDIA_VISIBLE_DEVICES=all"], {"cdi.k8s.io/b": "nvidia.com/gpu=1,nvidia.com/gpu=0",
                                                "cdi.k8s.io/a": "nvidia.com/gpu=0", "other/x": "nope"})
    assert requested_devices(spec, config()) == (["nvidia.com/gpu=0", "nvidia.com/gpu=1"], True)
    assert annotation_devices({"x.io/k": "a.com/b=c"}, ("x.io/",)) == ["a.com/b=c"]


def test_unqualified_annotation_is_an_error():
    with pytest.raises(NvcError) as info:
        annotation_devices({"cdi.k8s.io/gpu": "nvidia.com/gpu=0,1"}, ("cdi.k8s.io/",))
    assert str(info.value) == ("cdi error: invalid device name '1' in annotation 'cdi.k8s.io/gpu' "
                               "(expected vendor/class=name, e.g. nvidia.com/gpu=0)")


def test_when_cdi_mode_applies():
    index, qualified = oci(["NVIDIA_VISIBLE_DEVICES=0"]), oci(["NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=0"])
    annotated = oci([], {"cdi.k8s.io/gpu": "nvidia.com/gpu=0"})
    assert cdi_request(index, config()) == ["nvidia.com/gpu=0"]
    assert cdi_request(oci(["NVIDIA_VISIBLE_DEVICES=void"]), config()) == []
    assert cdi_request(index, config('mode = "auto"')) is None
    assert cdi_request(qualified, config('mode = "auto"')) == ["nvidia.com/gpu=0"]
    assert cdi_request(annotated, config('mode = "auto"')) == ["nvidia.com/gpu=0"]
    for mode in ("legacy", "spec", "jit-cdi"):
        assert cdi_request(qualified, config(f'mode = "{mode}"')) is None
    malformed = oci(["NVIDIA_VISIBLE_DEVICES=0"], {"cdi.k8s.io/gpu": "0"})
    assert cdi_request(malformed, config('mode = "auto"')) is None  # NVIDIA's auto ignores annotations
    with pytest.raises(NvcError, match="invalid device name '0' in annotation"):
        cdi_request(malformed, config())


# --- through the shim, with a fake low-level runtime -------------------------------------------------------------


def fake_spec(dev: Path) -> dict:
    """A CDI spec whose nodes are given in full (no host lookup) except nvidia-uvm, which points at /dev/null."""
    def node(n):
        return {"path": f"/dev/nvidia{n}", "type": "c", "major": 195, "minor": int(n)}

    return {"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu",
            "devices": [{"name": "0", "containerEdits": {"deviceNodes": [node("0")]}},
                        {"name": "1", "containerEdits": {"deviceNodes": [node("1")]}},
                        {"name": "all", "containerEdits": {"deviceNodes": [node("0"), node("1")]}}],
            "containerEdits": {
                "env": ["NVIDIA_VISIBLE_DEVICES=void"],
                "deviceNodes": [{"path": "/dev/nvidiactl", "type": "c", "major": 195, "minor": 255},
                                {"path": "/dev/nvidia-uvm", "hostPath": str(dev)}],
                "mounts": [{"hostPath": "/drv/libcuda.so.1", "containerPath": "/usr/lib/libcuda.so.1",
                            "options": ["ro", "nosuid", "nodev", "bind"]}],
                "hooks": [{"hookName": "createContainer", "path": "/usr/bin/nvc-cdi-hook", "args": ["nvc-cdi-hook"]}]}}


def cdi_shim(tmp_path: Path, mode: str = "cdi") -> tuple[Shim, Path]:
    shim = Shim(tmp_path)
    spec_dir = tmp_path / "cdi"
    spec_dir.mkdir()
    (spec_dir / "nvidia.json").write_text(json.dumps(fake_spec(Path("/dev/null"))))
    shim.config.write_text(f'[nvidia-container-runtime]\nmode = "{mode}"\nruntimes = ["runc"]\n'
                           f'[nvidia-container-runtime.modes.cdi]\nspec-dirs = ["{spec_dir}"]\n')
    return shim, spec_dir


def test_cdi_mode_applies_the_spec_edits(tmp_path):
    shim, _ = cdi_shim(tmp_path)
    legacy_hook = {"prestart": [{"path": "/usr/bin/nvidia-container-runtime-hook", "args": ["x", "prestart"]},
                                {"path": "/usr/bin/other-hook"}]}
    bundle = write_bundle(tmp_path / "b", ["NVIDIA_VISIBLE_DEVICES=1", "LD_PRELOAD=/evil.so"], hooks=legacy_hook)
    (bundle / "config.json").chmod(0o600)
    args = ["--root", "/x", "create", "--bundle", str(bundle), "id"]
    res = shim(*args, bundle=bundle)
    assert res.returncode == 0, res.stderr
    assert shim.argv() == [str(shim.runtime), *args]
    spec = shim.spec()
    assert spec["process"]["env"] == ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=void", "LD_PRELOAD=/evil.so"]
    assert spec["linux"]["devices"] == [
        {"path": "/dev/nvidiactl", "type": "c", "major": 195, "minor": 255},
        {"path": "/dev/nvidia-uvm", "type": "c", "major": 1, "minor": 3},  # filled from the host node
        {"path": "/dev/nvidia1", "type": "c", "major": 195, "minor": 1},
    ]
    assert [r["minor"] for r in spec["linux"]["resources"]["devices"]] == [255, 3, 1]
    assert spec["mounts"][-1] == {"destination": "/usr/lib/libcuda.so.1", "source": "/drv/libcuda.so.1",
                                  "options": ["ro", "nosuid", "nodev", "bind"]}
    assert spec["hooks"] == {"prestart": [{"path": "/usr/bin/other-hook"}],
                             "createContainer": [{"path": "/usr/bin/nvc-cdi-hook", "args": ["nvc-cdi-hook"]}]}
    assert stat.S_IMODE((bundle / "config.json").stat().st_mode) == 0o600
    assert "LD_PRELOAD" not in shim.runtime_env()


def test_annotations_select_devices_in_auto_mode(tmp_path):
    shim, _ = cdi_shim(tmp_path, mode="auto")
    bundle = write_bundle(tmp_path / "b", [])
    spec = json.loads((bundle / "config.json").read_text())
    spec["annotations"] = {"cdi.k8s.io/gpu": "nvidia.com/gpu=all"}
    (bundle / "config.json").write_text(json.dumps(spec))
    res = shim("create", "--bundle", str(bundle), "id", bundle=bundle)
    assert res.returncode == 0, res.stderr
    edited = shim.spec()
    assert [d["path"] for d in edited["linux"]["devices"]] == ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia0",
                                                               "/dev/nvidia1"]
    assert edited["process"]["env"][-1] == "NVIDIA_VISIBLE_DEVICES=void"


def test_auto_mode_with_indices_stays_legacy(tmp_path):
    shim, _ = cdi_shim(tmp_path, mode="auto")
    bundle = write_bundle(tmp_path / "b", ["NVIDIA_VISIBLE_DEVICES=0"])
    assert shim("create", "--bundle", str(bundle), "id", bundle=bundle).returncode == 0
    spec = shim.spec()
    assert spec["hooks"]["prestart"][0]["path"] == str(shim.hook) and "devices" not in spec["linux"]


def test_no_device_leaves_the_spec_alone(tmp_path):
    shim, _ = cdi_shim(tmp_path)
    bundle = write_bundle(tmp_path / "b", ["NVIDIA_VISIBLE_DEVICES=void"])
    before = (bundle / "config.json").read_bytes()
    assert shim("create", "--bundle", str(bundle), "id", bundle=bundle).returncode == 0
    assert (bundle / "config.json").read_bytes() == before


@pytest.mark.parametrize(("env", "setup", "message"), [
    (["NVIDIA_VISIBLE_DEVICES=7"], None,
     "nvidia-container-runtime: cdi error: unresolvable CDI devices nvidia.com/gpu=7 (this host's specs define "
     "nvidia.com/gpu=0, nvidia.com/gpu=1, nvidia.com/gpu=all)\n"),
    (["NVIDIA_VISIBLE_DEVICES=0"], lambda d: (d / "dup.json").write_text((d / "nvidia.json").read_text()),
     "nvidia-container-runtime: cdi error: unresolvable CDI devices nvidia.com/gpu=0: nvidia.com/gpu=0 is defined "
     "by both {d}/dup.json and {d}/nvidia.json, so by neither\n"),
    (["NVIDIA_VISIBLE_DEVICES=0"], lambda d: (d / "nvidia.json").write_text(
        (d / "nvidia.json").read_text().replace('"/dev/null"', '"/nonexistent/nvidia-uvm"')),
     "nvidia-container-runtime: cdi error: failed to stat CDI host device /nonexistent/nvidia-uvm: no such file or "
     "directory\n"),
])
def test_errors_fail_the_start_with_one_line_and_change_nothing(tmp_path, env, setup, message):
    shim, spec_dir = cdi_shim(tmp_path)
    if setup:
        setup(spec_dir)
    bundle = write_bundle(tmp_path / "b", env)
    before = (bundle / "config.json").read_bytes()
    res = shim("create", "--bundle", str(bundle), "id", bundle=bundle)
    assert res.returncode == 1
    assert res.stderr == message.format(d=spec_dir)
    assert (bundle / "config.json").read_bytes() == before
    assert not (shim.out / "argv").exists()  # the runtime never ran


def test_symlinked_spec_dir_is_not_used(tmp_path):
    shim, spec_dir = cdi_shim(tmp_path)
    link = tmp_path / "cdi-link"
    link.symlink_to(spec_dir)
    shim.config.write_text(shim.config.read_text().replace(f'"{spec_dir}"', f'"{link}"'))
    bundle = write_bundle(tmp_path / "b", ["NVIDIA_VISIBLE_DEVICES=0"])
    res = shim("create", "--bundle", str(bundle), "id", bundle=bundle)
    assert res.returncode == 1
    assert res.stderr.startswith("nvidia-container-runtime: cdi error: unresolvable CDI devices nvidia.com/gpu=0; "
                                 f"1 spec location(s) unusable, first: {link}: the spec directory is a symlink")


# --- real runtimes --------------------------------------------------------------------------------------------

CONTAINER_SCRIPT = ("ls /dev | grep nvidia | tr '\\n' ' '; echo; ls /usr/lib/libcuda.so.1; which nvidia-smi; "
                    "nvidia-smi > /tmp/smi.out 2>&1; echo smi-exit=$?; cat /tmp/smi.out; "
                    "echo \"$NVIDIA_VISIBLE_DEVICES\"")


def host_spec(tmp_path: Path) -> Path:
    """A spec directory for the real runtimes: real character devices (mknod 195:N in ``tmp_path/dev``, as a GPU
    host has them) and the real Debian driver files."""
    from fixtures.driver_roots import DRIVER_VERSION, ensure_all

    drv = ensure_all().apt_root
    dev = tmp_path / "hostdev"
    dev.mkdir()
    for name, minor in (("nvidia0", 0), ("nvidia1", 1), ("nvidiactl", 255)):
        os.mknod(dev / name, 0o666 | stat.S_IFCHR, os.makedev(195, minor))
    libs = drv / "usr/lib/x86_64-linux-gnu/nvidia/current"

    def node(name):
        return {"path": f"/dev/{name}", "hostPath": str(dev / name)}

    def bind(host, container):
        return {"hostPath": str(host), "containerPath": container, "options": ["ro", "nosuid", "nodev", "bind"]}

    spec = {"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu",
            "devices": [{"name": "0", "containerEdits": {"deviceNodes": [node("nvidia0")]}},
                        {"name": "1", "containerEdits": {"deviceNodes": [node("nvidia1")]}},
                        {"name": "all", "containerEdits": {"deviceNodes": [node("nvidia0"), node("nvidia1")]}}],
            "containerEdits": {
                "env": ["NVIDIA_VISIBLE_DEVICES=void"],
                "deviceNodes": [node("nvidiactl")],
                # /usr/lib is on the loader's default path: no ld.so.cache update needed for this hand-made spec
                "mounts": [bind(libs / f"libcuda.so.{DRIVER_VERSION}", "/usr/lib/libcuda.so.1"),
                           bind(libs / f"libnvidia-ml.so.{DRIVER_VERSION}", "/usr/lib/libnvidia-ml.so.1"),
                           bind(drv / "usr/lib/nvidia/current/nvidia-smi", "/usr/bin/nvidia-smi")]}}
    spec_dir = tmp_path / "cdi"
    spec_dir.mkdir()
    (spec_dir / "nvidia.yaml" if _has_yaml() else spec_dir / "nvidia.json").write_text(_dump(spec))
    return spec_dir


def _has_yaml() -> bool:
    try:
        import yaml  # noqa: F401
    except ImportError:
        return False
    return True


def _dump(spec: dict) -> str:
    if _has_yaml():
        import yaml

        return yaml.safe_dump(spec)
    return json.dumps(spec)


def real_setup(tmp_path: Path, runtime: str, env: list[str], annotations=None):
    rootfs_mod = pytest.importorskip("fixtures.rootfs")
    runtimes_mod = pytest.importorskip("fixtures.runtimes")
    real_runtime = shutil.which(runtime, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if real_runtime is None:
        pytest.skip(f"{runtime} not installed")
    spec_dir = host_spec(tmp_path)
    front = tmp_path / "front"
    front.mkdir()
    (front / runtime).write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m nvc.commands.runtime_shim '
        f'"$@"\n')
    (front / runtime).chmod(0o755)
    config = tmp_path / "config.toml"
    config.write_text(f'[nvidia-container-runtime]\nmode = "cdi"\nruntimes = ["{real_runtime}"]\n'
                      f'[nvidia-container-runtime.modes.cdi]\nspec-dirs = ["{spec_dir}"]\n')
    bundle = tmp_path / "bundle"
    rootfs = rootfs_mod.copy_rootfs(rootfs_mod.busybox_rootfs(), bundle / "rootfs")
    runtimes_mod.make_bundle(bundle, rootfs, ["sh", "-c", CONTAINER_SCRIPT], env=env, annotations=annotations)
    run_env = dict(os.environ, PATH=f"{front}:/usr/sbin:/usr/bin:/sbin:/bin", NVIDIA_CTK_CONFIG_FILE_PATH=str(config))
    return runtimes_mod, bundle, run_env


def _check_container(proc, nodes: str) -> None:
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == nodes.split()
    assert "/usr/lib/libcuda.so.1" in lines and "/usr/bin/nvidia-smi" in lines
    # Exit 9 = NVML "Driver Not Loaded": the real libnvidia-ml loaded and found no kernel driver (there is no GPU
    # here); 127 or a loader error would mean the CDI edits did not give the container the driver.
    assert "smi-exit=9" in lines, proc.stdout
    assert "couldn't communicate with the NVIDIA driver" in proc.stdout
    assert lines[-1] == "void"


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize(("env", "annotations", "nodes"), [
    (["NVIDIA_VISIBLE_DEVICES=1"], None, "nvidia1 nvidiactl"),
    (["NVIDIA_VISIBLE_DEVICES=all"], None, "nvidia0 nvidia1 nvidiactl"),
    ([], {"cdi.k8s.io/gpu": "nvidia.com/gpu=0"}, "nvidia0 nvidiactl"),
])
def test_runc_through_the_shim_in_cdi_mode(tmp_path, env, annotations, nodes):
    runtimes_mod, bundle, run_env = real_setup(tmp_path, "runc", env, annotations)
    proc = runtimes_mod.run_runc(bundle, env=run_env, timeout=120)
    _check_container(proc, nodes)


@pytest.mark.root
@pytest.mark.slow
def test_runsc_through_the_shim_in_cdi_mode(tmp_path):
    """gVisor reads the devices from linux.devices; this runsc has no nvproxy, so the nodes cannot be opened in
    the sandbox: what it shows is the spec it was given, that it starts with it, and the bound driver files."""
    runtimes_mod, bundle, run_env = real_setup(tmp_path, "runsc", ["NVIDIA_VISIBLE_DEVICES=0"])
    proc = runtimes_mod.run_runsc(bundle, env=run_env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "/usr/lib/libcuda.so.1" in lines and "/usr/bin/nvidia-smi" in lines and lines[-1] == "void"
    assert "smi-exit=" in proc.stdout and "error while loading shared libraries" not in proc.stdout
    spec = json.loads((bundle / "config.json").read_text())
    assert [(d["path"], d["major"], d["minor"]) for d in spec["linux"]["devices"]] == [
        ("/dev/nvidiactl", 195, 255), ("/dev/nvidia0", 195, 0)]
    assert {m["destination"] for m in spec["mounts"]} >= {"/usr/lib/libcuda.so.1", "/usr/bin/nvidia-smi"}


@pytest.mark.root
@pytest.mark.slow
def test_runc_through_the_shim_with_a_generated_spec(tmp_path, host, tools):
    """The spec ``nvc cdi generate`` writes for the fake host (real driver files, stub NVML), applied by the shim,
    its one createContainer hook run by runc: the GPU's node only, libcuda in ``ldconfig -p``, nvidia-smi on PATH."""
    import subprocess

    pytest.importorskip("nvc.emit.cdi.generate")
    from fixtures.runtimes import make_bundle, run_runc, unique_id
    from tests.test_e2e_runtimes import PROBE, assert_gpu_container, container_rootfs

    bindir, env = tools
    if not (bindir / "nvidia-cdi-hook").exists():
        pytest.skip("the fixture tools have no nvidia-cdi-hook")
    real_runc = shutil.which("runc", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if real_runc is None:
        pytest.skip("runc not installed")
    spec_dir = tmp_path / "cdi"
    spec_dir.mkdir()
    res = subprocess.run([sys.executable, "-m", "nvc", "cdi", "generate", "--driver-root", str(host.root),
                          "--hook-path", str(bindir / "nvidia-cdi-hook"), "--output", str(spec_dir / "nvidia.yaml")],
                         env={**os.environ, **env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    front = tmp_path / "front"
    front.mkdir()
    (front / "runc").write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m nvc.commands.runtime_shim '
        f'"$@"\n')
    (front / "runc").chmod(0o755)
    config = tmp_path / "config.toml"
    config.write_text(f'[nvidia-container-runtime]\nmode = "cdi"\nruntimes = ["{real_runc}"]\n'
                      f'[nvidia-container-runtime.modes.cdi]\nspec-dirs = ["{spec_dir}"]\n')
    bundle = tmp_path / "bundle"
    rootfs = container_rootfs(bundle / "rootfs")
    probe = PROBE + ("; echo smi_path=$(command -v nvidia-smi); ldconfig -p | grep 'libcuda.so.1 '; "
                     "echo vis=$NVIDIA_VISIBLE_DEVICES")
    make_bundle(bundle, rootfs, ["sh", "-c", probe], env=["NVML_STUB_CONFIG=/etc/nvml-stub.conf",
                                                          "NVIDIA_VISIBLE_DEVICES=1"])
    proc = run_runc(bundle, unique_id(), env={**env, "PATH": f"{front}:{env['PATH']}",
                                              "NVIDIA_CTK_CONFIG_FILE_PATH": str(config)})
    assert proc.returncode == 0, proc.stderr
    assert_gpu_container(proc.stdout)
    assert "smi_path=/usr/bin/nvidia-smi" in proc.stdout
    assert "libcuda.so.1 (libc6,x86-64) => " in proc.stdout and "vis=void" in proc.stdout
    spec = json.loads((bundle / "config.json").read_text())
    assert [h["path"] for h in spec["hooks"]["createContainer"]] == [str(bindir / "nvidia-cdi-hook")]


def test_cdi_create_path_stays_light(tmp_path):
    """The CDI path reads specs and edits JSON: no planner, NVML, ELF reader, click; PyYAML only for .yaml specs."""
    import subprocess

    shim, _spec_dir = cdi_shim(tmp_path)
    bundle = write_bundle(tmp_path / "b", ["NVIDIA_VISIBLE_DEVICES=0"])
    heavy = ("click", "elftools", "pynvml", "yaml", "nvc.commands.configure", "nvc.plan.planner", "nvc.host.inventory",
        "nvc.host.nvml.query")
    code = ("import sys; from nvc.commands.runtime_shim import prepare_create; import os; "
            f"argv = ['create', '--bundle', {str(bundle)!r}, 'id']; prepare_create(argv, 0, os.environ); "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(shim.env, PYTHONPATH=str(REPO))).stdout
    assert out.strip() == "[]"
    assert json.loads((bundle / "config.json").read_text())["linux"]["devices"]  # it did inject


def _generate(host, bindir: Path, env: dict[str, str], spec_dir: Path) -> None:
    import subprocess

    spec_dir.mkdir()
    res = subprocess.run([sys.executable, "-m", "nvc", "cdi", "generate", "--driver-root", str(host.root),
                          "--hook-path", str(bindir / "nvidia-cdi-hook"), "--output", str(spec_dir / "nvidia.json")],
                         env={**os.environ, **env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0, res.stderr


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize(("devices", "nodes"), [("1", ["nvidia0"]), ("all", ["nvidia0", "nvidia3"])])
def test_runsc_nvproxy_through_the_shim_in_cdi_mode(tmp_path, host, tools, devices, nodes):
    """gVisor with nvproxy (bookworm-backports' runsc) builds the sandbox's GPU nodes from linux.devices: the shim
    in CDI mode puts exactly the requested devices there, from the spec ``nvc cdi generate`` wrote."""
    from fixtures.rootfs import safe_rmtree
    from tests.test_gvisor_runsc import GPU_FLAGS, Lab

    bindir, env = tools
    (tmp_path / "lab").mkdir()
    lab = Lab(tmp_path / "lab", host, tools)
    try:
        spec_dir = tmp_path / "cdi"
        _generate(host, bindir, env, spec_dir)
        front = tmp_path / "shim"
        front.mkdir()
        (front / "runsc").write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m nvc.commands.runtime_shim '
            f'"$@"\n')
        (front / "runsc").chmod(0o755)
        (front / "config.toml").write_text(
            f'[nvidia-container-runtime]\nmode = "cdi"\nruntimes = ["{lab.runsc.path}"]\n'
            f'[nvidia-container-runtime.modes.cdi]\nspec-dirs = ["{spec_dir}"]\n')
        run_env = dict(lab.env(path_first=front), NVIDIA_CTK_CONFIG_FILE_PATH=str(front / "config.toml"))
        box = lab.run([f"NVIDIA_VISIBLE_DEVICES={devices}"], flags=GPU_FLAGS, runtime_env=run_env)
        assert box.returncode == 0, box.stderr
        assert box.calls == []  # no CLI, no legacy hook
        assert box.value("smi") == "/usr/bin/nvidia-smi"
        # exactly the requested GPUs' nodes, with the spec's control nodes (the sandbox makes every linux.devices node)
        assert [n for n in box.nodes if n.removeprefix("nvidia").isdigit()] == nodes
        assert {"nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset"} <= set(box.nodes)
        # runsc does not run createContainer hooks, so the spec's one hook never merges the ld.so.cache here: under
        # gVisor the shim's spec mode (mode = "auto" or "spec"), which mounts a merged cache, is the one that does
        assert not box.has_libcuda
    finally:
        safe_rmtree(tmp_path / "lab")
