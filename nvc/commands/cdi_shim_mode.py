"""The ``nvidia-container-runtime`` shim's CDI mode: a GPU request becomes CDI device names, and the shim applies
those devices' edits from the host's CDI specs to ``config.json`` before exec'ing the low-level runtime.

This is what NVIDIA's runtime does in ``cdi`` mode (``[nvidia-container-runtime] mode = "cdi"`` in config.toml),
and, with ``mode = "auto"``, when the request names CDI devices:

* **Which devices.** Annotations whose key starts with one of ``[nvidia-container-runtime.modes.cdi]
  annotation-prefixes`` (default ``cdi.k8s.io/``; the Kubernetes device plugin writes e.g. ``cdi.k8s.io/gpu:
  nvidia.com/gpu=0``) hold comma-separated fully qualified names; any other word there is an error. When no such
  annotation names a device, the container's request is read with NVIDIA's environment rules
  (:func:`nvc.request.container_env.visible_devices`: ``NVIDIA_VISIBLE_DEVICES``, swarm variables, volume-mount
  requests, the unprivileged-container rule): ``all``, indices, UUIDs and MIG names become ``<default-kind>=<name>``
  (``nvidia.com/gpu=0``), CDI names stay as they are, duplicates are dropped. ``void``, ``none`` or no request:
  the spec is left alone.
* **When (auto).** ``auto`` takes this path when an annotation names CDI devices or every device of the request is
  a fully qualified CDI name (``NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=1``), otherwise the shim's other modes
  decide. (NVIDIA's auto looks at the environment only; an annotation naming CDI devices is as explicit a request.
  A malformed annotation fails the start in ``cdi`` mode and is no CDI request in ``auto``, where NVIDIA ignores
  annotations.)
* **The edits.** The spec directories (``spec-dirs``, default ``/etc/cdi`` and ``/var/run/cdi``) are read with
  :mod:`nvc.emit.cdi.registry` and the edits applied with :mod:`nvc.emit.cdi.inject`, exactly as podman or containerd
  would. Then NVIDIA's legacy prestart hook is removed from the spec if something (docker ``--gpus``) put it there, and
  every ``NVIDIA_VISIBLE_DEVICES`` becomes ``void``: the devices are in the spec now, and a hook seeing the old
  value would inject a second time.

Errors (an unknown device, an unusable spec, a missing host node) fail the container start with one line.
"""

from __future__ import annotations

from nvc.emit.cdi import names as cdi_names
from nvc.errors import NvcError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from nvc.debuglog import DebugLog
    from nvc.request.runtime_config import RuntimeConfig

CDI_MODE = "cdi"
AUTO_MODE = "auto"
LEGACY_HOOK_NAMES = ("nvidia-container-runtime-hook", "nvidia-container-toolkit")
VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"


def annotation_devices(annotations: Any, prefixes: tuple[str, ...]) -> list[str]:
    """Qualified names from annotations whose key has one of ``prefixes`` (keys in sorted order, duplicates
    dropped); an entry that is not a qualified CDI name is an error naming the annotation."""
    if not isinstance(annotations, dict):
        return []
    devices: list[str] = []
    for key in sorted(k for k in annotations if isinstance(k, str) and k.startswith(prefixes)):
        value = annotations[key]
        if not isinstance(value, str):
            raise NvcError("cdi", f"annotation {key!r}: expected a string of CDI device names")
        for device in value.split(","):
            if not cdi_names.is_qualified_name(device):
                raise NvcError("cdi", f"invalid device name {device!r} in annotation {key!r} "
                               "(expected vendor/class=name, e.g. nvidia.com/gpu=0)")
            if device not in devices:
                devices.append(device)
    return devices


def requested_devices(spec: Mapping[str, Any], config: RuntimeConfig) -> tuple[list[str], bool]:
    """``(qualified names, whether the request named CDI devices explicitly)`` for this container."""
    from nvc.request.container_env import is_privileged, parse_environment, visible_devices

    cdi = config.runtime.modes.cdi
    from_annotations = annotation_devices(spec.get("annotations"), cdi.annotation_prefixes)
    if from_annotations:
        return from_annotations, True
    process = spec.get("process")
    env = parse_environment(process.get("env") if isinstance(process, dict) else None)
    request = visible_devices(env, spec.get("mounts"), is_privileged(spec), config)
    devices: list[str] = []
    all_qualified = bool(request)
    for item in request or ():
        if cdi_names.is_qualified_name(item):
            name = item
        else:
            all_qualified = False
            name = f"{cdi.default_kind}={item}"
        if name not in devices:
            devices.append(name)
    return devices, all_qualified


def cdi_request(spec: Mapping[str, Any], config: RuntimeConfig) -> list[str] | None:
    """The CDI devices the shim must inject, ``[]`` when CDI mode applies but nothing is requested, or None when
    CDI mode does not apply (mode is not ``cdi``, or ``auto`` without a CDI request)."""
    mode = config.runtime.mode
    if mode not in (CDI_MODE, AUTO_MODE):
        return None
    try:
        devices, explicit = requested_devices(spec, config)
    except NvcError:
        if mode == CDI_MODE:
            raise
        return None  # auto: a malformed CDI annotation is no CDI request; the other modes decide, as NVIDIA's do
    if mode == AUTO_MODE and not explicit:
        return None
    return devices


def _without_legacy_hook(spec: dict[str, Any]) -> None:
    hooks = spec.get("hooks")
    prestart = hooks.get("prestart") if isinstance(hooks, dict) else None
    if not isinstance(prestart, list):
        return
    kept = [h for h in prestart if not (isinstance(h, dict) and isinstance(h.get("path"), str)
                                        and h["path"].rstrip("/").rpartition("/")[2] in LEGACY_HOOK_NAMES)]
    if len(kept) != len(prestart):
        hooks["prestart"] = kept


def _visible_devices_void(spec: dict[str, Any]) -> None:
    """Every ``NVIDIA_VISIBLE_DEVICES`` entry becomes ``void`` in place; one is appended when there is none."""
    process = spec.setdefault("process", {})
    void = f"{VISIBLE_DEVICES}=void"
    env = [void if isinstance(e, str) and e.partition("=")[0] == VISIBLE_DEVICES else e
           for e in process.get("env") or []]
    process["env"] = env if void in env else [*env, void]


def spec_with_cdi_devices(
    spec: Mapping[str, Any], devices: list[str], config: RuntimeConfig, log: DebugLog | None = None
) -> dict[str, Any]:
    """``spec`` with the CDI edits of ``devices`` applied (module docstring); the input is not modified."""
    from nvc.emit.cdi.inject import apply_cdi_edits
    from nvc.emit.cdi.registry import load_registry

    registry = load_registry(config.runtime.modes.cdi.spec_dirs)
    if log is not None:
        for problem in registry.problems:
            log.info(f"CDI spec ignored: {problem}", where="runtime")
    edited = apply_cdi_edits(spec, registry.resolve(devices))
    _without_legacy_hook(edited)
    _visible_devices_void(edited)
    if log is not None:
        log.info(f"cdi mode: injected {', '.join(devices)}", where="runtime")
    return edited

