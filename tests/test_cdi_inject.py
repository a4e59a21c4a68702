"""Applying CDI container edits to an OCI spec: the CDI Go package's merge rules, on plain dicts."""

from __future__ import annotations

import os

import pytest

from nvc.emit.cdi.inject import apply_cdi_edits, host_device_info, merge_edits
from nvc.errors import NvcError

NODES = {"/dev/nvidia0": ("c", 195, 0), "/dev/nvidiactl": ("c", 195, 255), "/dev/sda": ("b", 8, 0),
         "/host/dev/nvidia1": ("c", 195, 1)}


def fake_info(path):
    if path not in NODES:
        raise FileNotFoundError(2, "No such file or directory", path)
    return NODES[path]


def base_spec() -> dict:
    return {
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=0", "A=old"]},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
                   {"destination": "/dev/pts", "type": "devpts", "source": "devpts"},
                   {"destination": "/sys", "type": "sysfs", "source": "sysfs"},
                   {"destination": "/usr/lib/libcuda.so.1", "type": "bind", "source": "/old"}],
        "linux": {"devices": [{"path": "/dev/nvidia0", "type": "c", "major": 1, "minor": 1}],
                  "resources": {"devices": [{"allow": False, "access": "rwm"}]}},
    }


def test_env_replaces_last_entry_of_a_name_or_appends():
    spec = base_spec()
    spec["process"]["env"].append("A=second")
    out = apply_cdi_edits(spec, [{"env": ["A=new", "NVIDIA_VISIBLE_DEVICES=void"]}, {"env": ["B=1"]}], fake_info)
    assert out["process"]["env"] == ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=void", "A=old", "A=new", "B=1"]
    assert spec["process"]["env"][-1] == "A=second"  # input untouched


def test_device_nodes_filled_from_host_and_cgroup_rules():
    out = apply_cdi_edits(base_spec(), [
        {"deviceNodes": [{"path": "/dev/nvidiactl"}, {"path": "/dev/nvidia0", "permissions": "rw"}]},
        {"deviceNodes": [{"path": "/dev/nvidia1", "hostPath": "/host/dev/nvidia1", "fileMode": 0o666},
                         {"path": "/dev/sda", "type": "b", "major": 8, "minor": 0, "permissions": "none"}]},
    ], fake_info)
    assert out["linux"]["devices"] == [
        {"path": "/dev/nvidiactl", "type": "c", "major": 195, "minor": 255},
        {"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0},  # replaced the old 1:1 entry
        {"path": "/dev/nvidia1", "type": "c", "major": 195, "minor": 1, "fileMode": 0o666},
        {"path": "/dev/sda", "type": "b", "major": 8, "minor": 0},
    ]
    assert out["linux"]["resources"]["devices"] == [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 195, "minor": 255, "access": "rwm"},
        {"allow": True, "type": "c", "major": 195, "minor": 0, "access": "rw"},
        {"allow": True, "type": "c", "major": 195, "minor": 1, "access": "rwm"},
        {"allow": True, "type": "b", "major": 8, "minor": 0},
    ]


def test_device_owner_follows_a_non_root_process():
    spec = base_spec()
    spec["process"]["user"] = {"uid": 1000, "gid": 100}
    out = apply_cdi_edits(spec, [{"deviceNodes": [{"path": "/dev/nvidiactl"}, {"path": "/dev/nvidia0", "uid": 0}]}],
                          fake_info)
    assert [(d.get("uid"), d.get("gid")) for d in out["linux"]["devices"]] == [(1000, 100), (0, 100)]


def test_missing_or_mismatched_host_node_is_an_error():
    with pytest.raises(NvcError) as info:
        apply_cdi_edits(base_spec(), [{"deviceNodes": [{"path": "/dev/nvidia7"}]}], fake_info)
    assert str(info.value) == "cdi error: failed to stat CDI host device /dev/nvidia7: no such file or directory"
    with pytest.raises(NvcError, match=r"host type mismatch \(b, c\)"):
        apply_cdi_edits(base_spec(), [{"deviceNodes": [{"path": "/dev/nvidia0", "type": "b"}]}], fake_info)


def test_given_numbers_skip_the_host_lookup():
    out = apply_cdi_edits(base_spec(), [{"deviceNodes": [{"path": "/dev/x", "type": "c", "major": 10, "minor": 1}]}],
                          fake_info)
    assert out["linux"]["devices"][-1] == {"path": "/dev/x", "type": "c", "major": 10, "minor": 1}


def test_mounts_replace_same_destination_then_sort_by_depth():
    out = apply_cdi_edits(base_spec(), [{"mounts": [
        {"hostPath": "/drv/libcuda.so.1", "containerPath": "/usr/lib/libcuda.so.1", "options": ["ro", "bind"]},
        {"hostPath": "/drv/nvidia-smi", "containerPath": "/usr/bin/nvidia-smi", "type": "bind"},
    ]}], fake_info)
    assert [(m["destination"], m["source"]) for m in out["mounts"]] == [
        ("/proc", "proc"), ("/dev", "tmpfs"), ("/sys", "sysfs"), ("/dev/pts", "devpts"),
        ("/usr/lib/libcuda.so.1", "/drv/libcuda.so.1"), ("/usr/bin/nvidia-smi", "/drv/nvidia-smi")]
    assert out["mounts"][-1] == {"destination": "/usr/bin/nvidia-smi", "type": "bind", "source": "/drv/nvidia-smi"}
    assert out["mounts"][-2]["options"] == ["ro", "bind"] and "type" not in out["mounts"][-2]


def test_hooks_gids_rdt_net_devices():
    spec = base_spec()
    spec["hooks"] = {"prestart": [{"path": "/usr/bin/other"}]}
    spec["process"]["user"]["additionalGids"] = [44]
    out = apply_cdi_edits(spec, [
        {"hooks": [{"hookName": "createContainer", "path": "/usr/bin/nvc", "args": ["nvc", "cdi-hook"], "timeout": 10},
                   {"hookName": "prestart", "path": "/usr/bin/x", "env": ["A=1"]}],
         "additionalGids": [0, 44, 45], "intelRdt": {"closID": "a"}},
        {"netDevices": [{"hostInterfaceName": "eth1", "name": "net0"}], "intelRdt": {"closID": "b"}},
    ], fake_info)
    assert out["hooks"] == {"prestart": [{"path": "/usr/bin/other"}, {"path": "/usr/bin/x", "env": ["A=1"]}],
                            "createContainer": [{"path": "/usr/bin/nvc", "args": ["nvc", "cdi-hook"], "timeout": 10}]}
    assert out["process"]["user"]["additionalGids"] == [44, 45]
    assert out["linux"]["intelRdt"] == {"closID": "b"}
    assert out["linux"]["netDevices"] == {"eth1": {"name": "net0"}}


def test_applying_twice_is_applying_once_for_devices_and_mounts():
    edits = [{"deviceNodes": [{"path": "/dev/nvidia0"}],
              "mounts": [{"hostPath": "/a", "containerPath": "/usr/lib/a"}]}]
    once = apply_cdi_edits(base_spec(), edits, fake_info)
    twice = apply_cdi_edits(once, edits, fake_info)
    assert twice["linux"]["devices"] == once["linux"]["devices"] and twice["mounts"] == once["mounts"]


def test_merge_edits_concatenates():
    assert merge_edits([{"env": ["A=1"]}, {"env": ["B=2"], "mounts": [1]}]) == {
        "env": ["A=1", "B=2"], "deviceNodes": [], "netDevices": [], "hooks": [], "mounts": [1], "additionalGids": []}


def test_host_device_info_reads_real_nodes(tmp_path):
    assert host_device_info("/dev/null") == ("c", 1, 3)
    os.mkfifo(tmp_path / "fifo")
    assert host_device_info(str(tmp_path / "fifo"))[0] == "p"
    (tmp_path / "link").symlink_to("/dev/null")
    with pytest.raises(ValueError, match="not a device node"):
        host_device_info(str(tmp_path / "link"))
