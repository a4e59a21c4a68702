"""What ``list`` and ``info`` print: the selected items in NVIDIA's order, as text, CSV or JSON.

``list`` is the printed form of what a container would receive, so each item also carries where it would go in
the container; ``--json`` shows that, the text form stays byte-compatible with nvidia-container-cli.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from nvc.components import Capability
from nvc.driver_info import DeviceSelection, DriverInfo
from nvc.host.inventory import Inventory
from nvc.request.container_layout import library_dirs
from nvc.request.device_select import (
    imex_channel_numbers,
    mig_option_enabled,
    select_devices,
    split_device_list,
)


@dataclass(frozen=True)
class ListRequest:
    """``list`` options. With nothing selected at all, NVIDIA lists everything with devices=all."""

    devices: tuple[str, ...] = ()
    libraries: bool = False
    binaries: bool = False
    ipcs: bool = False
    firmwares: bool = False
    compat32: bool = False
    mig_config: tuple[str, ...] = ()
    mig_monitor: tuple[str, ...] = ()
    imex_channels: tuple[str, ...] = ()
    no_persistenced: bool = False
    no_fabricmanager: bool = False
    no_gsp_firmware: bool = False
    rootfs: str | None = None  # only to say where libraries would go (Debian multiarch vs lib64)

    def effective(self) -> ListRequest:
        """NVIDIA's default when no selection option is given: devices=all, libraries (+32-bit), binaries,
        IPCs, firmware."""
        if (self.devices or self.libraries or self.binaries or self.ipcs or self.firmwares or self.compat32
                or self.mig_config or self.mig_monitor or self.imex_channels):
            return self
        return ListRequest(
            devices=("all",), libraries=True, binaries=True, ipcs=True, firmwares=True, compat32=True,
            no_persistenced=self.no_persistenced, no_fabricmanager=self.no_fabricmanager,
            no_gsp_firmware=self.no_gsp_firmware, rootfs=self.rootfs,
        )


@dataclass(frozen=True)
class ListedItem:
    kind: str  # device | binary | library | library32 | ipc | firmware | mig-cap-file
    path: str  # as printed: inside the driver root
    host_path: str
    container_path: str
    capability: str | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        data = {
            "kind": self.kind,
            "path": self.path,
            "host_path": self.host_path,
            "container_path": self.container_path,
            "capability": self.capability,
        }
        data.update(self.extra)
        return data


def _plan_for_listing(inventory: Inventory, request: ListRequest, capabilities: frozenset[Capability] | None = None,
                      dev_root: str | None = None):
    """The configure plan of a container asking for everything ``request`` selects: ``list`` prints exactly
    what configure would mount, from the same planner (one source of truth for the rules). ``capabilities``
    narrows the driver capabilities (default: all; ``nvc cdi generate`` passes its selection)."""
    from nvc.components import ALL_CAPABILITIES
    from nvc.plan.planner import plan_configure
    from nvc.request.configure_request import ConfigureRequest
    from nvc.request.container_layout import ContainerLayout

    info = inventory.driver_info
    gpus = info.gpus if info is not None else ()
    selection = DeviceSelection()
    if request.devices and info is not None:
        selection = select_devices(split_device_list(request.devices), gpus)
    caps = frozenset(c for c in (capabilities or ALL_CAPABILITIES)
                     if c is not Capability.COMPAT32 or request.compat32)
    configure_request = ConfigureRequest(
        rootfs=request.rootfs or "/",
        capabilities=caps,
        no_cgroups=True,
        no_persistenced=request.no_persistenced,
        no_fabricmanager=request.no_fabricmanager,
        no_gsp_firmware=request.no_gsp_firmware,
        cuda_compat_mode="disabled",
    )
    libdir, lib32dir = library_dirs(request.rootfs)
    plan = plan_configure(
        inventory,
        configure_request,
        ContainerLayout(libdir, lib32dir),
        selection,
        mig_config=info is not None and mig_option_enabled(request.mig_config, gpus),
        mig_monitor=info is not None and mig_option_enabled(request.mig_monitor, gpus),
        imex_channels=imex_channel_numbers(request.imex_channels),
        dev_root=dev_root,
    )
    return plan, selection


# list's print order, by the plan's Bind kinds (devices first, as nvidia-container-cli prints them).
_LIST_ORDER = ("device", "binary", "library", "library32", "ipc", "firmware")


def select_list_items(inventory: Inventory, request: ListRequest) -> list[ListedItem]:
    """Everything ``list`` prints for ``request``, in NVIDIA's order."""
    from nvc.plan.planner import Bind

    request = request.effective()
    plan, selection = _plan_for_listing(inventory, request)
    wanted = {
        "device": True,
        "binary": request.binaries,
        "library": request.libraries,
        "library32": request.libraries and request.compat32,
        "ipc": request.ipcs,
        "firmware": request.firmwares,
    }
    groups: dict[str, list[ListedItem]] = {kind: [] for kind in _LIST_ORDER}
    for op in plan.of_type(Bind):
        if op.kind in ("device", "mig-cap"):
            if op.node_kind == "control" and selection.empty:
                continue  # list shows control nodes only along with selected GPUs
            extra = {"device_kind": op.node_kind or "mig-cap-file"}
            if op.device is not None:
                extra.update(major=op.device[0], minor=op.device[1])
            kind = "device" if op.kind == "device" else "mig-cap-file"
            groups["device"].append(ListedItem(kind, op.driver_path, op.source, op.target, op.capability, extra))
        elif op.kind in groups and wanted[op.kind]:
            groups[op.kind].append(ListedItem(op.kind, op.driver_path, op.source, op.target, op.capability))
    return [item for kind in _LIST_ORDER for item in groups[kind]]


def format_list_text(items: Sequence[ListedItem]) -> str:
    return "".join(f"{item.path}\n" for item in items)


def format_json(value: object) -> str:
    return json.dumps(value, indent=2) + "\n"


def format_info_text(info: DriverInfo) -> str:
    """``info``: label in 15 columns plus a space, a blank line before each device (NVIDIA's layout)."""
    lines = [f"{'NVRM version:':<15} {info.driver_version}", f"{'CUDA version:':<15} {info.cuda_version}"]
    for gpu in info.gpus:
        lines.append("")
        lines.extend(
            f"{label:<15} {value}"
            for label, value in (
                ("Device Index:", gpu.index),
                ("Device Minor:", gpu.minor),
                ("Model:", gpu.model),
                ("Brand:", gpu.brand),
                ("GPU UUID:", gpu.uuid),
                ("Bus Location:", gpu.bus_id),
                ("Architecture:", gpu.arch),
            )
        )
    return "\n".join(lines) + "\n"


def format_info_csv(info: DriverInfo) -> str:
    lines = ["NVRM version,CUDA version", f"{info.driver_version},{info.cuda_version}", "",
             "Device Index,Device Minor,Model,Brand,GPU UUID,Bus Location,Architecture"]
    lines.extend(
        f"{g.index},{g.minor},{g.model},{g.brand},{g.uuid},{g.bus_id},{g.arch}" for g in info.gpus
    )
    return "\n".join(lines) + "\n"


def info_json(info: DriverInfo) -> dict:
    return {
        "nvrm_version": info.driver_version,
        "cuda_version": info.cuda_version,
        "devices": [
            {
                "index": g.index,
                "minor": g.minor,
                "model": g.model,
                "brand": g.brand,
                "uuid": g.uuid,
                "bus_id": g.bus_id,
                "architecture": g.arch,
                "device_path": f"/dev/nvidia{g.minor}",
                "mig_enabled": g.mig_enabled,
                "mig_devices": [
                    {"index": m.index, "gpu_instance_id": m.gpu_instance_id,
                     "compute_instance_id": m.compute_instance_id, "uuid": m.uuid}
                    for m in g.mig_devices
                ],
            }
            for g in info.gpus
        ],
    }
