"""gVisor (``runsc --nvproxy``) context: what the sandbox can use, and how to recognise runsc calling us.

runsc runs ``nvidia-container-cli --load-kmods configure --no-cgroups --pid=<gofer pid> ... ROOTFS`` while its gofer
is held in a fresh mount namespace before pivoting. The sandbox kernel serves its own ``/dev`` and ``/proc``: it
synthesises ``/proc/driver/nvidia`` and creates ``/dev/nvidiaN`` for each ``nvidiaN`` it finds in ``ROOTFS/dev`` —
so in this context we bind the host's ``nvidiactl``, ``nvidia-uvm`` and each selected ``nvidiaN`` there, skip all
/proc work (hidden by the sentry anyway), and refuse what nvproxy cannot serve.
"""

from __future__ import annotations

import os

from nvc.components import Capability
from nvc.errors import NvcError

GOFER_NAME = "runsc-gofer"
SANDBOX_NAME = "runsc-sandbox"
SUPPORTED_CAPABILITIES = frozenset({Capability.COMPUTE, Capability.UTILITY, Capability.GRAPHICS, Capability.VIDEO})
SUPPORTED_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm")  # plus /dev/nvidiaN
MAX_GPU_MINOR = 247


def process_name(pid: int) -> str:
    """argv[0] basename of a process (runsc names its processes runsc-gofer / runsc-sandbox there)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read(256).split(b"\0", 1)[0]
    except OSError:
        return ""
    return os.path.basename(argv0.decode("utf-8", "replace"))


def is_gofer(pid: int | None) -> bool:
    return pid is not None and process_name(pid) == GOFER_NAME


def check_capabilities(caps: frozenset[Capability]) -> None:
    unsupported = sorted(c.value for c in caps - SUPPORTED_CAPABILITIES)
    if unsupported:
        allowed = ", ".join(sorted(c.value for c in SUPPORTED_CAPABILITIES))
        raise NvcError(
            "input", f"capabilities not supported by gVisor's nvproxy: {', '.join(unsupported)} (allowed: {allowed})"
        )


def check_minors(minors: list[int]) -> None:
    too_big = [m for m in minors if m > MAX_GPU_MINOR]
    if too_big:
        raise NvcError("device", f"gVisor's nvproxy accepts GPU minors up to {MAX_GPU_MINOR}: /dev/nvidia{too_big[0]}")
