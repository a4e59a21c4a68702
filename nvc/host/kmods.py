"""``--load-kmods``: make sure the driver's device nodes exist before anyone opens them.

NVIDIA's CLI loads the kernel modules and creates missing ``/dev/nvidia*`` nodes through the setuid
``nvidia-modprobe``. runsc relies on this (``nvidia-container-cli --load-kmods info`` when the host has no
``/dev/nvidiactl``). When ``nvidia-modprobe`` is on PATH we run it as NVIDIA does; otherwise we create the
nodes ourselves from the majors the kernel registered in ``/proc/devices`` (only when the driver is loaded:
no ``nvidia`` entry, no node). Everything is looked up under the driver root, like every other driver file.
"""

from __future__ import annotations

import os
import stat

from nvc import components as comp
from nvc.debuglog import NULL_LOG, DebugLog
from nvc.host.proc_driver import parse_device_majors, parse_params

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from nvc.rootpath import DriverRoot

NODE_MODE = 0o666


def _mknod(path: str, major: int, minor: int, log: DebugLog) -> None:
    if os.path.lexists(path):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mknod(path, NODE_MODE | stat.S_IFCHR, os.makedev(major, minor))
    os.chmod(path, NODE_MODE)
    log.info(f"created device node {path} ({major}:{minor})")


def _which(name: str) -> str | None:
    """``shutil.which(name)`` for a plain name (shutil costs ~8 ms of start-up; this runs on container starts)."""
    search = os.environ.get("PATH")
    if search is None:
        search = os.defpath
    if not search:  # PATH set but empty: nothing, as shutil.which (not the current directory)
        return None
    for directory in search.split(os.pathsep):
        path = os.path.join(directory or ".", name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def _read_majors(driver_root: DriverRoot) -> dict[str, int] | None:
    # UTF-8, not ascii: the kernel writes ASCII here, and ascii's codec is a module to import on every start.
    try:
        with open(driver_root.host_path("/proc/devices"), encoding="utf-8", errors="replace") as f:
            return parse_device_majors(f.read())
    except OSError:
        return None


def _read_params(driver_root: DriverRoot) -> dict[str, str]:
    """``/proc/driver/nvidia/params`` as ``{key: value}`` (empty when unreadable)."""
    try:
        with open(driver_root.host_path(comp.PROC_DRIVER + "/params"), encoding="utf-8", errors="replace") as f:
            return parse_params(f.read(1 << 16))
    except OSError:
        return {}


def _node_ready(path: str, major: int, minor: int, params: dict[str, str]) -> bool:
    """True when ``path`` is the character device ``major:minor`` with the owner and mode the driver asks for —
    nothing nvidia-modprobe would create or fix (it also repairs a stale major after a module reload)."""
    try:
        st = os.stat(path)  # follows a symlink, as nvidia-modprobe does; a dangling one is not ready
    except OSError:
        return False
    if not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(major, minor):
        return False
    if params.get("ModifyDeviceFiles", "1") == "0":
        return True  # the driver leaves existing nodes alone
    try:
        mode = int(params.get("DeviceFileMode", "438"))  # decimal in params: 438 = 0o666
        uid = int(params.get("DeviceFileUID", "0"))
        gid = int(params.get("DeviceFileGID", "0"))
    except ValueError:
        return False
    return stat.S_IMODE(st.st_mode) == mode and st.st_uid == uid and st.st_gid == gid


def load_kernel_modules(driver_root: DriverRoot, gpu_minors: list[int] | None = None, log: DebugLog = NULL_LOG) -> None:
    """Create the control nodes (and ``/dev/nvidiaN`` for ``gpu_minors``) that are missing.

    When the kernel lists both modules in /proc/devices and every node is there as the right device with the
    driver's owner and mode, there is nothing to do — not even exec'ing nvidia-modprobe, which would only confirm
    it (this runs on every container start)."""
    majors = _read_majors(driver_root)
    frontend = uvm = None
    if majors is not None:
        frontend = majors.get("nvidia-frontend", majors.get("nvidia"))
        uvm = majors.get("nvidia-uvm")
    nodes = [
        (comp.NVIDIACTL, frontend, comp.NVIDIACTL_MINOR),
        *((comp.GPU_DEVICE_TEMPLATE.format(minor=minor), frontend, minor) for minor in gpu_minors or ()),
        (comp.NVIDIA_UVM, uvm, 0),
        (comp.NVIDIA_UVM_TOOLS, uvm, 1),
    ]
    if frontend is not None and uvm is not None:
        params = _read_params(driver_root)
        if all(_node_ready(driver_root.host_path(path), major, minor, params) for path, major, minor in nodes):
            log.info("kernel modules loaded and device nodes present")
            return
    modprobe = _which("nvidia-modprobe") if driver_root.path == "/" else None
    if modprobe:
        import subprocess

        args = [modprobe, "-u", "-c=0"] + [f"-c={m}" for m in gpu_minors or ()]
        subprocess.run(args, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, timeout=30)
        return
    for path, major, minor in nodes:
        if major is not None:
            _mknod(driver_root.host_path(path), major, minor, log)
