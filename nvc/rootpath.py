"""Resolve paths inside a directory tree as if it were ``/``, without ever trusting the host's view.

A driver root (``--root /run/nvidia/driver``) or a container rootfs is a tree whose symlinks were written for its
own ``/``: an apt-installed driver has absolute chains such as ``/usr/bin/nvidia-smi -> /etc/alternatives/...``.
Following them with the host's ``os.path.realpath`` would read the *host's* files (wrong answers) or, for a
container, let the container point us anywhere on the host. Here every absolute target is re-rooted and ``..``
never climbs above the root, the same contract as ``openat2(RESOLVE_IN_ROOT)``.
"""

from __future__ import annotations

import errno
import os
import stat

MAX_SYMLINKS = 40  # the kernel's own limit (ELOOP)


class RootPathError(OSError):
    """A path that cannot be resolved inside its root (symlink loop)."""


def host_path(root: str, inner: str) -> str:
    """Join an absolute in-root path to its root, giving the path on the host."""
    inner = "/" + inner.lstrip("/")
    if root in ("", "/"):
        return inner
    return root.rstrip("/") + (inner if inner != "/" else "")


def resolve_in_root(root: str, path: str, *, follow_final: bool = True, strict: bool = False) -> str:
    """Return ``path`` with every symlink resolved inside ``root``, as an absolute path relative to ``root``.

    Components that do not exist are kept as they are (the result then names a missing file; callers check),
    unless ``strict``: then a missing or unreadable component raises :class:`RootPathError`, as chroot(2)'s
    own resolution would fail. ``follow_final=False`` leaves a final symlink unresolved, like ``lstat``.
    """
    pending = [c for c in path.split("/") if c]
    pending.reverse()  # a stack: the next component is pending[-1]
    resolved: list[str] = []
    links = 0
    while pending:
        name = pending.pop()
        if name == ".":
            continue
        if name == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = [*resolved, name]
        if not pending and not follow_final:
            resolved = candidate
            break
        full = host_path(root, "/" + "/".join(candidate))
        try:
            st = os.lstat(full)
        except OSError as exc:
            if strict:
                raise RootPathError(exc.errno, exc.strerror, path) from None
            # Missing (or unreadable): nothing more to resolve through; keep the rest verbatim but normalised.
            resolved = candidate
            continue
        if not stat.S_ISLNK(st.st_mode):
            resolved = candidate
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise RootPathError(errno.ELOOP, "too many levels of symbolic links", path)
        try:
            target = os.readlink(full)
        except OSError as exc:  # replaced by a non-link between lstat and readlink
            raise RootPathError(exc.errno, exc.strerror, path) from None
        if target.startswith("/"):
            resolved = []
        parts = [c for c in target.split("/") if c]
        pending.extend(reversed(parts))
    return "/" + "/".join(resolved)


def exists_in_root(root: str, inner: str) -> bool:
    """True when the already-resolved in-root path names an existing file."""
    return os.path.lexists(host_path(root, inner))


class DriverRoot:
    """A driver root (``--root``) that owns resolution inside itself, so no caller can resolve against the host.

    The root travels from the entry points through the host-side modules; each of them needs "this in-root path,
    resolved inside the root, as a host path". Holding the root in this value makes that the only way to ask,
    instead of a convention of pairing :func:`resolve_in_root` with :func:`host_path` at every call site.
    ``path`` is the root exactly as given (serialize it: cache keys, JSON, argv). Relative roots are accepted as
    the functions accept them; the entry points decide whether to make them absolute. Immutable and hashable; a
    plain ``__slots__`` class rather than a record so that the hot path imports nothing more.
    """

    __slots__ = ("path",)
    path: str

    def __init__(self, path: str) -> None:
        if not isinstance(path, str):
            raise TypeError(f"driver root must be a str, not {type(path).__name__}")
        object.__setattr__(self, "path", path)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if type(other) is not DriverRoot:
            return NotImplemented
        return self.path == other.path

    def __hash__(self) -> int:
        return hash((DriverRoot, self.path))

    def __repr__(self) -> str:
        return f"DriverRoot({self.path!r})"

    def host_path(self, inner: str) -> str:
        """The host path of an already-resolved in-root path (:func:`host_path`)."""
        return host_path(self.path, inner)

    def resolve(self, inner: str, *, follow_final: bool = True, strict: bool = False) -> str:
        """``inner`` with its symlinks resolved inside the root, still in-root (:func:`resolve_in_root`)."""
        return resolve_in_root(self.path, inner, follow_final=follow_final, strict=strict)

    def exists(self, inner: str) -> bool:
        """True when the already-resolved in-root path names an existing file (:func:`exists_in_root`)."""
        return exists_in_root(self.path, inner)

    def locate(self, inner: str, *, follow_final: bool = True) -> str:
        """The host path of ``inner`` once resolved inside the root: what opening it inside the root would open."""
        return host_path(self.path, resolve_in_root(self.path, inner, follow_final=follow_final))

    def canonical(self) -> DriverRoot:
        """The same root with its own path made absolute and free of host symlinks (what a cache key names)."""
        return DriverRoot(os.path.realpath(self.path))


def require_driver_root(value: object) -> DriverRoot:
    """``value`` when it is a :class:`DriverRoot`; a plain string is refused, so that no caller can hand a host-side
    module a root that nothing resolves inside."""
    if type(value) is not DriverRoot:
        raise TypeError(f"a DriverRoot is required, not {type(value).__name__} (wrap --root in rootpath.DriverRoot)")
    return value


#: The host's own root: ``--root`` left at its default.
HOST_ROOT = DriverRoot("/")
