"""What a container asks for through NVIDIA's environment variables, read from its OCI ``config.json``.

These are NVIDIA Container Toolkit's rules (v1.20), reproduced exactly because every CUDA image and every
orchestrator (Docker ``--gpus``, Kubernetes device plugins, Swarm) is written against them:

- ``NVIDIA_VISIBLE_DEVICES`` (or the ``swarm-resource`` variables when present) selects GPUs; unset means "not a
  GPU container" except for legacy CUDA images (``CUDA_VERSION`` set, ``NVIDIA_REQUIRE_CUDA`` not), which get all;
  empty or ``void`` anywhere means not a GPU container; ``none`` means driver files without GPUs; ``all`` all GPUs.
  With ``accept-nvidia-visible-devices-as-volume-mounts`` the list can come from ``/dev/null`` bind mounts under
  ``/var/run/nvidia-container-devices/`` instead (and wins); with ``accept-...-envvar-when-unprivileged = false``
  only a privileged container (``CAP_SYS_ADMIN`` in its bounding set) may use the variable.
- ``NVIDIA_DRIVER_CAPABILITIES`` picks capabilities from the configured supported set.
- ``NVIDIA_REQUIRE_*`` become ``--require`` expressions unless ``NVIDIA_DISABLE_REQUIRE`` / ``disable-require``.
- ``NVIDIA_MIG_CONFIG_DEVICES`` / ``NVIDIA_MIG_MONITOR_DEVICES`` are refused in unprivileged containers;
  ``NVIDIA_IMEX_CHANNELS`` follows the device-request rules.

Pure: a parsed spec and a :class:`RuntimeConfig` in, a :class:`GpuRequest` (or None) out.
"""

from __future__ import annotations

import posixpath

# The ABCs collections.abc re-exports, from where they live: ``os`` has already imported _collections_abc, while
# importing collections.abc would load the whole collections package on every container start.
from _collections_abc import Iterable, Mapping

from nvc.components import Capability
from nvc.errors import NvcError
from nvc.record import record

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the hook imports this module, and typing costs ~10 ms there
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from nvc.request.runtime_config import RuntimeConfig

ENV_VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"
ENV_DRIVER_CAPABILITIES = "NVIDIA_DRIVER_CAPABILITIES"
ENV_REQUIRE_PREFIX = "NVIDIA_REQUIRE_"
ENV_REQUIRE_CUDA = "NVIDIA_REQUIRE_CUDA"
ENV_REQUIRE_JETPACK = "NVIDIA_REQUIRE_JETPACK"
ENV_DISABLE_REQUIRE = "NVIDIA_DISABLE_REQUIRE"
ENV_MIG_CONFIG_DEVICES = "NVIDIA_MIG_CONFIG_DEVICES"
ENV_MIG_MONITOR_DEVICES = "NVIDIA_MIG_MONITOR_DEVICES"
ENV_IMEX_CHANNELS = "NVIDIA_IMEX_CHANNELS"
ENV_CUDA_VERSION = "CUDA_VERSION"

CAP_SYS_ADMIN = "CAP_SYS_ADMIN"
DEVICE_LIST_AS_VOLUME_MOUNTS_ROOT = "/var/run/nvidia-container-devices"
_MOUNT_PREFIX_CDI = "cdi/"
_MOUNT_PREFIX_IMEX = "imex/"

DEFAULT_CAPABILITIES = frozenset({Capability.COMPUTE, Capability.UTILITY})
# Go's strconv.ParseBool true spellings; anything else (including garbage) leaves requirements on.
_TRUE_VALUES = frozenset({"1", "t", "T", "TRUE", "true", "True"})


@record(frozen=True)
class GpuRequest:
    """A GPU container's request, in the terms ``nvidia-container-cli configure`` takes.

    ``devices``: the ``--device`` items, ``("all",)`` for all GPUs, empty for ``none`` (driver files, no GPU nodes).
    ``requirements``: ``--require`` expressions, already empty when requirements are disabled.
    ``mig_config`` / ``mig_monitor``: raw ``--mig-config`` / ``--mig-monitor`` values, None when not asked for.
    ``imex_channels``: ``--imex-channel`` items. ``privileged``: CAP_SYS_ADMIN in the bounding set.
    """

    devices: tuple[str, ...]
    capabilities: frozenset[Capability]
    requirements: tuple[str, ...] = ()
    mig_config: str | None = None
    mig_monitor: str | None = None
    imex_channels: tuple[str, ...] = ()
    privileged: bool = False


# --- reading the spec -------------------------------------------------------------------------------------------


def parse_environment(env: Iterable[Any] | None) -> dict[str, str]:
    """``process.env`` as a dict: split on the first ``=``, the last duplicate wins; an entry without ``=`` fails
    the container, as it does with NVIDIA (it fails even for non-GPU containers: the env is read first)."""
    result: dict[str, str] = {}
    if env is None:
        return result
    if isinstance(env, str | bytes | Mapping) or not isinstance(env, Iterable):
        raise NvcError("input", "could not decode OCI spec: process.env is not a list of strings")
    for entry in env:
        if not isinstance(entry, str):
            raise NvcError("input", f"could not decode OCI spec: process.env entry {entry!r} is not a string")
        name, sep, value = entry.partition("=")
        if not sep:
            raise NvcError("input", f"invalid environment variable: {entry}")
        result[name] = value
    return result


def is_privileged(spec: Mapping[str, Any]) -> bool:
    """``CAP_SYS_ADMIN`` in ``process.capabilities.bounding``; specs older than 1.0.0-rc5 have a flat list.

    NVIDIA chooses the shape by ``ociVersion``; we go by the JSON shape, which is the same for every real spec."""
    process = spec.get("process")
    capabilities = process.get("capabilities") if isinstance(process, Mapping) else None
    if capabilities is None:
        return False
    if isinstance(capabilities, list):
        bounding = capabilities
    elif isinstance(capabilities, Mapping):
        bounding = capabilities.get("bounding") or []
    else:
        raise NvcError("input", "could not decode Process.Capabilities in OCI spec: not an object or a list")
    if not isinstance(bounding, list):
        raise NvcError("input", "could not decode Process.Capabilities in OCI spec: bounding is not a list")
    return CAP_SYS_ADMIN in bounding


def _clean(path: str) -> str:
    """Go's ``filepath.Clean`` for absolute POSIX paths (normpath keeps a leading ``//``; Go does not)."""
    cleaned = posixpath.normpath(path) if path else "."
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


def requests_from_mounts(mounts: Any) -> list[str]:
    """Device requests encoded as mounts: source ``/dev/null``, destination
    ``/var/run/nvidia-container-devices/<request>``; first occurrence of a destination only, in spec order."""
    if not isinstance(mounts, list):
        return []
    root = DEVICE_LIST_AS_VOLUME_MOUNTS_ROOT
    seen: set[str] = set()
    requests: list[str] = []
    for mount in mounts:
        if not isinstance(mount, Mapping):
            continue
        source, destination = mount.get("source"), mount.get("destination")
        if not isinstance(source, str) or not isinstance(destination, str) or _clean(source) != "/dev/null":
            continue
        destination = _clean(destination)
        if destination in seen:
            continue
        seen.add(destination)
        # A path-component prefix: NVIDIA's plain string prefix would also accept ".../nvidia-container-devicesX".
        if not destination.startswith(root + "/"):
            continue
        request = destination[len(root):].strip("/")
        if request:
            requests.append(request)
    return requests


def _cdi_name_from_mount(request: str) -> str | None:
    """``cdi/<vendor>/<class>=<dev>`` or ``cdi/<vendor>/<class>/<dev>`` → ``<vendor>/<class>=<dev>``."""
    name = request[len(_MOUNT_PREFIX_CDI):]
    vendor_class, sep, device = name.partition("=")
    if sep and vendor_class.count("/") == 1 and all(vendor_class.split("/")) and device:
        return name
    parts = name.split("/", 2)
    if len(parts) != 3 or not all(parts):
        return None
    return f"{parts[0]}/{parts[1]}={parts[2]}"


_ASCII_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_ASCII_ALNUM = _ASCII_LETTERS | frozenset("0123456789")


def _valid_cdi_part(text: str, first: frozenset[str], inner: frozenset[str]) -> bool:
    """CDI's name rule: a first character from ``first``, inner ones from ``inner``, a letter or digit last."""
    return bool(text) and text[0] in first and text[-1] in _ASCII_ALNUM and all(ch in inner for ch in text[1:-1])


_CDI_KIND_INNER = _ASCII_ALNUM | frozenset("_-.")
_CDI_DEVICE_INNER = _CDI_KIND_INNER | frozenset(":")


def is_qualified_cdi_name(device: str) -> bool:
    """A fully qualified CDI device name, ``<vendor>/<class>=<name>``, by the CDI parser's rules (what NVIDIA's
    ``parser.IsQualifiedName`` accepts): vendor and class start with a letter, the name with a letter or digit,
    all three end with one; inside, vendor and class allow ``_ - .``, the name also ``:``."""
    qualifier, sep, name = device.partition("=")
    vendor, slash, klass = qualifier.partition("/")
    return (bool(sep) and bool(slash) and not device.startswith("/")
            and _valid_cdi_part(vendor, _ASCII_LETTERS, _CDI_KIND_INNER)
            and _valid_cdi_part(klass, _ASCII_LETTERS, _CDI_KIND_INNER)
            and _valid_cdi_part(name, _ASCII_ALNUM, _CDI_DEVICE_INNER))


# --- the rules --------------------------------------------------------------------------------------------------


def is_legacy_image(env: Mapping[str, str]) -> bool:
    """CUDA images before NVIDIA_REQUIRE_CUDA existed: they only announce ``CUDA_VERSION``."""
    return bool(env.get(ENV_CUDA_VERSION)) and not env.get(ENV_REQUIRE_CUDA)


def _devices_from_envvars(env: Mapping[str, str], names: Sequence[str], legacy: bool) -> list[str] | None:
    """NVIDIA's ``devicesFromEnvvars`` + ``NewVisibleDevices``: items of every named variable, trimmed, empty ones
    dropped. None = void (not a request); ``[]`` = none; ``["all"]`` = all. Precedence void > none > all, wherever
    the special item appears in the list."""
    is_set = False
    devices: list[str] = []
    for name in names:
        if name in env:
            is_set = True
            devices.extend(item.strip() for item in env[name].split(",") if item.strip())
    if not is_set and not devices and legacy:
        devices = ["all"]
    if not devices or "void" in devices:
        return None
    if "none" in devices:
        return []
    if "all" in devices:
        return ["all"]
    return devices


def _visible_device_envvars(env: Mapping[str, str], config: RuntimeConfig) -> list[str]:
    """The swarm-resource variables present in the env, else NVIDIA_VISIBLE_DEVICES."""
    present = [name for name in config.swarm_resource if name in env]
    return present or [ENV_VISIBLE_DEVICES]


def visible_devices(
    env: Mapping[str, str], mounts: Any, privileged: bool, config: RuntimeConfig
) -> tuple[str, ...] | None:
    """The ``--device`` items, or None when this is not a GPU container."""
    if config.accept_device_list_as_volume_mounts:
        from_mounts: list[str] = []
        for request in requests_from_mounts(mounts):
            if request.startswith(_MOUNT_PREFIX_IMEX):
                continue
            if request.startswith(_MOUNT_PREFIX_CDI):
                name = _cdi_name_from_mount(request)
                if name is not None:
                    from_mounts.append(name)
                continue
            from_mounts.append(request)
        if from_mounts:
            return tuple(from_mounts)

    devices = _devices_from_envvars(env, _visible_device_envvars(env, config), is_legacy_image(env))
    if devices is None:
        return None
    if privileged or config.accept_envvar_unprivileged:
        return tuple(devices)
    return None  # NVIDIA logs "Ignoring devices requested by environment variable(s) in unprivileged container"


def imex_channels(env: Mapping[str, str], mounts: Any, privileged: bool, config: RuntimeConfig) -> tuple[str, ...]:
    """NVIDIA's ``ImexChannelRequests``: ``imex/<channel>`` volume mounts (when accepted) win over
    ``NVIDIA_IMEX_CHANNELS``, which obeys the same privilege rule as NVIDIA_VISIBLE_DEVICES. ``all`` yields nothing:
    NVIDIA drops it so that a legacy image's implicit "all" never grants IMEX channels."""
    if config.features.ignore_imex_channel_requests:
        return ()
    if config.accept_device_list_as_volume_mounts:
        from_mounts = [
            request[len(_MOUNT_PREFIX_IMEX):]
            for request in requests_from_mounts(mounts)
            if request.startswith(_MOUNT_PREFIX_IMEX)
        ]
        if from_mounts:
            return tuple(from_mounts)
    channels = _devices_from_envvars(env, [ENV_IMEX_CHANNELS], is_legacy_image(env))
    if not channels or channels == ["all"]:
        return ()
    if privileged or config.accept_envvar_unprivileged:
        return tuple(channels)
    return ()


def driver_capabilities(env: Mapping[str, str], config: RuntimeConfig, legacy: bool) -> frozenset[Capability]:
    """NVIDIA_DRIVER_CAPABILITIES against the supported set S: unset → compute,utility ∩ S (all of S for a legacy
    image); empty → compute,utility ∩ S; ``all`` anywhere → S; a name outside S (or unknown) → error."""
    supported = config.supported_driver_capabilities
    if ENV_DRIVER_CAPABILITIES not in env:
        return supported if legacy else supported & DEFAULT_CAPABILITIES
    value = env[ENV_DRIVER_CAPABILITIES]
    if not value:
        return supported & DEFAULT_CAPABILITIES
    requested = {item.strip() for item in value.split(",") if item.strip()}
    if "all" in requested:
        return supported
    allowed = {capability.value for capability in supported} & requested
    if allowed != requested:
        found, permitted = ",".join(sorted(requested)), ",".join(sorted(allowed))
        raise NvcError("input", f"unsupported capabilities found in '{found}' (allowed '{permitted}')")
    return frozenset(Capability(name) for name in allowed)


def disable_require(env: Mapping[str, str], config: RuntimeConfig) -> bool:
    """Requirements are off with config ``disable-require = true`` or a Go-truthy NVIDIA_DISABLE_REQUIRE."""
    return config.disable_require or env.get(ENV_DISABLE_REQUIRE) in _TRUE_VALUES


def cuda_major_minor(version: str) -> str:
    """``CUDA_VERSION`` → ``MAJOR.MINOR`` as NVIDIA does (Go semver, optional ``v``): ``9`` → ``9.0``,
    ``10.2.89`` → ``10.2``. Anything semver refuses (``10.02``, ``10.2.89.1``, ``10.2-rc1``) is an error."""
    text = version.removeprefix("v")
    parsed = _parse_go_semver(text)
    if parsed is None:
        raise ValueError("invalid version string")
    major, minor = parsed
    if int(major) > 0xFFFFFFFF:
        raise ValueError("invalid major version")
    if int(minor) > 0xFFFFFFFF:
        raise ValueError("invalid minor version")
    return f"{major}.{minor}"


def _parse_go_semver(text: str) -> tuple[str, str] | None:
    """golang.org/x/mod/semver's grammar without the ``v``: ``MAJOR[.MINOR[.PATCH[-PRE][+BUILD]]]``, no leading
    zeros, pre-release/build only after a full ``MAJOR.MINOR.PATCH``. Returns (major, minor)."""
    core, plus, build = text.partition("+")
    if plus and not _valid_identifiers(build, numeric_rule=False):
        return None
    core, dash, pre = core.partition("-")
    if dash and not _valid_identifiers(pre, numeric_rule=True):
        return None
    parts = core.split(".")
    if len(parts) > 3 or ((dash or plus) and len(parts) != 3):
        return None
    if not all(_valid_number(part) for part in parts):
        return None
    return parts[0], parts[1] if len(parts) > 1 else "0"


def _valid_number(part: str) -> bool:
    return part.isascii() and part.isdigit() and (part == "0" or not part.startswith("0"))


def _valid_identifiers(text: str, *, numeric_rule: bool) -> bool:
    for ident in text.split("."):
        if not ident or not all(ch.isascii() and (ch.isalnum() or ch == "-") for ch in ident):
            return False
        if numeric_rule and ident.isdigit() and len(ident) > 1 and ident.startswith("0"):
            return False
    return True


def requirements(env: Mapping[str, str], config: RuntimeConfig) -> tuple[str, ...]:
    """The ``--require`` expressions: every ``NVIDIA_REQUIRE_*`` except ``NVIDIA_REQUIRE_JETPACK*`` (sorted by name;
    NVIDIA's order is Go map order, i.e. random), then ``cuda>=MAJOR.MINOR`` for a legacy image.

    An empty value is kept, as NVIDIA's hook keeps it (``NVIDIA_REQUIRE_CUDA=`` → ``--require=``). It has no term,
    so it always holds; what keeping it changes is the count against the CLI's limit of 32 expressions
    (``input error: too many requirements``), which NVIDIA's CLI applies to exactly this list: dropping it would
    start an image that NVIDIA refuses, and the argv would differ from NVIDIA's for nothing."""
    if disable_require(env, config):
        return ()
    found = [
        env[name]
        for name in sorted(env)
        if name.startswith(ENV_REQUIRE_PREFIX) and not name.startswith(ENV_REQUIRE_JETPACK)
    ]
    if is_legacy_image(env):
        version = env[ENV_CUDA_VERSION]
        try:
            found.append(f"cuda>={cuda_major_minor(version)}")
        except ValueError as exc:
            raise NvcError(
                "input", f"failed to get requirements: invalid CUDA version {version}: {exc}"
            ) from None
    return tuple(found)


def _mig_request(env: Mapping[str, str], name: str, privileged: bool) -> str | None:
    value = env.get(name, "")
    if value and not privileged:
        short = name.removeprefix("NVIDIA_")
        raise NvcError("input", f"cannot set {short} in non privileged container")
    return value or None


def gpu_request_from_spec(spec: Mapping[str, Any], config: RuntimeConfig) -> GpuRequest | None:
    """Apply NVIDIA's rules to a parsed ``config.json``; None means "not a GPU container, do nothing".

    The checks run in NVIDIA's order, so the same broken container fails with the same message: the process
    capabilities and the environment are decoded first (for every container), then devices decide whether this is
    a GPU container at all, then MIG, IMEX, driver capabilities and requirements."""
    privileged = is_privileged(spec)  # NVIDIA decodes the capabilities before the environment
    process = spec.get("process")
    env = parse_environment(process.get("env") if isinstance(process, Mapping) else None)
    mounts = spec.get("mounts")

    devices = visible_devices(env, mounts, privileged, config)
    if devices is None:
        return None
    mig_config = _mig_request(env, ENV_MIG_CONFIG_DEVICES, privileged)
    mig_monitor = _mig_request(env, ENV_MIG_MONITOR_DEVICES, privileged)
    channels = imex_channels(env, mounts, privileged, config)
    capabilities = driver_capabilities(env, config, is_legacy_image(env))
    return GpuRequest(
        devices=devices,
        capabilities=capabilities,
        requirements=requirements(env, config),
        mig_config=mig_config,
        mig_monitor=mig_monitor,
        imex_channels=channels,
        privileged=privileged,
    )


# --- the runtime mode ---------------------------------------------------------------------------------------------

HOOK_MODE_ERROR = (
    "invoking the NVIDIA Container Runtime Hook directly (e.g. specifying the docker --gpus flag) is not supported. "
    "Please use the NVIDIA Container Runtime (e.g. specify the --runtime=nvidia flag) instead"
)


def hook_runtime_mode(config: RuntimeConfig, gpu: GpuRequest) -> str:
    """The mode NVIDIA's hook resolves for a GPU container: ``[nvidia-container-runtime] mode`` as written, except
    ``auto``, which is ``cdi`` when every requested device is a fully qualified CDI name (``nvidia.com/gpu=0``,
    from NVIDIA_VISIBLE_DEVICES or a ``cdi/`` volume mount: toolkit 1.20; 1.17 dropped such mounts) and
    ``legacy`` otherwise. (NVIDIA's auto mode picks
    ``csv``/``jit-cdi`` on Tegra boards, which have no NVML; nvc serves NVML hosts only.)"""
    mode = config.runtime.mode
    if mode != "auto":
        return mode
    if gpu.devices and all(is_qualified_cdi_name(device) for device in gpu.devices):
        return "cdi"
    return "legacy"


def check_hook_mode(config: RuntimeConfig, gpu: GpuRequest) -> None:
    """The hook only acts in ``legacy`` mode: CDI and the other modes are the runtime's to apply, and a hook that
    went ahead would inject a second time or pass CDI names to the CLI. ``[nvidia-container-runtime-hook]
    skip-mode-detection = true`` lifts the check, as in NVIDIA's hook."""
    if config.hook.skip_mode_detection:
        return
    if hook_runtime_mode(config, gpu) != "legacy":
        raise NvcError("input", HOOK_MODE_ERROR)
