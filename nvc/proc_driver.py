"""Parsers for the NVIDIA kernel driver's /proc files (text in, values out; no I/O here)."""

from __future__ import annotations

import re

_VERSION_RE = re.compile(r"^NVRM version:.*?Kernel Module(?:\s+for\s+\S+)?\s+(\d+(?:\.\d+)+)", re.MULTILINE)


def parse_nvrm_version(text: str) -> str | None:
    """Driver version from ``/proc/driver/nvidia/version`` (proprietary and open kernel module wording)."""
    match = _VERSION_RE.search(text)
    return match.group(1) if match else None


def parse_mig_minors(text: str) -> dict[str, int]:
    """``/proc/driver/nvidia-caps/mig-minors``: ``config 1``, ``gpu0/gi1/ci0/access 42`` → name → minor."""
    minors: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            minors[parts[0]] = int(parts[1])
    return minors


def parse_device_majors(text: str) -> dict[str, int]:
    """``/proc/devices`` character-device section: name → major (e.g. ``nvidia-uvm`` → 510)."""
    majors: dict[str, int] = {}
    in_char = False
    for line in text.splitlines():
        if line.startswith("Character devices:"):
            in_char = True
            continue
        if line.startswith("Block devices:"):
            in_char = False
            continue
        parts = line.split()
        if in_char and len(parts) == 2 and parts[0].isdigit():
            majors.setdefault(parts[1], int(parts[0]))
    return majors


def rewrite_params(text: str) -> str:
    """The driver's ``params`` with ``ModifyDeviceFiles: 0``, so CUDA inside the container never tries to create
    or chmod device nodes (it can't, and must not)."""
    lines = []
    for line in text.splitlines(keepends=True):
        key, sep, _value = line.partition(":")
        if sep and key.strip() == "ModifyDeviceFiles":
            newline = "\n" if line.endswith("\n") else ""
            line = f"{key}: 0{newline}"
        lines.append(line)
    return "".join(lines)


def proc_bus_id(nvml_bus_id: str) -> str:
    """NVML's ``00000000:3b:00.0`` → the ``/proc/driver/nvidia/gpus`` directory name ``0000:3b:00.0``."""
    domain, _, rest = nvml_bus_id.partition(":")
    try:
        return f"{int(domain, 16):04x}:{rest.lower()}"
    except ValueError:
        return nvml_bus_id.lower()
