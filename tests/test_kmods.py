"""--load-kmods (nvc.host.kmods): nodes made from /proc/devices under a driver root, nvidia-modprobe on the host root,
and nothing at all when the modules are loaded and every node is there (the container-start case)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from nvc.host import kmods
from nvc.rootpath import DriverRoot

PROC_DEVICES = """Character devices:
  1 mem
195 nvidia-frontend
{uvm}
Block devices:
510 nvidia-uvm-blockdev-not-this-one
"""


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str, **_kw) -> None:
        self.lines.append(message)


def _root(tmp_path: Path, uvm: bool = True) -> Path:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/devices").write_text(PROC_DEVICES.format(uvm="510 nvidia-uvm" if uvm else ""))
    return tmp_path


def _node(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    assert stat.S_ISCHR(st.st_mode), path
    return os.major(st.st_rdev), os.minor(st.st_rdev), stat.S_IMODE(st.st_mode)


@pytest.mark.root
def test_missing_nodes_are_made_from_proc_devices(tmp_path):
    root = _root(tmp_path)
    log = Log()
    kmods.load_kernel_modules(DriverRoot(str(root)), [0, 3], log)
    assert _node(root / "dev/nvidiactl") == (195, 255, 0o666)
    assert _node(root / "dev/nvidia0") == (195, 0, 0o666)
    assert _node(root / "dev/nvidia3") == (195, 3, 0o666)
    assert _node(root / "dev/nvidia-uvm") == (510, 0, 0o666)
    assert _node(root / "dev/nvidia-uvm-tools") == (510, 1, 0o666)
    assert not (root / "dev/nvidia1").exists()
    assert len([line for line in log.lines if line.startswith("created device node")]) == 5


@pytest.mark.root
def test_nothing_done_when_modules_are_loaded_and_nodes_present(tmp_path):
    root = _root(tmp_path)
    kmods.load_kernel_modules(DriverRoot(str(root)), [0])
    before = {p.name: os.lstat(p).st_ino for p in (root / "dev").iterdir()}
    log = Log()
    kmods.load_kernel_modules(DriverRoot(str(root)), [0], log)
    assert {p.name: os.lstat(p).st_ino for p in (root / "dev").iterdir()} == before
    assert log.lines == ["kernel modules loaded and device nodes present"]


@pytest.mark.root
def test_uvm_not_loaded_makes_only_frontend_nodes(tmp_path):
    root = _root(tmp_path, uvm=False)
    kmods.load_kernel_modules(DriverRoot(str(root)), [1])
    assert sorted(p.name for p in (root / "dev").iterdir()) == ["nvidia1", "nvidiactl"]


def test_no_proc_devices_no_nodes_no_error(tmp_path):
    kmods.load_kernel_modules(DriverRoot(str(tmp_path)), [0])
    assert not (tmp_path / "dev").exists()


def test_existing_file_is_left_alone(tmp_path):
    root = _root(tmp_path)
    (root / "dev").mkdir()
    (root / "dev/nvidiactl").write_text("not a node")
    os.symlink("/nonexistent", root / "dev/nvidia-uvm")
    if os.geteuid() != 0:
        pytest.skip("needs root (mknod)")
    kmods.load_kernel_modules(DriverRoot(str(root)), [])
    assert (root / "dev/nvidiactl").read_text() == "not a node"
    assert os.readlink(root / "dev/nvidia-uvm") == "/nonexistent"
    assert _node(root / "dev/nvidia-uvm-tools") == (510, 1, 0o666)


def test_host_root_runs_nvidia_modprobe_from_path(tmp_path, monkeypatch):
    if "nvidia" in Path("/proc/devices").read_text():
        pytest.skip("a GPU host: the real modules are loaded")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "args"
    script = bindir / "nvidia-modprobe"
    script.write_text(f"#!/bin/sh\necho \"$@\" > {record}\necho \"$PATH\" >> {record}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'empty'}:{bindir}:/usr/bin:/bin")
    monkeypatch.setenv("LD_PRELOAD", "/nonexistent.so")
    kmods.load_kernel_modules(DriverRoot("/"), [0, 2])
    args, path = record.read_text().splitlines()
    assert args == "-u -c=0 -c=0 -c=2"
    assert path == "/usr/sbin:/usr/bin:/sbin:/bin"  # a fixed PATH, not the caller's


@pytest.mark.parametrize("name", ["sh", "ls", "definitely-not-a-command-nvc", "python3"])
def test_which_matches_shutil(name):
    assert kmods._which(name) == shutil.which(name)


@pytest.mark.root
def test_node_ready_means_the_right_device_with_the_drivers_mode(tmp_path):
    node = tmp_path / "nvidia-uvm"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(510, 0))
    os.chmod(node, 0o666)
    assert kmods._node_ready(str(node), 510, 0, {})
    assert not kmods._node_ready(str(node), 511, 0, {})  # stale major after a module reload: nvidia-modprobe fixes it
    assert not kmods._node_ready(str(node), 510, 1, {})
    os.chmod(node, 0o600)
    assert not kmods._node_ready(str(node), 510, 0, {})  # default DeviceFileMode 0666
    assert kmods._node_ready(str(node), 510, 0, {"DeviceFileMode": "384"})  # 384 = 0o600
    assert kmods._node_ready(str(node), 510, 0, {"ModifyDeviceFiles": "0"})  # the driver leaves nodes alone
    assert not kmods._node_ready(str(node), 510, 0, {"DeviceFileUID": "1000"})
    os.symlink("nvidia-uvm", tmp_path / "link")
    assert kmods._node_ready(str(tmp_path / "link"), 510, 0, {"DeviceFileMode": "384"})  # followed, like modprobe
    os.symlink("/nonexistent", tmp_path / "dangling")
    assert not kmods._node_ready(str(tmp_path / "dangling"), 510, 0, {})
    (tmp_path / "file").write_text("")
    assert not kmods._node_ready(str(tmp_path / "file"), 510, 0, {})


@pytest.mark.root
def test_stale_node_is_not_taken_as_ready(tmp_path):
    root = _root(tmp_path)
    kmods.load_kernel_modules(DriverRoot(str(root)), [0])
    (root / "proc/devices").write_text(PROC_DEVICES.format(uvm="511 nvidia-uvm"))  # the module was reloaded
    log = Log()
    kmods.load_kernel_modules(DriverRoot(str(root)), [0], log)
    assert "kernel modules loaded and device nodes present" not in log.lines


def test_which_with_an_empty_path_finds_nothing(tmp_path, monkeypatch):
    (tmp_path / "nvidia-modprobe").write_text("#!/bin/sh\n")
    (tmp_path / "nvidia-modprobe").chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "")
    assert kmods._which("nvidia-modprobe") is None
    assert shutil.which("nvidia-modprobe") is None


def test_params_are_read_from_the_driver_root(tmp_path):
    (tmp_path / "proc/driver/nvidia").mkdir(parents=True)
    (tmp_path / "proc/driver/nvidia/params").write_text("ModifyDeviceFiles: 1\nDeviceFileMode: 438\nnot a pair\n")
    assert kmods._read_params(DriverRoot(str(tmp_path))) == {"ModifyDeviceFiles": "1", "DeviceFileMode": "438"}
    assert kmods._read_params(DriverRoot(str(tmp_path / "missing"))) == {}
