"""The answer cache directory (``/run/nvc``) and its private files, read with nothing but :mod:`posix`.

Written by :mod:`nvc.host.nvml.cache` (NVML's answer), :mod:`nvc.request.runtime_config` (the parsed config.toml),
:mod:`nvc.host.inventory_cache` and :mod:`nvc.commands.prefilter` (the hook's and the shim's memos); read on every
container start. The rules: a 0700 directory owned by us, files of ours with mode 0600 or stricter, never opened through
a symlink, never larger than :data:`MAX_ENTRY_BYTES`. ``$NVC_CACHE_DIR`` moves the directory, ``$NVC_NO_CACHE``
(anything but empty or ``0``) turns every cache off.

Only :mod:`posix` here, not :mod:`os`: the hook's pre-filter runs before anything imports :mod:`os` (1 ms of a
~7 ms interpreter start on a small machine), for every container that asks for no GPU.
"""

import posix

DEFAULT_CACHE_DIR = "/run/nvc"
CACHE_DIR_ENV = "NVC_CACHE_DIR"
NO_CACHE_ENV = "NVC_NO_CACHE"
MAX_ENTRY_BYTES = 1 << 20  # a cache file larger than this is garbage

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


def open_cache_dir(path: str) -> "int | None":
    """A descriptor of the cache directory (created 0700 if missing), or ``None`` when it is not safe to use."""
    if not path.startswith("/"):
        return None
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
