"""Apply a plan inside the container's mount namespace — all of it, or nothing.

Host-side preparation happens first (reading /proc/driver/nvidia files, checking device nodes, opening a host
ldconfig, adding device-cgroup rules: cgroupfs is a host path). Then we ``setns`` into the container's mount
namespace (the process must be single-threaded), do every mount through :mod:`nvc.apply.container_fs` — targets resolved
inside the rootfs, never through a container-controlled symlink, mounted by fd — run ldconfig chrooted, and
``setns`` back. Any failure rolls back every mount and placeholder made so far and the cgroup rules, then raises.

Running twice on one container is idempotent: a target that already shows the same file as its source (same
device and inode, i.e. our earlier bind mount) is left alone, and so is a /proc/driver/nvidia that is already
our tmpfs.
"""

from __future__ import annotations

import os
import stat
import sys

from nvc.debuglog import NULL_LOG, DebugLog
from nvc.errors import NvcError
from nvc.plan.planner import Bind, CgroupAllow, Plan, Symlink, Tmpfs, UpdateLdCache
from nvc.sys.mount import unescape_mountinfo

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Callable


def _os_message(exc: OSError) -> str:
    text = (exc.strerror or str(exc)).lower()
    return f"{exc.filename}: {text}" if exc.filename else text


def container_owner(pid: int | None) -> tuple[int, int]:
    """uid/gid owning the container's process (NVIDIA runs ldconfig as them)."""
    try:
        st = os.stat(f"/proc/{pid if pid is not None else os.getppid()}")
    except OSError as exc:
        raise NvcError("container", f"process {pid}: {_os_message(exc)}") from None
    return st.st_uid, st.st_gid


def _read_proc_files(plan: Plan) -> dict[str, dict[str, bytes]]:
    """Contents for each tmpfs, read on the host side; ``params`` gets ModifyDeviceFiles: 0."""
    from nvc.host.proc_driver import rewrite_params

    contents: dict[str, dict[str, bytes]] = {}
    for op in plan.of_type(Tmpfs):
        files: dict[str, bytes] = {}
        for name, source in op.files:
            try:
                with open(source, "rb") as f:
                    data = f.read(1 << 20)
            except OSError as exc:
                raise NvcError("mount", f"open failed: {_os_message(exc)}") from None
            if name == "params":
                data = rewrite_params(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
            files[name] = data
        contents[op.target] = files
    return contents


def _check_devices(plan: Plan) -> None:
    """Each host node must exist and be the character device the plan expects (st_rdev), as NVIDIA checks."""
    for op in plan.of_type(Bind):
        if op.device is None:
            continue
        try:
            st = os.stat(op.source)
        except FileNotFoundError:
            raise NvcError("mount", f"device node {op.source} not found (is the NVIDIA kernel module loaded? "
                           "--load-kmods creates missing nodes)") from None
        except OSError as exc:
            raise NvcError("mount", f"stat failed: {_os_message(exc)}") from None
        if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != op.device:
            raise NvcError("mount", f"unexpected device node: {op.source}")


class NoImportsHere(ImportError):
    """An import attempted inside the container's mount namespace (see :class:`MountNamespace`)."""


class _ImportBarrier:
    """A ``sys.meta_path`` finder that refuses every import: once we are in the container's mount namespace, a
    module looked up by path could be the container's file (a pivoted root, a path shadowed by its mounts), run
    with our privileges. Modules already loaded are not affected (they never reach a finder)."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        raise NoImportsHere(f"{name}: not imported inside the container's mount namespace", name=name)


class MountNamespace:
    """Enter ``pid``'s mount namespace for the block, then return to ours (and to our working directory).

    While inside, imports are refused (:class:`_ImportBarrier`): everything the block runs is loaded on the host
    side first (:func:`_load_namespace_code`). A class rather than ``contextlib.contextmanager``: contextlib is not
    worth its import time on this path."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.fds: list[int] = []

    def __enter__(self) -> None:
        if self.pid is None:
            return
        from nvc.sys.namespaces import CLONE_NEWNS, open_ns, setns

        try:
            target = open_ns(self.pid, CLONE_NEWNS)
        except OSError as exc:
            raise NvcError("container", f"open failed: /proc/{self.pid}/ns/mnt: {(exc.strerror or '').lower()}"
                           ) from None
        self.fds.append(target)
        try:
            self.fds.append(os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC))
            self.fds.append(os.open(".", os.O_PATH | os.O_CLOEXEC))
            try:
                setns(target, CLONE_NEWNS)
            except OSError as exc:
                raise NvcError("container", f"mount namespace change failed: {_os_message(exc)}") from None
        except BaseException:
            self._close()
            raise
        sys.meta_path.insert(0, _ImportBarrier)

    def __exit__(self, *exc_info: object) -> None:
        if self.pid is None:
            return
        from nvc.sys.namespaces import CLONE_NEWNS, setns  # loaded by __enter__: no finder is asked

        try:
            sys.meta_path.remove(_ImportBarrier)
            setns(self.fds[1], CLONE_NEWNS)
            try:
                os.fchdir(self.fds[2])
            except OSError:
                pass
        finally:
            self._close()

    def _close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def _mount_table() -> list[tuple[str, str]]:
    """(mount point, fs type) of the current mount namespace, in mountinfo order."""
    table = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 10 or "-" not in fields:
                    continue
                table.append((unescape_mountinfo(fields[4]), fields[fields.index("-") + 1]))
    except OSError:
        pass
    return table


def _fs_type(host_path: str, table: list[tuple[str, str]]) -> str | None:
    """File system type of the mount that holds ``host_path`` (the last, i.e. top, mount of the longest prefix)
    in ``table`` (:func:`_mount_table`)."""
    best: tuple[int, str] | None = None
    for point, fstype in table:
        prefix = point.rstrip("/") + "/"
        if (host_path == point or host_path.startswith(prefix)) and (best is None or len(point) >= best[0]):
            best = (len(point), fstype)
    return best[1] if best else None


def _apply_mounts(plan: Plan, proc_contents, undo, log: DebugLog, write_ldcache: bool) -> tuple[list[str], bool]:
    from nvc.apply.container_fs import open_root

    warnings: list[str] = []
    skipped: set[str] = set()  # tmpfs targets not mounted: binds below them are skipped too
    try:
        root = open_root(plan.rootfs)
    except OSError as exc:
        raise NvcError("mount", f"open failed: {_os_message(exc)}") from None
    with root:
        for op in plan.operations:
            try:
                _apply_one(root, op, proc_contents, undo, log, warnings, skipped)
            except OSError as exc:
                what = "symlink creation" if isinstance(op, Symlink) else "mount operation"
                raise NvcError("mount", f"{what} failed: {_os_message(exc)}") from None
        cache_written = False
        for op in plan.of_type(UpdateLdCache):
            if write_ldcache:
                cache_written = _write_ldcache(root, plan, op, undo, log)
    return warnings, cache_written


def _write_ldcache(root, plan: Plan, op: UpdateLdCache, undo, log: DebugLog) -> bool:
    """Write the container's cache in-process; True when done (or skipped as NVIDIA would), False → ldconfig."""
    from nvc.apply.ldcache_update import update_ldcache
    from nvc.apply.ldconfig_exec import DEFAULT_CANDIDATES

    # Without "@" NVIDIA runs the image's own ldconfig and leaves images that have none alone (static,
    # distroless, musl): so do we. With "@/host/ldconfig" the cache is always written.
    in_image = (op.ldconfig,) if op.ldconfig and not op.ldconfig.startswith("@") else DEFAULT_CANDIDATES
    if not (op.ldconfig or "").startswith("@") and all(root.lstat(c) is None for c in in_image):
        log.info(f"no ldconfig in the container ({', '.join(in_image)}): skipped")
        return True

    libraries: list[tuple[str, str]] = []
    for bind in plan.of_type(Bind):
        if bind.kind not in ("library", "library32", "compat"):
            continue
        if bind.source_in_rootfs:
            libraries.append((f"{plan.rootfs}{root_resolve(bind.target, plan.rootfs)}", bind.target))
        else:
            libraries.append((bind.source, bind.target))
    try:
        return update_ldcache(root, plan.rootfs, libraries, op.directories, undo, log)
    except OSError as exc:
        raise NvcError("ldcache", f"cache update failed: {_os_message(exc)}") from None
    except NoImportsHere as exc:  # a rare case needing code not loaded up front (e.g. an ld.so.conf glob with [...])
        log.info(f"in-process ld.so.cache update needs {exc.name}: falling back to ldconfig")
        return False


def root_resolve(inner: str, rootfs: str) -> str:
    from nvc.rootpath import resolve_in_root

    return resolve_in_root(rootfs, inner)


def _apply_one(root, op, proc_contents, undo, log: DebugLog, warnings: list[str], skipped: set[str]) -> None:
    if isinstance(op, Tmpfs):
        target_host = root.host_path(op.target)
        table = _mount_table()
        if root.lstat(op.target) is None and _fs_type(os.path.dirname(target_host), table) == "proc":
            # The container's procfs has no NVIDIA driver directory: nothing to hide or rewrite there (only on a
            # host whose kernel module is not loaded), and procfs cannot take a new one.
            log.warning(f"{op.target} not present in the container's procfs: skipped")
            skipped.add(op.target)
            return
        if _fs_type(target_host, table) == "tmpfs" and root.lstat(f"{op.target}/version") is not None:
            log.info(f"skipping {op.target}: already mounted")
            return
        files = proc_contents.get(op.target, {})

        def populate(dir_fd: int, files=files) -> None:
            for name, data in files.items():
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444,
                             dir_fd=dir_fd)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)

        root.mount_tmpfs(op.target, op.mode, populate=populate, undo=undo)
        log.info(f"mounting tmpfs at {root.host_path(op.target)}")
    elif isinstance(op, Bind):
        if any(op.target.startswith(f"{parent}/") for parent in skipped):
            return
        source: str | int = op.source
        source_fd = None
        if op.source_in_rootfs:
            source_fd = root.resolve_fd(op.source, os.O_PATH)
            source = source_fd
        try:
            mount, created = root.bind_unless_same(source, op.target, directory=op.directory, readonly=op.readonly,
                                                   nosuid=op.nosuid, nodev=op.nodev, noexec=op.noexec, undo=undo)
        finally:
            if source_fd is not None:
                os.close(source_fd)
        if mount is None:
            log.info(f"skipping {op.target}: already mounted")
            return
        if not created and not op.directory:
            warnings.append(f"warning: {op.target} exists in the container image; mounted over it")
        log.info(f"mounting {op.source} at {root.host_path(op.target)}")
    elif isinstance(op, Symlink):
        root.create_symlink(op.target, op.value, undo=undo)
        log.info(f"creating symlink {root.host_path(op.target)} -> {op.value}")


def _load_namespace_code(ldconfig: bool, write_ldcache: bool) -> None:
    """Import, while we still see the host, every module the steps inside the container's namespace use."""
    modules = ["nvc.apply.container_fs"]
    if ldconfig:
        modules.append("nvc.rootpath")  # run_ldconfig
    if ldconfig and write_ldcache:
        modules += ["nvc.apply.ldcache_update", "nvc.host.ldcache.writer", "nvc.host.elf", "nvc.atomic_write"]
    for name in modules:
        __import__(name)


def preload() -> None:
    """Load now all that applying a plan may use, the kernel calls' FFI included: for a process that applies many
    plans (the hook helper, :mod:`nvc.commands.hook_helper`), so that none of its starts pays for it."""
    from nvc.apply import cgroups, ldconfig_exec  # noqa: F401
    from nvc.sys._ffi import libc
    from nvc.sys.namespaces import setns  # noqa: F401

    _load_namespace_code(True, True)
    libc()


def apply_plan(plan: Plan, pid: int | None, log: DebugLog = NULL_LOG, write_ldcache: bool = True) -> list[str]:
    """Apply ``plan`` to the container of ``pid`` (None: in our own mount namespace); returns warnings.

    ``write_ldcache``: update the container's ld.so.cache in-process (falling back to ldconfig when its cache is
    not one we write); False runs ldconfig in the container as NVIDIA does."""
    from nvc.apply.container_fs import Undo
    from nvc.apply.ldconfig_exec import open_host_ldconfig, run_ldconfig

    uid, gid = container_owner(pid)
    proc_contents = _read_proc_files(plan)
    _check_devices(plan)
    ld_ops = plan.of_type(UpdateLdCache)
    ldconfig_fd = open_host_ldconfig(ld_ops[0].ldconfig) if ld_ops else None
    _load_namespace_code(bool(ld_ops), write_ldcache)
    cgroup_change = None
    try:
        rules = plan.of_type(CgroupAllow)
        if rules:
            from nvc.apply.cgroups import DeviceRule, allow_devices, detect_cgroup

            target = detect_cgroup(pid if pid is not None else os.getppid())
            cgroup_change = allow_devices(
                target, [DeviceRule(r.device_type, r.major, r.minor, r.access) for r in rules]
            )
            log.info(f"device cgroup rules added to {target.path}: {', '.join(map(str, cgroup_change.rules))}")
        with MountNamespace(pid):
            undo = Undo()
            try:
                warnings, cache_written = _apply_mounts(plan, proc_contents, undo, log, write_ldcache)
                for op in ld_ops:
                    if cache_written:
                        break
                    skipped = run_ldconfig(plan.rootfs, op.ldconfig, ldconfig_fd, op.directories, uid, gid)
                    if skipped:
                        log.info(skipped)
                    else:
                        log.info(f"executed ldconfig for {' '.join(op.directories)}")
            except BaseException:
                undo.rollback()
                raise
            undo.commit()
    except BaseException:
        if cgroup_change is not None:
            try:
                cgroup_change.undo()
            except Exception:
                pass
        raise
    finally:
        if ldconfig_fd is not None:
            os.close(ldconfig_fd)
    for line in warnings:
        log.warning(line)
    return warnings


def own_shared_pages(stop: Callable[[], bool] | None = None) -> int:
    """In a process forked from one that :func:`preload`-ed (the hook helper's spare, waiting for a start): copy
    now the memory pages it still shares with its parent, rather than one by one as the plan's application first
    writes to each (:func:`nvc.sys.process.populate_writable`; ``stop`` ends it early). Returns the bytes copied."""
    from nvc.sys.process import populate_writable, private_writable_mappings

    return populate_writable(private_writable_mappings(), stop=stop)

