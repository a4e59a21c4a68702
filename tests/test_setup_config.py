"""``nvc setup``: what it writes is accepted by the real containerd, and files are edited in place, safely.

containerd itself is the judge of the containerd config: ``containerd --config FILE config dump`` loads the file
with containerd's own parser (and migrates version-1 files), and we look for our runtime table in what it prints.
Debian's containerd is 1.6, so version-3 (containerd 2.x) output is checked for shape only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from datetime import datetime
from pathlib import Path

import pytest

from nvc.commands.setup_config import (
    RUNSC_GPU_CONFIG,
    apply_containerd,
    apply_docker,
    containerd_config_version,
    containerd_runtime_config,
    docker_daemon_config,
    edit_containerd_config,
    edit_docker_daemon,
    edit_runsc_config,
    format_changes,
    render_runsc_config,
    runsc_gpu_config,
)
from nvc.errors import NvcError

SHIM = "/usr/bin/nvidia-container-runtime"
CRI = "io.containerd.grpc.v1.cri"
NOW = datetime(2026, 1, 2, 3, 4, 5)

# Debian 12's /etc/containerd/config.toml, as the containerd package installs it.
DEBIAN_DEFAULT = """version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
"""

# A hand-written config: comments everywhere, runc with SystemdCgroup, tables out of order.
HAND_WRITTEN = """# Managed by hand. Ask Ada before touching.
version = 2
root = "/var/lib/containerd"  # big disk

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"  # not zfs
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  # kubelet uses the systemd cgroup driver
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    SystemdCgroup = true

[debug]
  level = "info"  # debug is too chatty
"""

# The classic mistake, to be repaired in place.
RUNC_SHIM_RUNSC = """version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]
  runtime_type = "io.containerd.runc.v2"  # copied from a blog
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]
    BinaryName = "/usr/bin/runsc"
"""

VERSION_1 = """# containerd 1.x, no version line
[plugins.cri]
  sandbox_image = "registry.k8s.io/pause:3.9"
"""

VERSION_3 = """version = 3
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
"""

# The containerd table exists only implicitly, through its sub-tables.
IMPLICIT_PARENT = """version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
"""

BASES = {
    "empty": "",
    "debian": DEBIAN_DEFAULT,
    "hand": HAND_WRITTEN,
    "mistake": RUNC_SHIM_RUNSC,
    "v1": VERSION_1,
    "implicit": IMPLICIT_PARENT,
}


def _edit(text: str, runtime: str, **kwargs) -> str:
    return edit_containerd_config(text, runtime, shim_path=SHIM, **kwargs)


def _runtime(doc: dict, plugin: str = CRI, name: str = "nvidia") -> dict:
    return doc["plugins"][plugin]["containerd"]["runtimes"][name]


needs_containerd = pytest.mark.skipif(shutil.which("containerd") is None, reason="containerd not installed")


def containerd_dump(tmp_path: Path, text: str) -> dict:
    config = tmp_path / "config.toml"
    config.write_text(text)
    proc = subprocess.run(
        ["containerd", "--config", str(config), "config", "dump"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return tomllib.loads(proc.stdout)


# ---------------------------------------------------------------------------------------------------------------
# What is written


def test_runsc_runtime_table():
    table = containerd_runtime_config("runsc", "/etc/containerd/runsc-gpu.toml")
    assert table == {
        "keys": ("plugins", CRI, "containerd", "runtimes", "nvidia"),
        "runtime_type": "io.containerd.runsc.v1",
        "options": {"TypeUrl": "io.containerd.runsc.v1.options", "ConfigPath": "/etc/containerd/runsc-gpu.toml"},
    }


def test_runc_runtime_table_inherits_runc_options_but_not_its_binary():
    table = containerd_runtime_config(
        "runc", shim_path=SHIM, config_version=3, base_options={"SystemdCgroup": True, "BinaryName": "/usr/bin/runc"}
    )
    assert table["keys"] == ("plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes", "nvidia")
    assert table["runtime_type"] == "io.containerd.runc.v2"
    assert table["options"] == {"SystemdCgroup": True, "BinaryName": SHIM}


def test_unknown_runtime_is_refused():
    with pytest.raises(NvcError, match="unknown runtime 'kata'"):
        containerd_runtime_config("kata")


def test_runsc_gpu_toml_parses_and_holds_strings_only():
    text = render_runsc_config(runsc_gpu_config("/usr/bin/runsc"))
    doc = tomllib.loads(text)
    assert doc == {"binary_name": "/usr/bin/runsc", "runsc_config": {"nvproxy": "true", "nvproxy-docker": "true"}}
    debug = tomllib.loads(render_runsc_config(runsc_gpu_config("/usr/local/bin/runsc", debug=True)))
    assert debug["log_path"] == "/var/log/runsc/%ID%/shim.log"
    assert all(isinstance(v, str) for v in debug["runsc_config"].values())
    assert debug["runsc_config"]["debug-log"] == "/var/log/runsc/%ID%/gvisor.%COMMAND%.log"


def test_docker_fragments():
    assert docker_daemon_config("runsc", runsc_path="/usr/bin/runsc") == {
        "runtimes": {"nvidia": {"path": "/usr/bin/runsc", "runtimeArgs": ["--nvproxy", "--nvproxy-docker"]}}
    }
    assert docker_daemon_config("runc", "nv", shim_path=SHIM, set_default=True) == {
        "runtimes": {"nv": {"path": SHIM}},
        "default-runtime": "nv",
    }


def test_config_version_detection():
    assert containerd_config_version("") == 2
    assert containerd_config_version("# only a comment\n") == 2
    assert containerd_config_version(VERSION_1) == 1
    assert containerd_config_version(DEBIAN_DEFAULT) == 2
    assert containerd_config_version(VERSION_3) == 3
    with pytest.raises(NvcError, match="unsupported containerd config version 7"):
        containerd_config_version("version = 7\n")


# ---------------------------------------------------------------------------------------------------------------
# containerd accepts it


@needs_containerd
@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("runtime", ["runsc", "runc"])
def test_real_containerd_accepts_the_runtime(tmp_path, base, runtime):
    text = _edit(BASES[base], runtime, runsc_config_path="/etc/containerd/runsc-gpu.toml")
    dumped = _runtime(containerd_dump(tmp_path, text))  # version 1 is migrated to the version-2 table by containerd
    if runtime == "runsc":
        assert dumped["runtime_type"] == "io.containerd.runsc.v1"
        assert dumped["options"] == {
            "TypeUrl": "io.containerd.runsc.v1.options",
            "ConfigPath": "/etc/containerd/runsc-gpu.toml",
        }
    else:
        assert dumped["runtime_type"] == "io.containerd.runc.v2"
        assert dumped["options"]["BinaryName"] == SHIM
        if base == "hand":
            assert dumped["options"]["SystemdCgroup"] is True


@needs_containerd
def test_real_containerd_sees_the_default_runtime(tmp_path):
    for base in (DEBIAN_DEFAULT, HAND_WRITTEN, RUNC_SHIM_RUNSC, IMPLICIT_PARENT, ""):
        text = _edit(base, "runsc", set_default=True)
        assert containerd_dump(tmp_path, text)["plugins"][CRI]["containerd"]["default_runtime_name"] == "nvidia"
        assert _edit(text, "runsc", set_default=True) == text


def test_version_3_file_gets_the_containerd_2_table():
    text = _edit(VERSION_3, "runc")
    doc = tomllib.loads(text)
    assert _runtime(doc, "io.containerd.cri.v1.runtime")["options"] == {"BinaryName": SHIM}
    assert CRI not in doc["plugins"]


def test_version_1_file_gets_the_short_plugin_name():
    doc = tomllib.loads(_edit(VERSION_1, "runsc"))
    assert _runtime(doc, "cri")["runtime_type"] == "io.containerd.runsc.v1"
    assert doc["plugins"]["cri"]["sandbox_image"] == "registry.k8s.io/pause:3.9"


def test_version_2_tables_without_version_line_are_refused():
    text = DEBIAN_DEFAULT.replace("version = 2\n", "")
    with pytest.raises(NvcError, match="no `version = 2` line"):
        _edit(text, "runsc")


def test_empty_file_gets_a_version_line():
    text = _edit("", "runsc")
    assert text.startswith("version = 2\n")


# ---------------------------------------------------------------------------------------------------------------
# In-place editing


@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("runtime", ["runsc", "runc"])
def test_comments_kept_and_idempotent(base, runtime):
    text = BASES[base]
    once = _edit(text, runtime, set_default=True)
    assert _edit(once, runtime, set_default=True) == once
    for line in text.splitlines():
        comment = line.partition("#")[2].strip()
        if comment and "copied from a blog" not in comment:
            assert comment in once, comment
    kept = tomllib.loads(text)
    new = tomllib.loads(once)
    for key in kept:
        if key != "plugins":
            assert new[key] == kept[key]


def test_existing_lines_are_not_touched():
    once = _edit(HAND_WRITTEN, "runsc")
    assert once.startswith(HAND_WRITTEN.rstrip("\n"))  # only appended


def test_classic_mistake_is_repaired_in_place():
    fixed = _edit(RUNC_SHIM_RUNSC, "runsc")
    table = _runtime(tomllib.loads(fixed))
    assert table["runtime_type"] == "io.containerd.runsc.v1"
    assert table["options"] == {"TypeUrl": "io.containerd.runsc.v1.options", "ConfigPath": RUNSC_GPU_CONFIG}
    assert 'runtime_type = "io.containerd.runsc.v1"  # copied from a blog' in fixed
    assert "BinaryName" not in fixed


def test_switching_runsc_back_to_runc_drops_runsc_options():
    runsc = _edit(HAND_WRITTEN, "runsc")
    runc = _edit(runsc, "runc")
    table = _runtime(tomllib.loads(runc))
    assert table == {"runtime_type": "io.containerd.runc.v2", "options": {"SystemdCgroup": True, "BinaryName": SHIM}}


def test_edit_keeps_the_users_own_runc_options():
    text = _edit(HAND_WRITTEN, "runc")
    text = text.replace("  SystemdCgroup = true\n  BinaryName", "  SystemdCgroup = false\n  BinaryName")
    assert _edit(text, "runc") == text


def test_invalid_toml_is_refused():
    with pytest.raises(NvcError, match="not valid TOML"):
        _edit("version = 2\n[plugins\n", "runsc")


def test_runsc_config_edit_keeps_other_settings():
    text = '# mine\nbinary_name = "/usr/local/bin/runsc"\nlog_level = "debug"\n[runsc_config]\n  nvproxy = true\n'
    new = edit_runsc_config(text, runsc_gpu_config("/usr/bin/runsc"))
    doc = tomllib.loads(new)
    assert doc == {
        "binary_name": "/usr/bin/runsc",
        "log_level": "debug",
        "runsc_config": {"nvproxy": "true", "nvproxy-docker": "true"},
    }
    assert new.startswith("# mine\n")
    assert edit_runsc_config(new, runsc_gpu_config("/usr/bin/runsc")) == new
    only_top = edit_runsc_config('log_level = "debug"\n', runsc_gpu_config("/usr/bin/runsc"))
    assert tomllib.loads(only_top)["runsc_config"] == {"nvproxy": "true", "nvproxy-docker": "true"}


# ---------------------------------------------------------------------------------------------------------------
# Files: backup, atomic replace, mode/owner, dry run


def _containerd_files(tmp_path: Path) -> tuple[Path, Path]:
    config = tmp_path / "etc/containerd/config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(HAND_WRITTEN)
    config.chmod(0o600)
    return config, tmp_path / "etc/containerd/runsc-gpu.toml"


def test_apply_writes_backup_keeps_mode_and_is_idempotent(tmp_path):
    config, runsc = _containerd_files(tmp_path)
    changes = apply_containerd(runtime="runsc", runsc_path="/usr/bin/runsc", root=str(tmp_path), now=NOW)
    assert [c.path for c in changes] == [str(config), str(runsc)]
    assert all(c.written and c.changed for c in changes)
    backup = Path(f"{config}.nvc-backup-20260102030405")
    assert changes[0].backup_path == str(backup) and backup.read_text() == HAND_WRITTEN
    assert changes[1].backup_path is None  # a new file has nothing to back up
    assert config.stat().st_mode & 0o7777 == 0o600 and backup.stat().st_mode & 0o7777 == 0o600
    assert runsc.stat().st_mode & 0o7777 == 0o644
    assert tomllib.loads(config.read_text())["plugins"][CRI]["containerd"]["runtimes"]["nvidia"]
    assert tomllib.loads(runsc.read_text())["runsc_config"]["nvproxy"] == "true"
    assert not list(config.parent.glob(".*nvc-tmp"))

    again = apply_containerd(runtime="runsc", runsc_path="/usr/bin/runsc", root=str(tmp_path), now=NOW)
    assert not any(c.changed or c.written for c in again)
    assert all(c.diff == "" for c in again)
    assert sorted(p.name for p in config.parent.iterdir()) == [
        "config.toml",
        "config.toml.nvc-backup-20260102030405",
        "runsc-gpu.toml",
    ]
    assert "already configured" in format_changes(again)


def test_second_backup_in_the_same_second_does_not_overwrite(tmp_path):
    config, _ = _containerd_files(tmp_path)
    apply_containerd(runtime="runsc", runsc_path="/usr/bin/runsc", root=str(tmp_path), now=NOW)
    first = config.read_text()
    change = apply_containerd(runtime="runc", shim_path=SHIM, root=str(tmp_path), now=NOW)[0]
    assert change.backup_path == f"{config}.nvc-backup-20260102030405.1"
    assert Path(change.backup_path).read_text() == first


@pytest.mark.root
def test_owner_is_kept(tmp_path):
    config, _ = _containerd_files(tmp_path)
    os.chown(config, 1234, 4321)
    apply_containerd(runtime="runc", shim_path=SHIM, root=str(tmp_path), now=NOW)
    st = config.stat()
    assert (st.st_uid, st.st_gid) == (1234, 4321)
    backup = Path(f"{config}.nvc-backup-20260102030405").stat()
    assert (backup.st_uid, backup.st_gid) == (1234, 4321)


def test_symlinked_config_stays_a_symlink(tmp_path):
    config, _ = _containerd_files(tmp_path)
    real = tmp_path / "managed" / "containerd.toml"
    real.parent.mkdir()
    config.rename(real)
    config.symlink_to(real)
    apply_containerd(runtime="runc", shim_path=SHIM, root=str(tmp_path), now=NOW)
    assert config.is_symlink() and "nvidia-container-runtime" in real.read_text()


def test_dry_run_writes_nothing(tmp_path):
    config, runsc = _containerd_files(tmp_path)
    before = config.stat()
    changes = apply_containerd(runtime="runsc", runsc_path="/usr/bin/runsc", root=str(tmp_path), dry_run=True)
    assert config.read_text() == HAND_WRITTEN and config.stat().st_mtime_ns == before.st_mtime_ns
    assert not runsc.exists()
    assert sorted(p.name for p in config.parent.iterdir()) == ["config.toml"]
    assert not any(c.written for c in changes) and all(c.changed for c in changes)
    assert changes[0].new_text == _edit(HAND_WRITTEN, "runsc")
    assert f"--- {config}\n+++ {config}\n" in changes[0].diff
    assert '+  runtime_type = "io.containerd.runsc.v1"\n' in changes[0].diff
    assert changes[1].diff.startswith(f"--- /dev/null\n+++ {runsc}\n")
    assert format_changes(changes, dry_run=True) == changes[0].diff + changes[1].diff


def test_missing_config_is_created(tmp_path):
    changes = apply_containerd(runtime="runsc", runsc_path="/usr/bin/runsc", root=str(tmp_path), now=NOW)
    config = tmp_path / "etc/containerd/config.toml"
    assert changes[0].old_text is None and changes[0].backup_path is None
    assert config.stat().st_mode & 0o7777 == 0o644
    assert tomllib.loads(config.read_text())["version"] == 2


# ---------------------------------------------------------------------------------------------------------------
# Docker


DAEMON_JSON = """{
  "log-driver": "journald",
  "runtimes": {
    "runsc": {
      "path": "/usr/local/bin/runsc"
    },
    "nvidia": {
      "path": "/usr/bin/runsc",
      "runtimeArgs": ["--debug", "--nvproxy=false"]
    }
  },
  "data-root": "/srv/docker"
}
"""


def test_docker_edit_keeps_key_order_indent_and_other_args():
    new = edit_docker_daemon(DAEMON_JSON, "runsc", runsc_path="/usr/bin/runsc", set_default=True)
    data = json.loads(new)
    assert list(data) == ["log-driver", "runtimes", "data-root", "default-runtime"]
    assert list(data["runtimes"]) == ["runsc", "nvidia"]
    assert data["runtimes"]["nvidia"] == {
        "path": "/usr/bin/runsc",
        "runtimeArgs": ["--debug", "--nvproxy", "--nvproxy-docker"],
    }
    assert '\n  "log-driver"' in new
    assert edit_docker_daemon(new, "runsc", runsc_path="/usr/bin/runsc", set_default=True) == new


def test_docker_runc_entry_replaces_runsc_flags():
    new = edit_docker_daemon(DAEMON_JSON, "runc", shim_path=SHIM)
    assert json.loads(new)["runtimes"]["nvidia"] == {"path": SHIM}


def test_docker_unchanged_file_is_returned_verbatim():
    text = json.dumps({"runtimes": {"nvidia": {"path": SHIM}}})
    assert edit_docker_daemon(text, "runc", shim_path=SHIM) == text


def test_docker_invalid_json_is_refused():
    with pytest.raises(NvcError, match="not valid JSON"):
        edit_docker_daemon("{", "runc", shim_path=SHIM)
    with pytest.raises(NvcError, match="top level"):
        edit_docker_daemon("[]", "runc", shim_path=SHIM)


def test_apply_docker_files(tmp_path):
    daemon = tmp_path / "etc/docker/daemon.json"
    created = apply_docker(runtime="runc", shim_path=SHIM, root=str(tmp_path), now=NOW)
    assert created.written and created.old_text is None
    assert json.loads(daemon.read_text()) == {"runtimes": {"nvidia": {"path": SHIM}}}
    daemon.chmod(0o640)
    changed = apply_docker(runtime="runsc", runsc_path="/usr/bin/runsc", root=str(tmp_path), now=NOW)
    assert changed.backup_path == f"{daemon}.nvc-backup-20260102030405"
    assert daemon.stat().st_mode & 0o7777 == 0o640
    assert not apply_docker(runtime="runsc", runsc_path="/usr/bin/runsc", root=str(tmp_path)).written
    dry = apply_docker(runtime="runc", shim_path=SHIM, root=str(tmp_path), dry_run=True)
    assert dry.changed and not dry.written and '"--nvproxy"' in daemon.read_text()
