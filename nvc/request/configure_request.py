"""What a container asks for: the input of the planner, whoever parsed it (configure's argv, the OCI hook's
container environment, runsc's argv).
"""

from __future__ import annotations

from nvc.components import Capability
from nvc.record import field, record

CUDA_COMPAT_MODES = ("mount", "ldconfig", "disabled")


@record(frozen=True)
class ConfigureRequest:
    """Everything ``nvidia-container-cli configure`` accepts, as values.

    ``devices`` holds the ``--device`` items already split on commas (empty: driver files only, no GPU nodes);
    ``capabilities`` is the set of capability flags (video/display implications are applied by the planner).
    """

    rootfs: str
    pid: int | None = None
    devices: tuple[str, ...] = ()
    capabilities: frozenset[Capability] = field(default_factory=frozenset)
    requirements: tuple[str, ...] = ()
    ldconfig: str | None = None
    mig_config: tuple[str, ...] = ()
    mig_monitor: tuple[str, ...] = ()
    imex_channels: tuple[str, ...] = ()
    no_cgroups: bool = False
    no_devbind: bool = False
    no_persistenced: bool = False
    no_fabricmanager: bool = False
    no_gsp_firmware: bool = False
    no_cntlibs: bool = False
    cuda_compat_mode: str = "mount"
    exec_ldconfig: bool = False  # run ldconfig in the container instead of writing its ld.so.cache ourselves
    gvisor: bool = False  # runsc's gofer context: nvproxy's device set, no /proc work (see nvc.request.gvisor)
