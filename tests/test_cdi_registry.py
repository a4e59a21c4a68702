"""Reading CDI spec directories: validation on read, conflicts between files, symlink refusal, name resolution.

Hand-made specs in temporary directories (real files: symlinks and modes must be real to be refused)."""

from __future__ import annotations

import json
import os

import pytest

from nvc.emit.cdi.registry import load_registry, load_spec_data
from nvc.emit.cdi.validation import SpecInvalid, validate_spec
from nvc.emit.cdi.versions import required_version, version_problem
from nvc.errors import NvcError


def gpu_spec(names=("0", "1", "all"), kind="nvidia.com/gpu", version="0.5.0", **extra) -> dict:
    spec = {
        "cdiVersion": version,
        "kind": kind,
        "devices": [{"name": n, "containerEdits": {"deviceNodes": [{"path": f"/dev/nvidia{n}"}]}} for n in names],
        "containerEdits": {"env": ["NVIDIA_VISIBLE_DEVICES=void"],
                           "deviceNodes": [{"path": "/dev/nvidiactl"}],
                           "mounts": [{"hostPath": "/usr/lib/libcuda.so.1", "containerPath": "/usr/lib/libcuda.so.1",
                                       "options": ["ro", "nosuid", "nodev", "bind"]}]},
    }
    spec.update(extra)
    return spec


def write(directory, name, spec) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(spec if isinstance(spec, str) else json.dumps(spec))
    return path


# --- versions ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "needed"), [
    (lambda s: s["devices"].__setitem__(0, {"name": "gpu0", "containerEdits": {"env": ["A=1"]}}), "0.5.0"),
    (lambda s: None, "0.5.0"),  # device names starting with a digit
    (lambda s: s["containerEdits"]["mounts"][0].__setitem__("type", "bind"), "0.5.0"),
    (lambda s: s.__setitem__("annotations", {"nvc/driver-version": "535.309.01"}), "0.6.0"),
    (lambda s: s.__setitem__("kind", "nvidia.com/gpu.mig"), "0.6.0"),
    (lambda s: s["containerEdits"].__setitem__("additionalGids", [44]), "0.7.0"),
    (lambda s: s["containerEdits"].__setitem__("intelRdt", {"closID": "x"}), "0.7.0"),
    (lambda s: s["containerEdits"].__setitem__("intelRdt", {"enableMonitoring": True}), "1.1.0"),
    (lambda s: s["containerEdits"].__setitem__("netDevices", [{"hostInterfaceName": "e", "name": "n"}]), "1.1.0"),
])
def test_required_version(change, needed):
    spec = gpu_spec()
    change(spec)
    assert required_version(spec) == needed


def test_required_version_floor_and_mount_type():
    spec = gpu_spec(names=("gpu0",))
    assert required_version(spec) == "0.3.0"
    spec["containerEdits"]["mounts"][0]["type"] = "bind"
    assert required_version(spec) == "0.4.0"
    spec["devices"][0]["containerEdits"]["deviceNodes"][0]["hostPath"] = "/dev/nvidia0"
    assert required_version(spec) == "0.5.0"


def test_version_problems():
    assert version_problem(gpu_spec()) is None
    assert version_problem(gpu_spec(version="v0.5.0")) is None
    assert version_problem(gpu_spec(version="1.1.0")) is None
    assert "too old" in version_problem(gpu_spec(version="0.4.0"))
    assert "at least 0.6.0" in version_problem(gpu_spec(version="0.5.0", annotations={"a": "b"}))
    assert "unknown cdiVersion" in version_problem(gpu_spec(version="0.9.0"))
    assert "too old" in version_problem(gpu_spec(names=("gpu0",), version="0.2.0"))  # every spec needs 0.3.0


# --- validation -------------------------------------------------------------------------------------------------


def _bad(mutate):
    spec = gpu_spec()
    mutate(spec)
    with pytest.raises(SpecInvalid) as info:
        validate_spec(spec)
    return str(info.value)


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda s: s.__setitem__("bogus", 1), "spec: unknown field 'bogus'"),
    (lambda s: s.__setitem__("kind", "nvidia.com"), "invalid kind"),
    (lambda s: s.__setitem__("kind", "1nvidia.com/gpu"), "invalid vendor"),
    (lambda s: s.__setitem__("devices", []), "no devices"),
    (lambda s: s["devices"].append(dict(s["devices"][0])), "two devices named '0'"),
    (lambda s: s["devices"][0].__setitem__("name", "-0"), "invalid device name '-0'"),
    (lambda s: s["devices"][0].__setitem__("name", 0), "expected a string, got a number"),
    (lambda s: s["devices"][0].__setitem__("containerEdits", {}), "device '0': no container edits"),
    (lambda s: s["containerEdits"].__setitem__("env", ["NOEQUALS"]), "invalid environment variable 'NOEQUALS'"),
    (lambda s: s["containerEdits"].__setitem__("env", ["=x"]), "invalid environment variable '=x'"),
    (lambda s: s["containerEdits"]["deviceNodes"][0].__setitem__("type", "x"), "invalid type 'x'"),
    (lambda s: s["containerEdits"]["deviceNodes"][0].__setitem__("major", -1), "out of range"),
    (lambda s: s["containerEdits"]["deviceNodes"][0].__setitem__("permissions", "rwx"), "invalid permissions"),
    (lambda s: s["containerEdits"]["deviceNodes"][0].__setitem__("path", ""), "empty path"),
    (lambda s: s["containerEdits"]["mounts"][0].pop("hostPath"), "missing hostPath"),
    (lambda s: s["containerEdits"]["mounts"][0].__setitem__("options", "ro"), "expected a list of strings"),
    (lambda s: s["containerEdits"].__setitem__("hooks", [{"hookName": "preStart", "path": "/x"}]),
     "invalid hook name 'preStart'"),
    (lambda s: s["containerEdits"].__setitem__("hooks", [{"hookName": "prestart"}]), "missing path"),
    (lambda s: s["containerEdits"].__setitem__("additionalGids", [-1]), "additionalGids"),
    (lambda s: s["containerEdits"].__setitem__("HostPath", "x"), "unknown field 'HostPath'"),
    (lambda s: s.__setitem__("annotations", {"bad key!": "x"}), "invalid annotation key"),
    (lambda s: s.__setitem__("cdiVersion", "0.4.0"), "too old for the fields it uses"),
])
def test_invalid_specs_are_refused(mutate, message):
    assert message in _bad(mutate)


def test_valid_spec_is_accepted():
    assert validate_spec(gpu_spec()) == ("nvidia.com", "gpu", ["0", "1", "all"])
    spec = gpu_spec(version="0.6.0", annotations={"nvc/driver-version": "535.309.01"})
    spec["containerEdits"]["hooks"] = [{"hookName": "createContainer", "path": "/usr/bin/nvc-cdi-hook",
                                        "args": ["nvc-cdi-hook", "x"], "env": ["A=b"], "timeout": 5}]
    spec["containerEdits"]["deviceNodes"][0].update(type="c", major=195, minor=255, permissions="rw",
                                                    fileMode=0o666, uid=0, gid=0, hostPath="/dev/nvidiactl")
    assert validate_spec(spec)[2] == ["0", "1", "all"]


# --- directories ------------------------------------------------------------------------------------------------


def test_names_from_json_and_yaml(tmp_path):
    pytest.importorskip("yaml")
    etc, run = tmp_path / "etc", tmp_path / "run"
    write(etc, "nvidia.json", gpu_spec())
    write(run, "other.yaml", "cdiVersion: 0.5.0\nkind: vendor.example/fpga\ndevices:\n"
          "- name: '0'\n  containerEdits:\n    deviceNodes:\n    - path: /dev/fpga0\n")
    write(etc, "README.txt", "not a spec")
    (etc / "sub.json").mkdir()  # subdirectories are skipped, even with a spec's name
    registry = load_registry([str(etc), str(run), str(tmp_path / "missing")])
    assert registry.names() == ["nvidia.com/gpu=0", "nvidia.com/gpu=1", "nvidia.com/gpu=all",
                                "vendor.example/fpga=0"]
    assert registry.problems == [] and registry.conflicts == []


def test_yaml_unquoted_number_name_is_refused_as_go_does(tmp_path):
    pytest.importorskip("yaml")
    write(tmp_path, "x.yaml", "cdiVersion: 0.5.0\nkind: a.com/b\ndevices:\n- name: 0\n"
          "  containerEdits:\n    env: [A=1]\n")
    registry = load_registry([str(tmp_path)])
    assert registry.names() == []
    assert "expected a string, got a number" in str(registry.problems[0])


def test_resolve_applies_common_edits_once_in_order(tmp_path):
    write(tmp_path, "nvidia.json", gpu_spec())
    registry = load_registry([str(tmp_path)])
    edits = registry.resolve(["nvidia.com/gpu=1", "nvidia.com/gpu=0"])
    assert [e.get("deviceNodes", [{}])[0].get("path") for e in edits] == ["/dev/nvidiactl", "/dev/nvidia1",
                                                                          "/dev/nvidia0"]


def test_unknown_device_names_the_known_ones(tmp_path):
    write(tmp_path, "nvidia.json", gpu_spec())
    registry = load_registry([str(tmp_path)])
    with pytest.raises(NvcError) as info:
        registry.resolve(["nvidia.com/gpu=0", "nvidia.com/gpu=7", "other.com/x=1"])
    assert info.value.stage == "cdi"
    assert str(info.value) == ("cdi error: unresolvable CDI devices nvidia.com/gpu=7, other.com/x=1 (this host's "
                               "specs define nvidia.com/gpu=0, nvidia.com/gpu=1, nvidia.com/gpu=all)")
    empty = load_registry([str(tmp_path / "none")])
    with pytest.raises(NvcError, match=r"no CDI spec in .*none: generate one with `nvc cdi generate`"):
        empty.resolve(["nvidia.com/gpu=0"])


def test_same_directory_conflict_makes_the_name_unusable(tmp_path):
    a = write(tmp_path, "a.json", gpu_spec(names=("0", "1")))
    b = write(tmp_path, "b.json", gpu_spec(names=("1", "2")))
    registry = load_registry([str(tmp_path)])
    assert registry.names() == ["nvidia.com/gpu=0", "nvidia.com/gpu=2"]
    [conflict] = registry.conflicts
    assert conflict.duplicate and conflict.name == "nvidia.com/gpu=1"
    with pytest.raises(NvcError) as info:
        registry.resolve(["nvidia.com/gpu=1"])
    assert str(info.value) == (f"cdi error: unresolvable CDI devices nvidia.com/gpu=1: nvidia.com/gpu=1 is defined "
                               f"by both {a} and {b}, so by neither")


def test_later_directory_overrides_earlier(tmp_path):
    etc, run = tmp_path / "etc", tmp_path / "run"
    old = write(etc, "nvidia.json", gpu_spec(names=("0",)))
    new_spec = gpu_spec(names=("0",))
    new_spec["devices"][0]["containerEdits"]["deviceNodes"][0]["path"] = "/dev/nvidia9"
    new = write(run, "nvidia.json", new_spec)
    registry = load_registry([str(etc), str(run)])
    [conflict] = registry.conflicts
    assert not conflict.duplicate and (conflict.winner, conflict.loser) == (new, old)
    assert registry.resolve(["nvidia.com/gpu=0"])[-1]["deviceNodes"][0]["path"] == "/dev/nvidia9"


def test_invalid_file_is_reported_and_others_still_count(tmp_path):
    write(tmp_path, "a.json", gpu_spec(names=("0",)))
    bad = write(tmp_path, "b.json", "{not json")
    old = write(tmp_path, "c.json", gpu_spec(names=("5",), version="0.3.0"))
    registry = load_registry([str(tmp_path)])
    assert registry.names() == ["nvidia.com/gpu=0"]
    assert [p.path for p in registry.problems] == [bad, old]
    assert registry.problems[0].message.startswith("not valid JSON")
    assert "cdiVersion 0.3.0 is too old" in registry.problems[1].message
    with pytest.raises(NvcError, match=r"gpu=5 .*; 2 spec location\(s\) unusable, first: .*b.json: not valid JSON"):
        registry.resolve(["nvidia.com/gpu=5"])


def test_symlinked_spec_dir_is_refused(tmp_path):
    real = tmp_path / "real"
    write(real, "nvidia.json", gpu_spec())
    link = tmp_path / "cdi"
    link.symlink_to(real)
    registry = load_registry([str(link)])
    assert registry.names() == []
    [problem] = registry.problems
    assert problem.path == str(link) and "the spec directory is a symlink; refusing it" in problem.message
    assert not problem.unsafe  # the Go walk does not follow it either


def test_symlinked_spec_file_is_refused(tmp_path):
    outside = write(tmp_path / "user-writable", "evil.json", gpu_spec(names=("9",)))
    cdi = tmp_path / "cdi"
    write(cdi, "nvidia.json", gpu_spec(names=("0",)))
    (cdi / "evil.json").symlink_to(outside)
    (cdi / "dangling.yaml").symlink_to(tmp_path / "nowhere")
    registry = load_registry([str(cdi)])
    assert registry.names() == ["nvidia.com/gpu=0"]
    assert sorted(os.path.basename(p.path) for p in registry.problems) == ["dangling.yaml", "evil.json"]
    assert all("a symlink; spec files are never followed" in p.message and p.unsafe for p in registry.problems)


def test_world_writable_dir_and_file_are_refused(tmp_path):
    cdi = tmp_path / "cdi"
    path = write(cdi, "nvidia.json", gpu_spec())
    os.chmod(path, 0o666)
    registry = load_registry([str(cdi)])
    assert registry.names() == [] and "writable by every user" in registry.problems[0].message
    assert registry.problems[0].unsafe
    os.chmod(path, 0o644)
    os.chmod(cdi, 0o777)
    registry = load_registry([str(cdi)])
    assert registry.names() == [] and registry.problems[0].path == str(cdi)


def test_fifo_is_not_read(tmp_path):
    cdi = tmp_path / "cdi"
    cdi.mkdir()
    os.mkfifo(cdi / "pipe.json")
    registry = load_registry([str(cdi)])  # must not hang
    assert registry.problems[0].message == "not a regular file"


def test_load_spec_data_keeps_file_order():
    spec = load_spec_data(gpu_spec(names=("b", "a")), "/etc/cdi/x.json", 1)
    assert list(spec.devices) == ["b", "a"] and spec.qualified_names() == ["nvidia.com/gpu=b", "nvidia.com/gpu=a"]
    assert spec.edits["env"] == ["NVIDIA_VISIBLE_DEVICES=void"] and spec.priority == 1
