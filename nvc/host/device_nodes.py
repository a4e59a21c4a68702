"""Device nodes and MIG capability files a container gets, looked up inside the driver root.

A driver container (``--root /run/nvidia/driver``) exposes its own ``/dev`` and ``/proc/driver``, so nodes are
looked for under the root like every other driver file. GPU nodes are named by the NVML *minor* number, which is not
always the GPU index.
"""

from __future__ import annotations

import os
import stat

from nvc import components as comp
from nvc.components import Capability
from nvc.driver_info import DeviceSelection
from nvc.host.proc_driver import parse_mig_minors
from nvc.record import record

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Iterable

    from nvc.rootpath import DriverRoot


@record(frozen=True)
class DeviceNode:
    """A character device (or, for ``kind == "mig-cap-file"``, the /proc capability file that goes with one)."""

    kind: str  # "control" | "gpu" | "mig-cap-file" | "mig-cap" | "imex"
    path: str  # inside the driver root, and where it goes in the container
    host_path: str
    major: int
    minor: int
    capability: Capability | None = None  # control nodes needed only for one capability (uvm: compute)
    gpu_bus_id: str | None = None


_CONTROL_NODES: tuple[tuple[str, Capability | None], ...] = (
    (comp.NVIDIACTL, None),
    (comp.NVIDIA_UVM, Capability.COMPUTE),
    (comp.NVIDIA_UVM_TOOLS, Capability.COMPUTE),
    (comp.NVIDIA_MODESET, Capability.DISPLAY),
)


def _char_rdev(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISCHR(st.st_mode):
        return None
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def control_nodes(driver_root: DriverRoot) -> tuple[DeviceNode, ...]:
    """The control nodes that exist in the root, in NVIDIA's order."""
    nodes = []
    for path, cap in _CONTROL_NODES:
        full = driver_root.host_path(path)
        rdev = _char_rdev(full)
        if rdev is not None:
            nodes.append(DeviceNode("control", path, full, rdev[0], rdev[1], cap))
    return tuple(nodes)


def gpu_nodes(driver_root: DriverRoot, selection: DeviceSelection) -> tuple[DeviceNode, ...]:
    """``/dev/nvidiaN`` for each selected GPU (N = NVML minor), whether or not the node exists yet."""
    nodes = []
    for gpu in selection.gpus:
        path = comp.GPU_DEVICE_TEMPLATE.format(minor=gpu.minor)
        full = driver_root.host_path(path)
        major, minor = _char_rdev(full) or (comp.NVIDIA_MAJOR, gpu.minor)
        nodes.append(DeviceNode("gpu", path, full, major, minor, gpu_bus_id=gpu.bus_id))
    return tuple(nodes)


def _read_mig_minors(driver_root: DriverRoot) -> dict[str, int]:
    try:
        with open(driver_root.host_path(comp.MIG_MINORS_FILE), encoding="utf-8", errors="replace") as f:
            return parse_mig_minors(f.read())
    except OSError:
        return {}


def mig_nodes(
    driver_root: DriverRoot, selection: DeviceSelection, mig_config: bool = False, mig_monitor: bool = False
) -> tuple[DeviceNode, ...]:
    """MIG capability files and their ``/dev/nvidia-caps/nvidia-capN`` nodes (minors from mig-minors)."""
    minors = _read_mig_minors(driver_root)
    wanted: list[tuple[str, str]] = []  # (mig-minors key, capability file path)
    if mig_config:
        wanted.append(("config", comp.MIG_CONFIG_CAP))
    if mig_monitor:
        wanted.append(("monitor", comp.MIG_MONITOR_CAP))
    for gpu, mig in selection.migs:
        gi = f"gpu{gpu.minor}/gi{mig.gpu_instance_id}"
        ci = f"{gi}/ci{mig.compute_instance_id}"
        wanted.append((f"{gi}/access", f"{comp.PROC_DRIVER}/capabilities/{gi.replace('/gi', '/mig/gi')}/access"))
        wanted.append((f"{ci}/access", f"{comp.PROC_DRIVER}/capabilities/{ci.replace('/gi', '/mig/gi')}/access"))
    nodes: list[DeviceNode] = []
    seen: set[str] = set()
    for key, cap_file in wanted:
        if key in seen or key not in minors:
            continue
        seen.add(key)
        minor = minors[key]
        dev = comp.CAPS_DEVICE_TEMPLATE.format(minor=minor)
        dev_full = driver_root.host_path(dev)
        major, minor = _char_rdev(dev_full) or (0, minor)
        nodes.append(DeviceNode("mig-cap-file", cap_file, driver_root.host_path(cap_file), major, minor))
        nodes.append(DeviceNode("mig-cap", dev, dev_full, major, minor))
    return tuple(nodes)


def imex_nodes(driver_root: DriverRoot, channels: Iterable[int]) -> tuple[DeviceNode, ...]:
    """IMEX channel nodes that exist for the requested channel numbers."""
    nodes = []
    for channel in channels:
        path = comp.IMEX_CHANNEL_TEMPLATE.format(channel=channel)
        full = driver_root.host_path(path)
        rdev = _char_rdev(full)
        if rdev is not None:
            nodes.append(DeviceNode("imex", path, full, rdev[0], rdev[1]))
    return tuple(nodes)
