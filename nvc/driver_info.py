"""What NVML tells us about the host driver and its GPUs, as plain values.

These records cross a process boundary (the NVML helper child sends them back as JSON) and will later be cached
on disk, so they are frozen records (nvc.record) with a lossless ``to_dict``/``from_dict`` pair and nothing else.
:class:`DeviceSelection` (some of these GPUs and MIG devices) is here too: the request side makes one
(:mod:`nvc.request.device_select`), the host side looks up its device nodes (:mod:`nvc.host.device_nodes`), and
neither imports the other.
"""

from __future__ import annotations

from nvc.record import asdict, field, record

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from typing import Any


@record(frozen=True)
class MigDevice:
    """A MIG instance of a GPU: NVIDIA addresses it by ``<gpu>:<index>`` or by its ``MIG-`` UUID."""

    index: int
    gpu_instance_id: int
    compute_instance_id: int
    uuid: str


@record(frozen=True)
class GpuInfo:
    """One physical GPU. ``minor`` is the ``/dev/nvidiaN`` number, which is not always ``index``."""

    index: int
    minor: int
    model: str
    brand: str
    uuid: str
    bus_id: str  # "%08x:%02x:%02x.0" (domain:bus:device), as NVIDIA prints it
    arch: str  # compute capability "major.minor"
    mig_enabled: bool = False
    mig_devices: tuple[MigDevice, ...] = field(default_factory=tuple)


@record(frozen=True)
class DriverInfo:
    """Driver-wide answers: ``driver_version`` (NVRM), ``cuda_version`` ("12.2") and the GPUs in index order."""

    driver_version: str
    cuda_version: str
    gpus: tuple[GpuInfo, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriverInfo:
        gpus = tuple(
            GpuInfo(
                **{k: v for k, v in gpu.items() if k != "mig_devices"},
                mig_devices=tuple(MigDevice(**mig) for mig in gpu.get("mig_devices", ())),
            )
            for gpu in data.get("gpus", ())
        )
        return cls(driver_version=data["driver_version"], cuda_version=data["cuda_version"], gpus=gpus)


@record(frozen=True)
class DeviceSelection:
    """Selected GPUs (index order) and MIG devices as (parent GPU, MIG device) pairs."""

    gpus: tuple[GpuInfo, ...] = ()
    migs: tuple[tuple[GpuInfo, MigDevice], ...] = ()

    @property
    def empty(self) -> bool:
        return not self.gpus and not self.migs
