"""``nvc setup``: register a GPU runtime with containerd or Docker, editing their config files in place.

Two shapes of GPU runtime, both taken from what is known to work (``shared/reference/gvisor.md``):

* **runsc** (gVisor + nvproxy). containerd must use gVisor's *own* shim, ``runtime_type = "io.containerd.runsc.v1"``,
  with runsc's flags in a separate TOML file handed over through ``options.ConfigPath``. The classic mistake —
  ``io.containerd.runc.v2`` with ``BinaryName = runsc`` — pairs runc's shim with runsc and the start hangs; this
  module never writes that. The runsc file sets ``nvproxy`` and ``nvproxy-docker`` (as *strings*: gVisor's shim
  decodes ``[runsc_config]`` into ``map[string]string`` and refuses a TOML boolean). ``nvproxy-docker`` makes runsc
  act as if NVIDIA's legacy hook were in the spec, because under containerd's CRI nothing else adds one; runsc then
  runs ``nvidia-container-cli`` (ours) from its own PATH. Docker gets a ``runtimes`` entry running runsc directly
  with the same two flags (Docker's runc-v2 shim driving ``runsc`` is how gVisor is meant to run under Docker).
* **runc** with our OCI hook: containerd's ``io.containerd.runc.v2`` shim with ``BinaryName`` = our
  ``nvidia-container-runtime`` shim (which adds the hook, then execs runc); Docker: a runtime whose ``path`` is
  that shim. The new containerd runtime inherits the options of the existing ``runc`` runtime (``SystemdCgroup``
  above all): a runtime whose cgroup driver disagrees with the kubelet's fails every pod.

Editing rules, because these files are hand-maintained and a broken one takes every container down with it:
comments and layout are kept (tomlkit round-trips the file; a missing runtime table is *appended* as a block of
its own rather than re-flowing the file), a timestamped backup ``<file>.nvc-backup-<YYYYmmddHHMMSS>`` is written
before anything changes, the new content replaces the old atomically (temporary file in the same directory, then
``rename``) with the old mode and owner, and applying twice changes nothing the second time. ``dry_run`` returns
the new text and a unified diff and touches nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nvc.errors import NvcError

CONTAINERD_CONFIG = "/etc/containerd/config.toml"
RUNSC_GPU_CONFIG = "/etc/containerd/runsc-gpu.toml"
DOCKER_DAEMON_CONFIG = "/etc/docker/daemon.json"

RUNSC_RUNTIME_TYPE = "io.containerd.runsc.v1"
RUNSC_OPTIONS_TYPE = "io.containerd.runsc.v1.options"
RUNC_RUNTIME_TYPE = "io.containerd.runc.v2"
SHIM_NAME = "nvidia-container-runtime"
RUNSC_NAME = "runsc"
DEFAULT_RUNTIME_NAME = "nvidia"

# containerd and dockerd run under systemd, whose default PATH is this (not the PATH of the shell running nvc).
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Where each containerd config schema keeps the CRI runtimes: version 1 (containerd 1.x, short plugin names),
# version 2 (containerd 1.x full plugin URIs; 2.x migrates it) and version 3 (containerd 2.x, CRI split in two).
CRI_PLUGIN = {1: "cri", 2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}

# runsc shim options that are not runc's and vice versa: switching a runtime between the two drops the other's.
_RUNSC_OPTION_KEYS = frozenset({"TypeUrl", "ConfigPath"})
_RUNSC_FLAGS = ("--nvproxy", "--nvproxy-docker")

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def find_binary(name: str, default: str, search_path: str | None = None) -> str:
    """Absolute path of ``name`` in the services' PATH (then ours), else ``default``.

    The services' PATH comes first because containerd/dockerd — not this shell — will execute the path we write.
    """
    path = search_path if search_path is not None else f"{SERVICE_PATH}:{os.environ.get('PATH', '')}"
    return shutil.which(name, path=path) or default


def _runtime_kind(runtime: str) -> str:
    if runtime not in ("runsc", "runc"):
        raise NvcError("input", f"unknown runtime {runtime!r} (expected runsc or runc)")
    return runtime


# ---------------------------------------------------------------------------------------------------------------
# What to write (plain values, no I/O)


def containerd_runtime_table_keys(config_version: int, runtime_name: str = DEFAULT_RUNTIME_NAME) -> tuple[str, ...]:
    """Key path of ``plugins.<cri>.containerd.runtimes.<name>`` for a containerd config schema version."""
    if config_version not in CRI_PLUGIN:
        raise NvcError("input", f"unsupported containerd config version {config_version} (expected 1, 2 or 3)")
    return ("plugins", CRI_PLUGIN[config_version], "containerd", "runtimes", runtime_name)


def containerd_runtime_config(
    runtime: str = "runsc",
    runsc_config_path: str = RUNSC_GPU_CONFIG,
    runtime_name: str = DEFAULT_RUNTIME_NAME,
    shim_path: str | None = None,
    config_version: int = 2,
    base_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The containerd runtime table: ``{"keys": (...), "runtime_type": ..., "options": {...}}``.

    ``keys`` is where the table lives for ``config_version``. ``base_options`` (the existing ``runc`` runtime's
    options) seed a runc runtime so that it keeps e.g. ``SystemdCgroup``; runsc's shim takes no such options.
    """
    kind = _runtime_kind(runtime)
    keys = containerd_runtime_table_keys(config_version, runtime_name)
    if kind == "runsc":
        options: dict[str, Any] = {"TypeUrl": RUNSC_OPTIONS_TYPE, "ConfigPath": runsc_config_path}
        return {"keys": keys, "runtime_type": RUNSC_RUNTIME_TYPE, "options": options}
    options = {k: v for k, v in (base_options or {}).items() if k not in _RUNSC_OPTION_KEYS and k != "BinaryName"}
    options["BinaryName"] = shim_path or find_binary(SHIM_NAME, f"/usr/bin/{SHIM_NAME}")
    return {"keys": keys, "runtime_type": RUNC_RUNTIME_TYPE, "options": options}


def runsc_gpu_config(runsc_path: str | None = None, *, nvproxy_docker: bool = True, debug: bool = False) -> dict:
    """Content of the runsc shim's TOML (``ConfigPath``): the runsc binary and its GPU flags, all strings."""
    flags = {"nvproxy": "true"}
    if nvproxy_docker:
        flags["nvproxy-docker"] = "true"
    if debug:
        flags["debug"] = "true"
        flags["debug-log"] = "/var/log/runsc/%ID%/gvisor.%COMMAND%.log"
    config: dict[str, Any] = {"binary_name": runsc_path or find_binary(RUNSC_NAME, f"/usr/bin/{RUNSC_NAME}")}
    if debug:
        config["log_path"] = "/var/log/runsc/%ID%/shim.log"
        config["log_level"] = "debug"
    config["runsc_config"] = flags
    return config


def docker_daemon_config(
    runtime: str = "runc",
    runtime_name: str = DEFAULT_RUNTIME_NAME,
    runsc_path: str | None = None,
    shim_path: str | None = None,
    set_default: bool = False,
) -> dict[str, Any]:
    """The daemon.json fragment: ``{"runtimes": {name: {...}}}`` (+ ``"default-runtime"``)."""
    if _runtime_kind(runtime) == "runsc":
        entry: dict[str, Any] = {
            "path": runsc_path or find_binary(RUNSC_NAME, f"/usr/bin/{RUNSC_NAME}"),
            "runtimeArgs": list(_RUNSC_FLAGS),
        }
    else:
        entry = {"path": shim_path or find_binary(SHIM_NAME, f"/usr/bin/{SHIM_NAME}")}
    fragment: dict[str, Any] = {"runtimes": {runtime_name: entry}}
    if set_default:
        fragment["default-runtime"] = runtime_name
    return fragment


# ---------------------------------------------------------------------------------------------------------------
# TOML rendering and in-place editing


def _toml_key(key: str) -> str:
    import json

    return key if _BARE_KEY.match(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    import tomlkit

    return tomlkit.item(value).as_string()


def _render_table(keys: tuple[str, ...], values: Mapping[str, Any], indent: str = "  ") -> str:
    """``[a."b.c".d]`` + indented ``key = value`` lines; nested mappings become sub-tables after the values."""
    lines = [f"[{'.'.join(_toml_key(k) for k in keys)}]"]
    subtables = []
    for key, value in values.items():
        if isinstance(value, Mapping):
            subtables.append((key, value))
        else:
            lines.append(f"{indent}{_toml_key(key)} = {_toml_value(value)}")
    text = "\n".join(lines) + "\n"
    for key, value in subtables:
        text += "\n" + _render_table((*keys, key), value, indent)
    return text


def containerd_config_version(text: str) -> int:
    """Schema version of a containerd config: its ``version`` key; 1 when absent (containerd's own rule), but
    2 for an empty file, which is ours to start (version 2 works on containerd 1.x and 2.x alike)."""
    import tomlkit

    doc = tomlkit.parse(text)
    version = doc.get("version")
    if version is None:
        return 2 if not doc else 1
    if not isinstance(version, int) or version not in CRI_PLUGIN:
        raise NvcError("input", f"unsupported containerd config version {version!r} (expected 1, 2 or 3)")
    return int(version)


def _lookup(doc: Any, keys: tuple[str, ...]) -> Any:
    node = doc
    for key in keys:
        if not hasattr(node, "get") or key not in node:
            return None
        node = node[key]
    return node


def _plain(value: Any) -> Any:
    return value.unwrap() if hasattr(value, "unwrap") else value


def _sibling_indent(table: Any) -> str:
    """Indentation of the table's existing ``key = value`` lines, so an added key lines up with them."""
    from tomlkit.container import Container
    from tomlkit.items import AoT, Table

    container = table if isinstance(table, Container) else getattr(table, "value", None)
    for key, item in getattr(container, "body", []):
        if key is not None and not isinstance(item, Table | AoT):
            return item.trivia.indent
    return "" if isinstance(table, Container) else "  "


def _set_value(table: Any, key: str, value: Any, indent: str | None = None) -> bool:
    """Set ``table[key]`` only if it differs, keeping the old line's indentation and trailing comment (a new
    line gets ``indent``, by default that of its siblings)."""
    import tomlkit

    old = table.get(key) if key in table else None
    if old is not None and _plain(old) == value and type(_plain(old)) is type(value):
        return False
    new = tomlkit.item(value)
    old_trivia = getattr(old, "trivia", None)
    if old_trivia is not None:
        indent = old_trivia.indent
    elif indent is None:
        indent = _sibling_indent(table)
    table[key] = new
    trivia = getattr(table[key], "trivia", None)
    if trivia is not None:
        trivia.indent = indent
        if old_trivia is not None:
            trivia.comment_ws, trivia.comment, trivia.trail = (
                old_trivia.comment_ws,
                old_trivia.comment,
                old_trivia.trail,
            )
    return True


def _append_block(text: str, block: str) -> str:
    if not text.strip():
        return block
    return text.rstrip("\n") + "\n\n" + block


def _check_toml(text: str, what: str) -> None:
    import tomllib

    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # pragma: no cover - a bug here must not reach a config file
        raise NvcError("input", f"refusing to write {what}: the edited TOML does not parse ({exc})") from None


def _parse_toml(text: str, source: str) -> Any:
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    try:
        return tomlkit.parse(text)
    except TOMLKitError as exc:
        raise NvcError("input", f"{source}: not valid TOML: {exc}") from None


def edit_containerd_config(
    text: str,
    runtime: str = "runsc",
    runsc_config_path: str = RUNSC_GPU_CONFIG,
    runtime_name: str = DEFAULT_RUNTIME_NAME,
    shim_path: str | None = None,
    set_default: bool = False,
    source: str = CONTAINERD_CONFIG,
) -> str:
    """containerd ``config.toml`` text → the same text with our runtime registered (unchanged if already so)."""
    import tomlkit

    kind = _runtime_kind(runtime)
    doc = _parse_toml(text, source)
    version = containerd_config_version(text)
    if version == 1 and _lookup(doc, ("plugins", CRI_PLUGIN[2])) is not None:
        # Written for version 2 but missing the line: containerd ignores those tables, and adding ours in the
        # version-1 shape would only hide the real problem.
        raise NvcError(
            "input",
            f'{source} has [plugins."{CRI_PLUGIN[2]}"] tables but no `version = 2` line, so containerd ignores '
            "them; add `version = 2` as its first line and run again",
        )
    base = _lookup(doc, (*containerd_runtime_table_keys(version, "runc"), "options"))
    want = containerd_runtime_config(
        kind, runsc_config_path, runtime_name, shim_path, version, _plain(base) if base is not None else None
    )
    keys = want["keys"]
    containerd_keys = keys[:3]
    new_text = text
    existing = _lookup(doc, keys)
    if existing is None:
        block = ""
        if set_default and _lookup(doc, containerd_keys) is None:
            block = _render_table(containerd_keys, {"default_runtime_name": runtime_name}) + "\n"
        block += _render_table(keys, {"runtime_type": want["runtime_type"], "options": want["options"]})
        what = "gVisor runsc + nvproxy" if kind == "runsc" else "runc + nvidia hook"
        comment = f'# GPU runtime "{runtime_name}" ({what}), added by `nvc setup containerd`\n'
        if not text.strip():
            comment = f"version = {version}\n\n" + comment
        new_text = _append_block(text, comment + block)
        doc = tomlkit.parse(new_text)
    else:
        changed = _set_value(existing, "runtime_type", want["runtime_type"])
        options = existing.get("options")
        if options is None:
            options = tomlkit.table()
            for key, value in want["options"].items():
                options[key] = value
            existing["options"] = options
            changed = True
        else:
            indent = _sibling_indent(options)
            stale = (
                [k for k in options if k not in _RUNSC_OPTION_KEYS]
                if kind == "runsc"
                else [k for k in options if k in _RUNSC_OPTION_KEYS]
            )
            for key in stale:
                del options[key]
                changed = True
            for key, value in want["options"].items():
                if kind == "runc" and key != "BinaryName" and key in options:
                    continue  # the user's own runc option wins over the one copied from `runc`
                changed |= _set_value(options, key, value, indent)
        if changed:
            new_text = tomlkit.dumps(doc)
    if set_default:
        containerd_table = _lookup(doc, containerd_keys)
        if containerd_table is not None and not (
            hasattr(containerd_table, "is_super_table") and containerd_table.is_super_table()
        ):
            if _set_value(containerd_table, "default_runtime_name", runtime_name):
                new_text = tomlkit.dumps(doc)
        elif _plain(_lookup(doc, (*containerd_keys, "default_runtime_name"))) != runtime_name:
            new_text = _append_block(new_text, _render_table(containerd_keys, {"default_runtime_name": runtime_name}))
    if new_text != text:
        _check_toml(new_text, source)
        if _plain(tomlkit.parse(new_text)) == _plain(_parse_toml(text, source)):
            return text
    return new_text


def render_runsc_config(config: Mapping[str, Any]) -> str:
    """A fresh runsc GPU TOML file, commented so whoever opens it knows what it is for."""
    top = {k: v for k, v in config.items() if not isinstance(v, Mapping)}
    lines = [
        "# runsc (gVisor) options for GPU containers, written by `nvc setup containerd --runtime runsc`.",
        "# containerd hands this file to containerd-shim-runsc-v1 through the runtime's options.ConfigPath.",
        '# [runsc_config] values are runsc flags and must be strings ("true", not true).',
        "# Keep non-GPU workloads on a runtime without nvproxy.",
    ]
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in top.items()]
    text = "\n".join(lines) + "\n"
    for key, value in config.items():
        if isinstance(value, Mapping):
            text += "\n" + _render_table((key,), value)
    return text


def edit_runsc_config(text: str, config: Mapping[str, Any], source: str = RUNSC_GPU_CONFIG) -> str:
    """Existing runsc TOML → with our keys set (other keys and comments kept); empty text → a fresh file."""
    import tomlkit

    if not text.strip():
        return render_runsc_config(config)
    doc = _parse_toml(text, source)
    changed = False
    for key, value in config.items():
        if isinstance(value, Mapping):
            table = doc.get(key)
            if table is None:
                continue
            for sub_key, sub_value in value.items():
                changed |= _set_value(table, sub_key, sub_value)
        else:
            changed |= _set_value(doc, key, value)
    new_text = tomlkit.dumps(doc) if changed else text
    for key, value in config.items():
        if isinstance(value, Mapping) and key not in doc:
            new_text = _append_block(new_text, _render_table((key,), value))
    if new_text != text:
        _check_toml(new_text, source)
    return new_text


# ---------------------------------------------------------------------------------------------------------------
# daemon.json editing


def _json_indent(text: str) -> int | str:
    for line in text.splitlines()[1:]:
        stripped = line.lstrip(" \t")
        if stripped and len(stripped) != len(line):
            prefix = line[: len(line) - len(stripped)]
            return prefix if "\t" in prefix else len(prefix)
    return 4


def _flag_enabled(args: list[str], flag: str) -> int | None:
    """Index of ``flag`` / ``flag=VALUE`` in ``args`` (``None`` if absent)."""
    for i, arg in enumerate(args):
        if arg == flag or arg.startswith(flag + "="):
            return i
    return None


def edit_docker_daemon(
    text: str,
    runtime: str = "runc",
    runtime_name: str = DEFAULT_RUNTIME_NAME,
    runsc_path: str | None = None,
    shim_path: str | None = None,
    set_default: bool = False,
    source: str = DOCKER_DAEMON_CONFIG,
) -> str:
    """daemon.json text → with our runtime entry (key order and indentation kept; unchanged if already so)."""
    return edit_daemon_json(
        text, source, lambda data: _add_docker_runtime(data, runtime, runtime_name, runsc_path, shim_path,
                                                       set_default, source))


def edit_daemon_json(text: str, source: str, edit: Callable[[dict[str, Any]], None]) -> str:
    """daemon.json ``text`` changed in place by ``edit`` (given the top-level object): the text as it was when
    nothing changed, else the object with the file's own indentation. Bad JSON is a one-line input error."""
    import copy
    import json

    try:
        data = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise NvcError("input", f"{source}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise NvcError("input", f"{source}: expected a JSON object at the top level")
    original = copy.deepcopy(data)
    edit(data)
    if data == original:
        return text
    return json.dumps(data, indent=_json_indent(text), ensure_ascii=False) + "\n"


def _add_docker_runtime(data: dict[str, Any], runtime: str, runtime_name: str, runsc_path: str | None,
                        shim_path: str | None, set_default: bool, source: str) -> None:
    fragment = docker_daemon_config(runtime, runtime_name, runsc_path, shim_path, set_default)
    want = fragment["runtimes"][runtime_name]
    runtimes = data.setdefault("runtimes", {})
    if not isinstance(runtimes, dict):
        raise NvcError("input", f'{source}: "runtimes" is not a JSON object')
    entry = runtimes.get(runtime_name)
    entry = dict(entry) if isinstance(entry, dict) else {}
    entry["path"] = want["path"]
    if "runtimeArgs" in want:
        args = [str(a) for a in entry.get("runtimeArgs") or []]
        for flag in want["runtimeArgs"]:
            index = _flag_enabled(args, flag)
            if index is None:
                args.append(flag)
            elif args[index] not in (flag, f"{flag}=true"):
                args[index] = flag  # e.g. --nvproxy=false
        entry["runtimeArgs"] = args
    else:
        entry.pop("runtimeArgs", None)  # runsc flags make no sense to our runc shim
    runtimes[runtime_name] = entry
    if set_default:
        data["default-runtime"] = runtime_name


# ---------------------------------------------------------------------------------------------------------------
# Files


@dataclass(frozen=True)
class ConfigChange:
    """What applying did (or, for a dry run, would do) to one file."""

    path: str
    old_text: str | None  # None: the file did not exist
    new_text: str
    diff: str  # unified diff, empty when nothing changes
    backup_path: str | None = None  # the backup written before replacing an existing file
    written: bool = False

    @property
    def changed(self) -> bool:
        return self.old_text != self.new_text

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "changed": self.changed, "written": self.written, "backup": self.backup_path}


def unified_diff(path: str, old_text: str | None, new_text: str) -> str:
    """``diff -u`` of a config edit, ``/dev/null`` as the old side of a new file."""
    import difflib

    old_lines = (old_text or "").splitlines(keepends=True)
    new_lines = new_text.splitlines(keepends=True)
    lines = difflib.unified_diff(old_lines, new_lines, "/dev/null" if old_text is None else path, path)
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise NvcError("input", f"cannot read {path}: {exc.strerror}") from None


def _backup_name(path: str, now: datetime) -> str:
    base = f"{path}.nvc-backup-{now:%Y%m%d%H%M%S}"
    candidate, n = base, 1
    while os.path.lexists(candidate):
        candidate, n = f"{base}.{n}", n + 1
    return candidate


def _atomic_write(path: str, text: str, like: os.stat_result | None, new_mode: int) -> None:
    import tempfile

    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".nvc-tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), (like.st_mode & 0o7777) if like is not None else new_mode)
            if like is not None and (like.st_uid, like.st_gid) != (os.geteuid(), os.getegid()):
                # Not root: the file ends up ours, which is all an unprivileged user can do.
                with contextlib.suppress(PermissionError):
                    os.fchown(f.fileno(), like.st_uid, like.st_gid)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_config_file(
    path: str,
    old_text: str | None,
    new_text: str,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    new_mode: int = 0o644,
) -> ConfigChange:
    """Replace ``path`` with ``new_text``: backup first, then atomically; nothing at all if the text is the same.

    A symlinked config (common where configuration management owns ``/etc``) is followed: the file it points to
    is replaced and the link stays.
    """
    diff = unified_diff(path, old_text, new_text)
    if dry_run or old_text == new_text:
        return ConfigChange(path, old_text, new_text, diff)
    target = os.path.realpath(path)
    backup = None
    like = None
    if old_text is not None:
        like = os.stat(target)
        backup = _backup_name(target, now or datetime.now())
        shutil.copy2(target, backup)
        with contextlib.suppress(PermissionError):
            os.chown(backup, like.st_uid, like.st_gid)
    _atomic_write(target, new_text, like, new_mode)
    return ConfigChange(path, old_text, new_text, diff, backup, True)


def _under(root: str, path: str) -> str:
    return path if root in ("", "/") else os.path.join(root, path.lstrip("/"))


def apply_containerd(
    config_path: str = CONTAINERD_CONFIG,
    runtime: str = "runsc",
    runsc_config_path: str = RUNSC_GPU_CONFIG,
    runtime_name: str = DEFAULT_RUNTIME_NAME,
    shim_path: str | None = None,
    runsc_path: str | None = None,
    set_default: bool = False,
    nvproxy_docker: bool = True,
    debug: bool = False,
    dry_run: bool = False,
    root: str = "/",
    now: datetime | None = None,
) -> list[ConfigChange]:
    """Register the GPU runtime in containerd's config (and, for runsc, write the runsc GPU TOML).

    Returns one :class:`ConfigChange` per file, containerd's config first. The runsc file is written before the
    containerd config that points at it, so a containerd restarted in between never sees a dangling ConfigPath.
    ``root`` edits a host image offline: files are read and written under it, while the paths written *into* the
    configs stay as the running host will see them. containerd must be restarted afterwards
    (``systemctl restart containerd``).
    """
    kind = _runtime_kind(runtime)
    config_file = _under(root, config_path)
    old = _read_text(config_file)
    new = edit_containerd_config(old or "", kind, runsc_config_path, runtime_name, shim_path, set_default, config_path)
    changes = []
    if kind == "runsc":
        runsc_file = _under(root, runsc_config_path)
        runsc_old = _read_text(runsc_file)
        config = runsc_gpu_config(runsc_path, nvproxy_docker=nvproxy_docker, debug=debug)
        runsc_new = edit_runsc_config(runsc_old or "", config, runsc_config_path)
        changes.append(write_config_file(runsc_file, runsc_old, runsc_new, dry_run=dry_run, now=now))
    changes.insert(0, write_config_file(config_file, old, new, dry_run=dry_run, now=now))
    return changes


def apply_docker(
    config_path: str = DOCKER_DAEMON_CONFIG,
    runtime: str = "runc",
    runtime_name: str = DEFAULT_RUNTIME_NAME,
    runsc_path: str | None = None,
    shim_path: str | None = None,
    set_default: bool = False,
    dry_run: bool = False,
    root: str = "/",
    now: datetime | None = None,
) -> ConfigChange:
    """Register the GPU runtime in Docker's daemon.json (restart dockerd afterwards; ``root`` as for
    :func:`apply_containerd`)."""
    config_file = _under(root, config_path)
    old = _read_text(config_file)
    new = edit_docker_daemon(old or "", runtime, runtime_name, runsc_path, shim_path, set_default, config_path)
    return write_config_file(config_file, old, new, dry_run=dry_run, now=now)


def format_changes(changes: list[ConfigChange], dry_run: bool = False) -> str:
    """What ``nvc setup`` prints: each file's diff (dry run) or a line per file written/unchanged."""
    out = []
    for change in changes:
        if not change.changed:
            out.append(f"{change.path}: already configured, unchanged\n")
        elif dry_run:
            out.append(change.diff)
        else:
            backup = f" (backup: {change.backup_path})" if change.backup_path else " (new file)"
            out.append(f"{change.path}: updated{backup}\n")
    return "".join(out)
