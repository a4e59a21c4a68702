"""What ``list`` and ``info`` print: the selected items in NVIDIA's order, as text, CSV or JSON.

``list`` is the printed form of what a container would receive, so each item also carries where it would go in
the container; ``--json`` shows that, the text form stays byte-compatible with nvidia-container-cli.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from nvc import device_nodes
from nvc.container_layout import BINARY_DIR, library_dirs
from nvc.device_select import DeviceSelection, select_devices, split_device_list
from nvc.discovery import DriverFile
from nvc.driver_info import DriverInfo
from nvc.inventory import Inventory


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


def _imex_channel_numbers(values: Sequence[str]) -> list[int]:
    from nvc.errors import NvcError

    channels = []
    for item in split_device_list(values):
        if not item.isdigit():
            raise NvcError("input", f"invalid IMEX channel: {item}")
        channels.append(int(item))
    return channels


def _mig_selected(values: Sequence[str], info: DriverInfo | None) -> bool:
    if not values or info is None:
        return False
    return not select_devices(split_device_list(values), info.gpus).empty


def select_list_items(inventory: Inventory, request: ListRequest) -> list[ListedItem]:
    """Everything ``list`` prints for ``request``, in NVIDIA's order."""
    request = request.effective()
    root = inventory.driver_root
    info = inventory.driver_info
    items: list[ListedItem] = []

    selection = DeviceSelection()
    if request.devices and info is not None:
        selection = select_devices(split_device_list(request.devices), info.gpus)
    nodes: list[device_nodes.DeviceNode] = []
    if not selection.empty:
        nodes.extend(device_nodes.control_nodes(root))
        nodes.extend(device_nodes.gpu_nodes(root, selection))
    nodes.extend(
        device_nodes.mig_nodes(
            root, selection, _mig_selected(request.mig_config, info), _mig_selected(request.mig_monitor, info)
        )
    )
    nodes.extend(device_nodes.imex_nodes(root, _imex_channel_numbers(request.imex_channels)))
    for node in nodes:
        kind = "mig-cap-file" if node.kind == "mig-cap-file" else "device"
        extra = {"device_kind": node.kind, "major": node.major, "minor": node.minor}
        items.append(ListedItem(kind, node.path, node.host_path, node.path,
                                node.capability.value if node.capability else None, extra))

    libdir, lib32dir = library_dirs(request.rootfs)
    files = inventory.files

    def add_files(entries: Sequence[DriverFile], target_dir: str | None) -> None:
        for f in entries:
            target = f"{target_dir}/{os.path.basename(f.path)}" if target_dir else f.path
            items.append(ListedItem(f.kind, f.path, f.host_path, target,
                                    f.capability.value if f.capability else None, {"name": f.name}))

    if request.binaries:
        add_files(files.binaries, BINARY_DIR)
    if request.libraries:
        add_files(files.libraries, libdir)
    if request.libraries and request.compat32 and lib32dir is not None:
        add_files(files.libraries32, lib32dir)
    if request.ipcs:
        ipcs = [f for f in files.ipcs
                if not (request.no_persistenced and f.name == "nvidia-persistenced")
                and not (request.no_fabricmanager and f.name == "nv-fabricmanager")]
        add_files(ipcs, None)
    if request.firmwares and not request.no_gsp_firmware:
        add_files(files.firmwares, None)
    return items


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
