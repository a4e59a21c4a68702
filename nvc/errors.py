"""One error type for every user-facing failure.

libnvidia-container reports each failure as a single line ``<prog>: <stage> error: <message>`` and exits 1.
Layers raise :class:`NvcError` with the stage they belong to; the CLI and the hook turn it into that line in one
place, so no traceback ever reaches a user.
"""

from __future__ import annotations

STAGES = frozenset(
    {
        "input",
        "permission",
        "initialization",
        "container",
        "detection",
        "device",
        "mig-config",
        "mig-monitor",
        "requirement",
        "mount",
        "ldcache",
    }
)


class NvcError(Exception):
    """A failure with the stage (``detection``, ``mount``, ...) NVIDIA's tool would report it under."""

    def __init__(self, stage: str, message: str) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown error stage {stage!r}")
        super().__init__(f"{stage} error: {message}")
        self.stage = stage
        self.message = message
