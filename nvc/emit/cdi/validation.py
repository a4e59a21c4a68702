"""Checking a parsed CDI spec (a plain dict from JSON or YAML) the way consumers check it on read.

The Go package that podman, containerd, CRI-O and docker share refuses a spec file as a whole when any part of it
is wrong, and so does this module: unknown fields (it decodes strictly), wrong types, a ``cdiVersion`` older than
the fields used (:mod:`nvc.emit.cdi.versions`), an invalid kind, device name or annotation key
(:mod:`nvc.emit.cdi.names`), a device without edits, two devices of one name, an env entry without ``NAME=``, a device
node type other than ``b c u p``, permissions outside ``rwm`` (or ``none``), a hook stage OCI does not have, a mount
without both paths. Since Python has no Go struct types, the type of every field is checked here too: a spec that
reaches
:mod:`nvc.emit.cdi.inject` is well-formed, so applying it cannot fail half-way on a bad value.

One difference: Go's JSON decoder matches field names case-insensitively (``HostPath`` reads as ``hostPath``);
here field names must be written as the specification spells them, and any other spelling is an unknown field.
"""

from __future__ import annotations

from nvc.emit.cdi import names as cdi_names
from nvc.emit.cdi.versions import version_problem

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

HOOK_NAMES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
DEVICE_NODE_TYPES = ("", "b", "c", "u", "p")
NO_PERMISSIONS = "none"

_SPEC_FIELDS = frozenset({"cdiVersion", "kind", "annotations", "devices", "containerEdits"})
_DEVICE_FIELDS = frozenset({"name", "annotations", "containerEdits"})
_EDIT_FIELDS = frozenset({"env", "deviceNodes", "hooks", "mounts", "intelRdt", "additionalGids", "netDevices"})
_NODE_FIELDS = frozenset({"path", "hostPath", "type", "major", "minor", "fileMode", "permissions", "uid", "gid"})
_MOUNT_FIELDS = frozenset({"hostPath", "containerPath", "options", "type"})
_HOOK_FIELDS = frozenset({"hookName", "path", "args", "env", "timeout"})
_RDT_FIELDS = frozenset({"closID", "l3CacheSchema", "memBwSchema", "schemata", "enableMonitoring"})
_NET_FIELDS = frozenset({"hostInterfaceName", "name"})
_UINT32_MAX = 2**32 - 1


class SpecInvalid(ValueError):
    """The spec breaks a rule; the message says where (``devices[2].containerEdits.mounts[0]: ...``)."""


def _object(value: Any, where: str, allowed: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise SpecInvalid(f"{where}: expected an object, got {_type_name(value)}")
    unknown = sorted(str(key) for key in value if key not in allowed)
    if unknown:
        raise SpecInvalid(f"{where}: unknown field {unknown[0]!r}")
    return value


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _string(obj: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise SpecInvalid(f"{where}: missing {key}")
        return ""
    if not isinstance(value, str):
        raise SpecInvalid(f"{where}.{key}: expected a string, got {_type_name(value)}")
    if required and not value:
        raise SpecInvalid(f"{where}: empty {key}")
    return value


def _strings(obj: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SpecInvalid(f"{where}.{key}: expected a list of strings")
    return value


def _integer(obj: Mapping[str, Any], key: str, where: str, low: int, high: int) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecInvalid(f"{where}.{key}: expected an integer, got {_type_name(value)}")
    if not low <= value <= high:
        raise SpecInvalid(f"{where}.{key}: {value} is out of range ({low}..{high})")
    return value


def _env(entries: list[str], where: str) -> None:
    for entry in entries:
        if entry.find("=") <= 0:
            raise SpecInvalid(f"{where}: invalid environment variable {entry!r} (expected NAME=VALUE)")


def _list_of_objects(edits: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = edits.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecInvalid(f"{where}.{key}: expected a list, got {_type_name(value)}")
    return value


def _device_node(node: Any, where: str) -> None:
    node = _object(node, where, _NODE_FIELDS)
    path = _string(node, "path", where, required=True)
    _string(node, "hostPath", where)
    kind = _string(node, "type", where)
    if kind not in DEVICE_NODE_TYPES:
        raise SpecInvalid(f"{where}: device {path!r}: invalid type {kind!r} (expected b, c, u or p)")
    # Negative numbers are refused: -1 would read as a wildcard in a cgroup rule.
    _integer(node, "major", where, 0, 2**63 - 1)
    _integer(node, "minor", where, 0, 2**63 - 1)
    _integer(node, "fileMode", where, 0, _UINT32_MAX)
    _integer(node, "uid", where, 0, _UINT32_MAX)
    _integer(node, "gid", where, 0, _UINT32_MAX)
    permissions = _string(node, "permissions", where)
    if permissions and permissions != NO_PERMISSIONS and permissions.strip("rwm"):
        raise SpecInvalid(f"{where}: device {path!r}: invalid permissions {permissions!r} (expected r, w, m or none)")


def _mount(mount: Any, where: str) -> None:
    mount = _object(mount, where, _MOUNT_FIELDS)
    _string(mount, "hostPath", where, required=True)
    _string(mount, "containerPath", where, required=True)
    _strings(mount, "options", where)
    _string(mount, "type", where)


def _hook(hook: Any, where: str) -> None:
    hook = _object(hook, where, _HOOK_FIELDS)
    name = _string(hook, "hookName", where, required=True)
    if name not in HOOK_NAMES:
        raise SpecInvalid(f"{where}: invalid hook name {name!r} (expected one of {', '.join(HOOK_NAMES)})")
    _string(hook, "path", where, required=True)
    _strings(hook, "args", where)
    _env(_strings(hook, "env", where), f"{where}.env")
    _integer(hook, "timeout", where, -(2**63), 2**63 - 1)


def _intel_rdt(rdt: Any, where: str) -> None:
    rdt = _object(rdt, where, _RDT_FIELDS)
    clos = _string(rdt, "closID", where)
    if clos != "/" and (len(clos) >= 4096 or clos in (".", "..") or "/" in clos or "\n" in clos):
        raise SpecInvalid(f"{where}: invalid closID {clos!r}")
    _string(rdt, "l3CacheSchema", where)
    _string(rdt, "memBwSchema", where)
    _strings(rdt, "schemata", where)
    monitoring = rdt.get("enableMonitoring")
    if monitoring is not None and not isinstance(monitoring, bool):
        raise SpecInvalid(f"{where}.enableMonitoring: expected a boolean, got {_type_name(monitoring)}")


def _net_devices(devices: list[Any], where: str) -> None:
    hosts: set[str] = set()
    names: set[str] = set()
    for i, device in enumerate(devices):
        here = f"{where}[{i}]"
        device = _object(device, here, _NET_FIELDS)
        host = _string(device, "hostInterfaceName", here, required=True)
        name = _string(device, "name", here, required=True)
        if host in hosts or name in names:
            raise SpecInvalid(f"{here}: duplicate net device {host!r} / {name!r}")
        hosts.add(host)
        names.add(name)


def validate_edits(edits: Any, where: str) -> bool:
    """Check one ``containerEdits`` object; returns whether it edits anything (a device's must)."""
    if edits is None:
        return False
    edits = _object(edits, where, _EDIT_FIELDS)
    _env(_strings(edits, "env", where), f"{where}.env")
    for i, node in enumerate(_list_of_objects(edits, "deviceNodes", where)):
        _device_node(node, f"{where}.deviceNodes[{i}]")
    for i, hook in enumerate(_list_of_objects(edits, "hooks", where)):
        _hook(hook, f"{where}.hooks[{i}]")
    for i, mount in enumerate(_list_of_objects(edits, "mounts", where)):
        _mount(mount, f"{where}.mounts[{i}]")
    if edits.get("intelRdt") is not None:
        _intel_rdt(edits["intelRdt"], f"{where}.intelRdt")
    gids = edits.get("additionalGids")
    if gids is not None and (not isinstance(gids, list) or not all(
            isinstance(g, int) and not isinstance(g, bool) and 0 <= g <= _UINT32_MAX for g in gids)):
        raise SpecInvalid(f"{where}.additionalGids: expected a list of group ids (0..{_UINT32_MAX})")
    _net_devices(_list_of_objects(edits, "netDevices", where), f"{where}.netDevices")
    return any(edits.get(key) for key in ("env", "deviceNodes", "hooks", "mounts", "additionalGids", "netDevices")) \
        or edits.get("intelRdt") is not None


def _annotations(value: Any, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise SpecInvalid(f"{where}.annotations: expected an object, got {_type_name(value)}")
    try:
        cdi_names.validate_annotations(value)
    except cdi_names.CdiNameError as exc:
        raise SpecInvalid(f"{where}.annotations: {exc}") from None


def validate_spec(spec: Any) -> tuple[str, str, list[str]]:
    """Check a whole parsed spec; returns ``(vendor, class, device names)``. :class:`SpecInvalid` otherwise."""
    spec = _object(spec, "spec", _SPEC_FIELDS)
    _string(spec, "cdiVersion", "spec", required=True)
    kind = _string(spec, "kind", "spec", required=True)
    try:
        vendor, device_class = cdi_names.parse_kind(kind)
    except cdi_names.CdiNameError as exc:
        raise SpecInvalid(str(exc)) from None
    _annotations(spec.get("annotations"), "spec")
    validate_edits(spec.get("containerEdits"), "containerEdits")
    devices = spec.get("devices")
    if not isinstance(devices, list) or not devices:
        raise SpecInvalid("no devices")
    seen: list[str] = []
    for i, device in enumerate(devices):
        where = f"devices[{i}]"
        device = _object(device, where, _DEVICE_FIELDS)
        name = _string(device, "name", where, required=True)
        where = f"device {name!r}"
        try:
            cdi_names.validate_device_name(name)
        except cdi_names.CdiNameError as exc:
            raise SpecInvalid(str(exc)) from None
        if name in seen:
            raise SpecInvalid(f"two devices named {name!r}")
        seen.append(name)
        _annotations(device.get("annotations"), where)
        if not validate_edits(device.get("containerEdits"), f"{where}: containerEdits"):
            raise SpecInvalid(f"{where}: no container edits")
    problem = version_problem(spec)
    if problem:
        raise SpecInvalid(problem)
    return vendor, device_class, seen
