"""``nvc cdi generate``: the host's GPUs as a CDI spec, from the same inventory and plan as ``list``/``configure``.

Nothing here decides what a container gets: :func:`nvc.emit.listing._plan_for_listing` plans a container asking for
the selected capabilities (the plan ``nvc list`` prints) and :func:`nvc.emit.oci_edits.spec_edits` turns its binds
into mounts, so the spec holds exactly the files ``nvc list`` prints — ``nvidia-smi`` and the other binaries at
``/usr/bin``, libraries in one directory, firmware, IPC sockets — and the device nodes of each device. This module
only splits that plan into CDI's shape:

* ``containerEdits`` (applied for any device of the spec): everything of the plan with no GPU selected (control
  nodes, files), ``NVIDIA_VISIBLE_DEVICES=void`` (so no NVIDIA hook acts a second time), and ONE createContainer
  hook, ``nvidia-cdi-hook configure-container`` (:mod:`nvc.commands.cdi_hook`), that does in-process what needs the
  container's root: the plan's symlinks and the SONAME links, CUDA forward compat, the merged ld.so.cache;
* ``devices``: each GPU by index and UUID (``--device-name-strategy``), each MIG device (``gpu:mig`` and its
  UUID), and ``all``; each carries the nodes its plan adds to the common ones.

``--mode management`` lists the nodes found under ``/dev`` as the single device ``all``, for hosts where NVML
cannot run (e.g. before the kernel module is loaded); ``auto`` never falls back to it silently: without NVML it
fails in one line that names the option.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any

from nvc.components import ALL_CAPABILITIES, Capability
from nvc.emit.cdi.names import CdiNameError, build_kind, validate_annotations, validate_device_name
from nvc.errors import NvcError
from nvc.rootpath import DriverRoot

DEFAULT_VENDOR = "nvidia.com"
DEFAULT_CLASS = "gpu"
STRATEGIES = ("index", "uuid", "type-index")
DEFAULT_STRATEGIES = ("index", "uuid")
MODES = ("auto", "nvml", "management")
HOOK_NAME = "nvidia-cdi-hook"
HOOK_SUBCOMMAND = "configure-container"
ANNOTATION_DRIVER_VERSION = "nvc/driver-version"
ANNOTATION_DRIVER_ROOT = "nvc/driver-root"


@dataclass(frozen=True)
class GenerateRequest:
    """``nvc cdi generate`` options (NVIDIA's names; see the CLI help)."""

    driver_root: str = "/"
    dev_root: str | None = None
    ldcache: str = "/etc/ld.so.cache"
    user: tuple[int, int] | None = None
    vendor: str = DEFAULT_VENDOR
    device_class: str = DEFAULT_CLASS
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    hook_path: str | None = None
    capabilities: frozenset[Capability] | None = None  # None: all (what `nvc list` prints)
    mode: str = "auto"
    # Off by default: spec-level annotations need cdiVersion 0.6.0, which consumers built on CDI < 0.6 (Debian 12's
    # podman 4.3) refuse as "unresolvable CDI devices". The driver version is in the spec either way, as the hook's
    # --host-driver-version argument, which is what `nvc doctor` compares with the loaded driver.
    annotations: bool = False


def default_hook_path() -> str:
    """Our ``nvidia-cdi-hook`` as installed: next to the running ``nvc`` script, else on PATH, else
    /usr/local/bin (pip's prefix for root)."""
    import shutil
    import sys

    here = os.path.dirname(os.path.realpath(sys.argv[0])) if sys.argv and sys.argv[0] else ""
    beside = os.path.join(here, HOOK_NAME) if here else ""
    if beside and os.access(beside, os.X_OK):
        return beside
    return shutil.which(HOOK_NAME) or f"/usr/local/bin/{HOOK_NAME}"


def parse_capabilities(values: tuple[str, ...]) -> frozenset[Capability] | None:
    """``--driver-capabilities compute,utility`` (repeatable, ``all``) → the set; None when not given."""
    items = [item.strip() for value in values for item in value.split(",") if item.strip()]
    if not items:
        return None
    if "all" in items:
        return frozenset(ALL_CAPABILITIES)
    try:
        return frozenset(Capability(item) for item in items)
    except ValueError as exc:
        raise NvcError("input", f"unknown driver capability: {exc}") from None


# --- the plan, split into common and per-device edits -------------------------------------------------------------


def _list_request(devices: tuple[str, ...]):
    from nvc.emit.listing import ListRequest

    return ListRequest(devices=devices, libraries=True, binaries=True, ipcs=True, firmwares=True, compat32=True)


def _plan(inventory, request: GenerateRequest, devices: tuple[str, ...] = ()):
    from nvc.emit.listing import _plan_for_listing

    plan, _selection = _plan_for_listing(inventory, _list_request(devices), request.capabilities,
                                         dev_root=request.dev_root)
    return plan


def _device_node(path: str, host: str, major: int, minor: int) -> dict[str, Any]:
    node: dict[str, Any] = {"path": path}
    if host != path:
        node["hostPath"] = host
    node.update(type="c", major=major, minor=minor)
    try:
        node["fileMode"] = stat.S_IMODE(os.stat(host).st_mode)
    except OSError:
        pass
    return node


def _plan_nodes(plan) -> list[dict[str, Any]]:
    """The plan's device nodes (binds with a device number), once each, in plan order."""
    from nvc.plan.planner import Bind

    nodes: list[dict[str, Any]] = []
    seen: set[str] = set()
    for op in plan.of_type(Bind):
        if op.device is None or op.target in seen:
            continue
        seen.add(op.target)
        nodes.append(_device_node(op.target, op.source, op.device[0], op.device[1]))
    return nodes


def _cdi_mount(mount: dict[str, Any]) -> dict[str, Any]:
    """An OCI mount (from :func:`nvc.emit.oci_edits.spec_edits`) in CDI's spelling."""
    return {"hostPath": mount["source"], "containerPath": mount["destination"],
            "options": list(mount.get("options") or ()), "type": mount["type"]}


def hook_args(plan, driver_version: str) -> list[str]:
    """Our one hook's arguments for ``plan``: what needs the container's root, decided now (SONAMEs read here,
    once per host, not on every container start)."""
    from nvc.emit.oci_edits import library_additions
    from nvc.host.ldcache.writer import soname_links
    from nvc.plan.planner import Symlink, UpdateLdCache

    args = [HOOK_NAME, HOOK_SUBCOMMAND, "--host-driver-version", driver_version]
    for op in plan.of_type(UpdateLdCache):
        for directory in op.directories:
            args += ["--folder", directory]
    additions = library_additions(plan)
    for addition in additions:
        args += ["--library", f"{addition.path}::{addition.soname}::{addition.flags:#x}"]
    links = {link: target for link, target in soname_links(additions)}
    for op in plan.of_type(Symlink):
        links.setdefault(op.target, op.value)
    for link, target in links.items():
        args += ["--link", f"{target}::{link}"]
    return args


def _common_edits(plan, hook_path: str, driver_version: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    from nvc.emit.oci_edits import spec_edits
    from nvc.plan.planner import Symlink

    edits = spec_edits(plan, None, additions=())  # SONAME names: links made by our hook, not extra mounts
    notes = tuple(n for n in edits.notes if not n.startswith("skipped symlink"))  # the hook makes those
    common: dict[str, Any] = {"env": list(edits.env)}
    nodes = _plan_nodes(plan)
    if nodes:
        common["deviceNodes"] = nodes
    links = {op.target for op in plan.of_type(Symlink)}  # made by the hook, not mounted over
    common["mounts"] = [_cdi_mount(m) for m in edits.mounts if m["destination"] not in links]
    common["hooks"] = [{"hookName": "createContainer", "path": hook_path, "args": hook_args(plan, driver_version)}]
    return common, notes


# --- devices ------------------------------------------------------------------------------------------------------


def _names(strategies: tuple[str, ...], index: str, uuid: str, type_prefix: str) -> list[str]:
    names: list[str] = []
    for strategy in strategies:
        name = {"index": index, "uuid": uuid, "type-index": f"{type_prefix}{index}"}[strategy]
        if name not in names:
            names.append(name)
    return names


def _nvml_devices(inventory, request: GenerateRequest, common_paths: set[str]) -> list[dict[str, Any]]:
    info = inventory.driver_info
    devices: list[dict[str, Any]] = []

    def add(names: list[str], selector: str) -> None:
        nodes = [n for n in _plan_nodes(_plan(inventory, request, (selector,))) if n["path"] not in common_paths]
        for name in names:
            devices.append({"name": name, "containerEdits": {"deviceNodes": nodes}})

    for gpu in info.gpus:
        add(_names(request.strategies, str(gpu.index), gpu.uuid, "gpu"), str(gpu.index))
    for gpu in info.gpus:
        for mig in gpu.mig_devices:
            add(_names(request.strategies, f"{gpu.index}:{mig.index}", mig.uuid, "mig"), f"{gpu.index}:{mig.index}")
    if info.gpus:
        add(["all"], "all")
    return devices


def management_nodes(dev_root: DriverRoot) -> list[dict[str, Any]]:
    """Every GPU and MIG capability node under ``dev_root``/dev, for ``--mode management``: no NVML needed."""
    found: list[tuple[tuple[int, int], dict[str, Any]]] = []
    for directory, prefix in (("/dev", "nvidia"), ("/dev/nvidia-caps", "nvidia-cap")):
        try:
            names = os.listdir(dev_root.host_path(directory))
        except OSError:
            continue
        for name in names:
            number = name[len(prefix):]
            if not name.startswith(prefix) or not number.isdigit():
                continue
            host = dev_root.host_path(f"{directory}/{name}")
            try:
                st = os.stat(host)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode):
                node = _device_node(f"{directory}/{name}", host, os.major(st.st_rdev), os.minor(st.st_rdev))
                found.append(((len(directory), int(number)), node))
    return [node for _, node in sorted(found, key=lambda item: item[0])]


# --- the spec -----------------------------------------------------------------------------------------------------


def _inventory(request: GenerateRequest):
    from nvc.host.inventory import build_inventory

    management = request.mode == "management"
    try:
        inventory = build_inventory(DriverRoot(request.driver_root), request.ldcache, request.user,
                                    allow_no_nvml=management)
    except NvcError as exc:
        if exc.stage == "initialization" and not management:
            raise NvcError("initialization", f"{exc.message} (no NVML: `--mode management` writes a spec of "
                                             "the device nodes alone)") from None
        raise
    return inventory


def generate_spec(request: GenerateRequest) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The spec document (cdiVersion computed) and notes for stderr (what the plan asked that a spec cannot say)."""
    from nvc.emit.cdi.spec import minimum_version

    if request.mode not in MODES:
        raise NvcError("input", f"unknown mode {request.mode!r} ({', '.join(MODES)})")
    for strategy in request.strategies:
        if strategy not in STRATEGIES:
            raise NvcError("input", f"unknown device name strategy {strategy!r} ({', '.join(STRATEGIES)})")
    try:
        kind = build_kind(request.vendor, request.device_class)
    except CdiNameError as exc:
        raise NvcError("input", str(exc)) from None

    inventory = _inventory(request)
    version = inventory.driver_version
    common_plan = _plan(inventory, request)
    hook_path = request.hook_path or default_hook_path()
    common, notes = _common_edits(common_plan, hook_path, version)
    if not os.access(hook_path, os.X_OK):
        notes += (f"the hook {hook_path} is not an executable here: every container start with this spec fails "
                  "until it is (--hook-path names another)",)
    common_paths = {node["path"] for node in common.get("deviceNodes", ())}

    if request.mode == "management":
        nodes = [n for n in management_nodes(DriverRoot(request.dev_root or request.driver_root))
                 if n["path"] not in common_paths]
        devices = [{"name": "all", "containerEdits": {"deviceNodes": nodes}}]
        notes += (f"management mode: one device 'all' with the {len(nodes)} GPU nodes found under /dev",)
    else:
        devices = _nvml_devices(inventory, request, common_paths)
    if not devices:
        raise NvcError("detection", "no GPU found: a spec without devices would name nothing")
    for device in devices:
        try:
            validate_device_name(device["name"])
        except CdiNameError as exc:
            raise NvcError("detection", str(exc)) from None

    spec: dict[str, Any] = {"cdiVersion": "", "kind": kind}
    if request.annotations:
        annotations = {ANNOTATION_DRIVER_VERSION: version, ANNOTATION_DRIVER_ROOT: request.driver_root}
        validate_annotations(annotations)
        spec["annotations"] = annotations
    spec["devices"] = devices
    spec["containerEdits"] = common
    spec["cdiVersion"] = minimum_version(spec)
    return spec, notes
