"""Which driver files belong to which capability: NVIDIA's lists, as data.

The order of every tuple is significant: libnvidia-container looks names up (and ``list`` prints them) utility
first, then compute, ngx, video, graphics, and within a capability in the order below.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the hook imports this module, and typing costs ~10 ms there
if TYPE_CHECKING:
    from collections.abc import Iterator


class _CapabilityType(type):
    """What ``enum.EnumType`` gives ``Capability`` that callers use — lookup by value, iteration in definition
    order, ``len``, ``in`` and read-only members — without importing :mod:`enum` (several ms of hook start-up)."""

    _members: tuple[Capability, ...]
    _by_value: dict[str, Capability]

    def __call__(cls, value: object) -> Capability:
        try:
            return cls._by_value[value]
        except (KeyError, TypeError):
            raise ValueError(f"{value!r} is not a valid {cls.__qualname__}") from None

    def __iter__(cls) -> Iterator[Capability]:
        return iter(cls._members)

    def __reversed__(cls) -> Iterator[Capability]:
        return reversed(cls._members)

    def __len__(cls) -> int:
        return len(cls._members)

    def __contains__(cls, value: object) -> bool:
        try:
            return value in cls._by_value
        except TypeError:
            return False

    def __setattr__(cls, name: str, value: object) -> None:
        if name in cls.__dict__.get("_by_name", ()):
            raise AttributeError(f"cannot reassign member {name!r}")
        super().__setattr__(name, value)

    def __delattr__(cls, name: str) -> None:
        if name in cls.__dict__.get("_by_name", ()):
            raise AttributeError(f"cannot delete member {name!r}")
        super().__delattr__(name)


class Capability(str, metaclass=_CapabilityType):
    """NVIDIA_DRIVER_CAPABILITIES values / configure flags: a ``str`` (equal to, and hashing like, its value) that
    behaves like the ``enum.StrEnum`` member it replaces: ``Capability("compute") is Capability.COMPUTE``, unknown
    values raise ValueError, ``.name``/``.value``, enum's repr, and ``list(Capability)`` in definition order."""

    __slots__ = ()

    UTILITY: Capability
    COMPUTE: Capability
    NGX: Capability
    VIDEO: Capability
    GRAPHICS: Capability
    DISPLAY: Capability
    COMPAT32: Capability

    @property
    def name(self) -> str:
        return self.upper()

    @property
    def value(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self.name}: {str.__repr__(self)}>"

    def __reduce_ex__(self, protocol: object) -> tuple[type, tuple[str]]:
        return type(self), (self.value,)

    def __copy__(self) -> Capability:
        return self

    def __deepcopy__(self, memo: object) -> Capability:
        return self


def _define_members() -> None:
    members = tuple(
        str.__new__(Capability, value)
        for value in ("utility", "compute", "ngx", "video", "graphics", "display", "compat32")
    )
    for member in members:
        type.__setattr__(Capability, member.name, member)
    type.__setattr__(Capability, "_members", members)
    type.__setattr__(Capability, "_by_value", {member.value: member for member in members})
    type.__setattr__(Capability, "_by_name", {member.name: member for member in members})


_define_members()

ALL_CAPABILITIES: tuple[Capability, ...] = tuple(Capability)

UTILITY_BINARIES = ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nv-fabricmanager")
COMPUTE_BINARIES = ("nvidia-cuda-mps-control", "nvidia-cuda-mps-server")

UTILITY_LIBRARIES = ("libnvidia-ml.so", "libnvidia-cfg.so", "libnvidia-nscq.so")
COMPUTE_LIBRARIES = (
    "libcuda.so",
    "libcudadebugger.so",
    "libnvidia-opencl.so",
    "libnvidia-gpucomp.so",
    "libnvidia-ptxjitcompiler.so",
    "libnvidia-fatbinaryloader.so",
    "libnvidia-allocator.so",
    "libnvidia-compiler.so",
    "libnvidia-pkcs11.so",
    "libnvidia-pkcs11-openssl3.so",
    "libnvidia-nvvm.so",
)
NGX_LIBRARIES = ("libnvidia-ngx.so",)
VIDEO_LIBRARIES = ("libvdpau_nvidia.so", "libnvidia-encode.so", "libnvidia-opticalflow.so", "libnvcuvid.so")
GRAPHICS_LIBRARIES = (
    "libnvidia-eglcore.so",
    "libnvidia-glcore.so",
    "libnvidia-tls.so",
    "libnvidia-glsi.so",
    "libnvidia-fbc.so",
    "libnvidia-ifr.so",
    "libnvidia-rtcore.so",
    "libnvoptix.so",
)
GRAPHICS_GLVND_LIBRARIES = (
    "libGLX_nvidia.so",
    "libEGL_nvidia.so",
    "libGLESv2_nvidia.so",
    "libGLESv1_CM_nvidia.so",
    "libnvidia-glvkspirv.so",
    "libnvidia-cbl.so",
)
# Pre-GLVND drivers shipped their own libGL & co.; they are only NVIDIA's when they link against its core.
GRAPHICS_COMPAT_LIBRARIES = ("libGL.so", "libEGL.so", "libGLESv1_CM.so", "libGLESv2.so")

LIBRARIES_BY_CAPABILITY: tuple[tuple[Capability, tuple[str, ...]], ...] = (
    (Capability.UTILITY, UTILITY_LIBRARIES),
    (Capability.COMPUTE, COMPUTE_LIBRARIES),
    (Capability.NGX, NGX_LIBRARIES),
    (Capability.VIDEO, VIDEO_LIBRARIES),
    (Capability.GRAPHICS, GRAPHICS_LIBRARIES + GRAPHICS_GLVND_LIBRARIES + GRAPHICS_COMPAT_LIBRARIES),
)
BINARIES_BY_CAPABILITY: tuple[tuple[Capability, tuple[str, ...]], ...] = (
    (Capability.UTILITY, UTILITY_BINARIES),
    (Capability.COMPUTE, COMPUTE_BINARIES),
)

# libnvidia-tls: only the build with the "new" TLS ABI (GNU ABI note Linux 2.3.99) is usable.
TLS_LIBRARY = "libnvidia-tls.so"
TLS_ABI = (2, 3, 99)
GL_CORE_DEPENDENCIES = ("libnvidia-glcore.so", "libnvidia-eglcore.so")

PERSISTENCED_SOCKET = "/var/run/nvidia-persistenced/socket"
FABRICMANAGER_SOCKET = "/var/run/nvidia-fabricmanager/socket"
DEFAULT_MPS_PIPE_DIRECTORY = "/tmp/nvidia-mps"
FIRMWARE_DIR_TEMPLATE = "/lib/firmware/nvidia/{version}"
FIRMWARE_GLOB = "gsp*.bin"

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Device nodes, relative to the driver root.
NVIDIA_MAJOR = 195
NVIDIACTL = "/dev/nvidiactl"
NVIDIACTL_MINOR = 255
NVIDIA_MODESET = "/dev/nvidia-modeset"
NVIDIA_MODESET_MINOR = 254
NVIDIA_UVM = "/dev/nvidia-uvm"
NVIDIA_UVM_TOOLS = "/dev/nvidia-uvm-tools"
GPU_DEVICE_TEMPLATE = "/dev/nvidia{minor}"
CAPS_DEVICE_TEMPLATE = "/dev/nvidia-caps/nvidia-cap{minor}"
IMEX_CHANNEL_TEMPLATE = "/dev/nvidia-caps-imex-channels/channel{channel}"

PROC_DRIVER = "/proc/driver/nvidia"
MIG_MINORS_FILE = "/proc/driver/nvidia-caps/mig-minors"
MIG_CONFIG_CAP = "/proc/driver/nvidia/capabilities/mig/config"
MIG_MONITOR_CAP = "/proc/driver/nvidia/capabilities/mig/monitor"
