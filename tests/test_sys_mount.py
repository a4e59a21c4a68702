"""The kernel-call layer (nvc.sys): constants, errors, openat2 resolution, and real mounts in a private namespace.

Every real mount happens in a forked child that first unshares its mount namespace and makes it private, so the
host never sees it; the tests also check the host's mountinfo afterwards.
"""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nvc.sys import _ffi
from nvc.sys import mount as m
from nvc.sys import namespaces as ns
from nvc.sys.openat2 import (
    RESOLVE_BENEATH,
    RESOLVE_IN_ROOT,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
    RESOLVE_NO_XDEV,
    openat2,
)

REPO = Path(__file__).resolve().parent.parent


# -- helpers shared with test_container_fs ---------------------------------------------------------------------------


def run_in_mount_ns(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` in a forked child inside a new, private mount namespace; return its result or re-raise its error.

    The child unshares CLONE_NEWNS and makes every mount MS_PRIVATE before ``fn`` runs, so nothing it mounts can
    propagate to the host; its mounts vanish when it exits.
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.close(rfd)
            try:
                ns.unshare(ns.CLONE_NEWNS)
                m.mount(None, "/", None, m.MS_REC | m.MS_PRIVATE)
                payload: tuple[str, Any, str] = ("ok", fn(*args, **kwargs), "")
            except BaseException as exc:
                payload = ("err", exc, traceback.format_exc())
            try:
                data = pickle.dumps(payload)
            except Exception:
                data = pickle.dumps(("err", None, payload[2] or "unpicklable result"))
            with os.fdopen(wfd, "wb") as out:
                out.write(data)
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as inp:
        data = inp.read()
    _, status = os.waitpid(pid, 0)
    assert data, f"child died without a result (status {status})"
    kind, value, tb = pickle.loads(data)
    if kind == "ok":
        return value
    if isinstance(value, BaseException):
        value.add_note(f"in the private-namespace child:\n{tb}")
        raise value
    raise AssertionError(tb)


def mountinfo() -> list[dict[str, str]]:
    """This process's mounts: id, parent, root, point, options (per-mount) and fstype."""
    rows = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            left, right = line.rstrip("\n").split(" - ", 1)
            fields = left.split(" ")
            rows.append(
                {
                    "id": fields[0],
                    "parent": fields[1],
                    "root": fields[3],
                    "point": fields[4].replace("\\040", " "),
                    "options": fields[5],
                    "fstype": right.split(" ")[0],
                }
            )
    return rows


def mounts_under(prefix: str) -> list[str]:
    """Mount-point lines at or under ``prefix`` (for before/after comparisons of the host)."""
    prefix = prefix.rstrip("/")
    return sorted(
        f"{r['point']} {r['options']} {r['fstype']}"
        for r in mountinfo()
        if r["point"] == prefix or r["point"].startswith(prefix + "/")
    )


def mount_at(point: str) -> dict[str, str] | None:
    """The topmost mount at exactly ``point`` (last in mountinfo order), if any."""
    rows = [r for r in mountinfo() if r["point"] == point]
    return rows[-1] if rows else None


@pytest.fixture
def host_unchanged(tmp_path: Path) -> Iterator[Path]:
    """Assert that no mount under the test's temp dir or /tmp appears on the host."""
    before_tmp, before_all = mounts_under(str(tmp_path)), mounts_under("/tmp")
    yield tmp_path
    assert mounts_under(str(tmp_path)) == before_tmp
    assert mounts_under("/tmp") == before_all


# -- no root needed --------------------------------------------------------------------------------------------------


def test_import_does_not_build_the_ffi() -> None:
    """Importing the layer (and container_fs) must not import cffi: commands that never mount stay fast."""
    code = (
        "import sys, nvc.sys.mount, nvc.sys.namespaces, nvc.sys.openat2, nvc.apply.container_fs;"
        "assert 'cffi' not in sys.modules, 'cffi imported eagerly';"
        "assert 'pycparser' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_ffi_is_built_once() -> None:
    assert _ffi.libc() is _ffi.libc()


def test_constants_match_linux_uapi() -> None:
    assert (m.MS_RDONLY, m.MS_NOSUID, m.MS_NODEV, m.MS_NOEXEC, m.MS_REMOUNT, m.MS_BIND) == (1, 2, 4, 8, 32, 4096)
    assert (m.MS_REC, m.MS_PRIVATE, m.MS_SLAVE, m.MS_SHARED) == (0x4000, 0x40000, 0x80000, 0x100000)
    assert (m.MNT_DETACH, m.UMOUNT_NOFOLLOW) == (2, 8)
    assert (m.AT_EMPTY_PATH, m.AT_RECURSIVE, m.AT_SYMLINK_NOFOLLOW) == (0x1000, 0x8000, 0x100)
    assert (m.MOVE_MOUNT_F_EMPTY_PATH, m.MOVE_MOUNT_T_EMPTY_PATH) == (4, 0x40)
    assert (m.MOUNT_ATTR_RDONLY, m.MOUNT_ATTR_NOSUID, m.MOUNT_ATTR_NODEV, m.MOUNT_ATTR_NOEXEC) == (1, 2, 4, 8)
    assert (ns.CLONE_NEWNS, ns.CLONE_NEWUSER, ns.CLONE_NEWNET) == (0x20000, 0x10000000, 0x40000000)
    assert (RESOLVE_NO_XDEV, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, RESOLVE_BENEATH, RESOLVE_IN_ROOT) == (
        1,
        2,
        4,
        8,
        16,
    )
    ffi, _ = _ffi.libc()
    assert ffi.sizeof("struct mount_attr") == m.MOUNT_ATTR_SIZE_VER0
    assert ffi.sizeof("struct open_how") == 24


def test_ms_to_mount_attr() -> None:
    flags = m.MS_RDONLY | m.MS_NOSUID | m.MS_NODEV | m.MS_NOEXEC | m.MS_BIND
    assert m.ms_to_mount_attr(flags) == 0xF
    assert m.ms_to_mount_attr(m.MS_NOSUID) == m.MOUNT_ATTR_NOSUID


def test_unknown_architecture_is_enosys(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = os.uname_result(("Linux", "h", "6", "v", "mips64"))
    monkeypatch.setattr(os, "uname", lambda: fake)
    monkeypatch.setattr(_ffi, "_machine", None)  # asked once per process: forget this process's answer
    with pytest.raises(OSError) as info:
        _ffi.syscall_number("open_tree")
    assert info.value.errno == errno.ENOSYS


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/{etc/passwd, usr/lib/, lib64 -> /usr/lib, up -> ../.., abs -> /etc, magic -> /proc/self/root}."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("inner\n")
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "usr" / "lib" / "libx.so").write_text("x")
    (root / "lib64").symlink_to("/usr/lib")
    (root / "up").symlink_to("../../..")
    (root / "abs").symlink_to("/etc")
    (root / "magic").symlink_to("/proc/self/root")
    return root


def test_openat2_in_root_reroots_absolute_and_dotdot(tree: Path) -> None:
    root = os.open(tree, os.O_PATH | os.O_DIRECTORY)
    try:
        for path, expect in [
            ("abs/passwd", tree / "etc" / "passwd"),
            ("/abs/passwd", tree / "etc" / "passwd"),
            ("up/etc/passwd", tree / "etc" / "passwd"),
            ("../../../../etc/passwd", tree / "etc" / "passwd"),
            ("lib64/libx.so", tree / "usr" / "lib" / "libx.so"),
        ]:
            fd = openat2(root, path, os.O_RDONLY, resolve=RESOLVE_IN_ROOT)
            try:
                assert os.fstat(fd).st_ino == os.stat(expect).st_ino, path
            finally:
                os.close(fd)
    finally:
        os.close(root)


def test_openat2_refusals_are_oserrors_with_path(tree: Path) -> None:
    root = os.open(tree, os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as info:
            openat2(root, "up/x", os.O_PATH, resolve=RESOLVE_BENEATH)
        assert info.value.errno == errno.EXDEV
        assert info.value.filename == "up/x"
        with pytest.raises(OSError) as info:
            openat2(root, "lib64/libx.so", os.O_PATH, resolve=RESOLVE_NO_SYMLINKS)
        assert info.value.errno == errno.ELOOP
        with pytest.raises(OSError) as info:
            openat2(root, "magic/etc", os.O_PATH, resolve=RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
        # /proc/self/root is re-rooted to <root>/proc/self/root, which does not exist: no magic jump either way
        assert info.value.errno == errno.ENOENT
        with pytest.raises(FileNotFoundError):
            openat2(root, "nope", os.O_RDONLY, resolve=RESOLVE_IN_ROOT)
    finally:
        os.close(root)


def test_openat2_no_magiclinks_refuses_proc_fd() -> None:
    fd = os.open("/", os.O_PATH)
    try:
        with pytest.raises(OSError) as info:
            openat2(-100, f"/proc/self/fd/{fd}", os.O_PATH, resolve=RESOLVE_NO_MAGICLINKS)
        assert info.value.errno == errno.ELOOP
    finally:
        os.close(fd)


def test_openat2_sets_cloexec(tree: Path) -> None:
    fd = openat2(-100, str(tree), os.O_PATH)
    try:
        assert not os.get_inheritable(fd)
    finally:
        os.close(fd)


def test_umount2_error_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(OSError) as info:
        m.umount2(str(tmp_path))  # not a mount point (EINVAL), or EPERM when not root
    assert info.value.errno in (errno.EINVAL, errno.EPERM)
    assert info.value.filename == str(tmp_path)


def test_fd_path_and_mount_id(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_PATH)
    try:
        assert os.readlink(m.fd_path(fd)) == str(tmp_path)
        root_ids = {r["id"] for r in mountinfo()}
        assert str(m.mount_id(fd)) in root_ids
    finally:
        os.close(fd)


# -- real mounts, private namespace ---------------------------------------------------------------------------------


@pytest.fixture
def files(host_unchanged: Path) -> dict[str, Path]:
    src = host_unchanged / "src"
    src.write_text("driver file\n")
    target = host_unchanged / "target"
    target.write_text("")
    tdir = host_unchanged / "tdir"
    tdir.mkdir()
    return {"src": src, "target": target, "tdir": tdir}


@pytest.mark.root
def test_new_api_bind_readonly_in_private_ns(files: dict[str, Path]) -> None:
    src, target = str(files["src"]), str(files["target"])

    def child() -> dict[str, str]:
        tfd = os.open(target, os.O_PATH | os.O_NOFOLLOW)
        tree = m.open_tree(m.AT_FDCWD, src, m.OPEN_TREE_CLONE | m.OPEN_TREE_CLOEXEC)
        m.mount_setattr(tree, "", m.AT_EMPTY_PATH, m.MOUNT_ATTR_RDONLY | m.MOUNT_ATTR_NOSUID | m.MOUNT_ATTR_NODEV)
        m.move_mount(tree, "", tfd, "", m.MOVE_MOUNT_F_EMPTY_PATH | m.MOVE_MOUNT_T_EMPTY_PATH)
        assert Path(target).read_text() == "driver file\n"
        with pytest.raises(OSError) as info:
            Path(target).write_text("x")
        assert info.value.errno == errno.EROFS
        row = mount_at(target)
        assert row is not None
        assert m.mount_id(tree) == int(row["id"])
        m.umount2(m.fd_path(tree), m.MNT_DETACH)  # undo through the mount's own fd
        assert mount_at(target) is None
        return row

    row = run_in_mount_ns(child)
    assert {"ro", "nosuid", "nodev"} <= set(row["options"].split(","))
    assert mount_at(target) is None  # not on the host


@pytest.mark.root
def test_classic_bind_and_remount_in_private_ns(files: dict[str, Path]) -> None:
    src, target = str(files["src"]), str(files["target"])

    def child() -> str:
        m.mount(src, target, None, m.MS_BIND)
        m.mount(None, target, None, m.MS_REMOUNT | m.MS_BIND | m.MS_RDONLY | m.MS_NOSUID | m.MS_NODEV)
        row = mount_at(target)
        assert row is not None
        m.umount2(target, m.MNT_DETACH | m.UMOUNT_NOFOLLOW)
        return row["options"]

    options = run_in_mount_ns(child)
    assert {"ro", "nosuid", "nodev"} <= set(options.split(","))
    assert mount_at(target) is None


@pytest.mark.root
def test_fsopen_tmpfs_populated_before_attach(files: dict[str, Path]) -> None:
    tdir = str(files["tdir"])

    def child() -> tuple[str, str, list[str], str]:
        fs = m.fsopen("tmpfs")
        m.fsconfig(fs, m.FSCONFIG_SET_STRING, "mode", "555")
        m.fsconfig(fs, m.FSCONFIG_CMD_CREATE)
        mnt = m.fsmount(fs, m.FSMOUNT_CLOEXEC, m.MOUNT_ATTR_NOSUID | m.MOUNT_ATTR_NODEV | m.MOUNT_ATTR_NOEXEC)
        os.close(fs)
        fd = os.open("version", os.O_CREAT | os.O_WRONLY, 0o444, dir_fd=mnt)
        os.write(fd, b"NVRM\n")
        os.close(fd)
        assert os.listdir(tdir) == []  # not attached yet
        dfd = os.open(tdir, os.O_PATH | os.O_DIRECTORY)
        m.move_mount(mnt, "", dfd, "", m.MOVE_MOUNT_F_EMPTY_PATH | m.MOVE_MOUNT_T_EMPTY_PATH)
        row = mount_at(tdir)
        assert row is not None
        return row["options"], row["fstype"], os.listdir(tdir), oct(os.stat(tdir).st_mode & 0o777)

    options, fstype, names, mode = run_in_mount_ns(child)
    assert fstype == "tmpfs"
    assert {"nosuid", "nodev", "noexec"} <= set(options.split(","))
    assert names == ["version"]
    assert mode == "0o555"
    assert os.listdir(tdir) == []


@pytest.mark.root
def test_new_api_errors_are_oserrors(files: dict[str, Path]) -> None:
    def child() -> None:
        with pytest.raises(OSError) as info:
            m.open_tree(m.AT_FDCWD, str(files["src"]) + ".missing", m.OPEN_TREE_CLONE)
        assert info.value.errno == errno.ENOENT
        assert info.value.filename.endswith(".missing")
        tree = m.open_tree(m.AT_FDCWD, str(files["src"]), m.OPEN_TREE_CLONE | m.OPEN_TREE_CLOEXEC)
        dfd = os.open(files["tdir"], os.O_PATH)
        with pytest.raises(OSError) as info:  # a file onto a directory
            m.move_mount(tree, "", dfd, "", m.MOVE_MOUNT_F_EMPTY_PATH | m.MOVE_MOUNT_T_EMPTY_PATH)
        assert info.value.errno in (errno.ENOTDIR, errno.EINVAL)
        assert info.value.filename == f"fd {dfd}"
        with pytest.raises(OSError) as info:
            m.fsopen("no-such-fs")
        assert info.value.errno == errno.ENODEV

    run_in_mount_ns(child)


@pytest.mark.root
def test_setns_returns_to_the_original_namespace(files: dict[str, Path]) -> None:
    src, target = str(files["src"]), str(files["target"])

    def child() -> tuple[bool, bool]:
        home = ns.open_ns("self", ns.CLONE_NEWNS)
        ns.unshare(ns.CLONE_NEWNS)
        m.mount(None, "/", None, m.MS_REC | m.MS_PRIVATE)
        m.mount(src, target, None, m.MS_BIND)
        seen_inside = mount_at(target) is not None
        ns.setns(home, ns.CLONE_NEWNS)
        os.close(home)
        return seen_inside, mount_at(target) is not None

    assert run_in_mount_ns(child) == (True, False)


def test_setns_bad_fd_is_oserror() -> None:
    with pytest.raises(OSError) as info:
        ns.setns(-1, ns.CLONE_NEWNS)
    assert info.value.errno == errno.EBADF
