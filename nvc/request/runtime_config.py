"""NVIDIA Container Toolkit's ``config.toml``, as one frozen value.

The hook reads this file before anything else: it decides which environment requests are honoured (unprivileged,
volume mounts, swarm), which capabilities may be asked for, and how ``nvidia-container-cli`` is invoked. A host that
had NVIDIA's toolkit installed already has this file, so every key NVIDIA writes must load with NVIDIA's meaning;
keys we do not know are ignored (NVIDIA adds keys every release), but a known key with the wrong type is an error
rather than a silent default, because a misread ``no-cgroups`` or ``ldconfig`` changes what a container gets.

Location (NVIDIA's rules): an explicit path (the hook's ``-config``) or ``$NVIDIA_CTK_CONFIG_FILE_PATH`` must exist;
otherwise ``${XDG_CONFIG_HOME:-/etc}/nvidia-container-runtime/config.toml`` is read when present and the defaults
apply when it is not. Only :func:`load_config` touches the filesystem; :func:`parse_config` takes text.
"""

from __future__ import annotations

import os

from nvc.components import ALL_CAPABILITIES, Capability
from nvc.config_location import (  # noqa: F401 - re-exported: the location rule lives there
    CONFIG_PATH_ENV,
    DEFAULT_CONFIG_PATH,
    RELATIVE_CONFIG_PATH,
    XDG_CONFIG_HOME_ENV,
    config_file_path,
)
from nvc.errors import NvcError
from nvc.record import field, fields, is_record, record, replace

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the hook imports this module, and typing costs ~10 ms there
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    PathExists = Callable[[str], bool]


DEFAULT_LDCONFIG = "@/sbin/ldconfig"
# "" is NVIDIA's "unset": the hook then passes --cuda-compat-mode=disabled, or no flag at all with
# [features] allow-cuda-compat-libs-from-container (nvc.request.container_request.cuda_compat_flag).
CUDA_COMPAT_MODES = ("disabled", "hook", "ldconfig", "mount", "")


@record(frozen=True)
class ContainerCliConfig:
    """``[nvidia-container-cli]``: how the hook invokes the CLI. Empty strings mean "flag not passed"."""

    root: str = ""
    path: str = ""
    environment: tuple[str, ...] = ()
    debug: str = ""
    ldcache: str = ""
    load_kmods: bool = True
    no_pivot: bool = False
    no_cgroups: bool = False
    user: str = ""
    # Already normalised: "@/sbin/ldconfig" becomes "@/sbin/ldconfig.real" where that exists (Debian's wrapper).
    ldconfig: str = DEFAULT_LDCONFIG


@record(frozen=True)
class CdiModeConfig:
    """``[nvidia-container-runtime.modes.cdi]``."""

    default_kind: str = "nvidia.com/gpu"
    annotation_prefixes: tuple[str, ...] = ("cdi.k8s.io/",)
    spec_dirs: tuple[str, ...] = ("/etc/cdi", "/var/run/cdi")


@record(frozen=True)
class CsvModeConfig:
    """``[nvidia-container-runtime.modes.csv]`` (Tegra)."""

    mount_spec_path: str = "/etc/nvidia-container-runtime/host-files-for-container.d"


@record(frozen=True)
class LegacyModeConfig:
    """``[nvidia-container-runtime.modes.legacy]``: how CUDA forward-compat libraries in an image are used
    (``""``: unset, see :data:`CUDA_COMPAT_MODES`)."""

    cuda_compat_mode: str = "ldconfig"


@record(frozen=True)
class RuntimeModesConfig:
    """``[nvidia-container-runtime.modes]``."""

    cdi: CdiModeConfig = field(default_factory=CdiModeConfig)
    csv: CsvModeConfig = field(default_factory=CsvModeConfig)
    legacy: LegacyModeConfig = field(default_factory=LegacyModeConfig)


@record(frozen=True)
class ContainerRuntimeConfig:
    """``[nvidia-container-runtime]``: the runc wrapper's settings (mode: auto | legacy | cdi | jit-cdi | csv)."""

    debug: str = "/dev/null"
    log_level: str = "info"
    mode: str = "auto"
    runtimes: tuple[str, ...] = ("runc", "crun")
    modes: RuntimeModesConfig = field(default_factory=RuntimeModesConfig)


@record(frozen=True)
class RuntimeHookConfig:
    """``[nvidia-container-runtime-hook]``."""

    path: str = "nvidia-container-runtime-hook"
    skip_mode_detection: bool = False


@record(frozen=True)
class CtkConfig:
    """``[nvidia-ctk]``."""

    path: str = "nvidia-ctk"


@record(frozen=True)
class FeaturesConfig:
    """``[features]``: opt-in switches, all off unless set to true."""

    allow_cuda_compat_libs_from_container: bool = False
    allow_ldconfig_from_container: bool = False
    disable_cuda_compat_lib_hook: bool = False
    disable_imex_channel_creation: bool = False
    ignore_imex_channel_requests: bool = False


@record(frozen=True)
class RuntimeConfig:
    """The whole file. ``swarm_resource`` is the comma-separated TOML string already split into env var names;
    ``supported_driver_capabilities`` is the validated set (``"all"`` expanded); ``source`` is the file that was
    read, None when the defaults apply."""

    disable_require: bool = False
    swarm_resource: tuple[str, ...] = ()
    accept_envvar_unprivileged: bool = True
    accept_device_list_as_volume_mounts: bool = False
    supported_driver_capabilities: frozenset[Capability] = frozenset(ALL_CAPABILITIES)
    cli: ContainerCliConfig = field(default_factory=ContainerCliConfig)
    runtime: ContainerRuntimeConfig = field(default_factory=ContainerRuntimeConfig)
    hook: RuntimeHookConfig = field(default_factory=RuntimeHookConfig)
    ctk: CtkConfig = field(default_factory=CtkConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    source: str | None = None


# A field's TOML key is its name with dashes, except these (NVIDIA's names are long or prefixed).
_TOML_KEYS = {
    (RuntimeConfig, "accept_envvar_unprivileged"): "accept-nvidia-visible-devices-envvar-when-unprivileged",
    (RuntimeConfig, "accept_device_list_as_volume_mounts"): "accept-nvidia-visible-devices-as-volume-mounts",
    (RuntimeConfig, "cli"): "nvidia-container-cli",
    (RuntimeConfig, "runtime"): "nvidia-container-runtime",
    (RuntimeConfig, "hook"): "nvidia-container-runtime-hook",
    (RuntimeConfig, "ctk"): "nvidia-ctk",
}
# Fields typed richer than their TOML value (a string there), finished in _finish; "source" is not in the file.
_TOML_STRING_FIELDS = {(RuntimeConfig, "swarm_resource"), (RuntimeConfig, "supported_driver_capabilities")}
_NOT_IN_FILE = {(RuntimeConfig, "source")}


def _swarm_names(value: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in value.split(",") if name.strip())


class _ConfigValueError(Exception):
    """A known key with an unusable value; the message names the dotted key."""


def normalize_ldconfig_path(value: str, path_exists: PathExists = os.path.exists) -> str:
    """NVIDIA's ``NormalizeLDConfigPath``: for a host path (``@`` prefix) prefer ``<path>.real`` when it exists
    — Debian/Ubuntu ship ``/sbin/ldconfig`` as a shell wrapper around ``/sbin/ldconfig.real`` — and fall back to
    the plain path when it does not, whichever of the two was configured."""
    if not value.startswith("@"):
        return value
    base = value[1:].removesuffix(".real")
    if path_exists(base + ".real"):
        return "@" + base + ".real"
    return "@" + base


def default_config(path_exists: PathExists = os.path.exists) -> RuntimeConfig:
    """The built-in defaults (no file), with the ldconfig default resolved against the host."""
    return RuntimeConfig(cli=ContainerCliConfig(ldconfig=normalize_ldconfig_path(DEFAULT_LDCONFIG, path_exists)))


def load_config(
    path: str | None = None,
    environ: Mapping[str, str] = os.environ,
    *,
    path_exists: PathExists = os.path.exists,
) -> RuntimeConfig:
    """Read and validate the toolkit config. ``path`` is an explicit file (the hook's ``-config``) and, like
    ``$NVIDIA_CTK_CONFIG_FILE_PATH``, must exist; the default location may be absent (defaults). ``path_exists`` is
    how ``ldconfig.real`` is probed, replaceable in tests. Errors are ``NvcError("input", "<path>: <reason>")``."""
    required = True
    if not path:
        path, required = config_file_path(environ)
    cached = _cached_config(path, path_exists)
    if cached is not None:
        return cached
    try:
        with open(path, "rb") as handle:
            data = handle.read()
            identity = _file_identity(os.fstat(handle.fileno()))
    except FileNotFoundError:
        if required:
            raise NvcError("input", f"{path}: couldn't open required configuration file: no such file") from None
        return default_config(path_exists)
    except OSError as exc:
        raise NvcError("input", f"{path}: couldn't open configuration file: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NvcError("input", f"{path}: invalid TOML: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    raw = _parse_raw(text, path)
    _store_config(path, identity, raw)
    return _normalize(raw, path_exists)


def parse_config(text: str, source: str = "config.toml", *, path_exists: PathExists = os.path.exists) -> RuntimeConfig:
    """Turn config.toml text into a :class:`RuntimeConfig`; ``source`` names the file in error messages."""
    return _normalize(_parse_raw(text, source), path_exists)


def _parse_raw(text: str, source: str) -> RuntimeConfig:
    """The validated config, ``cli.ldconfig`` as written (normalising it probes the host: :func:`_normalize`)."""
    import tomllib  # only the hook reads TOML, and only when config.toml is not in the cache

    _check_key_depth(text, source)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise NvcError("input", f"{source}: invalid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses on nested arrays and inline tables: "[[[[..." of any depth
        raise NvcError("input", f"{source}: invalid TOML: arrays or tables nested too deeply") from None
    try:
        config = _build(RuntimeConfig, document, "")
        config = _finish(config, document)
    except _ConfigValueError as exc:
        raise NvcError("input", f"{source}: {exc}") from None
    return replace(config, source=source)


# tomllib's time grows with the square of a dotted key's depth (``a.a.a....b = 1``: 16000 levels take seconds), and
# a file that fails to parse is parsed again on every container start. No key of the schema is deeper than 4; a line
# whose key part (before any "=") has more dots than this is refused before tomllib sees it.
_MAX_KEY_DOTS = 128


def _check_key_depth(text: str, source: str) -> None:
    if text.count(".") <= _MAX_KEY_DOTS:
        return
    for number, line in enumerate(text.splitlines(), 1):
        if line.partition("=")[0].count(".") > _MAX_KEY_DOTS:
            raise NvcError("input", f"{source}: invalid TOML: keys nested too deeply (line {number})")


def _normalize(config: RuntimeConfig, path_exists: PathExists) -> RuntimeConfig:
    return replace(config, cli=replace(config.cli, ldconfig=normalize_ldconfig_path(config.cli.ldconfig, path_exists)))


# --- the parsed-config cache -----------------------------------------------------------------------------------
# config.toml changes rarely and every container start reads it: the parsed value (before the host-dependent
# ldconfig normalisation, redone on every load) is kept in the NVML answer cache's directory, under the same rules
# (nvc.private_files: a 0700 root-owned directory, 0600 files of ours, never followed through a symlink), keyed by the
# file's path and identity (device, inode, size, mtime, ctime). Any cache problem just means parsing the file.

_CACHE_FORMAT = 2  # 2: cuda-compat-mode "" and the environment entry check (an entry cached under 1 skipped them)


def _file_identity(st: os.stat_result) -> list[int] | None:
    import stat

    if not stat.S_ISREG(st.st_mode):
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _config_key(path: str, identity: list[int]) -> dict[str, Any]:
    return {"kind": "runtime-config", "format": _CACHE_FORMAT, "path": os.path.abspath(path), "file_id": identity}


#: Parsed configs this process has seen, by the same key as the file cache: a process that serves many starts (the
#: hook helper's children inherit it, nvc/commands/hook_helper.py) skips reading and rebuilding the entry. Checked
#: against the file's identity like the file cache; a handful of entries at most (config files are few).
_MEMO: dict[tuple[str, tuple[int, ...]], RuntimeConfig] = {}
_MEMO_SIZE = 8


def forget_parsed_configs() -> None:
    """Empty this process's memo (what a new process starts with)."""
    _MEMO.clear()


def _memo_key(path: str, identity: list[int]) -> tuple[str, tuple[int, ...]]:
    return os.path.abspath(path), tuple(identity)


def _remember(path: str, identity: list[int], config: RuntimeConfig) -> None:
    if len(_MEMO) >= _MEMO_SIZE:
        _MEMO.clear()
    _MEMO[_memo_key(path, identity)] = config


def _cached_config(path: str, path_exists: PathExists) -> RuntimeConfig | None:
    from nvc import private_files as store

    if store.caching_disabled():
        return None
    try:
        identity = _file_identity(os.stat(path))
    except OSError:
        return None  # the normal path reports it
    if identity is None:
        return None
    config = _MEMO.get(_memo_key(path, identity))
    if config is not None:
        return _normalize(replace(config, source=path), path_exists)
    dir_fd = None
    try:
        dir_fd = store.open_cache_dir(store.cache_dir_path())
        if dir_fd is None:
            return None
        key = _config_key(path, identity)
        entry = store.read_json_entry(dir_fd, store.entry_name(key))
        if entry is None or entry.get("key") != key:
            return None
        config = config_from_dict(entry.get("config"))
    except Exception:  # a corrupt or surprising entry costs a parse, never the hook
        return None
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    _remember(path, identity, config)
    return _normalize(replace(config, source=path), path_exists)


def _store_config(path: str, identity: list[int] | None, config: RuntimeConfig) -> None:
    import contextlib
    import json

    from nvc import private_files as store

    if identity is None or store.caching_disabled():
        return
    _remember(path, identity, config)
    with contextlib.suppress(Exception):
        dir_fd = store.open_cache_dir(store.cache_dir_path())
        if dir_fd is None:
            return
        try:
            key = _config_key(path, identity)
            data = json.dumps({"key": key, "config": config_to_dict(config)}, sort_keys=True).encode()
            store.write_private_file(dir_fd, store.entry_name(key), data)
        finally:
            os.close(dir_fd)


def config_to_dict(value: Any) -> Any:
    """A config record as JSON-able values (tuples and sets become lists, capabilities their names)."""
    if is_record(value):
        return {item.name: config_to_dict(getattr(value, item.name)) for item in fields(value)}
    if isinstance(value, frozenset):
        return sorted(capability.value for capability in value)
    if isinstance(value, tuple):
        return list(value)
    return value


def config_from_dict(data: Any, cls: type = RuntimeConfig) -> Any:
    """The inverse of :func:`config_to_dict`; every field must be present with its default's type (ValueError)."""
    if not isinstance(data, dict):
        raise ValueError("not an object")
    defaults = cls()
    names = [item.name for item in fields(cls)]
    if set(data) != set(names):
        raise ValueError(f"{cls.__name__}: fields differ")
    values: dict[str, Any] = {}
    for name in names:
        default = getattr(defaults, name)
        value = data[name]
        if is_record(default):
            values[name] = config_from_dict(value, type(default))
        elif isinstance(default, frozenset):
            if not isinstance(value, list):
                raise ValueError(name)
            values[name] = frozenset(Capability(item) for item in value)
        elif isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise ValueError(name)
            values[name] = tuple(value)
        elif default is None:  # source
            if value is not None and not isinstance(value, str):
                raise ValueError(name)
            values[name] = value
        else:
            if type(value) is not type(default):
                raise ValueError(name)
            values[name] = value
    return cls(**values)


def toml_key(cls: type, name: str) -> str:
    """The TOML key of field ``name`` of the config record ``cls``."""
    return _TOML_KEYS.get((cls, name), name.replace("_", "-"))


def schema_leaves(cls: type = RuntimeConfig, prefix: str = "") -> list[tuple[str, tuple[str, ...]]]:
    """Every key a config.toml may set, as (dotted TOML key, attribute path in :class:`RuntimeConfig`), in
    declaration order: what the hook and the shim parse, hence what must either act or be reported as ignored
    (:mod:`nvc.request.config_keys`)."""
    leaves: list[tuple[str, tuple[str, ...]]] = []
    for item in fields(cls):
        if (cls, item.name) in _NOT_IN_FILE:
            continue
        key = prefix + toml_key(cls, item.name)
        hint = str if (cls, item.name) in _TOML_STRING_FIELDS else _field_type(cls, item.name)
        if is_record(hint):
            leaves.extend((sub_key, (item.name, *path)) for sub_key, path in schema_leaves(hint, key + "."))
        else:
            leaves.append((key, (item.name,)))
    return leaves


def _build(cls: type, table: Mapping[str, Any], prefix: str) -> Any:
    """Fill a config record from a TOML table: known keys are type-checked, missing keys keep their default,
    unknown keys are ignored. Values needing more than a type check are finished in :func:`_finish`."""
    values: dict[str, Any] = {}
    for item in fields(cls):
        if (cls, item.name) in _NOT_IN_FILE:
            continue
        key = toml_key(cls, item.name)
        if key not in table:
            continue
        value = table[key]
        dotted = prefix + key
        hint = str if (cls, item.name) in _TOML_STRING_FIELDS else _field_type(cls, item.name)
        if is_record(hint):
            if not isinstance(value, dict):
                raise _ConfigValueError(f"{dotted}: expected a table, got {_toml_type(value)}")
            values[item.name] = _build(hint, value, dotted + ".")
        elif hint is bool:
            if not isinstance(value, bool):
                raise _ConfigValueError(f"{dotted}: expected a boolean, got {_toml_type(value)}")
            values[item.name] = value
        elif hint is str:
            if not isinstance(value, str):
                raise _ConfigValueError(f"{dotted}: expected a string, got {_toml_type(value)}")
            values[item.name] = value
        else:  # tuple[str, ...]
            if not isinstance(value, list) or not all(isinstance(entry, str) for entry in value):
                raise _ConfigValueError(f"{dotted}: expected an array of strings, got {_toml_type(value)}")
            values[item.name] = tuple(value)
    return cls(**values)


# The annotations (strings: ``from __future__ import annotations``) a TOML-backed field may have, resolved without
# typing.get_type_hints (the hook must not import typing); a record-typed field names a record class of this module.
_ANNOTATION_TYPES: dict[str, type] = {"bool": bool, "str": str, "tuple[str, ...]": tuple}


def _field_type(cls: type, name: str) -> type:
    """The type :func:`_build` checks field ``name`` of ``cls`` against: bool, str, tuple (of str) or a record."""
    annotation = None
    for klass in cls.__mro__:
        annotation = vars(klass).get("__annotations__", {}).get(name)
        if annotation is not None:
            break
    if not isinstance(annotation, str):
        raise TypeError(f"{cls.__name__}.{name}: unsupported annotation {annotation!r}")
    annotation = annotation.strip()
    hint = _ANNOTATION_TYPES.get(annotation)
    if hint is None:
        hint = globals().get(annotation)
        if not (isinstance(hint, type) and is_record(hint)):
            raise TypeError(f"{cls.__name__}.{name}: unsupported annotation {annotation!r}")
    return hint


def _finish(config: RuntimeConfig, document: Mapping[str, Any]) -> RuntimeConfig:
    """Apply the value rules NVIDIA applies after unmarshalling: swarm names split, capabilities validated, ldconfig
    checked for host-relativeness (normalised later, :func:`_normalize`), cuda-compat-mode checked."""
    swarm = document.get("swarm-resource", "")
    supported = _supported_capabilities(document.get("supported-driver-capabilities"))

    ldconfig = config.cli.ldconfig
    if not ldconfig.startswith("@") and not config.features.allow_ldconfig_from_container:
        raise _ConfigValueError(
            f"nvidia-container-cli.ldconfig value \"{ldconfig}\" is not host-relative (does not start with a '@'); "
            "set [features] allow-ldconfig-from-container = true to run an ldconfig from the container"
        )
    compat_mode = config.runtime.modes.legacy.cuda_compat_mode
    if compat_mode not in CUDA_COMPAT_MODES:
        # NVIDIA treats any unknown value as unset (usually: disabled). A typo silently turning compat libraries
        # off is refused here instead (README, "Differences from NVIDIA's tools").
        raise _ConfigValueError(
            f"nvidia-container-runtime.modes.legacy.cuda-compat-mode: invalid value {compat_mode!r} "
            f"(expected one of {', '.join(m for m in CUDA_COMPAT_MODES if m)}, or \"\" for unset)"
        )
    for entry in config.cli.environment:
        # Entries go into the CLI's environment (exec'd, or this process's for the in-process CLI): each must be
        # NAME=VALUE, as an environment entry is; a NUL cannot be passed to exec at all.
        name, sep, _ = entry.partition("=")
        if not sep or not name or "\0" in entry:
            raise _ConfigValueError(f"nvidia-container-cli.environment: entry {entry!r} is not NAME=VALUE")
    return replace(
        config,
        swarm_resource=_swarm_names(swarm) if isinstance(swarm, str) else (),
        supported_driver_capabilities=supported,
    )


def _supported_capabilities(value: str | None) -> frozenset[Capability]:
    """``supported-driver-capabilities``: exactly ``all`` means every capability; otherwise a comma list that must
    be a subset of the seven NVIDIA knows (the hook refuses to start otherwise)."""
    if value is None or value == "all":
        return frozenset(ALL_CAPABILITIES)
    names = {name.strip() for name in value.split(",") if name.strip()}
    known = {capability.value for capability in ALL_CAPABILITIES}
    if not names <= known:
        raise _ConfigValueError(
            f"invalid value for config option 'supported-driver-capabilities'; {value} "
            f"(supported: {','.join(sorted(known))})"
        )
    return frozenset(Capability(name) for name in names)


def _toml_type(value: Any) -> str:
    """TOML's name for a decoded value, for messages."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return "date/time"
