"""mount(2), umount2(2) and the fd-based mount API (open_tree, move_mount, mount_setattr, fsopen/fsconfig/fsmount).

Why the new API matters here: a classic ``mount(src, "/rootfs/usr/lib/libcuda.so", ...)`` resolves its target
path at call time, so a container that swaps a path component for a symlink between our check and the mount
gets a host path mounted over (CVE-2024-0132, CVE-2025-23359). With ``open_tree`` + ``move_mount`` the target is
an fd we opened safely, and ``mount_setattr`` makes the clone read-only *before* it is attached, so there is no
window in which the container sees a writable driver file.

This module knows nothing about NVIDIA or containers: thin wrappers that raise ``OSError(errno, strerror, path)``.
"""

from __future__ import annotations

import os

from nvc.sys._ffi import libc, raise_errno, raw_syscall

# mount(2) flags (<sys/mount.h>)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_POSIXACL = 1 << 16
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

# umount2(2) flags
MNT_FORCE = 1
MNT_DETACH = 2
MNT_EXPIRE = 4
UMOUNT_NOFOLLOW = 8

# *at() flags (<fcntl.h>, <linux/mount.h>)
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_NO_AUTOMOUNT = 0x800
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000

# open_tree(2)
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC

# move_mount(2)
MOVE_MOUNT_F_SYMLINKS = 0x01
MOVE_MOUNT_F_AUTOMOUNTS = 0x02
MOVE_MOUNT_F_EMPTY_PATH = 0x04
MOVE_MOUNT_T_SYMLINKS = 0x10
MOVE_MOUNT_T_AUTOMOUNTS = 0x20
MOVE_MOUNT_T_EMPTY_PATH = 0x40
MOVE_MOUNT_SET_GROUP = 0x100
MOVE_MOUNT_BENEATH = 0x200

# mount_setattr(2) / fsmount(2) attributes
MOUNT_ATTR_RDONLY = 0x01
MOUNT_ATTR_NOSUID = 0x02
MOUNT_ATTR_NODEV = 0x04
MOUNT_ATTR_NOEXEC = 0x08
MOUNT_ATTR__ATIME = 0x70
MOUNT_ATTR_RELATIME = 0x00
MOUNT_ATTR_NOATIME = 0x10
MOUNT_ATTR_STRICTATIME = 0x20
MOUNT_ATTR_NODIRATIME = 0x80
MOUNT_ATTR_IDMAP = 0x100000
MOUNT_ATTR_NOSYMFOLLOW = 0x200000
MOUNT_ATTR_SIZE_VER0 = 32

# fsopen(2) / fsconfig(2) / fsmount(2)
FSOPEN_CLOEXEC = 0x01
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_SET_BINARY = 2
FSCONFIG_SET_PATH = 3
FSCONFIG_SET_PATH_EMPTY = 4
FSCONFIG_SET_FD = 5
FSCONFIG_CMD_CREATE = 6
FSCONFIG_CMD_RECONFIGURE = 7
FSMOUNT_CLOEXEC = 0x01


def _path_or_none(path: str | bytes | None) -> str | None:
    if path is None:
        return None
    return os.fsdecode(path)


def mount(
    source: str | bytes | None,
    target: str | bytes,
    fstype: str | bytes | None,
    flags: int = 0,
    data: str | bytes | None = None,
) -> None:
    """mount(2). ``source``/``fstype``/``data`` may be ``None`` (remounts, propagation changes)."""
    ffi, lib = libc()

    def cstr(value: str | bytes | None) -> object:
        if value is None:
            return ffi.NULL
        return os.fsencode(value) if isinstance(value, str) else value

    ffi.errno = 0
    if lib.mount(cstr(source), cstr(target), cstr(fstype), flags, cstr(data)) != 0:
        raise_errno("mount", _path_or_none(target), _path_or_none(source))


def umount2(target: str | bytes, flags: int = 0) -> None:
    """umount2(2); ``MNT_DETACH`` for a lazy unmount that cannot fail with EBUSY."""
    ffi, lib = libc()
    ffi.errno = 0
    if lib.umount2(os.fsencode(target), flags) != 0:
        raise_errno("umount2", _path_or_none(target))


def open_tree(dirfd: int, path: str | bytes, flags: int) -> int:
    """open_tree(2): an fd for a mount (with ``OPEN_TREE_CLONE``: a detached copy of it) — Linux 5.2+."""
    fd = raw_syscall("open_tree", dirfd, path, flags)
    if fd < 0:
        raise_errno("open_tree", _path_or_none(path) or f"fd {dirfd}")
    return fd


def move_mount(from_dirfd: int, from_path: str | bytes, to_dirfd: int, to_path: str | bytes, flags: int) -> None:
    """move_mount(2): attach a detached mount (or move one) onto a target named by fd and/or path — Linux 5.2+."""
    if raw_syscall("move_mount", from_dirfd, from_path, to_dirfd, to_path, flags) != 0:
        raise_errno("move_mount", _path_or_none(to_path) or f"fd {to_dirfd}", _path_or_none(from_path))


def mount_setattr(
    dirfd: int, path: str | bytes, flags: int, attr_set: int = 0, attr_clr: int = 0, propagation: int = 0
) -> None:
    """mount_setattr(2): change ro/nosuid/nodev/noexec/propagation of a mount, attached or not — Linux 5.12+."""
    ffi, _ = libc()
    attr = ffi.new("struct mount_attr *")
    attr.attr_set = attr_set
    attr.attr_clr = attr_clr
    attr.propagation = propagation
    attr.userns_fd = 0
    if raw_syscall("mount_setattr", dirfd, path, flags, attr, ffi.sizeof("struct mount_attr")) != 0:
        raise_errno("mount_setattr", _path_or_none(path) or f"fd {dirfd}")


def fsopen(fstype: str, flags: int = FSOPEN_CLOEXEC) -> int:
    """fsopen(2): a filesystem context to configure with :func:`fsconfig` — Linux 5.2+."""
    fd = raw_syscall("fsopen", fstype, flags)
    if fd < 0:
        raise_errno("fsopen", fstype)
    return fd


def fsconfig(fs_fd: int, cmd: int, key: str | None = None, value: str | None = None, aux: int = 0) -> None:
    """fsconfig(2) for the string/flag/command forms (``FSCONFIG_SET_STRING``, ``FSCONFIG_CMD_CREATE``...)."""
    if raw_syscall("fsconfig", fs_fd, cmd, key, value, aux) != 0:
        raise_errno("fsconfig", f"{key}={value}" if key else None)


def fsmount(fs_fd: int, flags: int = FSMOUNT_CLOEXEC, attr_flags: int = 0) -> int:
    """fsmount(2): turn a created superblock into a detached mount fd with ``MOUNT_ATTR_*`` flags."""
    fd = raw_syscall("fsmount", fs_fd, flags, attr_flags)
    if fd < 0:
        raise_errno("fsmount")
    return fd


def ms_to_mount_attr(flags: int) -> int:
    """Translate ``MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC`` into the ``MOUNT_ATTR_*`` bits of the new API."""
    attr = 0
    if flags & MS_RDONLY:
        attr |= MOUNT_ATTR_RDONLY
    if flags & MS_NOSUID:
        attr |= MOUNT_ATTR_NOSUID
    if flags & MS_NODEV:
        attr |= MOUNT_ATTR_NODEV
    if flags & MS_NOEXEC:
        attr |= MOUNT_ATTR_NOEXEC
    return attr


def mount_id(fd: int) -> int:
    """The kernel's id of the mount an fd lives on (``mnt_id`` in /proc/self/fdinfo, as in mountinfo's 1st field).

    Used to check that an fd reopened after a classic mount really is the new mount, and by tests.
    """
    with open(f"/proc/self/fdinfo/{fd}", encoding="utf-8") as f:  # ASCII; the ascii codec would be an import
        for line in f:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    raise OSError(0, "no mnt_id in fdinfo", f"/proc/self/fdinfo/{fd}")


def fd_path(fd: int) -> str:
    """``/proc/self/fd/N``: the path form of an fd, for the classic calls that only take paths.

    The kernel resolves this magic link to the fd's own (mount, dentry), so no path component is re-read.
    """
    return f"/proc/self/fd/{fd}"


_OCTAL_DIGITS = "01234567"


def unescape_mountinfo(field_text: str) -> str:
    """A /proc/PID/mountinfo field with the kernel's ``\\NNN`` octal escapes decoded (it escapes space, tab,
    newline and backslash in paths), left to right — without ``re`` or a codec lookup, so it also works inside a
    container's mount namespace, where nothing may be imported."""
    start = field_text.find("\\")
    if start < 0:
        return field_text
    out: list[str] = []
    done = 0  # field_text[:done] is in out
    while start >= 0:
        digits = field_text[start + 1 : start + 4]
        if len(digits) == 3 and not digits.strip(_OCTAL_DIGITS):  # three of [0-7]
            out.append(field_text[done:start])
            out.append(chr(int(digits, 8)))
            done = start + 4
            start = field_text.find("\\", done)
        else:
            start = field_text.find("\\", start + 1)
    out.append(field_text[done:])
    return "".join(out)
