"""Symlinks made in a directory already resolved in the rootfs (:meth:`RootFs.symlink_at`), and their undo.

The CDI hook makes dozens of links in one or two directories: it resolves each directory once and creates the
links with ``symlinkat`` relative to that fd. Undo records such a link by its value, not by a pinned inode, so a
rollback removes the link only while it still holds what we wrote: a link someone replaced since, or a file put
in its place, stays.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nvc.apply.container_fs import ContainerFsError, RootFs, Undo, open_root
from nvc.sys.openat2 import openat2_available

RESOLVERS = [
    pytest.param(True, id="openat2", marks=pytest.mark.skipif(not openat2_available(), reason="no openat2")),
    pytest.param(False, id="walk"),
]


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """A small image whose /usr/lib64 is a symlink to a host directory (re-rooted: ROOTFS/<host dir>)."""
    rootfs = tmp_path / "rootfs"
    (rootfs / "usr/lib").mkdir(parents=True)
    (tmp_path / "host-lib").mkdir()
    (rootfs / "usr/lib64").symlink_to(tmp_path / "host-lib")
    (rootfs / "usr/lib/libexisting.so.1").write_text("image's own\n")
    return rootfs


@pytest.fixture(params=RESOLVERS)
def root(request: pytest.FixtureRequest, rootfs: Path) -> Iterator[RootFs]:
    with open_root(str(rootfs), use_openat2=request.param) as r:
        yield r


def test_links_in_one_resolved_directory(root: RootFs, rootfs: Path, tmp_path: Path) -> None:
    undo = Undo()
    dir_fd = root.make_dirs("/usr/lib64", undo=undo)  # a symlink to a host path: re-rooted, created inside
    try:
        assert root.symlink_at(dir_fd, "libcuda.so", "libcuda.so.1", "/usr/lib64/libcuda.so", undo=undo)
        assert root.symlink_at(dir_fd, "libcuda.so.1", "libcuda.so.550.54.15", "/usr/lib64/libcuda.so.1", undo=undo)
        # The same value again: nothing to do, nothing recorded.
        assert not root.symlink_at(dir_fd, "libcuda.so", "libcuda.so.1", "/usr/lib64/libcuda.so", undo=undo)
    finally:
        os.close(dir_fd)
    inside = rootfs / str(tmp_path / "host-lib").lstrip("/")
    assert os.readlink(inside / "libcuda.so") == "libcuda.so.1"
    assert os.readlink(inside / "libcuda.so.1") == "libcuda.so.550.54.15"
    assert list((tmp_path / "host-lib").iterdir()) == []  # the host's directory is untouched
    assert [s for s in undo.steps() if "libcuda" in s] == [f"created {root.host_path('/usr/lib64/libcuda.so')}",
                                                           f"created {root.host_path('/usr/lib64/libcuda.so.1')}"]
    undo.rollback()
    assert undo.errors == []
    assert not (inside / "libcuda.so").is_symlink() and not (inside / "libcuda.so.1").is_symlink()


def test_an_existing_entry_is_refused_with_its_kind(root: RootFs) -> None:
    dir_fd = root.resolve_fd("/usr/lib", os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(ContainerFsError) as info:
            root.symlink_at(dir_fd, "libexisting.so.1", "x", "/usr/lib/libexisting.so.1")
        assert info.value.errno == errno.EEXIST
        assert "a regular file" in info.value.strerror
        assert info.value.filename == root.host_path("/usr/lib/libexisting.so.1")
        root.symlink_at(dir_fd, "libx.so", "libx.so.1", "/usr/lib/libx.so")
        with pytest.raises(ContainerFsError) as info:
            root.symlink_at(dir_fd, "libx.so", "libx.so.2", "/usr/lib/libx.so")  # another value
        assert "a symbolic link" in info.value.strerror
        for bad in ("", ".", "..", "a/b"):  # one plain name, never a path to walk unchecked
            with pytest.raises(ContainerFsError) as info:
                root.symlink_at(dir_fd, bad, "x", f"/usr/lib/{bad}")
            assert info.value.errno == errno.EINVAL
    finally:
        os.close(dir_fd)


def test_undo_removes_only_a_link_that_still_holds_our_value(root: RootFs, rootfs: Path) -> None:
    lib = rootfs / "usr/lib"
    undo = Undo()
    assert root.create_symlink("/usr/lib/libmine.so", "libmine.so.1", undo=undo)
    assert root.create_symlink("/usr/lib/librelinked.so", "librelinked.so.1", undo=undo)
    assert root.create_symlink("/usr/lib/libreplaced.so", "libreplaced.so.1", undo=undo)
    assert root.create_symlink("/usr/lib/libgone.so", "libgone.so.1", undo=undo)
    # Since then someone pointed one link elsewhere, put a file in place of another and removed the last.
    (lib / "librelinked.so").unlink()
    (lib / "librelinked.so").symlink_to("theirs.so.1")
    (lib / "libreplaced.so").unlink()
    (lib / "libreplaced.so").write_text("theirs\n")
    (lib / "libgone.so").unlink()
    assert undo.rollback() == []
    assert not (lib / "libmine.so").is_symlink()  # ours: removed
    assert os.readlink(lib / "librelinked.so") == "theirs.so.1"  # not ours any more: kept
    assert (lib / "libreplaced.so").read_text() == "theirs\n"
    assert not (lib / "libgone.so").exists()


def test_commit_keeps_the_links_and_releases_the_fds(root: RootFs, rootfs: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    with Undo() as undo:
        dir_fd = root.make_dirs("/usr/lib")
        try:
            for i in range(20):
                root.symlink_at(dir_fd, f"lib{i}.so", f"lib{i}.so.1", f"/usr/lib/lib{i}.so", undo=undo)
        finally:
            os.close(dir_fd)
        assert len(undo) == 20
    assert len(os.listdir("/proc/self/fd")) == before
    assert all(os.readlink(rootfs / f"usr/lib/lib{i}.so") == f"lib{i}.so.1" for i in range(20))
