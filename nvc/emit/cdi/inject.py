"""Applying CDI ``containerEdits`` to an OCI ``config.json``, the way CDI consumers apply them.

Input: the parsed spec and the edits :meth:`nvc.emit.cdi.registry.Registry.resolve` returned (spec-wide edits once per
spec, then each device's, already validated). Output: a new spec dict; the input is not modified. The rules are
those of the Go ``tags.cncf.io/container-device-interface`` package that podman, containerd, CRI-O and docker use,
so a container gets the same config.json from our runtime shim as from them:

* all edits are concatenated first, then applied kind by kind: env, device nodes, net devices, mounts, hooks,
  Intel RDT, additional GIDs;
* ``env``: an entry replaces the container's (last) entry of the same name, else is appended;
* ``deviceNodes``: ``hostPath`` defaults to ``path``; a node without a ``type``, or a ``b``/``c``/``u`` node with
  major 0, gets type, major and minor from the host node (``lstat``; a type that disagrees with the host's is an
  error, as is a missing host node); uid/gid default to the process's when those are not 0; the node replaces
  any ``linux.devices`` entry of the same path, and a ``b``/``c`` node adds an allow rule to
  ``linux.resources.devices`` with its ``permissions`` (default ``rwm``; ``none`` → no access);
* ``mounts``: each replaces any mount with the same destination; afterwards all mounts are stably sorted by the
  depth of their destination, so a parent is mounted before what is mounted inside it;
* ``hooks``: appended to their stage; ``additionalGids``: added to ``process.user.additionalGids`` unless present
  (0 is skipped); ``intelRdt`` replaces ``linux.intelRdt``; ``netDevices`` set ``linux.netDevices``.

Not done: the Go package's newest rule that gives bind mounts id-mappings when the container has a user
namespace (nvc's CDI users here run without one).

The host lookup is a parameter (``device_info``), so the function is pure for tests; only the default touches
the host.
"""

from __future__ import annotations

import os
import stat

from nvc.errors import NvcError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

    DeviceInfo = Callable[[str], tuple[str, int, int]]

NO_PERMISSIONS = "none"
_EDIT_LISTS = ("env", "deviceNodes", "netDevices", "hooks", "mounts", "additionalGids")


def host_device_info(path: str) -> tuple[str, int, int]:
    """``(type, major, minor)`` of the host node at ``path`` (not followed if a symlink: a link is no node)."""
    st = os.lstat(path)
    if stat.S_ISBLK(st.st_mode):
        kind = "b"
    elif stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISFIFO(st.st_mode):
        return "p", 0, 0
    else:
        raise ValueError("not a device node")
    return kind, os.major(st.st_rdev), os.minor(st.st_rdev)


def merge_edits(edits: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The concatenation of several ``containerEdits`` (lists appended in order; the last ``intelRdt`` wins)."""
    merged: dict[str, Any] = {key: [] for key in _EDIT_LISTS}
    for item in edits:
        for key in _EDIT_LISTS:
            merged[key].extend(item.get(key) or ())
        if item.get("intelRdt") is not None:
            merged["intelRdt"] = item["intelRdt"]
    return merged


def _filled_node(node: Mapping[str, Any], device_info: DeviceInfo) -> dict[str, Any]:
    """A device node with hostPath, type, major and minor filled from the host where the spec leaves them out."""
    out = dict(node)
    path = out["path"]
    host = out.get("hostPath") or path
    out["hostPath"] = host
    kind = out.get("type") or ""
    major = out.get("major") or 0
    if kind and (major != 0 or kind == "p"):
        return out
    try:
        host_kind, host_major, host_minor = device_info(host)
    except (OSError, ValueError) as exc:
        reason = exc.strerror.lower() if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise NvcError("cdi", f"failed to stat CDI host device {host}: {reason}") from None
    if not kind:
        out["type"] = kind = host_kind
    elif kind != host_kind:
        raise NvcError("cdi", f"CDI device ({path}, {host}): host type mismatch ({kind}, {host_kind})")
    if major == 0 and kind != "p":
        out["major"], out["minor"] = host_major, host_minor
    return out


def _depth(destination: Any) -> int:
    cleaned = os.path.normpath(destination) if isinstance(destination, str) and destination else "."
    return cleaned.count("/")


def _process_ids(spec: Mapping[str, Any]) -> tuple[int, int]:
    process = spec.get("process")
    user = process.get("user") if isinstance(process, dict) else None
    if not isinstance(user, dict):
        return 0, 0
    uid, gid = user.get("uid"), user.get("gid")
    return (uid if isinstance(uid, int) else 0), (gid if isinstance(gid, int) else 0)


def _apply_env(out: dict[str, Any], env: list[str]) -> None:
    process = out.setdefault("process", {})
    current = process.get("env")
    current = list(current) if isinstance(current, list) else []
    for entry in env:
        name = entry.partition("=")[0]
        index = next((i for i in range(len(current) - 1, -1, -1)
                      if isinstance(current[i], str) and current[i].partition("=")[0] == name), None)
        if index is None:
            current.append(entry)
        else:
            current[index] = entry
    process["env"] = current


def _apply_device_nodes(out: dict[str, Any], nodes: list[Mapping[str, Any]], device_info: DeviceInfo) -> None:
    uid, gid = _process_ids(out)
    linux = out.setdefault("linux", {})
    for node in nodes:
        filled = _filled_node(node, device_info)
        device: dict[str, Any] = {"path": filled["path"], "type": filled["type"],
                                  "major": filled.get("major") or 0, "minor": filled.get("minor") or 0}
        for key in ("fileMode", "uid", "gid"):
            if filled.get(key) is not None:
                device[key] = filled[key]
        if "uid" not in device and uid > 0:
            device["uid"] = uid
        if "gid" not in device and gid > 0:
            device["gid"] = gid
        kept = [d for d in linux.get("devices") or [] if not (isinstance(d, dict) and d.get("path") == device["path"])]
        linux["devices"] = [*kept, device]
        if device["type"] in ("b", "c"):
            access = filled.get("permissions") or "rwm"
            if access == NO_PERMISSIONS:
                access = ""
            rule: dict[str, Any] = {"allow": True, "type": device["type"], "major": device["major"],
                                    "minor": device["minor"]}
            if access:
                rule["access"] = access
            resources = linux.setdefault("resources", {})
            resources["devices"] = [*(resources.get("devices") or []), rule]


def _apply_mounts(out: dict[str, Any], mounts: list[Mapping[str, Any]]) -> None:
    current = [m for m in out.get("mounts") or []]
    for mount in mounts:
        destination = mount["containerPath"]
        current = [m for m in current if not (isinstance(m, dict) and m.get("destination") == destination)]
        oci: dict[str, Any] = {"destination": destination}
        if mount.get("type"):
            oci["type"] = mount["type"]
        oci["source"] = mount["hostPath"]
        if mount.get("options"):
            oci["options"] = list(mount["options"])
        current.append(oci)
    current.sort(key=lambda m: _depth(m.get("destination") if isinstance(m, dict) else None))
    out["mounts"] = current


def _apply_hooks(out: dict[str, Any], hooks: list[Mapping[str, Any]]) -> None:
    table = out.get("hooks")
    table = dict(table) if isinstance(table, dict) else {}
    for hook in hooks:
        oci: dict[str, Any] = {"path": hook["path"]}
        for key in ("args", "env"):
            if hook.get(key):
                oci[key] = list(hook[key])
        if hook.get("timeout") is not None:
            oci["timeout"] = hook["timeout"]
        stage = hook["hookName"]
        table[stage] = [*(table.get(stage) or []), oci]
    out["hooks"] = table


def _apply_additional_gids(out: dict[str, Any], gids: list[int]) -> None:
    user = out.setdefault("process", {}).setdefault("user", {})
    current = list(user.get("additionalGids") or [])
    for gid in gids:
        if gid != 0 and gid not in current:
            current.append(gid)
    user["additionalGids"] = current


def apply_cdi_edits(
    spec: Mapping[str, Any], edits: Sequence[Mapping[str, Any]], device_info: DeviceInfo = host_device_info
) -> dict[str, Any]:
    """``spec`` with ``edits`` applied (module docstring); raises ``NvcError("cdi", ...)`` for a host node that is
    missing or of the wrong type, leaving ``spec`` untouched."""
    import copy

    merged = merge_edits(edits)
    out = copy.deepcopy(dict(spec))
    if merged["env"]:
        _apply_env(out, merged["env"])
    if merged["deviceNodes"]:
        _apply_device_nodes(out, merged["deviceNodes"], device_info)
    if merged["netDevices"]:
        net = out.setdefault("linux", {}).setdefault("netDevices", {})
        for device in merged["netDevices"]:
            net[device["hostInterfaceName"]] = {"name": device["name"]}
    if merged["mounts"]:
        _apply_mounts(out, merged["mounts"])
    if merged["hooks"]:
        _apply_hooks(out, merged["hooks"])
    if merged.get("intelRdt") is not None:
        out.setdefault("linux", {})["intelRdt"] = dict(merged["intelRdt"])
    if merged["additionalGids"]:
        _apply_additional_gids(out, merged["additionalGids"])
    return out
