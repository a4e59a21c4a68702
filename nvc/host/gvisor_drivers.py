"""Which NVIDIA driver versions gVisor's nvproxy accepts, as data.

nvproxy does not speak "the NVIDIA driver" in general: it carries an exact table of driver ABIs, and a sandbox on a
host whose driver is not in the table fails to boot with ``unsupported Nvidia driver version: X`` — which users
only ever see as ``waiting for sandbox to start: EOF`` (or a pod stuck in ContainerCreating). ``nvc doctor`` warns
about it before anyone starts a container.

Where the versions come from: the gVisor behaviour notes this project keeps (``shared/reference/gvisor.md``, runsc
releases 2023 → 2026). That list is a *sample* of gVisor's table, not the whole of it, and every runsc release adds
versions. So the authority, whenever a runsc binary is present, is its own ``runsc nvproxy list-supported-drivers``
(one version per line); :func:`driver_support` prefers that list and only falls back to the data below when runsc
cannot be asked (not installed, or a release older than the command). A version in neither list is "unknown", not
"unsupported": it may well be in the real table.
"""

from __future__ import annotations

import re

# Driver versions gVisor's nvproxy is known to support (from gvisor.md).
SUPPORTED_DRIVER_VERSIONS: frozenset[str] = frozenset(
    {
        "535.129.03",
        "535.183.06",
        "535.247.01",
        "535.261.03",
        "535.274.02",
        "535.288.01",
        "535.309.01",
        "550.90.12",
        "570.124.06",
        "570.133.20",
        "570.172.08",
        "570.195.03",
        "580.65.06",
        "580.105.08",
        "580.126.09",
        "580.126.20",
        "580.159.03",
        "580.159.04",
        "580.173.02",
        "590.48.01",
    }
)

# Versions gVisor knows about and refuses (from gvisor.md): close neighbours of supported ones, which is exactly
# why people expect them to work.
KNOWN_UNSUPPORTED_DRIVER_VERSIONS: frozenset[str] = frozenset({"535.104.05", "550.54.14", "550.90.07", "570.86.15"})

# runsc release dates (``release-YYYYMMDD.N``) that changed GPU behaviour.
NVPROXY_FIRST_RELEASE = 20230529  # --nvproxy exists from this release on
NVPROXY_AUTO_RELEASE = 20260525  # from here nvproxy turns itself on for specs that ask for a GPU

_VERSION_LINE = re.compile(r"^\s*(\d+\.\d+(?:\.\d+)?)\b")
# Upstream tags releases ``release-YYYYMMDD.N``; Debian packages them as ``0.0~YYYYMMDD.N``.
_RUNSC_RELEASE = re.compile(r"(?:release-|\b0\.0~)(\d{8})(?:\.(\d+))?")


def parse_supported_drivers(text: str) -> frozenset[str]:
    """Versions from ``runsc nvproxy list-supported-drivers`` output (one per line; anything else is ignored)."""
    versions = set()
    for line in text.splitlines():
        match = _VERSION_LINE.match(line)
        if match:
            versions.add(match.group(1))
    return frozenset(versions)


def parse_runsc_release(version_output: str) -> int | None:
    """``runsc --version`` (``runsc version release-20240513.0``, Debian's ``runsc version 0.0~20240729.0``) →
    the release date (``20240513``); ``None`` for dev builds."""
    match = _RUNSC_RELEASE.search(version_output)
    return int(match.group(1)) if match else None


def driver_support(version: str, runsc_supported: frozenset[str] | None = None) -> str:
    """``"supported"``, ``"unsupported"`` or ``"unknown"`` for a host driver version.

    ``runsc_supported`` is the installed runsc's own list; when given it decides alone (a version missing from it
    is unsupported by *that* runsc, whatever our copy says). Without it our sample table can only say yes, no, or
    "not in our copy".
    """
    if runsc_supported:
        return "supported" if version in runsc_supported else "unsupported"
    if version in SUPPORTED_DRIVER_VERSIONS:
        return "supported"
    if version in KNOWN_UNSUPPORTED_DRIVER_VERSIONS:
        return "unsupported"
    return "unknown"
