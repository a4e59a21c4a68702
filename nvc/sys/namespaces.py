"""setns(2) and unshare(2) (Python 3.11's ``os`` has neither; 3.12 added them).

Entering a mount namespace with ``setns(fd, CLONE_NEWNS)`` fails with EINVAL in a process that has more than one
thread (the threads share one ``fs_struct``): callers must do it before starting threads, or in a forked child.
"""

from __future__ import annotations

import os

from nvc.sys._ffi import libc, raise_errno

CLONE_FS = 0x00000200
CLONE_FILES = 0x00000400
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_SYSVSEM = 0x00040000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# /proc/PID/ns/<name> for each namespace type
NS_FILES = {
    CLONE_NEWNS: "mnt",
    CLONE_NEWCGROUP: "cgroup",
    CLONE_NEWUTS: "uts",
    CLONE_NEWIPC: "ipc",
    CLONE_NEWUSER: "user",
    CLONE_NEWPID: "pid",
    CLONE_NEWNET: "net",
    CLONE_NEWTIME: "time",
}


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2): join the namespace ``fd`` refers to (``nstype`` 0 = any type, else it must match)."""
    ffi, lib = libc()
    ffi.errno = 0
    if lib.setns(fd, nstype) != 0:
        raise_errno("setns", f"fd {fd}")


def unshare(flags: int) -> None:
    """unshare(2): move this process into new namespaces of the given ``CLONE_NEW*`` kinds."""
    ffi, lib = libc()
    ffi.errno = 0
    if lib.unshare(flags) != 0:
        raise_errno("unshare")


def open_ns(pid: int | str, nstype: int = CLONE_NEWNS) -> int:
    """Open ``/proc/PID/ns/<kind>`` (``pid`` may be ``"self"``) as an fd for :func:`setns`."""
    return os.open(f"/proc/{pid}/ns/{NS_FILES[nstype]}", os.O_RDONLY | os.O_CLOEXEC)
