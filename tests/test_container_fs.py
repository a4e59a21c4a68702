"""container_fs against hostile rootfs layouts: nothing may be created or mounted outside the rootfs, ever.

Path operations run in this process (both resolvers: openat2 and the user-space walk used on kernels < 5.6).
Mounts run in a forked child with a private mount namespace (see ``run_in_mount_ns``); the host's mountinfo and
the "host" directories the rootfs points at are checked before and after.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nvc.apply import container_fs as cfs
from nvc.apply.container_fs import ContainerFsError, RootFs, Undo, open_root
from nvc.sys import mount as m
from nvc.sys.openat2 import openat2_available
from tests.test_sys_mount import mount_at, mountinfo, mounts_under, run_in_mount_ns

RESOLVERS = [
    pytest.param(True, id="openat2", marks=pytest.mark.skipif(not openat2_available(), reason="no openat2")),
    pytest.param(False, id="walk"),
]
APIS = [
    pytest.param("new", id="new-api", marks=pytest.mark.skipif(not cfs.new_mount_api_available(), reason="old")),
    pytest.param("classic", id="classic"),
]


def snapshot(top: Path) -> list[tuple[str, str, str]]:
    """Every entry under ``top`` (not following symlinks): path, type+mode, link target or content."""
    out = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                what = "-> " + os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                what = p.read_bytes().decode(errors="replace")
            else:
                what = ""
            out.append((str(p.relative_to(top)), oct(st.st_mode), what))
    return sorted(out)


def fd_host_path(fd: int) -> str:
    return os.readlink(m.fd_path(fd))


@dataclass
class Hostile:
    """A rootfs written by an attacker, and the host places it points at."""

    tmp: Path
    rootfs: Path
    host: Path  # stands for the host's /usr/lib etc.: outside the rootfs
    victim: Path  # a real /tmp/host-victim-* directory on the host
    source: Path  # a "driver file" to mount

    def host_state(self) -> tuple[object, ...]:
        return snapshot(self.host), snapshot(self.victim), mounts_under(str(self.tmp)), mounts_under("/tmp")


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[Hostile]:
    rootfs = tmp_path / "rootfs"
    host = tmp_path / "host"
    victim = Path(tempfile.mkdtemp(prefix="host-victim-", dir="/tmp"))
    try:
        (host / "lib").mkdir(parents=True)
        (host / "bin").mkdir()
        (host / "bin" / "nvidia-smi").write_text("HOST nvidia-smi\n")
        (host / "etc-passwd").write_text("root:x:0:0\n")
        source = tmp_path / "libcuda.so.550.54.15"
        source.write_text("libcuda\n")
        source.chmod(0o755)
        for d in ("etc", "usr/lib", "usr/bin", "usr/local/lib", "usr/share", "proc", "tmp"):
            (rootfs / d).mkdir(parents=True)
        (rootfs / "etc" / "debian_version").write_text("12.5\n")
        (rootfs / "usr/lib/x86_64-linux-gnu").symlink_to(host / "lib")  # absolute, to a host directory
        (rootfs / "usr/lib64").symlink_to(victim)  # absolute, to a real /tmp/host-victim-*
        (rootfs / "usr/lib32").symlink_to("/usr/lib")  # ordinary absolute symlink inside the image
        (rootfs / "usr/bin/nvidia-smi").symlink_to(host / "bin" / "nvidia-smi")  # to a host file
        (rootfs / "proc/driver").symlink_to("/proc/driver")  # loops onto itself once re-rooted
        (rootfs / "dev").symlink_to("/dev")  # idem
        (rootfs / "usr/share/escape").symlink_to("../../../../../../../../../.." + str(host))  # ..-chain
        (rootfs / "usr/share/loop").symlink_to("loop")
        (rootfs / "usr/local/lib/libexisting.so.1").write_text("image's own copy\n")
        (rootfs / "usr/local/lib/libdir.so.1").mkdir()
        os.mkfifo(rootfs / "usr/local/lib/libfifo.so.1")
        (rootfs / "usr/local/lib/notadir").write_text("file\n")
        yield Hostile(tmp_path, rootfs, host, victim, source)
    finally:
        shutil.rmtree(victim, ignore_errors=True)


@pytest.fixture(params=RESOLVERS)
def root(request: pytest.FixtureRequest, hostile: Hostile) -> Iterator[RootFs]:
    with open_root(str(hostile.rootfs), use_openat2=request.param) as r:
        yield r


# -- resolution ------------------------------------------------------------------------------------------------------


def test_absolute_symlink_is_rerooted(root: RootFs, hostile: Hostile) -> None:
    (hostile.rootfs / "usr/lib/libc.so.6").write_text("c")
    fd = root.resolve_fd("/usr/lib32/libc.so.6", os.O_RDONLY)
    try:
        assert os.fstat(fd).st_ino == (hostile.rootfs / "usr/lib/libc.so.6").stat().st_ino
        assert os.read(fd, 10) == b"c"
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "inner",
    ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/bin/nvidia-smi", "/usr/share/escape/bin", "/../../..", "etc"],
)
def test_resolve_never_leaves_the_rootfs(root: RootFs, hostile: Hostile, inner: str) -> None:
    # The re-rooted targets mostly do not exist inside the rootfs: that is the point.
    try:
        fd = root.resolve_fd(inner)
    except ContainerFsError as exc:
        assert exc.errno == errno.ENOENT
        return
    try:
        assert fd_host_path(fd).startswith(str(hostile.rootfs))
    finally:
        os.close(fd)


def test_resolve_nofollow_returns_the_link(root: RootFs, hostile: Hostile) -> None:
    fd = root.resolve_fd("/usr/bin/nvidia-smi", os.O_PATH | os.O_NOFOLLOW)
    try:
        assert stat.S_ISLNK(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
    assert root.lstat("/usr/bin/nvidia-smi") is not None
    assert root.lstat("/usr/bin/missing") is None


@pytest.mark.parametrize(("inner", "code"), [("/proc/driver/nvidia", errno.ELOOP), ("/usr/share/loop/x", errno.ELOOP)])
def test_symlink_loops_are_clean_errors(root: RootFs, hostile: Hostile, inner: str, code: int) -> None:
    before = snapshot(hostile.rootfs)
    with pytest.raises(ContainerFsError) as info:
        root.make_dirs(inner)
    assert info.value.errno == code
    assert info.value.filename == str(hostile.rootfs) + inner
    assert snapshot(hostile.rootfs) == before


def test_path_through_a_file_is_enotdir(root: RootFs) -> None:
    with pytest.raises(ContainerFsError) as info:
        root.make_dirs("/usr/local/lib/notadir/sub")
    assert info.value.errno == errno.ENOTDIR


# -- creation --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inner", "lands_at"),
    [
        ("/usr/lib/x86_64-linux-gnu/libcuda.so.1", "{host}/lib/libcuda.so.1"),
        ("/usr/lib64/libcuda.so.1", "{victim}/libcuda.so.1"),
        ("/usr/share/escape/lib/libcuda.so.1", "{host}/lib/libcuda.so.1"),
        ("/usr/lib32/libcuda.so.1", "/usr/lib/libcuda.so.1"),
    ],
)
def test_create_file_through_hostile_symlinks_stays_inside(
    root: RootFs, hostile: Hostile, inner: str, lands_at: str
) -> None:
    host_before = hostile.host_state()
    rootfs_before = snapshot(hostile.rootfs)
    with Undo() as undo:
        fd, created = root.create_file(inner, 0o755, undo=undo)
        try:
            where = fd_host_path(fd)
        finally:
            os.close(fd)
        assert created
        expect = str(hostile.rootfs) + lands_at.format(host=hostile.host, victim=hostile.victim)
        assert where == expect
        assert stat.S_IMODE(os.lstat(where).st_mode) == 0o755
        assert hostile.host_state() == host_before
        undo.rollback()
    assert snapshot(hostile.rootfs) == rootfs_before
    assert hostile.host_state() == host_before


def test_create_file_refuses_symlink_to_host_file(root: RootFs, hostile: Hostile) -> None:
    before = hostile.host_state(), snapshot(hostile.rootfs)
    with pytest.raises(ContainerFsError) as info:
        root.create_file("/usr/bin/nvidia-smi", 0o755)
    assert info.value.errno == errno.EEXIST
    assert "symbolic link" in info.value.strerror
    assert info.value.filename == f"{hostile.rootfs}/usr/bin/nvidia-smi"
    assert (hostile.host_state(), snapshot(hostile.rootfs)) == before


@pytest.mark.parametrize(("inner", "kind"), [("libdir.so.1", "directory"), ("libfifo.so.1", "fifo")])
def test_create_file_refuses_non_regular(root: RootFs, hostile: Hostile, inner: str, kind: str) -> None:
    before = snapshot(hostile.rootfs)
    with pytest.raises(ContainerFsError) as info:
        root.create_file(f"/usr/local/lib/{inner}")
    assert info.value.errno == errno.EEXIST
    assert kind in info.value.strerror
    assert snapshot(hostile.rootfs) == before


def test_create_file_reuses_existing_regular_file(root: RootFs, hostile: Hostile) -> None:
    undo = Undo()
    fd, created = root.create_file("/usr/local/lib/libexisting.so.1", 0o755, undo=undo)
    os.close(fd)
    assert not created
    assert len(undo) == 0  # not ours: never removed by undo
    assert (hostile.rootfs / "usr/local/lib/libexisting.so.1").read_text() == "image's own copy\n"


def test_create_file_exact_mode_despite_umask(root: RootFs, hostile: Hostile) -> None:
    old = os.umask(0o077)
    try:
        fd, _ = root.create_file("/usr/bin/nvidia-debugdump", 0o755)
        os.close(fd)
        dfd = root.make_dirs("/opt/a/b", 0o755)
        os.close(dfd)
    finally:
        os.umask(old)
    assert stat.S_IMODE((hostile.rootfs / "usr/bin/nvidia-debugdump").stat().st_mode) == 0o755
    assert stat.S_IMODE((hostile.rootfs / "opt/a").stat().st_mode) == 0o755


@pytest.mark.parametrize("inner", ["/", "/usr/..", ""])
def test_create_needs_a_real_name(root: RootFs, inner: str) -> None:
    with pytest.raises(ContainerFsError) as info:
        root.create_file(inner)
    assert info.value.errno == errno.EINVAL


def test_create_dir_reuses_dir_and_refuses_symlink(root: RootFs, hostile: Hostile) -> None:
    fd, created = root.create_dir("/usr/local/lib/libdir.so.1")
    os.close(fd)
    assert not created
    with pytest.raises(ContainerFsError) as info:
        root.create_dir("/usr/lib/x86_64-linux-gnu")  # a symlink to a host directory
    assert info.value.errno == errno.EEXIST
    undo = Undo()
    fd, created = root.create_dir("/etc/nvidia/nvidia-application-profiles-rc.d", undo=undo)
    os.close(fd)
    assert created
    assert [s.split("/rootfs/")[1] for s in undo.steps()] == [
        "etc/nvidia",
        "etc/nvidia/nvidia-application-profiles-rc.d",
    ]
    undo.rollback()
    assert not (hostile.rootfs / "etc/nvidia").exists()


def test_dangling_absolute_symlink_target_is_created_inside(root: RootFs, hostile: Hostile) -> None:
    (hostile.rootfs / "usr/lib/nvidia").symlink_to("/tmp/host-victim-never/nvidia")
    fd = root.make_dirs("/usr/lib/nvidia/xorg")
    try:
        assert fd_host_path(fd) == f"{hostile.rootfs}/tmp/host-victim-never/nvidia/xorg"
    finally:
        os.close(fd)
    assert not Path("/tmp/host-victim-never").exists()


def test_create_symlink(root: RootFs, hostile: Hostile) -> None:
    undo = Undo()
    (hostile.rootfs / "usr/lib/libcuda.so.1").write_text("")
    assert root.create_symlink("/usr/lib32/libcuda.so", "libcuda.so.1", undo=undo)
    assert os.readlink(hostile.rootfs / "usr/lib/libcuda.so") == "libcuda.so.1"
    assert not root.create_symlink("/usr/lib/libcuda.so", "libcuda.so.1", undo=undo)  # same: fine
    with pytest.raises(ContainerFsError) as info:
        root.create_symlink("/usr/lib/libcuda.so", "libcuda.so.2")
    assert info.value.errno == errno.EEXIST
    with pytest.raises(ContainerFsError):
        root.create_symlink("/usr/local/lib/libexisting.so.1", "x")
    # the link lands in the rootfs even when its directory is a symlink to the host
    assert root.create_symlink("/usr/lib/x86_64-linux-gnu/libGLX_indirect.so.0", "libGLX_nvidia.so.0", undo=undo)
    assert list(hostile.host.joinpath("lib").iterdir()) == []
    undo.rollback()
    assert not (hostile.rootfs / "usr/lib/libcuda.so").is_symlink()
    assert not (hostile.rootfs / "tmp" / str(hostile.host).lstrip("/")).exists()


def test_remove_takes_the_link_not_its_target(root: RootFs, hostile: Hostile) -> None:
    root.remove("/usr/bin/nvidia-smi")
    assert not (hostile.rootfs / "usr/bin/nvidia-smi").is_symlink()
    assert (hostile.host / "bin/nvidia-smi").read_text() == "HOST nvidia-smi\n"
    with pytest.raises(ContainerFsError) as info:
        root.remove("/usr/bin/nvidia-smi")
    assert info.value.errno == errno.ENOENT


def test_undo_never_removes_what_it_did_not_create(root: RootFs, hostile: Hostile) -> None:
    undo = Undo()
    fd, _ = root.create_file("/usr/bin/nvidia-persistenced", undo=undo)
    os.close(fd)
    # the image replaces our placeholder with its own file: undo must leave that alone
    target = hostile.rootfs / "usr/bin/nvidia-persistenced"
    target.unlink()
    target.write_text("theirs\n")
    assert undo.rollback() == []
    assert target.read_text() == "theirs\n"


def test_undo_context_manager(root: RootFs, hostile: Hostile) -> None:
    before = snapshot(hostile.rootfs)
    with pytest.raises(RuntimeError), Undo() as undo:
        os.close(root.create_file("/usr/bin/a", undo=undo)[0])
        os.close(root.make_dirs("/x/y/z", undo=undo))
        root.create_symlink("/usr/bin/b", "a", undo=undo)
        raise RuntimeError("later step failed")
    assert snapshot(hostile.rootfs) == before
    with Undo() as undo:
        os.close(root.create_file("/usr/bin/a", undo=undo)[0])
    assert (hostile.rootfs / "usr/bin/a").exists()  # committed


# -- mounts (private mount namespace) --------------------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.parametrize("api", APIS)
def test_bind_file_readonly_in_private_ns(hostile: Hostile, api: str) -> None:
    rootfs, source = str(hostile.rootfs), str(hostile.source)
    before = hostile.host_state()

    def child() -> tuple[str, str, bool]:
        with open_root(rootfs) as r:
            mnt, created = r.bind_file(source, "/usr/lib32/libcuda.so.550.54.15", api=api)
            point = f"{rootfs}/usr/lib/libcuda.so.550.54.15"
            row = mount_at(point)
            assert row is not None
            assert m.mount_id(mnt.fd) == int(row["id"])
            assert mnt.api == api
            assert Path(point).read_text() == "libcuda\n"
            assert stat.S_IMODE(os.stat(point).st_mode) == 0o755
            with pytest.raises(OSError) as info:
                Path(point).write_text("x")
            assert info.value.errno == errno.EROFS
            mnt.detach()
            assert mount_at(point) is None
            return row["options"], row["root"], created

    options, mroot, created = run_in_mount_ns(child)
    assert {"ro", "nosuid", "nodev"} <= set(options.split(","))
    assert "noexec" not in options.split(",")
    assert mroot.endswith("/libcuda.so.550.54.15")
    assert created
    assert hostile.host_state() == before


@pytest.mark.root
@pytest.mark.parametrize("use_openat2", RESOLVERS)
def test_bind_unless_same_binds_a_missing_target_once(hostile: Hostile, use_openat2: bool) -> None:
    """The first call creates the placeholder and binds; the second finds the source already there and skips."""
    rootfs, source = str(hostile.rootfs), str(hostile.source)
    before = hostile.host_state(), snapshot(hostile.rootfs)

    def child() -> tuple[bool, bool, int, int]:
        point = f"{rootfs}/usr/lib/libcuda.so.550.54.15"
        with open_root(rootfs, use_openat2=use_openat2) as r, Undo() as undo:
            first, created = r.bind_unless_same(source, "/usr/lib32/libcuda.so.550.54.15", undo=undo)
            again, created_again = r.bind_unless_same(source, "/usr/lib/libcuda.so.550.54.15", undo=undo)
            stacked = len([row for row in mountinfo() if row["point"] == point])
            assert Path(point).read_text() == "libcuda\n"
            assert stat.S_IMODE(os.stat(point).st_mode) == 0o755  # the source's mode, as bind_file gives
            rollback_errors = len(undo.rollback())
        return first is not None and created, again is None and not created_again, stacked, rollback_errors

    assert run_in_mount_ns(child) == (True, True, 1, 0)
    assert (hostile.host_state(), snapshot(hostile.rootfs)) == before


@pytest.mark.root
def test_bind_unless_same_mounts_over_another_existing_file(hostile: Hostile) -> None:
    rootfs, source = str(hostile.rootfs), str(hostile.source)

    def child() -> tuple[bool, bool, str]:
        with open_root(rootfs) as r, Undo() as undo:
            mnt, created = r.bind_unless_same(source, "/usr/local/lib/libexisting.so.1", undo=undo)
            text = Path(rootfs, "usr/local/lib/libexisting.so.1").read_text()
            undo.rollback()
        return mnt is not None, created, text

    assert run_in_mount_ns(child) == (True, False, "libcuda\n")
    assert (hostile.rootfs / "usr/local/lib/libexisting.so.1").read_text() == "image's own copy\n"


@pytest.mark.root
def test_bind_unless_same_directory(hostile: Hostile) -> None:
    rootfs, host = str(hostile.rootfs), str(hostile.host)

    def child() -> tuple[bool, bool, bool]:
        with open_root(rootfs) as r, Undo() as undo:
            first, created = r.bind_unless_same(host, "/etc/nvidia/gpus/0", directory=True, undo=undo)
            again, _ = r.bind_unless_same(host, "/etc/nvidia/gpus/0", directory=True, undo=undo)
            listed = sorted(os.listdir(f"{rootfs}/etc/nvidia/gpus/0"))
            undo.rollback()
        return first is not None and created, again is None, listed == sorted(os.listdir(host))

    assert run_in_mount_ns(child) == (True, True, True)
    assert not (hostile.rootfs / "etc/nvidia").exists()


@pytest.mark.root
@pytest.mark.parametrize("use_openat2", RESOLVERS)
def test_bind_unless_same_never_follows_a_final_symlink_to_the_source(hostile: Hostile, use_openat2: bool) -> None:
    """/usr/bin/nvidia-smi is the image's symlink to the host file we mount: following it would call the two the
    same file and skip; it is refused as bind_file refuses it, and nothing is mounted."""
    rootfs = str(hostile.rootfs)
    source = str(hostile.host / "bin" / "nvidia-smi")
    before = hostile.host_state(), snapshot(hostile.rootfs)

    def child() -> int:
        with open_root(rootfs, use_openat2=use_openat2) as r, Undo() as undo:
            with pytest.raises(ContainerFsError) as info:
                r.bind_unless_same(source, "/usr/bin/nvidia-smi", undo=undo)
            assert undo.rollback() == []
        assert mounts_under(rootfs) == []
        return info.value.errno

    assert run_in_mount_ns(child) == errno.EEXIST
    assert (hostile.host_state(), snapshot(hostile.rootfs)) == before


HOSTILE_CASES = [
    # (operation, in-rootfs path, expected errno or None, where it lands relative to the rootfs)
    ("file", "/usr/lib/x86_64-linux-gnu/libcuda.so.1", None, "{host}/lib/libcuda.so.1"),
    ("file", "/usr/lib64/libcuda.so.1", None, "{victim}/libcuda.so.1"),
    ("file", "/usr/share/escape/bin/nvidia-smi", None, "{host}/bin/nvidia-smi"),
    ("file", "/usr/bin/nvidia-smi", errno.EEXIST, None),
    ("file", "/usr/local/lib/libdir.so.1", errno.EEXIST, None),
    ("file", "/usr/local/lib/libexisting.so.1", None, "/usr/local/lib/libexisting.so.1"),
    ("device", "/dev/nvidiactl", errno.ELOOP, None),
    ("tmpfs", "/proc/driver/nvidia", errno.ELOOP, None),
    ("dir", "/usr/lib64/gpus/0000:01:00.0", None, "{victim}/gpus/0000:01:00.0"),
]


@pytest.mark.root
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("use_openat2", RESOLVERS)
@pytest.mark.parametrize(
    ("op", "inner", "code", "lands_at"), HOSTILE_CASES, ids=[f"{c[0]}:{c[1]}" for c in HOSTILE_CASES]
)
def test_hostile_rootfs(
    hostile: Hostile, api: str, use_openat2: bool, op: str, inner: str, code: int | None, lands_at: str | None
) -> None:
    rootfs, source, host = str(hostile.rootfs), str(hostile.source), str(hostile.host)
    host_before = hostile.host_state()
    rootfs_before = snapshot(hostile.rootfs)
    expect = None if lands_at is None else rootfs + lands_at.format(host=hostile.host, victim=hostile.victim)

    def child() -> None:
        undo = Undo()
        with open_root(rootfs, use_openat2=use_openat2) as r:
            try:
                if op == "file":
                    mnt, _ = r.bind_file(source, inner, undo=undo, api=api)
                elif op == "device":
                    mnt, _ = r.bind_file("/dev/null", inner, nodev=False, noexec=True, undo=undo, api=api)
                elif op == "dir":
                    mnt, _ = r.bind_dir(host, inner, undo=undo, api=api)
                else:
                    mnt, _ = r.mount_tmpfs(inner, undo=undo, api=api)
            except ContainerFsError as exc:
                assert code is not None, f"unexpected {exc!r}"
                assert exc.errno == code
                assert exc.filename.startswith(rootfs)
                assert undo.rollback() == []
            else:
                assert code is None
                row = mount_at(expect)
                assert row is not None, f"no mount at {expect}"
                assert m.mount_id(mnt.fd) == int(row["id"])
                assert "ro" in row["options"].split(",")
                assert undo.rollback() == []
            assert mounts_under(rootfs) == []
            assert mounts_under(host) == []
            assert mounts_under(str(hostile.victim)) == []
            # nothing was ever created or mounted outside: victims as they were, also inside the namespace
            assert hostile.host_state()[:2] == host_before[:2]

    run_in_mount_ns(child)
    assert hostile.host_state() == host_before
    assert snapshot(hostile.rootfs) == rootfs_before  # undo left the rootfs as it was


@pytest.mark.root
@pytest.mark.parametrize("api", APIS)
def test_readonly_rootfs(hostile: Hostile, api: str) -> None:
    rootfs, source = str(hostile.rootfs), str(hostile.source)
    before = hostile.host_state(), snapshot(hostile.rootfs)

    def child() -> None:
        m.mount(rootfs, rootfs, None, m.MS_BIND)
        m.mount(None, rootfs, None, m.MS_REMOUNT | m.MS_BIND | m.MS_RDONLY)
        with open_root(rootfs) as r, Undo() as undo:
            with pytest.raises(ContainerFsError) as info:
                r.bind_file(source, "/usr/lib/x86_64-linux-gnu/libcuda.so.1", undo=undo, api=api)
            assert info.value.errno == errno.EROFS
            with pytest.raises(ContainerFsError) as info:
                r.mount_tmpfs("/var/run/nvidia-persistenced", undo=undo, api=api)
            assert info.value.errno == errno.EROFS
            # an existing file can still be mounted over: only the placeholder creation needs a writable rootfs
            _mnt, created = r.bind_file(source, "/usr/local/lib/libexisting.so.1", undo=undo, api=api)
            assert not created
            assert Path(rootfs, "usr/local/lib/libexisting.so.1").read_text() == "libcuda\n"
            undo.rollback()
        assert [p for p in mounts_under(rootfs) if not p.startswith(rootfs + " ")] == []

    run_in_mount_ns(child)
    assert (hostile.host_state(), snapshot(hostile.rootfs)) == before


@pytest.mark.root
@pytest.mark.parametrize("api", APIS)
def test_swapping_the_placeholder_for_a_symlink_cannot_redirect_the_mount(hostile: Hostile, api: str) -> None:
    """CVE-2024-0132 / CVE-2025-23359: the path is swapped between create and mount; the mount follows the fd."""
    rootfs, source = str(hostile.rootfs), str(hostile.source)
    victim_file = hostile.victim / "libc.so.6"
    victim_file.write_text("host libc\n")
    before = hostile.host_state()

    def child() -> tuple[str, str]:
        with open_root(rootfs) as r:
            fd, _ = r.create_file("/usr/lib/libcuda.so.1")
            placeholder = Path(rootfs, "usr/lib/libcuda.so.1")
            placeholder.rename(Path(rootfs, "usr/lib/moved"))
            placeholder.symlink_to(victim_file)  # the attacker's swap
            mnt = cfs.bind_mount_fd(source, fd, api=api)
            os.close(fd)
            points = [row["point"] for row in mountinfo() if int(row["id"]) == m.mount_id(mnt.fd)]
            content = victim_file.read_text()
            mnt.detach()
            return points[0], content

    point, content = run_in_mount_ns(child)
    assert point == f"{rootfs}/usr/lib/moved"
    assert content == "host libc\n"
    assert hostile.host_state() == before


@pytest.mark.root
@pytest.mark.parametrize("api", APIS)
def test_unlinked_placeholder_is_a_clean_error(hostile: Hostile, api: str) -> None:
    rootfs, source = str(hostile.rootfs), str(hostile.source)

    def child() -> None:
        with open_root(rootfs) as r:
            fd, _ = r.create_file("/usr/lib/libcuda.so.1")
            Path(rootfs, "usr/lib/libcuda.so.1").unlink()
            with pytest.raises(OSError) as info:
                cfs.bind_mount_fd(source, fd, api=api, display="libcuda")
            assert info.value.errno == errno.ENOENT
            os.close(fd)
            assert mounts_under(rootfs) == []

    run_in_mount_ns(child)


@pytest.mark.root
@pytest.mark.parametrize("api", APIS)
def test_tmpfs_populated_and_undone(hostile: Hostile, api: str) -> None:
    rootfs = str(hostile.rootfs)
    (hostile.rootfs / "proc/driver").unlink()
    before = snapshot(hostile.rootfs)

    def populate(dir_fd: int) -> None:
        for name, text in [("params", "ModifyDeviceFiles: 0\n"), ("version", "NVRM 550\n")]:
            fd = os.open(name, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o444, dir_fd=dir_fd)
            os.write(fd, text.encode())
            os.close(fd)

    def child() -> tuple[str, str, list[str], int]:
        with open_root(rootfs) as r:
            undo = Undo()
            _mnt, created = r.mount_tmpfs("/proc/driver/nvidia", populate=populate, undo=undo, api=api)
            assert created
            point = f"{rootfs}/proc/driver/nvidia"
            row = mount_at(point)
            assert row is not None
            names = sorted(os.listdir(point))
            mode = stat.S_IMODE(os.stat(point).st_mode)
            assert Path(point, "params").read_text() == "ModifyDeviceFiles: 0\n"
            undo.rollback()
            assert mount_at(point) is None
            return row["options"], row["fstype"], names, mode

    options, fstype, names, mode = run_in_mount_ns(child)
    assert fstype == "tmpfs"
    assert {"nosuid", "nodev", "noexec"} <= set(options.split(","))
    assert names == ["params", "version"]
    assert mode == 0o555
    assert snapshot(hostile.rootfs) == before


@pytest.mark.root
@pytest.mark.parametrize("api", APIS)
def test_device_node_bind_keeps_dev(hostile: Hostile, api: str) -> None:
    rootfs = str(hostile.rootfs)
    (hostile.rootfs / "dev").unlink()

    def child() -> str:
        with open_root(rootfs) as r, Undo() as undo:
            _mnt, _ = r.bind_file("/dev/null", "/dev/nvidiactl", nodev=False, noexec=True, undo=undo, api=api)
            point = f"{rootfs}/dev/nvidiactl"
            assert stat.S_ISCHR(os.stat(point).st_mode)
            with open(point, "w") as f:  # usable: not nodev
                f.write("x")
            row = mount_at(point)
            assert row is not None
            undo.rollback()
            return row["options"]

    options = set(run_in_mount_ns(child).split(","))
    assert {"ro", "nosuid", "noexec"} <= options
    assert "nodev" not in options


@pytest.mark.root
@pytest.mark.parametrize("api", APIS)
def test_source_by_fd_from_inside_the_rootfs(hostile: Hostile, api: str) -> None:
    """CUDA compat libs live in the image: open them in root, then mount from the fd, not from a path."""
    rootfs = str(hostile.rootfs)
    compat = hostile.rootfs / "usr/local/cuda/compat"
    compat.mkdir(parents=True)
    (compat / "libcuda.so.560.1").write_text("compat\n")
    (hostile.rootfs / "usr/local/cuda/compat/libcuda.so.1").symlink_to("/usr/local/cuda/compat/libcuda.so.560.1")

    def child() -> str:
        with open_root(rootfs) as r, Undo() as undo:
            src = r.resolve_fd("/usr/local/cuda/compat/libcuda.so.1")
            try:
                _mnt, _ = r.bind_file(src, "/usr/lib/libcuda.so.560.1", mode=0o755, undo=undo, api=api)
            finally:
                os.close(src)
            text = Path(rootfs, "usr/lib/libcuda.so.560.1").read_text()
            undo.rollback()
            return text

    assert run_in_mount_ns(child) == "compat\n"


@pytest.mark.root
@pytest.mark.parametrize("api", APIS)
def test_transaction_rolls_back_everything_on_failure(hostile: Hostile, api: str) -> None:
    rootfs, source, host = str(hostile.rootfs), str(hostile.source), str(hostile.host)
    (hostile.rootfs / "proc/driver").unlink()
    host_before = hostile.host_state()
    rootfs_before = snapshot(hostile.rootfs)

    def child() -> list[str]:
        with open_root(rootfs) as r:
            steps: list[str] = []
            with pytest.raises(ContainerFsError), Undo() as undo:
                r.mount_tmpfs("/proc/driver/nvidia", undo=undo, api=api)
                r.bind_file(source, "/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15", undo=undo, api=api)
                r.create_symlink("/usr/lib/x86_64-linux-gnu/libcuda.so", "libcuda.so.1", undo=undo)
                r.bind_file(source, "/usr/local/lib/libexisting.so.1", undo=undo, api=api)
                r.bind_dir(host, "/proc/driver/nvidia/gpus/0000:01:00.0", undo=undo, api=api)
                r.bind_file("/dev/null", "/var/dev/nvidia0", nodev=False, undo=undo, api=api)
                steps = list(undo.steps())
                r.bind_file(source, "/usr/bin/nvidia-smi", undo=undo, api=api)  # refused: a symlink to the host
            assert undo.errors == []
            assert mounts_under(rootfs) == []
            return steps

    steps = run_in_mount_ns(child)
    assert sum(s.startswith("mount ") for s in steps) == 5, "\n".join(steps)
    assert hostile.host_state() == host_before
    assert snapshot(hostile.rootfs) == rootfs_before


@pytest.mark.root
def test_unmount_by_host_path(hostile: Hostile) -> None:
    rootfs, source = str(hostile.rootfs), str(hostile.source)

    def child() -> None:
        with open_root(rootfs) as r:
            mnt, _ = r.bind_file(source, "/usr/bin/nvidia-cuda-mps-control")
            mnt.close()
        point = f"{rootfs}/usr/bin/nvidia-cuda-mps-control"
        assert mount_at(point) is not None
        cfs.unmount(point)
        assert mount_at(point) is None
        with pytest.raises(OSError) as info:
            cfs.unmount(point)
        assert info.value.errno == errno.EINVAL

    run_in_mount_ns(child)


def test_resolve_fd_can_create_and_read(root: RootFs, hostile: Hostile) -> None:
    fd = root.resolve_fd("/usr/lib32/new.conf", os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"hello")
    finally:
        os.close(fd)
    assert (hostile.rootfs / "usr/lib/new.conf").read_bytes() == b"hello"
    (hostile.rootfs / "usr/lib/alias.conf").symlink_to("/usr/lib/new.conf")
    fd = root.resolve_fd("/usr/lib/alias.conf", os.O_RDONLY)
    try:
        assert os.read(fd, 10) == b"hello"
    finally:
        os.close(fd)
    with pytest.raises(ContainerFsError) as info:
        root.resolve_fd("/usr/lib/alias.conf", os.O_RDONLY | os.O_NOFOLLOW)
    assert info.value.errno == errno.ELOOP
    with pytest.raises(ContainerFsError) as info:
        root.resolve_fd("/usr/lib/new.conf", os.O_RDONLY | os.O_DIRECTORY)
    assert info.value.errno == errno.ENOTDIR


@pytest.mark.root
def test_open_tree_without_mount_setattr_remounts_after_attach(hostile: Hostile) -> None:
    """Linux 5.2-5.11 has open_tree/move_mount but not mount_setattr: the clone is remounted by its own fd."""
    if not cfs.new_mount_api_available():
        pytest.skip("no new mount API")
    rootfs, source = str(hostile.rootfs), str(hostile.source)

    def child() -> str:
        def enosys(*args: object, **kwargs: object) -> None:
            raise OSError(errno.ENOSYS, "mount_setattr: Function not implemented")

        cfs._m.mount_setattr = enosys  # only in this forked child
        with open_root(rootfs) as r, Undo() as undo:
            mnt, _ = r.bind_file(source, "/usr/lib/libcuda.so.1", undo=undo)
            row = mount_at(f"{rootfs}/usr/lib/libcuda.so.1")
            assert row is not None
            assert mnt.api == "new"
            undo.rollback()
            return row["options"]

    assert {"ro", "nosuid", "nodev"} <= set(run_in_mount_ns(child).split(","))


@pytest.mark.root
def test_without_open_tree_the_classic_api_is_chosen(hostile: Hostile) -> None:
    rootfs, source = str(hostile.rootfs), str(hostile.source)

    def child() -> tuple[str, str]:
        cfs._new_api = False  # as the ENOSYS probe would leave it on Linux < 5.2
        with open_root(rootfs) as r, Undo() as undo:
            mnt, _ = r.bind_file(source, "/usr/lib/libcuda.so.1", undo=undo)
            tmp, _ = r.mount_tmpfs("/run/nvidia", undo=undo)
            row = mount_at(f"{rootfs}/usr/lib/libcuda.so.1")
            assert row is not None
            assert mount_at(f"{rootfs}/run/nvidia") is not None
            apis = mnt.api + "," + tmp.api
            undo.rollback()
            assert mounts_under(rootfs) == []
            return apis, row["options"]

    apis, options = run_in_mount_ns(child)
    assert apis == "classic,classic"
    assert {"ro", "nosuid", "nodev"} <= set(options.split(","))


@pytest.mark.root
def test_clone_in_one_namespace_attach_in_another(hostile: Hostile) -> None:
    """The executor's pattern: clone host sources while seeing the host, setns, then attach in the container."""
    if not cfs.new_mount_api_available():
        pytest.skip("no new mount API")
    rootfs, source = str(hostile.rootfs), str(hostile.source)
    from nvc.sys import namespaces as ns

    def child() -> tuple[str, bool]:
        tree = cfs.clone_tree(source)
        hidden = f"{hostile.tmp}/hidden"
        os.mkdir(hidden)
        ns.unshare(ns.CLONE_NEWNS)  # stands for setns into the container's namespace
        m.mount("tmpfs", str(hostile.tmp / "hidden"), "tmpfs", 0, None)
        with open_root(rootfs) as r, Undo() as undo:
            target, _ = r.create_file("/usr/lib/libcuda.so.1", undo=undo)
            mnt = cfs.attach_tree(tree, target, display="libcuda")
            os.close(target)
            undo.add_mount(mnt)
            text = Path(rootfs, "usr/lib/libcuda.so.1").read_text()
            row = mount_at(f"{rootfs}/usr/lib/libcuda.so.1")
            assert row is not None
            undo.rollback()
        return text, "ro" in row["options"].split(",")

    assert run_in_mount_ns(child) == ("libcuda\n", True)


@pytest.mark.root
@pytest.mark.parametrize("api", APIS)
def test_target_from_another_namespace_is_refused(hostile: Hostile, api: str) -> None:
    rootfs, source = str(hostile.rootfs), str(hostile.source)
    from nvc.sys import namespaces as ns

    def child() -> int:
        with open_root(rootfs) as r:  # opened in the wrong (outer) namespace
            target, _ = r.create_file("/usr/lib/libcuda.so.1")
            ns.unshare(ns.CLONE_NEWNS)
            with pytest.raises(OSError) as info:
                cfs.bind_mount_fd(source, target, display="libcuda", api=api)
            os.close(target)
            assert mounts_under(rootfs) == []
            return info.value.errno or 0

    assert run_in_mount_ns(child) in (errno.EINVAL, errno.ENOENT)
