"""openat2(2) (Linux 5.6+): open a path with the kernel enforcing how it may be resolved.

``RESOLVE_IN_ROOT`` treats ``dirfd`` as ``/`` for the whole walk: ``..`` stops there and absolute symlinks
restart from it, which is exactly how a container's own processes will see its rootfs — and it is checked by the
kernel against concurrent renames (EAGAIN, retried here), which no user-space walk can fully do.
"""

from __future__ import annotations

import errno
import os

from nvc.sys._ffi import libc, raise_errno, raw_syscall

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
RESOLVE_CACHED = 0x20

# The kernel answers EAGAIN when a rename or mount raced a RESOLVE_IN_ROOT/BENEATH walk; retrying is the contract.
_EAGAIN_RETRIES = 64


def openat2(dirfd: int, path: str | bytes, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2): return a new fd (``O_CLOEXEC`` is added: fds must not leak into helpers we exec)."""
    ffi, _ = libc()
    how = ffi.new("struct open_how *")
    how.flags = flags | os.O_CLOEXEC
    how.mode = mode
    how.resolve = resolve
    size = ffi.sizeof("struct open_how")
    for _ in range(_EAGAIN_RETRIES):
        fd = raw_syscall("openat2", dirfd, path, how, size)
        if fd >= 0:
            return fd
        if ffi.errno != errno.EAGAIN:
            break
    raise_errno("openat2", os.fsdecode(path))


_available: bool | None = None


def openat2_available() -> bool:
    """True when the running kernel has openat2 (cached; ENOSYS on Linux < 5.6 or under old seccomp filters)."""
    global _available
    if _available is None:
        try:
            os.close(openat2(-100, "/", os.O_PATH | os.O_DIRECTORY, resolve=RESOLVE_IN_ROOT))
            _available = True
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EPERM):
                raise
            _available = False
    return _available
