"""Which ``cdiVersion`` a CDI spec needs for the fields it uses.

A consumer refuses a spec whose declared ``cdiVersion`` is older than the newest feature it uses (podman,
containerd and CRI-O all do, through the Go ``tags.cncf.io/container-device-interface`` package), so a reader must
check it and a writer must declare at least it. The rules, one per version that added something to the schema:

* 0.4.0: a mount ``type``;
* 0.5.0: a device name starting with a digit (``0``, ``1``...), a device node ``hostPath``;
* 0.6.0: spec- or device-level ``annotations``, a ``.`` in the class of ``kind``;
* 0.7.0: ``intelRdt``, ``additionalGids``;
* 1.1.0: ``intelRdt.schemata`` or ``intelRdt.enableMonitoring``, ``netDevices``.

0.8.0 and 1.0.0 changed the Go API only. 0.3.0 is the oldest version consumers accept: 0.1.0 and 0.2.0 are known
names, but every spec needs at least 0.3.0, so they are refused as too old (as the Go package does).

Works on the plain dict of a parsed spec file and tolerates malformed parts (the structural checks in
:mod:`nvc.emit.cdi.validation` report those).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import Any

#: Every released spec version, oldest first.
KNOWN_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0")
EARLIEST_REQUIRED = "0.3.0"
CURRENT_VERSION = KNOWN_VERSIONS[-1]


def normalize_version(version: str) -> str:
    """``v0.5.0`` and ``0.5.0`` are the same version (consumers strip one leading ``v``)."""
    return version[1:] if version.startswith("v") else version


def is_known_version(version: str) -> bool:
    return normalize_version(version) in KNOWN_VERSIONS


def _all_edits(spec: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    edits = spec.get("containerEdits")
    if isinstance(edits, dict):
        yield edits
    for device in _devices(spec):
        edits = device.get("containerEdits")
        if isinstance(edits, dict):
            yield edits


def _devices(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    devices = spec.get("devices")
    return [d for d in devices if isinstance(d, dict)] if isinstance(devices, list) else []


def _items(edits: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = edits.get(key)
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _requires_1_1_0(spec: Mapping[str, Any]) -> bool:
    for edits in _all_edits(spec):
        rdt = edits.get("intelRdt")
        if isinstance(rdt, dict) and (rdt.get("schemata") is not None or rdt.get("enableMonitoring")):
            return True
        if edits.get("netDevices"):
            return True
    return False


def _requires_0_7_0(spec: Mapping[str, Any]) -> bool:
    return any(edits.get("intelRdt") is not None or edits.get("additionalGids") for edits in _all_edits(spec))


def _requires_0_6_0(spec: Mapping[str, Any]) -> bool:
    if spec.get("annotations") or any(device.get("annotations") for device in _devices(spec)):
        return True
    kind = spec.get("kind")
    if isinstance(kind, str):
        _, slash, device_class = kind.partition("/")
        return bool(slash) and "." in device_class
    return False


def _requires_0_5_0(spec: Mapping[str, Any]) -> bool:
    for device in _devices(spec):
        name = device.get("name")
        if isinstance(name, str) and name[:1].isdigit() and name[:1].isascii():
            return True
    return any(node.get("hostPath") for edits in _all_edits(spec) for node in _items(edits, "deviceNodes"))


def _requires_0_4_0(spec: Mapping[str, Any]) -> bool:
    return any(mount.get("type") for edits in _all_edits(spec) for mount in _items(edits, "mounts"))


# Newest first: the first rule that matches is the answer.
_RULES = (("1.1.0", _requires_1_1_0), ("0.7.0", _requires_0_7_0), ("0.6.0", _requires_0_6_0),
          ("0.5.0", _requires_0_5_0), ("0.4.0", _requires_0_4_0))


def required_version(spec: Mapping[str, Any]) -> str:
    """The oldest ``cdiVersion`` that carries every feature ``spec`` uses."""
    for version, rule in _RULES:
        if rule(spec):
            return version
    return EARLIEST_REQUIRED


def version_problem(spec: Mapping[str, Any]) -> str | None:
    """Why a reader must refuse ``spec``'s ``cdiVersion`` (unknown, or older than its features), or None."""
    declared = spec.get("cdiVersion")
    if not isinstance(declared, str) or not declared:
        return "missing cdiVersion"
    if not is_known_version(declared):
        return f"unknown cdiVersion {declared!r} (known: {', '.join(KNOWN_VERSIONS)})"
    needed = required_version(spec)
    if KNOWN_VERSIONS.index(normalize_version(declared)) < KNOWN_VERSIONS.index(needed):
        return f"cdiVersion {declared} is too old for the fields it uses: they need at least {needed}"
    return None
