"""What ``nvc doctor`` reads and reports: its inputs (:class:`DoctorPaths`), its results (:class:`Finding`) and the
state one run shares between checks (:class:`_Context`).

Here, below :mod:`nvc.commands.doctor` and its check modules (``doctor_driver``, ``doctor_cdi``,
``doctor_gvisor``), so that each of them can name these types without importing the module that imports it back.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from nvc.commands.setup_config import CONTAINERD_CONFIG, DOCKER_DAEMON_CONFIG, SERVICE_PATH
from nvc.rootpath import DriverRoot

SEVERITIES = ("error", "warning", "ok")
HOOK_NAME = "nvidia-container-runtime-hook"  # the only prestart hook name runsc recognises (by path suffix)
CLI_NAME = "nvidia-container-cli"
NVIDIA_RUNTIME_CONFIG = "/etc/nvidia-container-runtime/config.toml"
HOOKS_DIRS = ("/usr/share/containers/oci/hooks.d", "/etc/containers/oci/hooks.d")


@dataclass(frozen=True)
class Finding:
    """One result: ``severity`` is ``error`` (containers will fail), ``warning`` (may fail / degraded) or ``ok``."""

    severity: str
    what: str
    why: str = ""
    fix: str = ""
    check: str = ""  # stable identifier of the check, for scripts and tests (e.g. "containerd.runc-shim-runsc")

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class CommandResult:
    """Outcome of running a binary (``--version`` and the like)."""

    returncode: int
    stdout: str
    stderr: str = ""


@dataclass(frozen=True)
class DeviceNodeEntry:
    """A ``/dev`` entry that looks like an NVIDIA node. ``name`` is relative to the dev directory."""

    name: str
    is_char: bool
    major: int | None = None
    minor: int | None = None


def run_command(argv: Sequence[str], timeout: float = 10.0) -> CommandResult | None:
    """Run ``argv`` with a clean locale and a time limit; ``None`` if it cannot be run at all."""
    import subprocess

    env = {"PATH": SERVICE_PATH, "LC_ALL": "C"}
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return CommandResult(proc.returncode, proc.stdout, proc.stderr)


def scan_device_nodes(dev_dir: str) -> list[DeviceNodeEntry]:
    """``nvidia*`` entries of ``dev_dir`` and the nodes in its ``nvidia-caps*`` directories (lstat: never follows)."""
    entries: list[DeviceNodeEntry] = []
    try:
        names = sorted(os.listdir(dev_dir))
    except OSError:
        return entries
    for name in names:
        if not name.startswith("nvidia"):
            continue
        full = os.path.join(dev_dir, name)
        try:
            st = os.lstat(full)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and name.startswith("nvidia-caps"):
            for sub in sorted(os.listdir(full)):
                entries.extend(_node_entry(os.path.join(full, sub), f"{name}/{sub}"))
        else:
            entries.extend(_node_entry(full, name, st))
    return entries


def _node_entry(path: str, name: str, st: os.stat_result | None = None) -> list[DeviceNodeEntry]:
    try:
        st = st or os.lstat(path)
    except OSError:
        return []
    if stat.S_ISCHR(st.st_mode):
        return [DeviceNodeEntry(name, True, os.major(st.st_rdev), os.minor(st.st_rdev))]
    return [DeviceNodeEntry(name, False)]


@dataclass
class DoctorPaths:
    """Every input of :func:`diagnose`. Paths are as the host sees them and are read under ``root``."""

    root: str = "/"
    containerd_config: str = CONTAINERD_CONFIG
    docker_daemon_config: str = DOCKER_DAEMON_CONFIG
    nvidia_runtime_config: str = NVIDIA_RUNTIME_CONFIG  # the nvidia-container-runtime shim's config.toml
    hooks_dirs: tuple[str, ...] = HOOKS_DIRS  # podman / CRI-O OCI hook definitions
    # PATH of containerd and dockerd — and so of the shims and runsc they start. systemd's default, not our shell's:
    # a binary found only in a login shell's PATH is invisible to runsc.
    runtime_path: str = SERVICE_PATH
    proc_driver_version: str = "/proc/driver/nvidia/version"
    ldcache: str = "/etc/ld.so.cache"  # the root's ld.so.cache, through which the driver libraries are found
    # run nvc.commands.doctor_driver's checks (kernel module, libraries, NVML, nvidia-smi, /dev)
    driver_checks: bool = True
    proc_devices: str = "/proc/devices"
    dev_dir: str = "/dev"
    run: Callable[[Sequence[str]], CommandResult | None] = run_command
    list_device_nodes: Callable[[str], list[DeviceNodeEntry]] = scan_device_nodes
    probe: bool = False  # start a test sandbox per runsc platform (nvc doctor --probe; root)
    # how --probe starts a sandbox; None: nvc.commands.doctor_gvisor.probe_platform (tests pass their own)
    probe_platform: Callable[[str, str], tuple[bool, str]] | None = None

    @property
    def driver_root(self) -> DriverRoot:
        """``root`` as the driver root the driver checks look inside (symlinks resolved within it)."""
        return DriverRoot(self.root)

    def host(self, path: str) -> str:
        """Where ``path`` (absolute, as configs name it) is on this machine."""
        if self.root in ("", "/"):
            return path
        return os.path.join(self.root, path.lstrip("/"))

    def read(self, path: str) -> str | None:
        try:
            with open(self.host(path), encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return None

    def is_executable(self, path: str) -> bool:
        full = self.host(path)
        return os.path.isfile(full) and os.access(full, os.X_OK)

    def which(self, name: str) -> str | None:
        """``name`` looked up in :attr:`runtime_path` (the services' view); an absolute path is checked as is."""
        if "/" in name:
            return name if self.is_executable(name) else None
        for directory in self.runtime_path.split(":"):
            if directory and self.is_executable(os.path.join(directory, name)):
                return os.path.join(directory, name)
        return None

    def run_binary(self, path: str, *args: str) -> CommandResult | None:
        return self.run([self.host(path), *args])


@dataclass
class _GpuRuntime:
    where: str  # 'containerd runtime "nvidia"'
    kind: str  # "runsc" | "runc"
    fix: str  # the nvc setup command that writes this runtime correctly
    runsc: str | None = None  # runsc binary (services' view)
    flags: dict[str, str] = field(default_factory=dict)  # runsc flags
    legacy: bool = False  # runsc runs nvidia-container-cli itself (hook recognised or --nvproxy-docker)


class _Context:
    def __init__(self, paths: DoctorPaths) -> None:
        self.paths = paths
        self.gpu_runtimes: list[_GpuRuntime] = []
        self._runsc_version: dict[str, CommandResult | None] = {}
        self._shim_config: dict[str, Any] | None = None

    def runsc_version(self, runsc: str) -> CommandResult | None:
        if runsc not in self._runsc_version:
            self._runsc_version[runsc] = self.paths.run_binary(runsc, "--version")
        return self._runsc_version[runsc]

    def runsc_release(self, runsc: str | None) -> int | None:
        from nvc.host.gvisor_drivers import parse_runsc_release

        result = self.runsc_version(runsc) if runsc else None
        if result is None or result.returncode != 0:
            return None
        return parse_runsc_release(result.stdout)

    def shim_config(self) -> dict[str, Any]:
        """The nvidia-container-runtime shim's config.toml (NVIDIA's defaults where absent or unreadable)."""
        if self._shim_config is None:
            import tomllib

            text = self.paths.read(self.paths.nvidia_runtime_config) or ""
            try:
                self._shim_config = tomllib.loads(text)
            except tomllib.TOMLDecodeError:
                self._shim_config = {}
        return self._shim_config

    def shim_runtimes(self) -> list[str]:
        runtime = self.shim_config().get("nvidia-container-runtime", {})
        runtimes = runtime.get("runtimes") if isinstance(runtime, dict) else None
        return [str(r) for r in runtimes] if isinstance(runtimes, list) else ["runc", "crun"]

    def shim_target(self) -> str | None:
        """What the shim execs: the first of its ``runtimes`` found in PATH (basename), ``None`` if none is."""
        for candidate in self.shim_runtimes():
            if self.paths.which(candidate):
                return os.path.basename(candidate)
        return None

    def shim_hook_path(self) -> str:
        hook = self.shim_config().get("nvidia-container-runtime-hook", {})
        path = hook.get("path") if isinstance(hook, dict) else None
        return str(path) if path else HOOK_NAME

    def shim_cli_path(self) -> str:
        cli = self.shim_config().get("nvidia-container-cli", {})
        path = cli.get("path") if isinstance(cli, dict) else None
        return str(path) if path else CLI_NAME
