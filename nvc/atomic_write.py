"""Replace a file atomically: a new temporary file beside it, then rename over it.

Used for everything we write that someone may read concurrently or that must never be half-written: the
container's ld.so.cache, our answer caches under /run/nvc, a bundle's config.json. The temporary file is created
with O_EXCL|O_NOFOLLOW (a planted symlink or file with that name makes it fail, never redirects it), gets exactly
``mode`` (no umask), and the rename replaces whatever has the name — a symlink included — without writing
through it.
"""

from __future__ import annotations

import os


def replace_file(
    name: str, data: bytes, mode: int, *, dir_fd: int | None = None, fsync: bool = False, mtime_ns: int | None = None
) -> None:
    """Atomically make ``name`` (relative to ``dir_fd`` when given) hold ``data`` with permissions ``mode``; with
    ``mtime_ns``, the file carries that modification time from the moment it appears under ``name``."""
    head, base = os.path.split(name)
    tmp = os.path.join(head, f".{base}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if mtime_ns is not None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
