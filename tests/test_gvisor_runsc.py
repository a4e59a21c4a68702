"""Real gVisor sandboxes with nvproxy: Debian bookworm-backports' runsc 0.0~20240729 (``fixtures.runsc_backports``)
starts busybox containers on the fake GPU host (real Debian driver files, stub NVML, mknod'ed 195:N nodes) and
runs OUR ``nvidia-container-cli`` from its PATH, as it would on a GPU machine.

Flags every sandbox here needs on this machine: ``--platform=systrap`` (the platform this runsc defaults to; ptrace
is gVisor's slow fallback) and ``--nvproxy-driver-version=535.161.07``: the fixture driver (535.309.01) is not in
this release's ABI table, and without the flag runsc asks the host's /dev/nvidiactl, which a machine without a GPU
does not have. One rootfs serves every test (a sandbox start takes about half a second): each run rewrites
config.json, and the last test checks that the shared rootfs's /dev was never written.

Run these under the heavy-test lock: ``flock /tmp/nvc-heavy.lock python -m pytest tests/test_gvisor_runsc.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
DRIVER_FLAG = "--nvproxy-driver-version=535.161.07"
GPU_FLAGS = ("--platform=systrap", "--nvproxy", DRIVER_FLAG)
DOCKER_FLAGS = (*GPU_FLAGS, "--nvproxy-docker")
# What each sandbox prints: the ld.so.cache's libcuda line, where nvidia-smi is, the NVIDIA nodes of its /dev.
PROBE = ("ldconfig -p | grep -F 'libcuda.so.1 '; echo smi=$(which nvidia-smi); "
         "echo dev=$(ls /dev | grep nvidia | tr '\\n' ' '); echo glx=$(ls /usr/lib64 | grep -c GLX_nvidia)")
RECORDER = """#!/bin/sh
# Records each call (argv, one line) before running the real tool.
echo "$0 $*" >> {log}
exec {real} "$@"
"""


@dataclass
class Sandbox:
    returncode: int
    stdout: str
    stderr: str
    calls: list[str]  # what runsc ran of ours (recorded), in order

    def value(self, key: str) -> str:
        for line in self.stdout.splitlines():
            if line.startswith(f"{key}="):
                return line[len(key) + 1 :].strip()
        raise AssertionError(f"no {key}= in sandbox output:\n{self.stdout}\n{self.stderr}")

    @property
    def nodes(self) -> list[str]:
        return sorted(self.value("dev").split())

    @property
    def has_libcuda(self) -> bool:
        return "libcuda.so.1 (libc6,x86-64) => /usr/lib64/libcuda.so.1" in self.stdout


class Lab:
    """One bundle on one busybox rootfs, our tools behind recording wrappers, the backports runsc first in PATH."""

    def __init__(self, base: Path, host, tools) -> None:
        from fixtures.rootfs import busybox_rootfs, copy_rootfs
        from fixtures.runsc_backports import ensure_runsc

        self.base = base
        self.host = host
        self.runsc = ensure_runsc()
        bindir, self.tools_env = tools
        self.bindir = bindir
        self.front = base / "front"  # runsc, then recorders of our tools
        self.front.mkdir()
        (self.front / "runsc").symlink_to(self.runsc.path)
        self.log = base / "calls.log"
        for name in ("nvidia-container-cli", "nvidia-container-runtime-hook"):
            self.recorder(name, bindir / name)
        self.bundle = base / "bundle"
        self.rootfs = copy_rootfs(busybox_rootfs(), self.bundle / "rootfs")

    def recorder(self, name: str, real: Path) -> Path:
        path = self.front / name
        path.write_text(RECORDER.format(log=self.log, real=real))
        path.chmod(0o755)
        return path

    def env(self, path_first: Path | None = None) -> dict[str, str]:
        head = f"{path_first}:" if path_first else ""
        return dict(self.tools_env, PATH=f"{head}{self.front}:{self.bindir}:/usr/sbin:/usr/bin:/sbin:/bin")

    def run(self, env: list[str], flags=DOCKER_FLAGS, hooks=None, args=("sh", "-c", PROBE),
            runtime_env: dict[str, str] | None = None, debug_log_dir: Path | None = None,
            rootfs: Path | None = None) -> Sandbox:
        from fixtures.runtimes import make_bundle, run_runsc

        self.log.unlink(missing_ok=True)
        make_bundle(self.bundle, rootfs or self.rootfs, list(args), env=env, hooks=hooks)
        proc = run_runsc(self.bundle, env=runtime_env or self.env(), flags=list(flags), timeout=60,
                         debug_log_dir=debug_log_dir)
        calls = self.log.read_text().splitlines() if self.log.exists() else []
        return Sandbox(proc.returncode, proc.stdout, proc.stderr, calls)


@pytest.fixture(scope="module")
def lab(tmp_path_factory, host, tools):
    from fixtures.rootfs import safe_rmtree

    base = tmp_path_factory.mktemp("runsc-lab")
    yield Lab(base, host, tools)
    safe_rmtree(base)


# --- runsc runs our CLI (--nvproxy-docker: the legacy hook's path without a hook) -------------------------------


@pytest.mark.parametrize(("devices", "nodes"), [("0", ["nvidia3"]), ("1", ["nvidia0"]),
                                                ("all", ["nvidia0", "nvidia3"])])
def test_sandbox_gets_the_driver_and_exactly_its_gpus(lab, devices, nodes):
    box = lab.run([f"NVIDIA_VISIBLE_DEVICES={devices}"])
    assert box.returncode == 0, box.stderr
    assert box.has_libcuda, box.stdout
    assert box.value("smi") == "/usr/bin/nvidia-smi"
    # GPU 0 is minor 3 and GPU 1 minor 0 on the fake host: the sandbox names nodes by minor.
    assert box.nodes == sorted(["nvidia-uvm", "nvidiactl", *nodes])
    cli = f"{lab.front}/nvidia-container-cli"
    assert box.calls[0] == f"{cli} --load-kmods info"  # the host has no /dev/nvidiactl: runsc asks us
    configure = box.calls[1].split()
    assert configure[:6] == [cli, "--load-kmods", "configure", "--ldconfig=@/sbin/ldconfig", "--no-cgroups",
                             "--utility"]
    assert f"--device={devices}" in configure and configure[-1] == str(lab.rootfs)
    assert len(box.calls) == 2  # no `--version` probe in this release, no hook


@pytest.mark.parametrize("env", [[], ["NVIDIA_VISIBLE_DEVICES=void"], ["NVIDIA_VISIBLE_DEVICES="]])
def test_container_that_asks_for_no_gpu(lab, env, tmp_path):
    from fixtures.rootfs import busybox_rootfs, copy_rootfs

    # A rootfs of its own: a GPU start leaves the container's ld.so.cache and mount placeholders in its rootfs,
    # as it does in a container's writable layer under runc.
    box = lab.run(env, rootfs=copy_rootfs(busybox_rootfs(), tmp_path / "rootfs"))
    assert box.returncode == 0, box.stderr
    assert box.calls == []
    assert not box.has_libcuda and box.value("smi") == ""
    assert box.nodes == []


def test_capabilities_beyond_compute_utility_are_not_requested(lab):
    """This runsc passes --utility --compute whatever the image asks: no graphics/display libraries arrive."""
    box = lab.run(["NVIDIA_VISIBLE_DEVICES=1", "NVIDIA_DRIVER_CAPABILITIES=display,graphics,compute"])
    assert box.returncode == 0, box.stderr
    assert "--utility --compute" in box.calls[1] and "--display" not in box.calls[1]
    assert box.has_libcuda and box.value("glx") == "0"


def test_capability_nvproxy_cannot_serve_is_refused_in_one_line(lab):
    """A later runsc passes the image's capabilities on; ``display`` must then fail the start, not half-work.
    Reproduced with this runsc by a wrapper that adds ``--display`` to what runsc passes."""
    wrapper = lab.base / "display-cli"
    wrapper.mkdir(exist_ok=True)
    cli = wrapper / "nvidia-container-cli"
    cli.write_text(f'#!/bin/sh\n[ "$2" = configure ] && set -- "$@" --display\n'
                   f'exec {lab.bindir}/nvidia-container-cli "$@"\n')
    cli.chmod(0o755)
    box = lab.run(["NVIDIA_VISIBLE_DEVICES=0"], runtime_env=lab.env(path_first=wrapper))
    assert box.returncode != 0
    assert "nvidia-container-cli configure failed" in box.stderr
    assert ("stderr: nvidia-container-cli: input error: capabilities not supported by gVisor's nvproxy: display "
            "(allowed: compute, graphics, utility, video)\n") in box.stderr


# --- our hook in the spec -----------------------------------------------------------------------------------------


def test_hook_named_as_nvidia_is_recognised_and_never_run(lab):
    """``--nvproxy`` alone: runsc sees the hook's name, does the job itself with our CLI, and skips the hook."""
    hook = f"{lab.front}/nvidia-container-runtime-hook"
    box = lab.run(["NVIDIA_VISIBLE_DEVICES=1"], flags=GPU_FLAGS,
                  hooks={"prestart": [{"path": hook, "args": ["nvidia-container-runtime-hook", "prestart"]}]})
    assert box.returncode == 0, box.stderr
    assert not any(call.startswith(hook) for call in box.calls)
    assert any(" configure " in call and "--device=1" in call for call in box.calls)
    assert box.has_libcuda and box.nodes == ["nvidia-uvm", "nvidia0", "nvidiactl"]


def test_hook_under_another_name_refuses_with_instructions(lab):
    """runsc runs an unrecognised hook on the host with the sandbox's pid: ours must stop the start and say why."""
    other = lab.recorder("gpu-prestart", lab.bindir / "nvidia-container-runtime-hook")
    box = lab.run(["NVIDIA_VISIBLE_DEVICES=0"], flags=GPU_FLAGS,
                  hooks={"prestart": [{"path": str(other), "args": ["gpu-prestart", "prestart"]}]})
    assert box.returncode != 0
    assert box.calls == [f"{other} prestart"]
    assert ("nvidia-container-runtime-hook: container error: this container runs in gVisor (runsc): a hook cannot "
            "inject into the sandbox; run runsc with --nvproxy") in box.stderr
    assert "Traceback" not in box.stderr


# --- the runtime shim's spec edits, runsc with --nvproxy only -----------------------------------------------------


def _shim_front(lab: Lab, mode: str = "auto") -> tuple[Path, dict[str, str]]:
    """``runsc`` in PATH is our ``nvidia-container-runtime`` shim; its config.toml names the real runsc."""
    front = lab.base / f"shim-{mode}"
    if not front.exists():
        front.mkdir()
        (front / "runsc").write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m nvc.commands.runtime_shim '
            f'"$@"\n')
        (front / "runsc").chmod(0o755)
        (front / "config.toml").write_text(
            f'[nvidia-container-cli]\nroot = "{lab.host.root}"\n'
            f'[nvidia-container-runtime]\nmode = "{mode}"\nruntimes = ["{lab.runsc.path}"]\n')
    env = dict(lab.env(path_first=front), NVIDIA_CTK_CONFIG_FILE_PATH=str(front / "config.toml"))
    return front, env


@pytest.mark.parametrize(("devices", "nodes"), [("1", ["nvidia0"]), ("all", ["nvidia0", "nvidia3"])])
def test_spec_edits_through_the_shim_without_nvproxy_docker(lab, devices, nodes):
    _front, env = _shim_front(lab)
    box = lab.run([f"NVIDIA_VISIBLE_DEVICES={devices}"], flags=GPU_FLAGS, runtime_env=env)
    assert box.returncode == 0, box.stderr
    assert box.calls == []  # no CLI, no hook: everything came in through the spec
    assert box.has_libcuda and box.value("smi") == "/usr/bin/nvidia-smi"
    assert box.nodes == sorted(["nvidia-uvm", "nvidiactl", *nodes])
    spec = json.loads((lab.bundle / "config.json").read_text())
    assert "NVIDIA_VISIBLE_DEVICES=void" in spec["process"]["env"] and "hooks" not in spec


def test_spec_edits_refuse_display_before_runsc_starts(lab):
    _front, env = _shim_front(lab)
    box = lab.run(["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=display"], flags=GPU_FLAGS,
                  runtime_env=env)
    assert box.returncode == 1
    assert box.stderr == ("nvidia-container-runtime: input error: capabilities not supported by gVisor's nvproxy: "
                          "display (allowed: compute, graphics, utility, video)\n")


# --- failures: a clear error, never a hang ------------------------------------------------------------------------


def test_gofer_gone_before_configure(lab):
    """runsc's gofer dies between runsc starting it and our CLI: one line naming the dead process."""
    wrapper = lab.base / "kill-gofer"
    wrapper.mkdir(exist_ok=True)
    cli = wrapper / "nvidia-container-cli"
    cli.write_text('#!/bin/sh\nfor a; do case "$a" in --pid=*) kill -9 "${a#--pid=}";; esac; done\n'
                   f'exec {lab.bindir}/nvidia-container-cli "$@"\n')
    cli.chmod(0o755)
    box = lab.run(["NVIDIA_VISIBLE_DEVICES=0"], runtime_env=lab.env(path_first=wrapper))
    assert box.returncode != 0
    # runsc has not reaped it yet: a zombie, whose mount namespace is gone.
    assert "stderr: nvidia-container-cli: container error: process " in box.stderr
    assert "has exited (the container or runsc's gofer died before configure ran)" in box.stderr


@pytest.mark.parametrize("target", ["/tmp", "../../../../../../tmp"])
def test_hostile_image_whose_dev_is_a_symlink(lab, tmp_path, target):
    from fixtures.rootfs import copy_rootfs, safe_rmtree

    rootfs = copy_rootfs(lab.rootfs, tmp_path / "hostile")
    shutil.rmtree(rootfs / "dev")
    (rootfs / "dev").symlink_to(target)
    box = lab.run(["NVIDIA_VISIBLE_DEVICES=0"], rootfs=rootfs)
    assert box.returncode != 0
    assert (f"stderr: nvidia-container-cli: mount error: mount operation failed: {rootfs}/dev: file exists and is a "
            "symbolic link\n") in box.stderr
    assert os.listdir(rootfs / "tmp") == []  # nothing went where the link points
    assert not [p for p in Path("/tmp").glob("nvidia*") if p.is_char_device() or p.stat().st_size == 0]
    safe_rmtree(rootfs)


def test_driver_root_without_device_nodes(lab, tmp_path):
    root = tmp_path / "root"
    subprocess.run(["cp", "-a", "--reflink=auto", str(lab.host.root), str(root)], check=True)
    for node in (root / "dev").glob("nvidia*"):
        if node.is_char_device():
            node.unlink()
    env = dict(lab.env(), NVC_DRIVER_ROOT=str(root))
    box = lab.run(["NVIDIA_VISIBLE_DEVICES=0"], runtime_env=env)
    assert box.returncode != 0
    assert (f"stderr: nvidia-container-cli: mount error: device node {root}/dev/nvidia3 not found (is the NVIDIA "
            "kernel module loaded? --load-kmods creates missing nodes)\n") in box.stderr


def test_a_reused_rootfs_gets_only_this_starts_gpus_and_its_dev_is_never_written(lab):
    """Each GPU start binds its nodes into a fresh tmpfs at ROOTFS/dev inside the gofer's namespace: nothing lands
    in the image's /dev, so a restarted container that asks for fewer GPUs sees no stale node."""
    assert lab.run(["NVIDIA_VISIBLE_DEVICES=all"]).nodes == ["nvidia-uvm", "nvidia0", "nvidia3", "nvidiactl"]
    assert lab.run(["NVIDIA_VISIBLE_DEVICES=1"]).nodes == ["nvidia-uvm", "nvidia0", "nvidiactl"]
    assert os.listdir(lab.rootfs / "dev") == []


# --- nvc doctor and nvc setup against the real runsc --------------------------------------------------------------


def test_release_dates_of_upstream_and_debian_builds():
    from nvc.host.gvisor_drivers import parse_runsc_release

    assert parse_runsc_release("runsc version release-20240513.0\nspec: 1.1.0") == 20240513
    assert parse_runsc_release("runsc version 0.0~20240729.0\nspec: 1.0.2-dev") == 20240729
    assert parse_runsc_release("runsc version 0.0~20221219.0\n") == 20221219
    assert parse_runsc_release("runsc version VERSION_MISSING\n") is None


def doctor_host(lab: Lab, base: Path, runsc: Path, **runsc_config: str):
    """A host tree for ``nvc doctor --root``: containerd configured by ``nvc setup containerd --runtime runsc``,
    ``/usr/bin/runsc`` the given real binary, our CLI, and the fake GPU host's driver version."""
    from nvc.commands.doctor import DoctorPaths
    from nvc.commands.setup_config import apply_containerd

    root = base / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/runsc").symlink_to(runsc)
    (root / "usr/bin/nvidia-container-cli").symlink_to(lab.bindir / "nvidia-container-cli")
    (root / "proc/driver/nvidia").mkdir(parents=True)
    shutil.copy(lab.host.root / "proc/driver/nvidia/version", root / "proc/driver/nvidia/version")
    apply_containerd(runtime="runsc", runsc_path="/usr/bin/runsc", root=str(root))
    if runsc_config:
        toml = root / "etc/containerd/runsc-gpu.toml"
        toml.write_text(toml.read_text() + "".join(f'  {k} = "{v}"\n' for k, v in runsc_config.items()))
    return DoctorPaths(root=str(root), list_device_nodes=lambda _dev: [])


def runsc_config_flags(paths) -> list[str]:
    """What gVisor's containerd shim hands runsc for ``[runsc_config]``: ``--key=value`` for every (string) entry."""
    import tomllib

    config = tomllib.loads(Path(paths.host("/etc/containerd/runsc-gpu.toml")).read_text())
    assert config["binary_name"] == "/usr/bin/runsc"
    assert all(isinstance(v, str) for v in config["runsc_config"].values())  # the shim decodes strings only
    return [f"--{key}={value}" for key, value in config["runsc_config"].items()]


def test_setup_containerd_writes_flags_this_runsc_starts_a_gpu_sandbox_with(lab, tmp_path):
    from nvc.commands.doctor import diagnose

    paths = doctor_host(lab, tmp_path, lab.runsc.path)
    flags = runsc_config_flags(paths)
    assert flags == ["--nvproxy=true", "--nvproxy-docker=true"]
    # Only the fixture's driver needs one more flag: a forced ABI (see the module docstring).
    box = lab.run(["NVIDIA_VISIBLE_DEVICES=1"], flags=[*flags, DRIVER_FLAG])
    assert box.returncode == 0, box.stderr
    assert box.has_libcuda and box.nodes == ["nvidia-uvm", "nvidia0", "nvidiactl"]
    findings = {f.check: f for f in diagnose(paths)}
    assert findings["containerd.runtime"].severity == "ok"
    assert findings["runsc.version"].what.endswith("runsc version 0.0~20240729.0")
    assert "runsc.unknown-flag" not in findings and "runsc.platform-ptrace" not in findings


def test_doctor_reports_the_unsupported_driver_with_the_error_runsc_really_gives(lab, tmp_path):
    import re

    from nvc.commands.doctor import diagnose
    from nvc.host.gvisor_drivers import SUPPORTED_DRIVER_VERSIONS

    paths = doctor_host(lab, tmp_path, lab.runsc.path)
    (finding,) = [f for f in diagnose(paths) if f.check == "driver.gvisor-unsupported"]
    assert finding.severity == "error"
    assert finding.what.startswith("driver 535.309.01 is not supported by gVisor's nvproxy (`")
    assert "/usr/bin/runsc nvproxy list-supported-drivers`)" in finding.what  # asked the binary...
    assert "535.309.01" in SUPPORTED_DRIVER_VERSIONS  # ...which overrules nvc's copy (a newer runsc's table)
    assert ("on the 535 branch, this runsc's list: 535.104.12, 535.129.03, 535.154.05, 535.161.07"
            in finding.fix)
    assert 'only if you accept the risk' in finding.fix and 'nvproxy-driver-version = "535.161.07"' in finding.fix
    # The quoted errors are what runsc prints for this driver: the user's line and the sandbox's own log.
    logs = tmp_path / "logs"
    box = lab.run(["NVIDIA_VISIBLE_DEVICES=0"], flags=["--platform=systrap", "--nvproxy", "--nvproxy-docker",
                                                       "--nvproxy-driver-version=535.309.01"], debug_log_dir=logs)
    assert box.returncode != 0
    quoted = re.findall(r"`([^`]+)`", finding.why)
    assert quoted == ["unsupported Nvidia driver version: 535.309.01", "waiting for sandbox to start: EOF"]
    assert box.stderr.rstrip().endswith(quoted[1])
    boot_log = "".join(p.read_text() for p in logs.glob("*.boot.txt"))
    assert f"registering nvproxy driver: {quoted[0]}" in boot_log


def test_doctor_falls_back_to_its_table_for_a_runsc_without_the_command(lab, tmp_path):
    """bookworm's own runsc (0.0~20221219) predates nvproxy: too old, and its list is nvc's copy, said so."""
    from nvc.commands.doctor import diagnose

    old = shutil.which("runsc", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if old is None or "0.0~20221219" not in subprocess.run([old, "--version"], capture_output=True,
                                                             text=True).stdout:
        pytest.skip("bookworm's runsc 0.0~20221219 is not installed")
    findings = {f.check: f for f in diagnose(doctor_host(lab, tmp_path, Path(old)))}
    assert findings["runsc.too-old"].severity == "error"
    assert "0.0~20221219" in findings["runsc.too-old"].what
    driver = findings["driver.gvisor"]  # 535.309.01 is in nvc's copy (newer releases support it)
    assert driver.what == ("driver 535.309.01 is supported by gVisor's nvproxy (nvc's copy of gVisor's table, as "
                           "/usr/bin/runsc has no `nvproxy list-supported-drivers` (exit 128: a release older than "
                           "the command))")


def test_doctor_flags_a_runsc_config_key_this_runsc_does_not_know(lab, tmp_path):
    from nvc.commands.doctor import diagnose

    paths = doctor_host(lab, tmp_path, lab.runsc.path, **{"nvproxy-typo": "true"})
    (finding,) = [f for f in diagnose(paths) if f.check == "runsc.unknown-flag"]
    assert finding.severity == "error" and "nvproxy-typo" in finding.what
    box = lab.run(["NVIDIA_VISIBLE_DEVICES=0"], flags=[*runsc_config_flags(paths), *GPU_FLAGS])
    assert box.returncode != 0
    assert finding.why.endswith("`flag provided but not defined: -nvproxy-typo`")
    assert box.stderr.startswith("flag provided but not defined: -nvproxy-typo\n")


def test_doctor_platform_advice_and_probe(lab, tmp_path):
    from dataclasses import replace

    from nvc.commands.doctor import diagnose

    paths = doctor_host(lab, tmp_path / "ptrace", lab.runsc.path, platform="ptrace")
    (warning,) = [f for f in diagnose(paths) if f.check == "runsc.platform-ptrace"]
    assert warning.severity == "warning" and 'platform = "systrap"' in warning.fix
    assert "--probe" in warning.fix

    probed = {f.check: f for f in diagnose(replace(doctor_host(lab, tmp_path / "default", lab.runsc.path),
                                                   probe=True))}
    assert probed["runsc.platform"].severity == "ok"  # systrap, this runsc's default, started /bin/true
    assert probed["runsc.platform"].what.startswith('containerd runtime "nvidia": runsc platform systrap starts')

    # A platform that cannot work here, deterministically: one this runsc does not have.
    paths = replace(doctor_host(lab, tmp_path / "broken", lab.runsc.path, platform="nosuch"), probe=True)
    (broken,) = [f for f in diagnose(paths) if f.check == "runsc.platform-broken"]
    assert broken.what.endswith("runsc's platform nosuch cannot start a sandbox on this host (unknown platform: "
                                "nosuch)")
    assert broken.fix.endswith("the probe started a systrap sandbox fine")
    assert not list(Path("/tmp").glob("nvc-doctor-runsc-*"))  # probes leave no state behind
