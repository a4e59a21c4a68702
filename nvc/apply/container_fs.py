"""Safe file and mount operations inside a container rootfs that may be hostile.

The image controls every symlink under ROOTFS. A naive ``open(ROOTFS + "/usr/lib/x86_64-linux-gnu/libcuda.so")``
follows ``usr/lib/x86_64-linux-gnu -> /usr/lib/x86_64-linux-gnu`` to the *host's* directory, and a naive
``mount(src, ROOTFS + path)`` re-reads the path at mount time so a container can swap a component between our
check and the mount. Both happened in the field (CVE-2024-0134; CVE-2024-0132 / CVE-2025-23359). The rules here:

* Paths are always in-rootfs paths. They are resolved relative to an fd of the rootfs with
  ``openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`` — absolute symlinks restart at ROOTFS, ``..`` stops there —
  or, on kernels without openat2 (< 5.6), by a user-space walk with the same semantics that opens one component at
  a time with ``O_NOFOLLOW`` relative to an fd it already trusts and handles ``..`` from its own stack of fds.
* Anything created (directories, placeholder files, symlinks) is created with ``*at()`` calls relative to a
  parent-directory fd obtained that way, with ``O_EXCL``/``O_NOFOLLOW``; an existing symlink, directory or device
  where a file should be is refused, never followed.
* Mounts are made onto the placeholder *by fd* (``open_tree`` + ``mount_setattr`` + ``move_mount``), so nothing can
  be swapped between resolve and mount, and a read-only bind is read-only before it is ever visible. Kernels
  without the new API get ``mount(src, "/proc/self/fd/N", MS_BIND)``, which also targets the fd's own dentry.
* :class:`Undo` records every mount and every file it was told we created and, on failure, detaches and removes
  exactly those, in reverse order, checking the inode (a symlink's value) before removing anything.
"""

from __future__ import annotations

import errno
import os
import stat

from nvc.sys import mount as _m
from nvc.sys.openat2 import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, openat2, openat2_available

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any, Literal

    MountApi = Literal["new", "classic"]

MAX_SYMLINKS = 40  # the kernel's own limit (ELOOP)
_RACE_RETRIES = 16  # a component that keeps appearing and disappearing under us is an attack, not bad luck


class ContainerFsError(OSError):
    """A refusal or failure on a path inside a rootfs. ``filename`` is ROOTFS + the in-rootfs path (for messages).

    It is an :class:`OSError` (``errno`` is meaningful: EEXIST, ELOOP, ENOTDIR, EROFS...), so callers that turn
    OSErrors into ``mount error: file creation failed: <path>: <strerror>`` need no special case. Test ``errno``,
    not the builtin subclasses: a missing file is ``ContainerFsError`` with ENOENT, not ``FileNotFoundError``.
    """


def _split(inner_path: str) -> list[str]:
    """Components of an in-rootfs path: ``.`` and empty ones dropped, ``..`` kept (only resolution knows it)."""
    return [c for c in inner_path.split("/") if c not in ("", ".")]


def _leaf(inner_path: str) -> tuple[list[str], str]:
    """Split into parent components and a final name that must be a real name (not ``..``, not the root)."""
    parts = _split(inner_path)
    if not parts or parts[-1] == "..":
        raise ContainerFsError(errno.EINVAL, "path does not name a file", inner_path)
    return parts[:-1], parts[-1]


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) and stat.S_IFMT(a.st_mode) == stat.S_IFMT(b.st_mode)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device node"
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a regular file"


class RootFs:
    """A container rootfs held open as an ``O_PATH`` directory fd; every operation is relative to that fd.

    ``path`` is kept only to build error messages: no method ever opens ``path + inner_path``.
    """

    def __init__(self, path: str, fd: int, *, use_openat2: bool | None = None) -> None:
        self.path = path.rstrip("/") or "/"
        self.fd = fd
        # None = use openat2 where the kernel has it; False forces the user-space walk (tests, old kernels).
        self._use_openat2 = openat2_available() if use_openat2 is None else use_openat2

    # -- lifetime -------------------------------------------------------------------------------------------------

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RootFs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def host_path(self, inner_path: str) -> str:
        """ROOTFS + inner path, for messages only (the string may name something else by the time it is read)."""
        inner = "/".join(_split(inner_path))
        return f"{self.path}/{inner}" if inner else self.path

    def _error(self, exc: OSError, inner_path: str) -> ContainerFsError:
        code = exc.errno or errno.EIO
        return ContainerFsError(code, os.strerror(code), self.host_path(inner_path))

    # -- resolution -----------------------------------------------------------------------------------------------

    def resolve_fd(self, inner_path: str, flags: int = os.O_PATH, mode: int = 0) -> int:
        """Open ``inner_path`` as the container would see it, never leaving the rootfs; returns a new fd.

        ``O_NOFOLLOW`` in ``flags`` leaves a final symlink unfollowed (as with open(2)). Magic links
        (/proc/PID/fd/...) are refused, in case a procfs is mounted in the rootfs.
        """
        try:
            if self._use_openat2:
                rel = "/".join(_split(inner_path)) or "."
                return openat2(self.fd, rel, flags, mode, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
            return self._walk_open(inner_path, flags, mode)
        except ContainerFsError:
            raise
        except OSError as exc:
            raise self._error(exc, inner_path) from exc

    def lstat(self, inner_path: str) -> os.stat_result | None:
        """``lstat`` inside the rootfs (parent resolved in root, final symlink not followed); ``None`` if missing."""
        try:
            fd = self.resolve_fd(inner_path, os.O_PATH | os.O_NOFOLLOW)
        except ContainerFsError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def _walk(
        self,
        parts: list[str],
        *,
        follow_final: bool = True,
        create_mode: int | None = None,
        undo: Undo | None = None,
    ) -> int:
        """User-space RESOLVE_IN_ROOT: return an ``O_PATH`` fd for ``parts``, optionally creating directories.

        Each step opens ONE name with ``O_NOFOLLOW`` relative to a directory fd already known to be inside the
        rootfs, so the kernel never follows a link for us; symlink targets are read from the link's own fd and
        pushed back as components (absolute ones restart at the root); ``..`` pops our own stack of fds and never
        rises above the root. ``create_mode`` makes missing components (including dangling symlink targets,
        re-rooted) as directories; each one made is recorded in ``undo``.
        """
        stack = [os.dup(self.fd)]
        names: list[str] = []  # the in-root path of stack[-1], for messages
        pending = list(reversed(parts))
        links = 0
        retries = 0
        try:
            while pending:
                name = pending.pop()
                if name in ("", "."):
                    continue
                if name == "..":
                    if len(stack) > 1:
                        os.close(stack.pop())
                        names.pop()
                    continue
                cur = stack[-1]
                try:
                    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
                except FileNotFoundError:
                    if create_mode is None:
                        raise
                    try:
                        fd = _mkdir_at(cur, name, create_mode, undo, self.host_path("/".join([*names, name])))
                    except FileExistsError:
                        # Someone created it between our open and mkdir: look again (bounded).
                        retries += 1
                        if retries > _RACE_RETRIES:
                            raise
                        pending.append(name)
                        continue
                st = os.fstat(fd)
                if stat.S_ISLNK(st.st_mode):
                    if not pending and not follow_final:
                        stack.append(fd)
                        names.append(name)
                        break
                    try:
                        links += 1
                        if links > MAX_SYMLINKS:
                            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                        target = os.readlink("", dir_fd=fd)  # readlinkat(fd, ""): the link we opened, not a name
                    finally:
                        os.close(fd)
                    if target.startswith("/"):
                        while len(stack) > 1:
                            os.close(stack.pop())
                        names.clear()
                    pending.extend(reversed([c for c in target.split("/") if c]))
                    continue
                if pending and not stat.S_ISDIR(st.st_mode):
                    os.close(fd)
                    raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
                stack.append(fd)
                names.append(name)
            return stack.pop()
        finally:
            for fd in stack:
                os.close(fd)

    def _walk_open(self, inner_path: str, flags: int, mode: int) -> int:
        """The openat2-less :meth:`resolve_fd`: walk to the object, then open it with the wanted flags."""
        follow = not flags & os.O_NOFOLLOW
        if flags & os.O_CREAT:
            parents, name = _leaf(inner_path)
            parent = self._walk(parents)
            try:
                return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent)
            except OSError as exc:
                # ELOOP: the final name is a symlink. Follow it in root to an existing file (never create
                # through a link: its target was chosen by the image).
                if exc.errno != errno.ELOOP or not follow or flags & os.O_EXCL:
                    raise
            finally:
                os.close(parent)
            flags &= ~os.O_CREAT
        fd = self._walk(_split(inner_path), follow_final=follow)
        if flags & ~(os.O_NOFOLLOW | os.O_CLOEXEC) == os.O_PATH:
            return fd
        try:
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
            if flags & os.O_DIRECTORY and not stat.S_ISDIR(st.st_mode):
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            # Reopen through the magic link of an fd we already hold: the kernel reopens that very inode.
            return os.open(_m.fd_path(fd), (flags & ~os.O_NOFOLLOW) | os.O_CLOEXEC, mode)
        finally:
            os.close(fd)

    # -- creation -------------------------------------------------------------------------------------------------

    def make_dirs(self, inner_dir: str, mode: int = 0o755, *, undo: Undo | None = None) -> int:
        """Return an ``O_PATH`` fd of ``inner_dir``, creating missing components one by one inside the rootfs.

        A symlink on the way is followed *inside* the rootfs (``lib -> /usr/lib`` means ROOTFS/usr/lib), and a
        dangling one gets its re-rooted target created, as a container process following it would see it.
        Created directories get exactly ``mode`` (no umask) and are recorded in ``undo``.
        """
        parts = _split(inner_dir)
        try:
            if self._use_openat2:
                try:
                    rel = "/".join(parts) or "."
                    return openat2(self.fd, rel, os.O_PATH | os.O_DIRECTORY, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
                except FileNotFoundError:
                    pass  # something is missing: create it step by step below
            fd = self._walk(parts, create_mode=mode, undo=undo)
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                os.close(fd)
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            return fd
        except OSError as exc:
            raise self._error(exc, inner_dir) from exc

    def create_file(self, inner_path: str, mode: int = 0o644, *, undo: Undo | None = None,
                    same_as: tuple[int, int] | None = None) -> tuple[int | None, bool]:  # fmt: skip
        """Create an empty placeholder file to bind-mount onto; return ``(O_PATH fd, created)``.

        An existing regular file is reused (``created=False``: the caller warns, the mount hides it). A symlink,
        directory, device, fifo or socket is refused with :class:`ContainerFsError` and never followed: mounting
        over a symlink's target is how CVE-2024-0134 reached the host. ``same_as`` (device, inode): an existing
        entry that is that file gives ``(None, False)`` (:meth:`bind_unless_same`).
        """

        def create(parent: int, name: str) -> int:
            fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_RDONLY | os.O_CLOEXEC, mode & 0o7777,
                         dir_fd=parent)
            try:
                os.fchmod(fd, mode & 0o7777)  # exact mode, whatever the umask
                if undo is not None:
                    undo.add_created(parent, name, fd, self.host_path(inner_path))
                return _reopen_path(fd)
            finally:
                os.close(fd)

        return self._create_or_reuse(inner_path, create, stat.S_ISREG, "file", undo, same_as)

    def create_dir(self, inner_path: str, mode: int = 0o755, *, undo: Undo | None = None,
                   same_as: tuple[int, int] | None = None) -> tuple[int | None, bool]:  # fmt: skip
        """Create a directory to mount onto (tmpfs, a GPU's proc dir); return ``(O_PATH fd, created)``.

        An existing directory is reused; a symlink (even to a directory) or a non-directory is refused. ``same_as``
        as for :meth:`create_file`.
        """

        def create(parent: int, name: str) -> int:
            return _mkdir_at(parent, name, mode, undo, self.host_path(inner_path))

        return self._create_or_reuse(inner_path, create, stat.S_ISDIR, "directory", undo, same_as)

    def _create_or_reuse(self, inner_path: str, create: Callable[[int, str], int], reusable: Callable[[int], bool],
                         what: str, undo: Undo | None,
                         same_as: tuple[int, int] | None = None) -> tuple[int | None, bool]:  # fmt: skip
        """Create ``inner_path`` with ``create(parent_fd, name)`` (O_EXCL semantics), or reuse what is there if
        ``reusable(st_mode)``; anything else — a symlink above all — is refused, never followed. Retries when the
        entry appears or vanishes between the two steps (a racing container process). ``(None, False)`` when what
        is there is the file ``same_as`` names (device, inode)."""
        parents, name = _leaf(inner_path)
        parent = self.make_dirs("/".join(parents), undo=undo)
        try:
            for _ in range(_RACE_RETRIES):
                try:
                    return create(parent, name), True
                except FileExistsError:
                    pass
                try:
                    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
                except FileNotFoundError:
                    continue  # removed between our two steps: try to create it again
                st = os.fstat(fd)
                if same_as is not None and (st.st_dev, st.st_ino) == same_as:
                    os.close(fd)
                    return None, False
                if reusable(st.st_mode):
                    return fd, False
                os.close(fd)
                raise ContainerFsError(
                    errno.EEXIST, f"file exists and is {_kind(st.st_mode)}", self.host_path(inner_path)
                )
            raise ContainerFsError(errno.EAGAIN, f"{what} keeps changing", self.host_path(inner_path))
        except ContainerFsError:
            raise
        except OSError as exc:
            raise self._error(exc, inner_path) from exc
        finally:
            os.close(parent)

    def create_symlink(self, inner_path: str, target: str, *, undo: Undo | None = None) -> bool:
        """Create ``inner_path -> target`` (target stored verbatim); return whether it was created.

        An existing symlink with the same target is fine (``False``); anything else there is an error, as NVIDIA's
        ``file exists``. The link is made with symlinkat relative to the parent fd, so it lands inside the rootfs.
        """
        parents, name = _leaf(inner_path)
        parent = self.make_dirs("/".join(parents), undo=undo)
        try:
            return self.symlink_at(parent, name, target, inner_path, undo=undo)
        finally:
            os.close(parent)

    def symlink_at(self, dir_fd: int, name: str, target: str, inner_path: str, *, undo: Undo | None = None) -> bool:
        """:meth:`create_symlink` in a directory already resolved in the rootfs (``dir_fd``, e.g. from
        :meth:`make_dirs`): many links in one directory cost one resolution, not one each. ``inner_path`` (the
        link's in-rootfs path) is for messages. ``name`` must be one plain component."""
        if not name or "/" in name or name in (".", ".."):
            raise ContainerFsError(errno.EINVAL, "path does not name a file", self.host_path(inner_path))
        try:
            try:
                os.symlink(target, name, dir_fd=dir_fd)
            except FileExistsError:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode) and os.readlink(name, dir_fd=dir_fd) == target:
                    return False
                raise ContainerFsError(
                    errno.EEXIST, f"file exists and is {_kind(st.st_mode)}", self.host_path(inner_path)
                ) from None
            if undo is not None:
                undo.add_symlink(dir_fd, name, target, self.host_path(inner_path))
            return True
        except ContainerFsError:
            raise
        except OSError as exc:
            raise self._error(exc, inner_path) from exc

    def ldconfig_symlink_at(self, dir_fd: int, name: str, target: str, inner_path: str, *,
                            undo: Undo | None = None) -> bool:  # fmt: skip
        """:meth:`symlink_at` with ldconfig's rule where ``name`` exists: a symlink to something else is replaced
        (stale: another driver's), anything that is not a symlink is left as it is (the image's own file). False in
        that last case only. The rule of both the legacy hook's cache update and the CDI hook."""
        try:
            self.symlink_at(dir_fd, name, target, inner_path, undo=undo)
            return True
        except ContainerFsError as exc:
            if exc.errno != errno.EEXIST:
                raise
        try:
            if not stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                return False
            os.unlink(name, dir_fd=dir_fd)
        except OSError as exc:
            raise self._error(exc, inner_path) from exc
        self.symlink_at(dir_fd, name, target, inner_path, undo=undo)
        return True

    def remove(self, inner_path: str) -> None:
        """Remove one file, symlink or empty directory (never recursively; a final symlink itself, not its target).

        Prefer :class:`Undo`, which also checks the inode is the one we created.
        """
        parents, name = _leaf(inner_path)
        try:
            parent = self.resolve_fd("/".join(parents), os.O_PATH | os.O_DIRECTORY)
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    os.rmdir(name, dir_fd=parent)
                else:
                    os.unlink(name, dir_fd=parent)
            finally:
                os.close(parent)
        except ContainerFsError:
            raise
        except OSError as exc:
            raise self._error(exc, inner_path) from exc

    # -- mounts (create the target safely, then mount by fd) ------------------------------------------------------

    def bind_file(
        self,
        source: str | int,
        inner_path: str,
        *,
        mode: int | None = None,
        readonly: bool = True,
        nosuid: bool = True,
        nodev: bool = True,
        noexec: bool = False,
        undo: Undo | None = None,
        api: MountApi | None = None,
    ) -> tuple[Mount, bool]:
        """Placeholder + bind mount of a host file (or an fd); returns ``(mount, placeholder_created)``.

        ``mode`` defaults to the source's permission bits, as NVIDIA creates its placeholders.
        """
        if mode is None:
            mode = stat.S_IMODE(os.stat(source).st_mode)
        target, created = self.create_file(inner_path, mode, undo=undo)
        mnt = self._bind_onto(source, target, inner_path, undo, readonly=readonly, nosuid=nosuid, nodev=nodev,
                              noexec=noexec, api=api)
        return mnt, created

    def bind_dir(
        self,
        source: str | int,
        inner_path: str,
        *,
        readonly: bool = True,
        nosuid: bool = True,
        nodev: bool = True,
        noexec: bool = False,
        recursive: bool = False,
        undo: Undo | None = None,
        api: MountApi | None = None,
    ) -> tuple[Mount, bool]:
        """Directory target + bind mount of a host directory; returns ``(mount, directory_created)``."""
        target, created = self.create_dir(inner_path, undo=undo)
        mnt = self._bind_onto(source, target, inner_path, undo, readonly=readonly, nosuid=nosuid, nodev=nodev,
                              noexec=noexec, recursive=recursive, api=api)
        return mnt, created

    def bind_unless_same(self, source: str | int, inner_path: str, *, directory: bool = False,
                         undo: Undo | None = None, **options: Any) -> tuple[Mount | None, bool]:  # fmt: skip
        """:meth:`bind_file` (``directory``: :meth:`bind_dir`) unless ``inner_path`` already is ``source`` (same
        device and inode: mounted there before), then ``(None, False)``. One lookup of the target and one stat of
        the source, where checking first and then binding resolved each twice."""
        st = os.stat(source)
        same = (st.st_dev, st.st_ino)
        if directory:
            target, created = self.create_dir(inner_path, undo=undo, same_as=same)
        else:
            target, created = self.create_file(inner_path, stat.S_IMODE(st.st_mode), undo=undo, same_as=same)
        if target is None:
            return None, False
        return self._bind_onto(source, target, inner_path, undo, **options), created

    def _bind_onto(self, source: str | int, target: int, inner_path: str, undo: Undo | None, **options) -> Mount:
        """Bind ``source`` onto the target fd (closed here) and record the mount for undo."""
        try:
            mnt = bind_mount_fd(source, target, display=self.host_path(inner_path), **options)
        finally:
            os.close(target)
        if undo is not None:
            undo.add_mount(mnt)
        return mnt

    def mount_tmpfs(
        self,
        inner_path: str,
        mode: int = 0o555,
        flags: int = _m.MS_NOSUID | _m.MS_NODEV | _m.MS_NOEXEC,
        *,
        populate: Callable[[int], None] | None = None,
        undo: Undo | None = None,
        api: MountApi | None = None,
    ) -> tuple[Mount, bool]:
        """Directory target + tmpfs (e.g. over /proc/driver/nvidia); returns ``(mount, directory_created)``."""
        target, created = self.create_dir(inner_path, undo=undo)
        try:
            mnt = tmpfs_fd(target, mode, flags, populate=populate, api=api, display=self.host_path(inner_path))
        finally:
            os.close(target)
        if undo is not None:
            undo.add_mount(mnt)
        return mnt, created


def open_root(rootfs: str, *, use_openat2: bool | None = None) -> RootFs:
    """Open a container rootfs (a host directory path given by the runtime) as a :class:`RootFs`.

    Open it AFTER entering the container's mount namespace: mount targets must be in the caller's namespace,
    and the fds handed out here belong to the namespace the rootfs was opened in.
    """
    fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return RootFs(rootfs, fd, use_openat2=use_openat2)


def _mkdir_at(parent: int, name: str, mode: int, undo: Undo | None, display: str) -> int:
    """mkdirat + exact mode + record; returns an ``O_PATH`` fd of the new directory (raises FileExistsError)."""
    os.mkdir(name, mode, dir_fd=parent)
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    try:
        os.fchmod(fd, mode)
        if undo is not None:
            undo.add_created(parent, name, fd, display)
        return _reopen_path(fd)
    finally:
        os.close(fd)


def _reopen_path(fd: int) -> int:
    """An ``O_PATH`` fd for the very inode ``fd`` is open on (via its magic link: no name is looked up again)."""
    return os.open(_m.fd_path(fd), os.O_PATH | os.O_CLOEXEC)


# -- mounts by fd ---------------------------------------------------------------------------------------------------


class Mount:
    """A mount we made. ``fd`` refers to the mount itself (its root), so it can be undone without any path."""

    __slots__ = ("api", "fd", "target")

    def __init__(self, fd: int, target: str, api: MountApi) -> None:
        self.fd = fd
        self.target = target  # for messages only
        self.api: MountApi = api

    def __repr__(self) -> str:
        return f"Mount(fd={self.fd}, target={self.target!r}, api={self.api!r})"

    def detach(self) -> None:
        """Lazily unmount it (``umount2(/proc/self/fd/N, MNT_DETACH)``) and close the fd."""
        try:
            _m.umount2(_m.fd_path(self.fd), _m.MNT_DETACH)
        finally:
            self.close()

    def close(self) -> None:
        """Forget the mount (it stays mounted)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_new_api: bool | None = None


def new_mount_api_available() -> bool:
    """True when open_tree/move_mount exist (Linux 5.2+; probed once with a harmless ``open_tree`` of ``/``)."""
    global _new_api
    if _new_api is None:
        try:
            os.close(_m.open_tree(_m.AT_FDCWD, "/", _m.OPEN_TREE_CLOEXEC))
            _new_api = True
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EPERM):
                raise
            _new_api = False
    return _new_api


def _ms_flags(readonly: bool, nosuid: bool, nodev: bool, noexec: bool) -> int:
    return (
        (_m.MS_RDONLY if readonly else 0)
        | (_m.MS_NOSUID if nosuid else 0)
        | (_m.MS_NODEV if nodev else 0)
        | (_m.MS_NOEXEC if noexec else 0)
    )


def bind_mount_fd(
    source: str | int,
    target_fd: int,
    readonly: bool = True,
    nosuid: bool = True,
    nodev: bool = True,
    noexec: bool = False,
    *,
    recursive: bool = False,
    api: MountApi | None = None,
    display: str | None = None,
) -> Mount:
    """Bind-mount ``source`` (a trusted host path, or an fd, e.g. one from :meth:`RootFs.resolve_fd`) onto the
    file or directory ``target_fd`` refers to; return the :class:`Mount`.

    New API: clone the source (``open_tree``), set ro/nosuid/nodev/noexec on the still-detached clone, attach it
    with ``move_mount`` onto the fd. Fallback (``api="classic"`` or ENOSYS): ``mount(source, /proc/self/fd/N,
    MS_BIND)`` then a remount of the new mount, found in mountinfo and checked by mount id (see
    :func:`_classic_mount`). Device nodes need ``nodev=False``. A source given as a path is opened in *this*
    mount namespace; the target must be in it too.
    """
    flags = _ms_flags(readonly, nosuid, nodev, noexec)
    where = display or _m.fd_path(target_fd)
    if api is None:
        api = "new" if new_mount_api_available() else "classic"
    if api == "new":
        tree = clone_tree(source, recursive=recursive)
        return attach_tree(tree, target_fd, readonly, nosuid, nodev, noexec, recursive=recursive, display=where)
    return _bind_classic(source, target_fd, flags, recursive, where)


def clone_tree(source: str | int, *, recursive: bool = False) -> int:
    """A detached copy of the mount at ``source`` (a path, or an fd with the empty path): ``open_tree`` CLONE.

    The clone keeps working after ``setns`` into another mount namespace, so an executor can clone every host
    source while it still sees the host, then enter the container's namespace and :func:`attach_tree` them.
    Raises ``OSError(ENOSYS)`` on Linux < 5.2.
    """
    rec = _m.AT_RECURSIVE if recursive else 0
    if isinstance(source, int):
        return _m.open_tree(source, "", _m.OPEN_TREE_CLONE | _m.OPEN_TREE_CLOEXEC | _m.AT_EMPTY_PATH | rec)
    return _m.open_tree(_m.AT_FDCWD, source, _m.OPEN_TREE_CLONE | _m.OPEN_TREE_CLOEXEC | rec)


def attach_tree(
    tree: int,
    target_fd: int,
    readonly: bool = True,
    nosuid: bool = True,
    nodev: bool = True,
    noexec: bool = False,
    *,
    recursive: bool = False,
    display: str | None = None,
) -> Mount:
    """Set ro/nosuid/nodev/noexec on a detached clone from :func:`clone_tree`, then attach it onto ``target_fd``.

    Takes ownership of ``tree`` (it becomes the :class:`Mount`'s fd, or is closed on failure). The target must
    live in the caller's current mount namespace.
    """
    flags = _ms_flags(readonly, nosuid, nodev, noexec)
    where = display or _m.fd_path(target_fd)
    rec = _m.AT_RECURSIVE if recursive else 0
    remount_after = False
    try:
        attr = _m.ms_to_mount_attr(flags)
        if attr:
            try:
                _m.mount_setattr(tree, "", _m.AT_EMPTY_PATH | rec, attr_set=attr)
            except OSError as exc:
                if exc.errno != errno.ENOSYS:
                    raise
                remount_after = True  # Linux 5.2-5.11: open_tree but no mount_setattr
        try:
            _m.move_mount(tree, "", target_fd, "", _m.MOVE_MOUNT_F_EMPTY_PATH | _m.MOVE_MOUNT_T_EMPTY_PATH)
        except OSError as exc:
            raise OSError(exc.errno, os.strerror(exc.errno or errno.EIO), where) from exc
    except BaseException:
        os.close(tree)  # a detached clone vanishes with its last fd
        raise
    mnt = Mount(tree, where, "new")
    if remount_after:
        try:
            # Only an attached mount can be remounted; the fd names exactly the clone's root.
            _m.mount(None, _m.fd_path(tree), None, _m.MS_REMOUNT | _m.MS_BIND | flags)
        except BaseException:
            mnt.detach()
            raise
    return mnt


def _read_mounts() -> dict[int, tuple[int, str]]:
    """``{mount id: (parent id, mount point)}`` from /proc/self/mountinfo."""
    mounts: dict[int, tuple[int, str]] = {}
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split(" ", 5)
            mounts[int(fields[0])] = (int(fields[1]), _m.unescape_mountinfo(fields[4]))
    return mounts


def _classic_mount(
    source: str | None, target_fd: int, fstype: str | None, flags: int, data: str | None, where: str
) -> Mount:
    """Classic mount onto ``/proc/self/fd/N`` (the fd's own dentry), then an fd of the new mount's root.

    The kernel resolves the magic link to the placeholder itself and stacks the mount on whatever is topmost
    there, so the target cannot be swapped. The classic API returns no handle, so the new mount is found in
    mountinfo (the one new mount whose parent is not new) and reopened by its mount point; the reopened fd must
    carry that mount id, else something raced us and we undo and fail rather than guess.
    """
    before = set(_read_mounts())
    try:
        _m.mount(source, _m.fd_path(target_fd), fstype, flags, data)
    except OSError as exc:
        raise OSError(exc.errno, os.strerror(exc.errno or errno.EIO), where) from exc
    try:
        new = {i: v for i, v in _read_mounts().items() if i not in before}
        tops = [(i, point) for i, (parent, point) in new.items() if parent not in new]
        if len(tops) != 1:
            raise OSError(errno.EAGAIN, "cannot identify the new mount (concurrent mounts?)", where)
        new_id, point = tops[0]
        fd = os.open(point, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        if _m.mount_id(fd) != new_id:
            os.close(fd)
            raise OSError(errno.EAGAIN, "mount target changed while mounting", where)
        return Mount(fd, where, "classic")
    except BaseException:
        try:
            _m.umount2(_m.fd_path(target_fd), _m.MNT_DETACH)  # goes down to the top mount on the target: ours
        except OSError:
            pass
        raise


def _bind_classic(source: str | int, target_fd: int, flags: int, recursive: bool, where: str) -> Mount:
    src = _m.fd_path(source) if isinstance(source, int) else source
    mnt = _classic_mount(src, target_fd, None, _m.MS_BIND | (_m.MS_REC if recursive else 0), None, where)
    if flags:
        try:
            # A bind ignores ro/nosuid/... on creation: remount the new mount itself (by its own fd).
            _m.mount(None, _m.fd_path(mnt.fd), None, _m.MS_REMOUNT | _m.MS_BIND | flags)
        except BaseException:
            mnt.detach()
            raise
    return mnt


def tmpfs_fd(
    target_fd: int,
    mode: int = 0o555,
    flags: int = _m.MS_NOSUID | _m.MS_NODEV | _m.MS_NOEXEC,
    *,
    size: str | None = None,
    populate: Callable[[int], None] | None = None,
    api: MountApi | None = None,
    display: str | None = None,
) -> Mount:
    """Mount a fresh tmpfs (``mode=``, ``MS_*`` ``flags``) onto the directory ``target_fd`` refers to.

    ``populate(dir_fd)`` writes the content (e.g. the driver's proc files) through an fd of the tmpfs root: with
    the new API it runs BEFORE the tmpfs is attached, so the container never sees a half-filled directory.
    """
    where = display or _m.fd_path(target_fd)
    if api is None:
        api = "new" if new_mount_api_available() else "classic"
    options = {"mode": f"{mode & 0o7777:o}"} | ({"size": size} if size else {})
    if api == "classic":
        data = ",".join(f"{k}={v}" for k, v in options.items())
        mnt = _classic_mount("tmpfs", target_fd, "tmpfs", flags, data, where)
        try:
            if populate is not None:
                populate(mnt.fd)
        except BaseException:
            mnt.detach()
            raise
        return mnt
    fs = _m.fsopen("tmpfs", _m.FSOPEN_CLOEXEC)
    try:
        _m.fsconfig(fs, _m.FSCONFIG_SET_STRING, "source", "tmpfs")
        for key, value in options.items():
            _m.fsconfig(fs, _m.FSCONFIG_SET_STRING, key, value)
        _m.fsconfig(fs, _m.FSCONFIG_CMD_CREATE)
        mfd = _m.fsmount(fs, _m.FSMOUNT_CLOEXEC, _m.ms_to_mount_attr(flags))
    finally:
        os.close(fs)
    try:
        if populate is not None:
            populate(mfd)
        try:
            _m.move_mount(mfd, "", target_fd, "", _m.MOVE_MOUNT_F_EMPTY_PATH | _m.MOVE_MOUNT_T_EMPTY_PATH)
        except OSError as exc:
            raise OSError(exc.errno, os.strerror(exc.errno or errno.EIO), where) from exc
    except BaseException:
        os.close(mfd)
        raise
    return Mount(mfd, where, "new")


def unmount(host_path: str) -> None:
    """Lazily unmount whatever is mounted at a host path, not following a final symlink (undo by path)."""
    _m.umount2(host_path, _m.MNT_DETACH | _m.UMOUNT_NOFOLLOW)


# -- transaction ----------------------------------------------------------------------------------------------------


class _Created:
    __slots__ = ("display", "name", "object_fd", "parent_fd")

    def __init__(self, parent_fd: int, name: str, object_fd: int, display: str) -> None:
        self.parent_fd = parent_fd
        self.name = name
        self.object_fd = object_fd  # pins the inode: while it is open its number cannot be reused by a look-alike
        self.display = display

    def close(self) -> None:
        os.close(self.parent_fd)
        os.close(self.object_fd)


class _CreatedLink:
    """A symlink we made: undone only while the entry still is a symlink holding the value we wrote.

    A symlink cannot be pinned like a file (an ``O_PATH`` fd of it costs an open, an fstat and a readlink per link,
    and a plan makes dozens): its value is the check instead. Whoever replaced it with another link or a file since
    keeps theirs.
    """

    __slots__ = ("display", "name", "parent_fd", "value")

    def __init__(self, parent_fd: int, name: str, value: str, display: str) -> None:
        self.parent_fd = parent_fd
        self.name = name
        self.value = value
        self.display = display

    def close(self) -> None:
        os.close(self.parent_fd)


class Undo:
    """Everything made so far (mounts, created files/dirs/symlinks), undone in reverse order on failure.

    Use as a context manager: an exception inside rolls back and re-raises; a normal exit commits (keeps the
    work and closes the fds held for undoing). Removal is by (parent fd, name) and only if the inode there is
    still the one we created — never by a path string and never anything we did not create. Each record holds
    two fds (the parent and the object, pinned so its inode number cannot be recycled for an impostor), each
    symlink one (the parent: a link is checked by its value) and each mount one: a plan of N files keeps about 3N
    fds open until commit.
    """

    def __init__(self) -> None:
        self._steps: list[Mount | _Created | _CreatedLink] = []
        self.errors: list[OSError] = []  # what rollback() could not undo

    def add_mount(self, mnt: Mount) -> None:
        self._steps.append(mnt)

    def add_created(self, parent_fd: int, name: str, object_fd: int, display: str) -> None:
        """Record the entry ``name`` in ``parent_fd`` that we created and hold open as ``object_fd``.

        Both fds are duplicated: the caller keeps (and closes) its own.
        """
        parent = os.dup(parent_fd)
        try:
            obj = os.dup(object_fd)
        except OSError:
            os.close(parent)
            raise
        self._steps.append(_Created(parent, name, obj, display))

    def add_symlink(self, parent_fd: int, name: str, value: str, display: str) -> None:
        """Record the symlink ``name`` -> ``value`` that we created in ``parent_fd`` (duplicated: the caller keeps
        its own). Rollback removes it only if it still reads ``value``."""
        self._steps.append(_CreatedLink(os.dup(parent_fd), name, value, display))

    def __len__(self) -> int:
        return len(self._steps)

    def steps(self) -> Iterator[str]:
        """Human-readable list of what would be undone (debug logs, tests)."""
        for step in self._steps:
            yield f"mount {step.target}" if isinstance(step, Mount) else f"created {step.display}"

    def rollback(self) -> list[OSError]:
        """Undo everything, newest first; keep going past failures and return them (also in ``errors``)."""
        while self._steps:
            step = self._steps.pop()
            try:
                if isinstance(step, Mount):
                    step.detach()
                elif isinstance(step, _CreatedLink):
                    _remove_link(step)
                else:
                    _remove_created(step)
            except OSError as exc:
                self.errors.append(exc)
        return self.errors

    def commit(self) -> None:
        """Keep everything; release the fds held for undoing."""
        while self._steps:
            step = self._steps.pop()
            step.close()

    def __enter__(self) -> Undo:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.rollback()


def _remove_created(step: _Created) -> None:
    try:
        try:
            st = os.stat(step.name, dir_fd=step.parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return  # already gone
        if not _same_file(st, os.fstat(step.object_fd)):
            return  # replaced by something that is not ours: leave it
        if stat.S_ISDIR(st.st_mode):
            os.rmdir(step.name, dir_fd=step.parent_fd)
        else:
            os.unlink(step.name, dir_fd=step.parent_fd)
    except OSError as exc:
        raise OSError(exc.errno, os.strerror(exc.errno or errno.EIO), step.display) from exc
    finally:
        step.close()


def _remove_link(step: _CreatedLink) -> None:
    try:
        try:
            if os.readlink(step.name, dir_fd=step.parent_fd) != step.value:
                return  # replaced by another link: not ours any more
        except FileNotFoundError:
            return  # already gone
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return  # not a symlink now: leave it
            raise
        os.unlink(step.name, dir_fd=step.parent_fd)
    except OSError as exc:
        raise OSError(exc.errno, os.strerror(exc.errno or errno.EIO), step.display) from exc
    finally:
        step.close()
