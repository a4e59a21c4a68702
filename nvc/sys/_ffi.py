"""The one place that talks to libc through cffi (ABI mode: ``dlopen(None)``, no compiler at run time).

Building the FFI costs tens of milliseconds (cffi imports pycparser and parses the declarations), and most
``nvc`` commands (``info``, ``list``) never mount anything, so nothing here runs at import time: :func:`libc`
builds the FFI on the first kernel call and caches it.

The new mount API (``open_tree``, ``move_mount``, ``mount_setattr``, ``fsopen``...) and ``openat2`` are called
through ``syscall(2)`` rather than glibc wrappers: the wrappers only exist since glibc 2.36 (musl has none), while
the system calls exist since Linux 5.2-5.12 whatever the libc.
"""

from __future__ import annotations

import errno
import os
import threading
from typing import Any, NoReturn

_CDEF = """
int mount(const char *source, const char *target, const char *filesystemtype, unsigned long mountflags,
          const void *data);
int umount2(const char *target, int flags);
int setns(int fd, int nstype);
int unshare(int flags);
int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5);
long syscall(long number, ...);

struct mount_attr {
    uint64_t attr_set;
    uint64_t attr_clr;
    uint64_t propagation;
    uint64_t userns_fd;
};

struct open_how {
    uint64_t flags;
    uint64_t mode;
    uint64_t resolve;
};
"""

# The mount-API and openat2 numbers were allocated after the per-architecture tables were unified (Linux 5.1+):
# they are the same on every architecture below (alpha, ia64 and mips use offsets; we do not support them).
_UNIFIED_SYSCALLS = {
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "openat2": 437,
    "mount_setattr": 442,
}
_SUPPORTED_MACHINES = frozenset(
    {"x86_64", "amd64", "aarch64", "arm64", "i386", "i686", "armv7l", "ppc64le", "s390x", "riscv64"}
)

_numbers: dict[str, int] = {}  # syscall_number() results, cached per process
_lock = threading.Lock()
_state: tuple[Any, Any] | None = None


def libc() -> tuple[Any, Any]:
    """Return ``(ffi, lib)``, building them on first use (thread-safe, once per process)."""
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                import cffi  # deferred: importing cffi alone costs ~2 ms, parsing the cdef ~25 ms

                ffi = cffi.FFI()
                ffi.cdef(_CDEF)
                _state = (ffi, ffi.dlopen(None))
    return _state


def syscall_number(name: str) -> int:
    """The number of a post-5.1 system call on this machine; ``OSError(ENOSYS)`` where we do not know it."""
    machine = os.uname().machine.lower()
    if machine not in _SUPPORTED_MACHINES:
        raise OSError(errno.ENOSYS, f"{name}: unsupported architecture {machine}")
    return _UNIFIED_SYSCALLS[name]


def raise_errno(name: str, path: str | None = None, path2: str | None = None) -> NoReturn:
    """Raise ``OSError(errno, strerror, path)`` from the errno the last libc call left (read through cffi).

    ``strerror`` is the plain C message (callers print ``<path>: <strerror>`` as NVIDIA does); which call failed
    is kept as a note, shown in tracebacks and debug logs.
    """
    ffi, _ = libc()
    err = ffi.errno
    exc = OSError(err, os.strerror(err), path, None, path2)
    exc.add_note(f"in {name}()")
    raise exc


def c_str(value: str | bytes | None) -> Any:
    """A ``char *`` cdata for a path or string (``NULL`` for ``None``), safe in a variadic ``syscall()`` slot."""
    ffi, _ = libc()
    if value is None:
        return ffi.cast("char *", 0)
    if isinstance(value, str):
        value = os.fsencode(value)
    return ffi.new("char[]", value)


def c_long(value: int) -> Any:
    """A ``long`` cdata: cffi's ABI mode needs explicit C types for the variadic part of ``syscall()``."""
    ffi, _ = libc()
    return ffi.cast("long", value)


def raw_syscall(name: str, *args: Any) -> int:
    """Call ``syscall(SYS_name, args...)``; ints become ``long``, str/bytes/None become ``char *``.

    Returns the result (>= 0); raises nothing itself: the caller checks for -1 and calls :func:`raise_errno`,
    because only the caller knows which path to name in the error.
    """
    ffi, lib = libc()
    cargs = []
    for arg in args:
        if isinstance(arg, bool):
            cargs.append(c_long(int(arg)))
        elif isinstance(arg, int):
            cargs.append(c_long(arg))
        elif arg is None or isinstance(arg, str | bytes):
            cargs.append(c_str(arg))
        else:  # already a cdata (struct pointer)
            cargs.append(arg)
    number = _numbers.get(name)
    if number is None:
        number = _numbers[name] = syscall_number(name)
    ffi.errno = 0
    return int(lib.syscall(ffi.cast("long", number), *cargs))
