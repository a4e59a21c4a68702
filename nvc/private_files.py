"""The answer cache directory (``/run/nvc``) and its private files, read with nothing but :mod:`posix`.

Written by :mod:`nvc.host.nvml.cache` (NVML's answer), :mod:`nvc.request.runtime_config` (the parsed config.toml),
:mod:`nvc.host.inventory_cache` and :mod:`nvc.prefilter` (the hook's and the shim's memos); read on every
container start. The rules: a 0700 directory owned by us, files of ours with mode 0600 or stricter, never opened through
a symlink, never larger than :data:`MAX_ENTRY_BYTES`. ``$NVC_CACHE_DIR`` moves the directory, ``$NVC_NO_CACHE``
(anything but empty or ``0``) turns every cache off.

Only :mod:`posix` here, not :mod:`os`: the hook's pre-filter runs before anything imports :mod:`os` (1 ms of a
~7 ms interpreter start on a small machine), for every container that asks for no GPU.
"""

import posix

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from typing import Any

DEFAULT_CACHE_DIR = "/run/nvc"
CACHE_DIR_ENV = "NVC_CACHE_DIR"
NO_CACHE_ENV = "NVC_NO_CACHE"
MAX_ENTRY_BYTES = 1 << 20  # a cache file larger than this is garbage
MAX_ENTRIES = 64  # entries kept in the directory; the oldest go when a write passes this
STALE_TMP_SECONDS = 60.0  # a temporary file older than this was left by a crashed writer
_ENTRY_SUFFIX = ".json"
_HEX = frozenset("0123456789abcdef")

_S_IFMT, _S_IFDIR, _S_IFREG = 0o170000, 0o040000, 0o100000


def _environ(environ):
    if environ is None:
        import os

        return os.environ
    return environ


def caching_disabled(environ=None) -> bool:
    """``$NVC_NO_CACHE`` set to anything but empty or ``0``."""
    return _environ(environ).get(NO_CACHE_ENV, "") not in ("", "0")


def cache_dir_path(default: str = DEFAULT_CACHE_DIR, environ=None) -> str:
    """The cache directory: ``$NVC_CACHE_DIR`` or ``default``."""
    return _environ(environ).get(CACHE_DIR_ENV) or default


def open_cache_dir(path: str, *, create: bool = True) -> "int | None":
    """A descriptor of the cache directory (created 0700 if missing, unless not ``create``), or ``None`` when it is
    not safe to use: not absolute, a symlink, not a directory, not ours, or group/world-writable."""
    if not path.startswith("/"):
        return None
    if create:
        try:
            posix.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError:
            return None
    try:
        fd = posix.open(path, posix.O_RDONLY | posix.O_DIRECTORY | posix.O_NOFOLLOW | posix.O_CLOEXEC)
    except OSError:  # a symlink (ELOOP), not a directory, gone again
        return None
    try:
        st = posix.fstat(fd)
    except OSError:
        st = None
    if st is None or (st.st_mode & _S_IFMT) != _S_IFDIR or st.st_uid != posix.geteuid() or st.st_mode & 0o022:
        posix.close(fd)
        return None
    return fd


def read_private_file(dir_fd: int, name: str) -> "bytes | None":
    """The content of ``name`` in the cache directory, if it is a regular file of ours, mode 0600 or stricter,
    not larger than :data:`MAX_ENTRY_BYTES` and not a symlink; ``None`` otherwise (missing included)."""
    try:
        fd = posix.open(name, posix.O_RDONLY | posix.O_NOFOLLOW | posix.O_NONBLOCK | posix.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:  # missing, or a symlink (ELOOP)
        return None
    try:
        st = posix.fstat(fd)
        if (
            (st.st_mode & _S_IFMT) != _S_IFREG
            or st.st_uid != posix.geteuid()
            or st.st_mode & 0o077
            or st.st_size > MAX_ENTRY_BYTES
        ):
            return None
        chunks = []
        size = 0
        while chunk := posix.read(fd, 65536):
            size += len(chunk)
            if size > MAX_ENTRY_BYTES:
                return None
            chunks.append(chunk)
    finally:
        posix.close(fd)
    return b"".join(chunks)


def sha256_hex(data: bytes) -> str:
    """SHA-256 hex digest without importing :mod:`hashlib` (3 ms of OpenSSL set-up on the hot path)."""
    try:
        from _sha256 import sha256  # CPython's builtin implementation: no OpenSSL to load
    except ImportError:  # pragma: no cover - a Python built without it
        from hashlib import sha256
    return sha256(data).hexdigest()


def entry_name(key: "dict[str, Any]") -> str:
    """The file name of the entry for ``key``: the SHA-256 of its canonical JSON, ``.json``."""
    from nvc import jsonfast

    return sha256_hex(jsonfast.dumps(key, sort_keys=True).encode()) + _ENTRY_SUFFIX


def read_json_entry(dir_fd: int, name: str) -> "dict[str, Any] | None":
    """:func:`read_private_file` decoded as a JSON object; ``None`` when unsafe, missing or not an object."""
    from nvc import jsonfast

    data = read_private_file(dir_fd, name)
    if data is None:
        return None
    try:
        entry = jsonfast.loads(data)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def write_private_file(dir_fd: int, name: str, data: bytes) -> None:
    """Write ``name`` atomically: a private (0600) temporary file in the same directory, renamed over the name,
    then prune the directory (:func:`_prune`). Raises on failure (callers suppress)."""
    from nvc.atomic_write import replace_file

    replace_file(name, data, 0o600, dir_fd=dir_fd)
    _prune(dir_fd, keep=name)


def _is_entry_name(name: str) -> bool:
    stem = name[: -len(_ENTRY_SUFFIX)]
    return name.endswith(_ENTRY_SUFFIX) and len(stem) == 64 and set(stem) <= _HEX


def _prune(dir_fd: int, keep: str) -> None:
    """Bound the directory: drop the oldest entries beyond :data:`MAX_ENTRIES` and stale temporary files.

    Only names :func:`write_private_file` writes are touched, so a directory shared through ``$NVC_CACHE_DIR``
    keeps its other files. Runs after a write only (the slow path).
    """
    import os
    import time

    now = time.time()
    entries: list[tuple[int, str]] = []
    with os.scandir(dir_fd) as it:
        for item in it:
            name = item.name
            if name == keep:
                continue
            try:
                st = item.stat(follow_symlinks=False)
            except OSError:
                continue
            if name.startswith(".") and name.endswith(".tmp") and _is_entry_name(name[1:70]):
                if now - st.st_mtime > STALE_TMP_SECONDS:
                    _unlink(dir_fd, name)
            elif _is_entry_name(name):
                entries.append((st.st_mtime_ns, name))
    excess = len(entries) + 1 - MAX_ENTRIES
    if excess > 0:
        entries.sort()
        for _mtime, name in entries[:excess]:
            _unlink(dir_fd, name)


def _unlink(dir_fd: int, name: str) -> None:
    try:
        posix.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass
