"""The ``--device`` grammar: which GPUs and MIG devices a container asks for.

Items are read left to right (commas separate them, empty items are skipped): ``all``, a decimal index,
``GPU-<uuid>``, a PCI bus id, ``MIG-<uuid>`` or ``<gpu>:<mig>``. A MIG device brings its parent GPU along.
Anything else is ``device error: <item>: unknown device``, NVIDIA's wording.
"""

from __future__ import annotations

from nvc.driver_info import DeviceSelection, GpuInfo, MigDevice
from nvc.errors import NvcError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the OCI hook milliseconds at start-up
if TYPE_CHECKING:
    from collections.abc import Iterable

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_PCI_FUNCTIONS = frozenset("01234567")


def split_device_list(values: Iterable[str]) -> list[str]:
    """Join repeated ``--device`` values and split them into items, as NVIDIA does."""
    items: list[str] = []
    for value in values:
        items.extend(item.strip() for item in value.split(",") if item.strip())
    return items


def _is_hex(text: str, max_len: int) -> bool:
    """1..max_len ASCII hex digits (``[0-9a-f]{1,max_len}`` with re.IGNORECASE)."""
    return 0 < len(text) <= max_len and all(ch in _HEX_DIGITS for ch in text)


def _parse_bus_id(text: str) -> tuple[str, str, str] | None:
    """(domain or "", bus, device) when ``text`` is ``[domain:]bus:device[.function]``, else None.

    Accepts exactly what ``re.match(r"^(?:([0-9a-f]{1,8}):)?([0-9a-f]{1,2}):([0-9a-f]{1,2})(?:\\.([0-7]))?$",
    text, re.I)`` accepts (``$`` also matching before one final newline), without importing re on the hook path.
    """
    if text.endswith("\n"):
        text = text[:-1]
    parts = text.split(":")
    if len(parts) == 3:
        domain, bus, device = parts
        if not _is_hex(domain, 8):
            return None
    elif len(parts) == 2:
        domain = ""
        bus, device = parts
    else:
        return None
    device, dot, function = device.partition(".")
    if not _is_hex(bus, 2) or not _is_hex(device, 2):
        return None
    if dot and (len(function) != 1 or function not in _PCI_FUNCTIONS):
        return None
    return domain, bus, device


def normalize_bus_id(text: str) -> str | None:
    """``3b:00`` / ``0000:3b:00.0`` → ``00000000:3b:00.0`` (NVIDIA's 8-digit-domain form); None if not PCI."""
    parsed = _parse_bus_id(text)
    if parsed is None:
        return None
    domain, bus, device = parsed
    return f"{int(domain or '0', 16):08x}:{int(bus, 16):02x}:{int(device, 16):02x}.0"


def _is_mig_pair(item: str) -> bool:
    """``<gpu>:<mig>`` decimal indices: what ``re.match(r"^\\d+:\\d+$", item)`` accepts (Unicode decimal digits, and
    ``$`` before one final newline)."""
    if item.endswith("\n"):
        item = item[:-1]
    gpu, sep, mig = item.partition(":")
    return bool(sep) and gpu.isdecimal() and mig.isdecimal()


def select_devices(items: Iterable[str], gpus: tuple[GpuInfo, ...]) -> DeviceSelection:
    """Resolve device items against the GPUs NVML reported."""
    chosen_gpus: dict[int, GpuInfo] = {}
    chosen_migs: dict[tuple[int, int], tuple[GpuInfo, MigDevice]] = {}

    def add_mig(gpu: GpuInfo, mig: MigDevice) -> None:
        chosen_gpus.setdefault(gpu.index, gpu)
        chosen_migs.setdefault((gpu.index, mig.index), (gpu, mig))

    for item in items:
        lowered = item.lower()
        if lowered == "all":
            for gpu in gpus:
                chosen_gpus.setdefault(gpu.index, gpu)
                for mig in gpu.mig_devices:
                    add_mig(gpu, mig)
            continue
        # "<gpu>:<mig>" also reads as a short PCI id; NVIDIA gives the MIG pair precedence.
        gpu_match = None if _is_mig_pair(item) else _match_gpu(item, gpus)
        if gpu_match is not None:
            chosen_gpus.setdefault(gpu_match.index, gpu_match)
            continue
        mig_match = _match_mig(item, gpus)
        if mig_match is not None:
            add_mig(*mig_match)
            continue
        raise NvcError("device", f"{item}: unknown device")
    return DeviceSelection(
        gpus=tuple(chosen_gpus[i] for i in sorted(chosen_gpus)),
        migs=tuple(chosen_migs[k] for k in sorted(chosen_migs)),
    )


def _match_gpu(item: str, gpus: tuple[GpuInfo, ...]) -> GpuInfo | None:
    if item.isdigit():
        return next((g for g in gpus if g.index == int(item)), None)
    if item[:4].upper() == "GPU-":
        return next((g for g in gpus if g.uuid.lower() == item.lower()), None)
    bus_id = normalize_bus_id(item)
    if bus_id is not None:
        return next((g for g in gpus if g.bus_id.lower().startswith(bus_id)), None)
    return None


def _match_mig(item: str, gpus: tuple[GpuInfo, ...]) -> tuple[GpuInfo, MigDevice] | None:
    if item[:4].upper() == "MIG-":
        for gpu in gpus:
            for mig in gpu.mig_devices:
                if mig.uuid.lower() == item.lower():
                    return gpu, mig
        return None
    gpu_part, sep, mig_part = item.partition(":")
    if sep and gpu_part.isdigit() and mig_part.isdigit():
        for gpu in gpus:
            if gpu.index == int(gpu_part):
                for mig in gpu.mig_devices:
                    if mig.index == int(mig_part):
                        return gpu, mig
    return None


def mig_option_enabled(values: Iterable[str], gpus: tuple[GpuInfo, ...]) -> bool:
    """``--mig-config`` / ``--mig-monitor``: device ids (or ``all``) among ``gpus``; any unknown id is an error."""
    items = split_device_list(values)
    return bool(items) and not select_devices(items, gpus).empty


def imex_channel_numbers(values: Iterable[str]) -> tuple[int, ...]:
    """``--imex-channel`` items: channel numbers."""
    channels = []
    for item in split_device_list(values):
        if not item.isdigit():
            raise NvcError("input", f"invalid IMEX channel: {item}")
        channels.append(int(item))
    return tuple(channels)
