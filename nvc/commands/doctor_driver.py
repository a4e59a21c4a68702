"""``nvc doctor``'s driver checks: is there a driver a container could be given at all?

A new GPU host's first problem is the driver, not the runtime configuration, and every symptom of a missing or
half-installed driver shows up far from its cause (``nvidia-smi: not found`` in a container, ``cuInit`` 100 or 999,
``Failed to initialize NVML: Driver/library version mismatch``). So these checks run whatever else is set up, each
on one link of the chain a container start walks, all read under :attr:`DoctorPaths.root`:

1. the kernel module: ``/proc/driver/nvidia/version`` (the version it reports);
2. the driver libraries, found as nvc finds them: through the root's ld.so.cache (``libnvidia-ml.so.1``,
   ``libcuda.so.1``), and whether their version matches the kernel module's;
3. NVML: started exactly as ``nvc info`` starts it (the confined, chrooted helper of :mod:`nvc.host.nvml` with its
   timeout), never answered from the NVML cache, so a failure *now* is seen even while containers still start
   from a cached answer;
4. ``nvidia-smi``: the file a container asking for ``utility`` would get (the first of the PATH directories, inside
   the root, that holds it);
5. the device nodes: ``/dev/nvidiactl``, ``/dev/nvidia-uvm`` and one ``/dev/nvidiaN`` per GPU the kernel module
   lists (``/proc/driver/nvidia/gpus/*/information``, ``Device Minor``).

Each finding says what is wrong, what users see because of it, and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from nvc import components as comp
from nvc.commands.doctor_inputs import DoctorPaths, Finding
from nvc.driver_info import DriverInfo
from nvc.errors import NvcError
from nvc.rootpath import DriverRoot

CUDA_SONAME = "libcuda.so.1"
_INSTALL_DRIVER = (
    "install the NVIDIA driver for this kernel (Debian: `apt install nvidia-driver firmware-misc-nonfree`, "
    "or NVIDIA's .run installer), then `modprobe nvidia`"
)
_MAKE_NODES = "`nvidia-modprobe -u -c=0` (or `nvidia-container-cli --load-kmods info`) creates them"


@dataclass(frozen=True)
class _Libraries:
    nvml: str | None  # in-root real path of libnvidia-ml.so.1, or None
    cuda: str | None
    version: str | None  # from the NVML library's file name


def check_driver(paths: DoctorPaths, ask_nvml: Callable[[DriverRoot, str], DriverInfo] | None = None) -> list[Finding]:
    """The driver checks, in chain order. ``ask_nvml(driver_root, library)`` defaults to nvc's confined NVML helper
    (as ``nvc info`` runs it, uncached)."""
    findings, module_version = _check_kernel_module(paths)
    library_findings, libraries = _check_libraries(paths, module_version)
    findings += library_findings
    findings += _check_nvml(paths, libraries, ask_nvml or _query_nvml)
    findings += _check_nvidia_smi(paths)
    findings += _check_nodes(paths, module_version is not None)
    return findings


# ---------------------------------------------------------------------------------------------------- kernel


def _check_kernel_module(paths: DoctorPaths) -> tuple[list[Finding], str | None]:
    from nvc.host.proc_driver import parse_nvrm_version

    where = paths.host(paths.proc_driver_version)
    text = paths.read(paths.proc_driver_version)
    if text is None:
        return [Finding(
            "error",
            f"no NVIDIA kernel module is loaded ({where} is missing)",
            "no GPU exists for containers: NVML fails with `Driver Not Loaded`, nvidia-smi with `couldn't "
            "communicate with the NVIDIA driver`, CUDA with `cuInit` error 100",
            _INSTALL_DRIVER + "; if it is installed, `dmesg | grep -i nvrm` says why it did not load (Secure Boot "
            "refusing an unsigned module, nouveau holding the GPU)",
            "driver.kernel-module",
        )], None
    version = parse_nvrm_version(text)
    if version is None:
        return [Finding(
            "warning",
            f"{where} does not name a driver version",
            "its first line is not the usual `NVRM version: ... Kernel Module X.Y.Z`; nvc cannot check the "
            "libraries against it",
            "",
            "driver.kernel-module",
        )], None
    return [Finding("ok", f"NVIDIA kernel module {version} is loaded", check="driver.kernel-module")], version


# ---------------------------------------------------------------------------------------------------- libraries


def _check_libraries(paths: DoctorPaths, module_version: str | None) -> tuple[list[Finding], _Libraries]:
    from nvc.host.discovery import NVML_SONAME, load_ldcache, version_from_library_name
    from nvc.host.ldcache import host_arch_classes

    none = _Libraries(None, None, None)
    try:
        cache = load_ldcache(paths.driver_root, paths.ldcache)
    except NvcError as exc:
        return [Finding(
            "error",
            f"cannot read the driver root's ld.so.cache: {exc.message}",
            "nvc finds every driver library through it: `nvidia-container-cli` fails with `detection error` and "
            "no GPU container starts",
            "run `ldconfig` (with the driver installed)" if paths.root in ("", "/")
            else f"run `ldconfig -r {paths.root}`",
            "driver.libraries",
        )], none
    ldcache_host = paths.host(paths.ldcache)
    arch = host_arch_classes()[0]
    nvml = _cache_lookup(cache, paths.driver_root, NVML_SONAME, arch)
    cuda = _cache_lookup(cache, paths.driver_root, CUDA_SONAME, arch)
    if nvml is None:
        return [Finding(
            "error",
            f"no NVIDIA driver libraries in {ldcache_host} ({NVML_SONAME} is not listed, or names a missing file)",
            "nvc cannot learn the driver version or the GPUs: `nvidia-container-cli` fails with `load library "
            "failed: libnvidia-ml.so.1`, and containers get neither libraries nor nvidia-smi",
            "install the driver's user-space libraries (Debian: `apt install nvidia-driver` or at least "
            "`libnvidia-ml1 libcuda1 nvidia-smi`), then run `ldconfig`",
            "driver.libraries",
        )], none
    version = version_from_library_name(nvml)
    libraries = _Libraries(nvml, cuda, version)
    findings = []
    if cuda is None:
        findings.append(Finding(
            "warning",
            f"{CUDA_SONAME} is not in {ldcache_host}",
            "containers asking for `compute` get no libcuda: CUDA programs fail with `libcuda.so.1: cannot open "
            "shared object file`",
            "install the driver's CUDA library (Debian: `apt install libcuda1`), then run `ldconfig`",
            "driver.libcuda",
        ))
    if module_version and version and version != module_version:
        findings.append(Finding(
            "error",
            f"driver libraries {version} do not match the kernel module {module_version}",
            "NVML fails with `Driver/library version mismatch` and CUDA with `cuInit` error 804 — on the host and "
            "in every container",
            f"reboot (or unload and reload the nvidia modules) to load the {version} kernel module, or reinstall "
            f"the {module_version} libraries",
            "driver.version-mismatch",
        ))
    else:
        found = f"{NVML_SONAME} → {nvml}" + (f", {CUDA_SONAME} → {cuda}" if cuda else "")
        findings.append(Finding("ok", f"driver libraries {version or '(version unknown)'}: {found}",
                                check="driver.libraries"))
    return findings, libraries


def _cache_lookup(cache, root: DriverRoot, soname: str, arch_class: int) -> str | None:
    """In-root real path of the last cache entry for ``soname`` whose file exists (nvc's own rule for NVML)."""
    from nvc.host.discovery import find_nvml_library

    if soname == "libnvidia-ml.so.1":
        try:
            return find_nvml_library(cache, root, arch_class)
        except NvcError:
            return None
    from nvc.host.ldcache import FLAG_ARCH_MASK, FLAG_ELF
    from nvc.rootpath import RootPathError

    found = None
    for entry in cache.entries:
        if entry.key != soname or not entry.flags & FLAG_ELF or (entry.flags & FLAG_ARCH_MASK) != arch_class:
            continue
        try:
            inner = root.resolve(entry.value)
        except RootPathError:
            continue
        if os.path.isfile(root.host_path(inner)):
            found = inner
    return found


# ---------------------------------------------------------------------------------------------------- NVML


def _query_nvml(root: DriverRoot, library: str) -> DriverInfo:
    from nvc.host.inventory import query_nvml

    return query_nvml(root, library=library, use_cache=False)


# What to do about each NVML start failure (matched on libnvidia-container's message text).
_NVML_FIXES: tuple[tuple[str, str], ...] = (
    ("driver not loaded", "load the kernel module: `modprobe nvidia` (see the kernel module finding)"),
    ("version mismatch", "reboot, or unload and reload the nvidia kernel modules, so that the loaded module "
                         "matches the installed libraries"),
    ("timed out", "the driver does not answer within 10 s: look at `dmesg` for Xid errors; starting "
                  "`nvidia-persistenced` keeps the GPUs initialised between calls"),
    ("insufficient permissions", "the NVML helper runs as nobody: check the mode of /dev/nvidia* "
                                 "(ModifyDeviceFiles / DeviceFileMode in /proc/driver/nvidia/params)"),
    ("load library failed", "reinstall the driver's libnvidia-ml (Debian: `apt install --reinstall libnvidia-ml1`)"),
)


def _check_nvml(paths: DoctorPaths, libraries: _Libraries,
                ask_nvml: Callable[[DriverRoot, str], DriverInfo]) -> list[Finding]:
    if libraries.nvml is None:
        return [Finding(
            "error",
            "NVML was not started: the driver root has no libnvidia-ml.so.1",
            "`nvidia-container-cli info` fails and no container gets a GPU",
            "see the driver libraries finding",
            "driver.nvml",
        )]
    try:
        info = ask_nvml(paths.driver_root, libraries.nvml)
    except NvcError as exc:
        fix = next((text for needle, text in _NVML_FIXES if needle in exc.message.lower()), "")
        return [Finding(
            "error",
            f"NVML does not start ({paths.host(libraries.nvml)}): {exc}",
            "`nvidia-container-cli info` fails the same way; GPU containers that are not served from nvc's NVML "
            "cache fail to start, and nvidia-smi and CUDA inside them fail too",
            fix,
            "driver.nvml",
        )]
    gpus = ", ".join(f"{gpu.index}: {gpu.model} (/dev/nvidia{gpu.minor})" for gpu in info.gpus) or "none"
    findings = [Finding("ok", f"NVML starts: driver {info.driver_version}, CUDA {info.cuda_version}, GPUs {gpus}",
                        check="driver.nvml")]
    if not info.gpus:
        findings.append(Finding(
            "warning",
            "NVML starts but sees no GPU",
            "containers get the driver libraries and no device: `nvidia-smi` prints `No devices were found`",
            "check `lspci -d 10de:` and `dmesg | grep -i nvrm` (a GPU the driver does not support, or fell off "
            "the bus)",
            "driver.no-gpus",
        ))
    return findings


# ---------------------------------------------------------------------------------------------------- nvidia-smi


def _check_nvidia_smi(paths: DoctorPaths) -> list[Finding]:
    from nvc.host.discovery import find_binaries

    smi = next((b for b in find_binaries(paths.driver_root) if b.name == "nvidia-smi"), None)
    if smi is None:
        dirs = ", ".join(d for d in comp.DEFAULT_PATH.split(":") if d)
        return [Finding(
            "warning",
            f"no nvidia-smi in the driver root's PATH directories ({dirs})",
            "containers asking for `utility` (NVIDIA_DRIVER_CAPABILITIES) get no nvidia-smi: `nvidia-smi: not "
            "found`",
            "install it (Debian: `apt install nvidia-smi`; NVIDIA's installer puts it in /usr/bin)",
            "driver.nvidia-smi",
        )]
    return [Finding("ok", f"nvidia-smi: {smi.path} (a container gets it as /usr/bin/nvidia-smi)",
                    check="driver.nvidia-smi")]


# ---------------------------------------------------------------------------------------------------- /dev


def _gpu_minors(paths: DoctorPaths) -> list[int]:
    """``Device Minor`` of each GPU the kernel module lists under ``/proc/driver/nvidia/gpus``."""
    gpus_dir = paths.host(comp.PROC_DRIVER + "/gpus")
    minors = []
    try:
        names = sorted(os.listdir(gpus_dir))
    except OSError:
        return minors
    for name in names:
        text = paths.read(f"{comp.PROC_DRIVER}/gpus/{name}/information") or ""
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Device Minor" and value.strip().isdigit():
                minors.append(int(value.strip()))
    return minors


def _check_nodes(paths: DoctorPaths, module_loaded: bool) -> list[Finding]:
    dev_dir = paths.dev_dir.rstrip("/")
    present = {n.name for n in paths.list_device_nodes(paths.host(paths.dev_dir)) if n.is_char}
    wanted = ["nvidiactl", "nvidia-uvm", *(f"nvidia{minor}" for minor in _gpu_minors(paths))]
    missing = [f"{dev_dir}/{name}" for name in wanted if name not in present]
    if not module_loaded:
        if present:
            return []  # nodes without a driver: doctor's device-node check reports them as orphaned
        return [Finding(
            "warning",
            f"no NVIDIA device nodes in {paths.host(paths.dev_dir)}",
            "expected while no kernel module is loaded; containers need /dev/nvidiactl, /dev/nvidia-uvm and "
            "/dev/nvidiaN",
            "load the driver (`modprobe nvidia nvidia-uvm`), then " + _MAKE_NODES,
            "driver.device-nodes",
        )]
    if missing:
        return [Finding(
            "error",
            f"missing NVIDIA device nodes: {', '.join(missing)}",
            "containers get no such node: CUDA fails with `cuInit` error 100 or 999 and nvidia-smi finds no "
            "device (no udev rule or nvidia-persistenced created them after the module loaded)",
            _MAKE_NODES + "; or set `load-kmods = true` under [nvidia-container-cli] in "
            "/etc/nvidia-container-runtime/config.toml",
            "driver.device-nodes",
        )]
    return [Finding("ok", f"device nodes: {', '.join(f'{dev_dir}/{name}' for name in wanted)}",
                    check="driver.device-nodes")]


__all__ = ["check_driver"]
