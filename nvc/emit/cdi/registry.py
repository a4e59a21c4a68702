"""The CDI specs installed on a host: every spec file in the spec directories, checked, indexed by qualified name.

What a consumer does at container start (podman, containerd, CRI-O and docker through the Go
``tags.cncf.io/container-device-interface`` package), and what ``nvc cdi list``, the runtime shim's CDI mode and
``nvc doctor`` need:

* **Where**: the spec directories in order, by default ``/etc/cdi`` (static) then ``/var/run/cdi`` (generated).
  Every regular file in them ending in ``.json`` or ``.yaml`` is a spec (subdirectories are skipped); files are
  read in name order. A directory that does not exist is simply empty.
* **Checked on read** (:func:`nvc.emit.cdi.validation.validate_spec`): a spec with any error is left out as a whole
  and reported as a :class:`Problem` naming the file; the other specs still count. ``.json`` is parsed as JSON,
  ``.yaml`` with PyYAML, imported only when a ``.yaml`` file is read.
* **Two specs claiming one device name**: the Go package's rule, which every runtime above follows. A spec in a
  later directory (``/var/run/cdi``) overrides one in an earlier directory (``/etc/cdi``) — a generated spec may
  replace a static one on purpose — and that is recorded as a *shadowed* :class:`Conflict`. Two specs in the SAME
  directory claiming one name is an error: nobody can say which is meant, so the name resolves to neither
  (the container start fails with both file names) — a *duplicate* conflict.
* **No symlinks.** A spec decides which host files are bind-mounted into every CDI container, which device nodes
  it may open and which programs run as root at its start (hooks). So the spec directory itself must not be a
  symlink (whoever controls where it points would write those specs: a link into a user-writable directory hands
  every container to that user), and spec files are opened with ``O_NOFOLLOW`` relative to the directory we
  opened — a file that is a symlink is refused, never followed to wherever it points. A spec directory or file
  writable by everyone is refused for the same reason. (Parents such as Debian's ``/var/run -> /run`` are
  system paths and may be links.) The Go package's directory walk does not follow a symlinked spec directory
  either — it silently finds no spec there; here it is reported — but it does follow a symlinked spec file.
  A runtime given that file still reads it; nvc's own consumers (the shim's CDI mode, ``cdi list``, doctor) do not.

Errors for a container start are ``NvcError("cdi", ...)``: one line naming the device and, where it helps, the
files involved.
"""

from __future__ import annotations

import errno
import os
import stat

from nvc.errors import NvcError
from nvc.record import field, record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any

DEFAULT_SPEC_DIRS = ("/etc/cdi", "/var/run/cdi")
SPEC_EXTENSIONS = (".json", ".yaml")
#: A spec larger than this is refused rather than read into memory (NVIDIA's spec for 8 GPUs is ~20 KiB).
MAX_SPEC_BYTES = 16 * 1024 * 1024


@record(frozen=True)
class CdiSpec:
    """One valid spec file. ``devices`` maps each device name to its ``containerEdits`` (in file order);
    ``edits`` is the spec-wide ``containerEdits`` ({} when absent); ``priority`` is the index of its directory."""

    path: str
    priority: int
    kind: str
    vendor: str
    device_class: str
    version: str
    annotations: dict[str, str]
    edits: dict[str, Any]
    devices: dict[str, dict[str, Any]]

    def qualified_names(self) -> list[str]:
        return [f"{self.kind}={name}" for name in self.devices]


@record(frozen=True)
class Problem:
    """A spec directory or file that could not be used, and why. ``unsafe``: refused by nvc for safety (a
    symlinked or world-writable file) although the Go CDI package would still read it."""

    path: str
    message: str
    unsafe: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@record(frozen=True)
class Conflict:
    """Two spec files defining one qualified device name. ``duplicate``: both in one directory (the name is
    unusable); otherwise the later directory's ``winner`` shadows ``loser``."""

    name: str
    winner: str
    loser: str
    duplicate: bool

    def __str__(self) -> str:
        if self.duplicate:
            return f"{self.name} is defined by both {self.loser} and {self.winner}, so by neither"
        return f"{self.name} in {self.winner} overrides the one in {self.loser}"


@record
class Registry:
    """Everything found in the spec directories."""

    spec_dirs: tuple[str, ...]
    specs: list[CdiSpec] = field(default_factory=list)
    devices: dict[str, tuple[CdiSpec, str]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)

    def names(self) -> list[str]:
        """Every resolvable fully qualified device name, sorted."""
        return sorted(self.devices)

    def resolve(self, requested: Sequence[str]) -> list[dict[str, Any]]:
        """The ``containerEdits`` to apply for ``requested`` qualified names, in the order consumers apply them:
        each device's spec-wide edits the first time one of its devices is named, then the device's own edits.
        An unknown name fails with every unknown name listed and the reason where one is known."""
        unresolved = [name for name in requested if name not in self.devices]
        if unresolved:
            raise NvcError("cdi", self._unresolved_message(unresolved))
        edits: list[dict[str, Any]] = []
        seen_specs: list[str] = []
        for name in requested:
            spec, device = self.devices[name]
            if spec.path not in seen_specs:
                seen_specs.append(spec.path)
                if spec.edits:
                    edits.append(spec.edits)
            edits.append(spec.devices[device])
        return edits

    def _unresolved_message(self, unresolved: list[str]) -> str:
        message = f"unresolvable CDI devices {', '.join(unresolved)}"
        reasons = [str(c) for c in self.conflicts if c.duplicate and c.name in unresolved]
        if reasons:
            return f"{message}: {'; '.join(reasons)}"
        kinds = {name.partition("=")[0] for name in unresolved}
        known = [name for name in self.names() if name.partition("=")[0] in kinds]
        if known:
            shown = ", ".join(known[:8]) + (f" and {len(known) - 8} more" if len(known) > 8 else "")
            message += f" (this host's specs define {shown})"
        elif not self.specs and not self.problems:
            message += f" (no CDI spec in {', '.join(self.spec_dirs)}: generate one with `nvc cdi generate`)"
        if self.problems:
            message += f"; {len(self.problems)} spec location(s) unusable, first: {self.problems[0]}"
        return message


# --- reading ----------------------------------------------------------------------------------------------------


class _Refused(Exception):
    """A spec file or directory we will not use (message says why; ``unsafe`` as in :class:`Problem`)."""

    def __init__(self, message: str, unsafe: bool = False) -> None:
        super().__init__(message)
        self.unsafe = unsafe


def _parse(data: bytes, name: str) -> Any:
    """A spec file's bytes as plain data: JSON for ``.json``, YAML (PyYAML, safe loader) for ``.yaml``."""
    if name.endswith(".json"):
        from nvc import jsonfast

        try:
            return jsonfast.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Refused(f"not valid JSON: {exc}") from None
    try:
        import yaml
    except ImportError:
        raise _Refused("reading a .yaml spec needs PyYAML (pip install pyyaml)") from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(data, Loader=loader)  # a safe loader: plain data only
    except yaml.YAMLError as exc:
        raise _Refused(f"not valid YAML: {' '.join(str(exc).split())}") from None


def _check_not_world_writable(st: os.stat_result, what: str) -> None:
    if st.st_mode & stat.S_IWOTH:
        raise _Refused(f"{what} is writable by every user, so anyone could decide what CDI containers get; "
                       "refusing it (chmod o-w)", unsafe=True)


def _read_spec_file(dir_fd: int, name: str) -> bytes:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the file is a symlink
            raise _Refused("a symlink; spec files are never followed through links (a link could point at a file "
                           "someone else controls); copy the spec here instead", unsafe=True) from None
        raise _Refused(f"cannot open: {(exc.strerror or str(exc)).lower()}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Refused("not a regular file")
        _check_not_world_writable(st, "the file")
        if st.st_size > MAX_SPEC_BYTES:
            raise _Refused(f"{st.st_size} bytes, more than a spec may have ({MAX_SPEC_BYTES})")
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def load_spec_data(data: Any, path: str, priority: int = 0) -> CdiSpec:
    """A parsed spec checked and turned into a :class:`CdiSpec` (:class:`nvc.emit.cdi.validation.SpecInvalid` if
    bad)."""
    from nvc.emit.cdi.validation import validate_spec

    vendor, device_class, names = validate_spec(data)
    devices = {d["name"]: d["containerEdits"] for d in data["devices"]}
    return CdiSpec(path=path, priority=priority, kind=data["kind"], vendor=vendor, device_class=device_class,
                   version=data["cdiVersion"], annotations=dict(data.get("annotations") or {}),
                   edits=dict(data.get("containerEdits") or {}), devices={n: devices[n] for n in names})


def _scan_dir(directory: str, priority: int, registry: Registry) -> None:
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return
    except OSError as exc:
        registry.problems.append(Problem(directory, f"cannot read: {(exc.strerror or str(exc)).lower()}"))
        return
    if stat.S_ISLNK(st.st_mode):
        registry.problems.append(Problem(directory, (
            "the spec directory is a symlink; refusing it: whoever controls where it points would decide which host "
            "files, devices and hooks CDI containers get. Make it a real directory")))
        return
    if not stat.S_ISDIR(st.st_mode):
        registry.problems.append(Problem(directory, "not a directory"))
        return
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        registry.problems.append(Problem(directory, f"cannot open: {(exc.strerror or str(exc)).lower()}"))
        return
    try:
        try:
            _check_not_world_writable(os.fstat(dir_fd), "the spec directory")
        except _Refused as exc:
            registry.problems.append(Problem(directory, str(exc), exc.unsafe))
            return
        with os.scandir(dir_fd) as entries:
            names = sorted(entry.name for entry in entries
                           if entry.name.endswith(SPEC_EXTENSIONS) and not entry.is_dir(follow_symlinks=False))
        for name in names:
            path = os.path.join(directory, name)
            try:
                data = _parse(_read_spec_file(dir_fd, name), name)
                spec = load_spec_data(data, path, priority)
            except _Refused as exc:
                registry.problems.append(Problem(path, str(exc), exc.unsafe))
                continue
            except ValueError as exc:  # SpecInvalid
                registry.problems.append(Problem(path, f"invalid CDI spec: {exc}"))
                continue
            registry.specs.append(spec)
    finally:
        os.close(dir_fd)


def _index(registry: Registry) -> None:
    """Qualified name → (spec, device name), with the Go package's conflict rule (module docstring)."""
    duplicates: set[str] = set()
    for spec in registry.specs:
        for device in spec.devices:
            name = f"{spec.kind}={device}"
            other = registry.devices.get(name)
            if other is not None:
                if spec.priority > other[0].priority:
                    registry.conflicts.append(Conflict(name, spec.path, other[0].path, duplicate=False))
                else:
                    registry.conflicts.append(Conflict(name, spec.path, other[0].path, duplicate=True))
                    duplicates.add(name)
                    continue
            registry.devices[name] = (spec, device)
    for name in duplicates:
        registry.devices.pop(name, None)


def load_registry(spec_dirs: Iterable[str] = DEFAULT_SPEC_DIRS) -> Registry:
    """Read every spec in ``spec_dirs`` (earlier directories first, later ones override them)."""
    dirs = tuple(os.path.normpath(d) for d in spec_dirs)
    registry = Registry(spec_dirs=dirs)
    for priority, directory in enumerate(dirs):
        _scan_dir(directory, priority, registry)
    _index(registry)
    return registry


def registry_to_json(registry: Registry) -> dict[str, Any]:
    """``nvc cdi list --json``: each resolvable name with its spec file, the problems and the conflicts."""
    return {
        "spec_dirs": list(registry.spec_dirs),
        "devices": [{"name": name, "spec": registry.devices[name][0].path} for name in registry.names()],
        "problems": [{"path": p.path, "message": p.message, "unsafe": p.unsafe} for p in registry.problems],
        "conflicts": [{"name": c.name, "winner": c.winner, "loser": c.loser, "duplicate": c.duplicate}
                      for c in registry.conflicts],
    }
