"""The plan: what a container gets, as an ordered list of small typed operations.

One source of truth for every executor: ``configure`` applies it inside the container's mount namespace,
``configure --dry-run`` prints it, and the OCI/gVisor emitters turn it into spec edits. The planner is pure: it
takes the host inventory, the request and what was read of the image (:class:`ContainerLayout`), and returns
values; it never touches the filesystem or the kernel.

Order follows libnvidia-container: the /proc/driver/nvidia tmpfs, the graphics profile tmpfs, binaries,
libraries, 32-bit libraries, symlinks, CUDA forward-compat libraries, firmware, IPC, control devices, then per GPU
its node and /proc dir, MIG capabilities, IMEX channels, and finally the ld.so.cache update.
"""

from __future__ import annotations

import os

from nvc import components as comp
from nvc.components import Capability
from nvc.driver_info import DeviceSelection
from nvc.host import device_nodes
from nvc.host.discovery import DriverFile, filter_by_capabilities
from nvc.host.inventory import Inventory
from nvc.host.proc_driver import proc_bus_id
from nvc.record import field, record
from nvc.request.configure_request import ConfigureRequest
from nvc.request.container_layout import BINARY_DIR, CUDA_COMPAT_DIR, ContainerLayout
from nvc.request.gvisor import SUPPORTED_DEVICES as GVISOR_DEVICES
from nvc.rootpath import DriverRoot

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Iterable

PROC_DRIVER_FILES = ("params", "version", "registry")
APP_PROFILES_DIR = "/etc/nvidia/nvidia-application-profiles-rc.d"


@record(frozen=True)
class Tmpfs:
    """A fresh tmpfs at ``target`` (in-rootfs path), filled with ``files`` (name, host source path, rewrite)."""

    target: str
    mode: int
    files: tuple[tuple[str, str], ...] = ()  # (file name, host path to copy from)
    noexec: bool = True
    capability: str | None = None


@record(frozen=True)
class Bind:
    """Bind ``source`` onto ``target`` (in-rootfs path). ``source_in_rootfs``: the source is itself a path inside
    the container (CUDA compat libraries) and must be resolved there, not on the host."""

    kind: str  # binary | library | library32 | compat | firmware | ipc | device | proc-gpu | mig-cap
    source: str
    target: str
    readonly: bool = True
    nosuid: bool = True
    nodev: bool = True
    noexec: bool = False
    directory: bool = False
    device: tuple[int, int] | None = None  # (major, minor) the host node must have
    source_in_rootfs: bool = False
    capability: str | None = None
    driver_path: str = ""  # the source as a path inside the driver root: what `list` prints
    node_kind: str | None = None  # device nodes: control | gpu | mig-cap | imex


@record(frozen=True)
class Symlink:
    target: str  # the link to create (in-rootfs path)
    value: str  # what it points to


@record(frozen=True)
class CgroupAllow:
    device_type: str  # "c"
    major: int
    minor: int
    access: str = "rw"


@record(frozen=True)
class UpdateLdCache:
    """Refresh the container's ld.so.cache for ``directories`` with ``ldconfig`` (``@path`` = host binary)."""

    ldconfig: str | None
    directories: tuple[str, ...]


Operation = Tmpfs | Bind | Symlink | CgroupAllow | UpdateLdCache


@record(frozen=True)
class Plan:
    rootfs: str
    operations: tuple[Operation, ...]
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def of_type(self, kind: type) -> list:
        return [op for op in self.operations if isinstance(op, kind)]


def effective_capabilities(caps: Iterable[Capability]) -> frozenset[Capability]:
    """NVIDIA's implications: video also brings the compute libraries, display the graphics ones."""
    result = set(caps)
    if Capability.VIDEO in result:
        result.add(Capability.COMPUTE)
    if Capability.DISPLAY in result:
        result.add(Capability.GRAPHICS)
    return frozenset(result)


def _major(version: str) -> int | None:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _compat_version(path: str) -> str | None:
    name = os.path.basename(path)
    _, sep, version = name.partition(".so.")
    return version if sep else None


def plan_configure(
    inventory: Inventory,
    request: ConfigureRequest,
    layout: ContainerLayout,
    selection: DeviceSelection,
    mig_config: bool = False,
    mig_monitor: bool = False,
    imex_channels: tuple[int, ...] = (),
    dev_root: str | None = None,
) -> Plan:
    """Everything configure does for ``request``, in order, as operations. ``dev_root``: where the device nodes
    and MIG minors are looked up when not in the driver root (``nvc cdi generate --dev-root``)."""
    root = inventory.root
    nodes_root = DriverRoot(dev_root) if dev_root else root
    files = inventory.files
    caps = effective_capabilities(request.capabilities)
    ops: list[Operation] = []
    warnings: list[str] = []

    proc_files = tuple(
        (name, root.host_path(f"{comp.PROC_DRIVER}/{name}"))
        for name in PROC_DRIVER_FILES
        if os.path.isfile(root.host_path(f"{comp.PROC_DRIVER}/{name}"))
    )
    if not request.gvisor:  # the sentry synthesises /proc/driver/nvidia and hides ROOTFS/proc
        ops.append(Tmpfs(comp.PROC_DRIVER, 0o555, proc_files))
    if Capability.GRAPHICS in caps and not request.gvisor:
        ops.append(Tmpfs(APP_PROFILES_DIR, 0o555, (), capability=Capability.GRAPHICS.value))

    def binds(entries: Iterable[DriverFile], directory: str, kind: str) -> None:
        for f in entries:
            ops.append(Bind(kind, f.host_path, f"{directory}/{os.path.basename(f.path)}",
                            capability=f.capability.value if f.capability else None, driver_path=f.path))

    binds(filter_by_capabilities(files.binaries, caps), BINARY_DIR, "binary")
    libraries = filter_by_capabilities(files.libraries, caps)
    binds(libraries, layout.libdir, "library")
    libraries32 = ()
    if Capability.COMPAT32 in caps and layout.lib32dir is not None:
        libraries32 = filter_by_capabilities(files.libraries32, caps)
        binds(libraries32, layout.lib32dir, "library32")

    names = {f.name: os.path.basename(f.path) for f in libraries}
    if "libcuda.so" in names:
        ops.append(Symlink(f"{layout.libdir}/libcuda.so", "libcuda.so.1"))
    if "libGLX_nvidia.so" in names:
        ops.append(Symlink(f"{layout.libdir}/libGLX_indirect.so.0", names["libGLX_nvidia.so"]))
    if "libnvidia-opticalflow.so" in names:
        ops.append(Symlink(f"{layout.libdir}/libnvidia-opticalflow.so", "libnvidia-opticalflow.so.1"))

    ldconfig_dirs = [layout.libdir] + ([layout.lib32dir] if libraries32 else [])
    driver_major = _major(inventory.driver_version)
    compat_newer = False
    if request.cuda_compat_mode != "disabled" and Capability.COMPUTE in caps:
        for compat in layout.cuda_compat_libs:
            version = _compat_version(compat)
            major = _major(version) if version else None
            if major is None or driver_major is None:
                continue
            if request.cuda_compat_mode == "mount" and major != driver_major:
                ops.append(Bind("compat", compat, f"{layout.libdir}/{os.path.basename(compat)}",
                                source_in_rootfs=True, capability=Capability.COMPUTE.value))
            elif request.cuda_compat_mode == "ldconfig" and major > driver_major:
                compat_newer = True

    if compat_newer:
        ldconfig_dirs.insert(0, CUDA_COMPAT_DIR)

    if not request.no_gsp_firmware:
        for f in files.firmwares:
            ops.append(Bind("firmware", f.host_path, f.path, noexec=True, driver_path=f.path))

    for f in filter_by_capabilities(files.ipcs, caps):
        if request.no_persistenced and f.name == "nvidia-persistenced":
            continue
        if request.no_fabricmanager and f.name == "nv-fabricmanager":
            continue
        ops.append(Bind("ipc", f.host_path, f.path, readonly=False, noexec=True, directory=os.path.isdir(f.host_path),
                        capability=f.capability.value if f.capability else None, driver_path=f.path))

    def device(node: device_nodes.DeviceNode) -> None:
        if not request.no_devbind:
            ops.append(Bind("device", node.host_path, node.path, readonly=True, nodev=False, noexec=True,
                            device=(node.major, node.minor),
                            capability=node.capability.value if node.capability else None,
                            driver_path=node.path, node_kind=node.kind))
        if not request.no_cgroups:
            ops.append(CgroupAllow("c", node.major, node.minor))

    if request.gvisor and not request.no_devbind:
        # The sandbox makes /dev/nvidiaN for every nvidiaN entry in ROOTFS/dev as the gofer serves it: a fresh
        # tmpfs there (in the gofer's namespace) holds exactly this container's nodes -- not the placeholders an
        # earlier start left in a reused rootfs, nor files an image ships -- and nothing is written to its /dev.
        ops.append(Tmpfs("/dev", 0o755))
    for node in device_nodes.control_nodes(nodes_root):
        if request.gvisor and node.path not in GVISOR_DEVICES:
            continue  # nvproxy serves nvidiactl and nvidia-uvm only (whatever the capabilities)
        if request.gvisor or node.capability is None or node.capability in caps:
            device(node)
    for node in device_nodes.gpu_nodes(nodes_root, selection):
        device(node)
        proc_dir = f"{comp.PROC_DRIVER}/gpus/{proc_bus_id(node.gpu_bus_id or '')}"
        if not request.gvisor and os.path.isdir(root.host_path(proc_dir)):
            ops.append(Bind("proc-gpu", root.host_path(proc_dir), proc_dir, directory=True, noexec=True))
    if request.gvisor:  # no MIG or IMEX under nvproxy
        ops.append(UpdateLdCache(request.ldconfig, tuple(ldconfig_dirs)))
        return Plan(rootfs=request.rootfs, operations=tuple(ops), warnings=tuple(warnings))
    for node in device_nodes.mig_nodes(nodes_root, selection, mig_config, mig_monitor):
        if node.kind == "mig-cap-file":
            ops.append(Bind("mig-cap", node.host_path, node.path, noexec=True, driver_path=node.path))
        else:
            device(node)
    for node in device_nodes.imex_nodes(nodes_root, imex_channels):
        device(node)

    ops.append(UpdateLdCache(request.ldconfig, tuple(ldconfig_dirs)))
    return Plan(rootfs=request.rootfs, operations=tuple(ops), warnings=tuple(warnings))


def describe(op: Operation) -> str:
    """One line per operation for ``configure --dry-run`` and debug logs."""
    if isinstance(op, Tmpfs):
        files = ",".join(name for name, _ in op.files)
        return f"tmpfs {op.target} mode={op.mode:o}" + (f" files={files}" if files else "")
    if isinstance(op, Bind):
        flags = ",".join(f for f, on in (("ro", op.readonly), ("nosuid", op.nosuid), ("nodev", op.nodev),
                                          ("noexec", op.noexec)) if on)
        src = f"rootfs:{op.source}" if op.source_in_rootfs else op.source
        dev = f" dev={op.device[0]}:{op.device[1]}" if op.device else ""
        return f"bind {op.kind} {src} -> {op.target} ({flags}){dev}"
    if isinstance(op, Symlink):
        return f"symlink {op.target} -> {op.value}"
    if isinstance(op, CgroupAllow):
        return f"cgroup allow {op.device_type} {op.major}:{op.minor} {op.access}"
    return f"ldcache {op.ldconfig or 'default'} {' '.join(op.directories)}"
