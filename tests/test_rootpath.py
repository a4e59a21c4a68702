"""Symlinks are resolved inside their root: absolute targets re-rooted, `..` clamped, loops refused."""

from __future__ import annotations

import os

import pytest

from nvc.rootpath import DriverRoot, RootPathError, exists_in_root, host_path, resolve_in_root


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


# DriverRoot: the same answers as the functions, held by a value that cannot resolve against the host.


@pytest.mark.parametrize(
    "inner",
    [
        "/usr/bin/nvidia-smi",
        "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
        "/usr/lib/../../etc/alternatives",
        "/nope/x",
    ],
)
def test_driver_root_matches_the_functions(tree, inner):
    root = DriverRoot(tree)
    assert root.path == tree
    assert root.host_path(inner) == host_path(tree, inner)
    assert root.resolve(inner) == resolve_in_root(tree, inner)
    assert root.resolve(inner, follow_final=False) == resolve_in_root(tree, inner, follow_final=False)
    resolved = root.resolve(inner)
    assert root.exists(resolved) == exists_in_root(tree, resolved)
    assert root.locate(inner) == host_path(tree, resolve_in_root(tree, inner))


def test_driver_root_resolves_a_hostile_absolute_link_inside_itself(tree):
    os.symlink("/usr/lib/nvidia/current/nvidia-smi", f"{tree}/usr/bin/evil")
    os.remove(f"{tree}/usr/lib/nvidia/current/nvidia-smi")  # only the host has it now
    root = DriverRoot(tree)
    assert root.resolve("/usr/bin/evil") == "/usr/lib/nvidia/current/nvidia-smi"
    assert root.locate("/usr/bin/evil") == f"{tree}/usr/lib/nvidia/current/nvidia-smi"
    assert not root.exists(root.resolve("/usr/bin/evil"))  # the host's file is not what it finds
    with pytest.raises(RootPathError):
        root.resolve("/usr/bin/evil", strict=True)


def test_driver_root_locate_keeps_a_final_link_when_asked(tree):
    root = DriverRoot(tree)
    assert root.locate("/usr/bin/nvidia-smi", follow_final=False) == f"{tree}/usr/bin/nvidia-smi"
    assert root.locate("/usr/bin/nvidia-smi") == f"{tree}/usr/lib/nvidia/current/nvidia-smi"


def test_driver_root_is_an_immutable_hashable_value():
    root = DriverRoot("/run/nvidia/driver")
    assert root == DriverRoot("/run/nvidia/driver") and root != DriverRoot("/")
    assert len({root, DriverRoot("/run/nvidia/driver")}) == 1
    assert repr(root) == "DriverRoot('/run/nvidia/driver')"
    with pytest.raises(AttributeError):
        root.path = "/"  # type: ignore[misc]
    with pytest.raises(TypeError):
        DriverRoot(b"/")  # type: ignore[arg-type]
    assert DriverRoot("/").host_path("/dev/nvidiactl") == "/dev/nvidiactl"
    # Relative roots are accepted, as the functions accept them: the entry points decide (only configure abspaths).
    assert DriverRoot("drv").host_path("/x") == "drv/x"


def test_canonical_is_the_root_without_host_symlinks(tree):
    os.symlink(tree, "/drv-link")
    assert DriverRoot("/drv-link").canonical() == DriverRoot(tree)
    assert DriverRoot("/drv-link").canonical().locate("/usr/bin/nvidia-smi") == (
        f"{tree}/usr/lib/nvidia/current/nvidia-smi")


@pytest.mark.parametrize("call", ["build_inventory", "query_nvml"])
def test_host_entry_points_refuse_a_plain_string_root(call, tmp_path, monkeypatch):
    """The host side's two ways in take the value, never the ``--root`` string: a string would be a root that
    nothing resolves inside. Refused before anything is read or cached."""
    from nvc.host import inventory

    monkeypatch.setenv("NVC_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(TypeError, match="DriverRoot is required, not str"):
        getattr(inventory, call)(str(tmp_path))
    assert not (tmp_path / "cache").exists()


def test_entry_points_hand_over_the_root_as_the_value():
    """What the commands build from ``--root`` and what an inventory gives back are the same value."""
    from nvc.host.discovery import DriverFiles
    from nvc.host.inventory import Inventory
    from nvc.request.options import build_global_options
    from nvc.rootpath import HOST_ROOT

    assert build_global_options().driver_root == HOST_ROOT == DriverRoot("/")
    assert build_global_options(root="/run/nvidia/driver").driver_root == DriverRoot("/run/nvidia/driver")
    files = DriverFiles("/run/nvidia/driver", "535.309.01", (), (), (), (), ())
    assert Inventory(driver_root="/run/nvidia/driver", files=files, driver_info=None).root == (
        DriverRoot("/run/nvidia/driver"))
