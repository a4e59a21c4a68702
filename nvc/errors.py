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
        "cdi",
    }
)


class NvcError(Exception):
    """A failure with the stage (``detection``, ``mount``, ...) NVIDIA's tool would report it under."""

    def __init__(self, stage: str, message: str) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown error stage {stage!r}")
        if not message.isprintable():  # a container's value with a newline must not break the one line
            message = _escape_unprintable(message)
        super().__init__(f"{stage} error: {message}")
        self.stage = stage
        self.message = message


def _escape_unprintable(text: str) -> str:
    """Newlines, NULs and other control or separator characters as Python escapes (``\\n``, ``\\x00``)."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def run_reporting_errors(prog: str, run, os_error_stage: str | None = None) -> int:
    """Run an entry point's body and turn every failure into NVIDIA's one line on stderr and exit status 1.

    The one place (with the CLI's click handling on top) where errors become text: ``NvcError`` as
    ``PROG: <stage> error: <message>``; an ``OSError`` that escaped a layer under ``os_error_stage`` (or plain
    ``error``); a bug of ours as one line too (``NVC_TRACEBACK=1`` shows the traceback for debugging).
    """
    import os
    import sys

    try:
        return run()
    except NvcError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        label = f"{os_error_stage} error" if os_error_stage else "error"
        sys.stderr.write(f"{prog}: {label}: {(exc.strerror or str(exc)).lower()}{where}\n")
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("NVC_TRACEBACK"):
            raise
        sys.stderr.write(f"{prog}: error: {type(exc).__name__}: {exc}\n")
    return 1
