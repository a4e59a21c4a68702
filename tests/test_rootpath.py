"""Symlinks are resolved inside their root: absolute targets re-rooted, `..` clamped, loops refused."""

from __future__ import annotations

import os

import pytest

from nvc.rootpath import RootPathError, exists_in_root, host_path, resolve_in_root


@pytest.fixture
def tree(fs):
    """A driver root laid out like an apt-installed driver, in a fake filesystem."""
    root = "/drv"
    fs.create_file(f"{root}/usr/lib/nvidia/current/nvidia-smi")
    fs.create_file(f"{root}/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.535.309.01")
    os.symlink("libnvidia-ml.so.535.309.01", f"{root}/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.1")
    os.makedirs(f"{root}/etc/alternatives")
    os.makedirs(f"{root}/usr/bin")
    os.symlink("/usr/lib/nvidia/current/nvidia-smi", f"{root}/etc/alternatives/nvidia--nvidia-smi")
    os.symlink("/etc/alternatives/nvidia--nvidia-smi", f"{root}/usr/bin/nvidia-smi")
    os.symlink(
        "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.1",
        f"{root}/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
    )
    # The host has a different file at the same absolute path: it must never be what we find.
    fs.create_file("/usr/lib/nvidia/current/nvidia-smi", contents="host")
    return root


def test_absolute_chain_through_alternatives_stays_in_root(tree):
    assert resolve_in_root(tree, "/usr/bin/nvidia-smi") == "/usr/lib/nvidia/current/nvidia-smi"
    assert resolve_in_root(tree, "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1") == (
        "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.535.309.01"
    )


def test_dotdot_cannot_climb_above_root(tree):
    os.symlink("../../../../../../../etc/shadow", f"{tree}/usr/bin/escape")
    assert resolve_in_root(tree, "/usr/bin/escape") == "/etc/shadow"
    assert resolve_in_root(tree, "/../../usr/bin/../bin/nvidia-smi") == "/usr/lib/nvidia/current/nvidia-smi"
    assert host_path(tree, resolve_in_root(tree, "/usr/bin/escape")) == f"{tree}/etc/shadow"


def test_loop_is_an_error(tree):
    os.symlink("b", f"{tree}/usr/bin/a")
    os.symlink("a", f"{tree}/usr/bin/b")
    with pytest.raises(RootPathError):
        resolve_in_root(tree, "/usr/bin/a")


def test_missing_components_are_kept_and_reported_missing(tree):
    assert resolve_in_root(tree, "/usr/bin/nope/x") == "/usr/bin/nope/x"
    assert not exists_in_root(tree, "/usr/bin/nope/x")
    assert exists_in_root(tree, "/usr/bin/nvidia-smi")


def test_follow_final_false_keeps_last_link(tree):
    assert resolve_in_root(tree, "/usr/bin/nvidia-smi", follow_final=False) == "/usr/bin/nvidia-smi"


def test_directory_symlink_in_the_middle(tree):
    os.symlink("/usr/lib/nvidia", f"{tree}/nv")
    assert resolve_in_root(tree, "/nv/current/nvidia-smi") == "/usr/lib/nvidia/current/nvidia-smi"


def test_host_root_is_plain_paths():
    assert host_path("/", "/dev/nvidiactl") == "/dev/nvidiactl"
    assert host_path("/run/nvidia/driver/", "/dev/nvidiactl") == "/run/nvidia/driver/dev/nvidiactl"


def test_strict_refuses_missing_components_as_chroot_would(tree):
    with pytest.raises(RootPathError):
        resolve_in_root(tree, "/usr/bin/nope/../nvidia-smi", strict=True)
    assert resolve_in_root(tree, "/usr/bin/nope/../nvidia-smi") == "/usr/lib/nvidia/current/nvidia-smi"
    assert resolve_in_root(tree, "/usr/bin/nvidia-smi", strict=True) == "/usr/lib/nvidia/current/nvidia-smi"
