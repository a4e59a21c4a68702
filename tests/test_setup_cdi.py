"""``nvc setup containerd --cdi`` / ``nvc setup docker --cdi``: the written configuration, parsed back and compared
table by table (this machine's containerd 1.6 and dockerd 20.10 cannot run CDI, and are reported as unable)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from datetime import datetime
from pathlib import Path

import pytest

from nvc.commands.setup_cdi import (
    apply_containerd_cdi,
    apply_docker_cdi,
    containerd_cdi_schema,
    edit_containerd_cdi,
    edit_docker_cdi,
    installed_version,
    parse_version,
)
from nvc.errors import NvcError

REPO = Path(__file__).resolve().parent.parent
DIRS = ["/etc/cdi", "/var/run/cdi"]
CDI_17 = {"enable_cdi": True, "cdi_spec_dirs": DIRS}


@pytest.mark.parametrize(("text", "version"), [
    ("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3", (1, 6)),
    ("containerd containerd.io 1.7.27 05044ec0a9a75232cad458027ca83437aae3f4da", (1, 7)),
    ("containerd github.com/containerd/containerd/v2 v2.0.0 207ad711eabd375a01713109a8a197d197ff6542", (2, 0)),
    ("Docker version 20.10.24+dfsg1, build 5d6db84", (20, 10)),
    ("Docker version 27.3.1, build 41ca978", (27, 3)),
    ("1.7", (1, 7)),
    ("no version here", None),
])
def test_parse_version(text, version):
    assert parse_version(text) == version


def test_new_file_for_containerd_1_7():
    text = edit_containerd_cdi("", (1, 7))
    assert tomllib.loads(text) == {"version": 2, "plugins": {"io.containerd.grpc.v1.cri": CDI_17}}
    assert text == ('version = 2\n\n# CDI: the runtime reads GPU (and other) device specs itself, added by `nvc setup '
                    'containerd --cdi`\n[plugins."io.containerd.grpc.v1.cri"]\n  enable_cdi = true\n'
                    '  cdi_spec_dirs = ["/etc/cdi", "/var/run/cdi"]\n')


def test_new_file_for_containerd_2():
    text = edit_containerd_cdi("", (2, 1))
    assert tomllib.loads(text) == {"version": 3, "plugins": {"io.containerd.cri.v1.runtime": CDI_17}}


EXISTING = """\
# site config, keep me
version = 2
root = "/var/lib/containerd"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"
  enable_cdi = false  # turned off by someone

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
"""


def test_existing_table_is_edited_in_place_and_kept():
    text = edit_containerd_cdi(EXISTING, (1, 7))
    assert tomllib.loads(text) == {
        "version": 2, "root": "/var/lib/containerd",
        "plugins": {"io.containerd.grpc.v1.cri": {
            "sandbox_image": "registry.k8s.io/pause:3.9", **CDI_17,
            "containerd": {"runtimes": {"runc": {"runtime_type": "io.containerd.runc.v2"}}}}}}
    assert "# site config, keep me" in text and "enable_cdi = true  # turned off by someone" in text
    assert edit_containerd_cdi(text, (1, 7)) == text  # a second run changes nothing
    # containerd 2 migrates a version-2 file itself: the file keeps its schema
    assert tomllib.loads(edit_containerd_cdi(EXISTING, (2, 0)))["plugins"]["io.containerd.grpc.v1.cri"]["enable_cdi"]


def test_runtime_subtables_only_get_the_table_appended():
    base = ('version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]\n'
            '  runtime_type = "io.containerd.runc.v2"\n')
    text = edit_containerd_cdi(base, (1, 7))
    assert text.startswith(base)
    cri = tomllib.loads(text)["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["enable_cdi"] is True and cri["cdi_spec_dirs"] == DIRS
    assert cri["containerd"]["runtimes"]["nvidia"] == {"runtime_type": "io.containerd.runc.v2"}


def test_version_1_file_uses_the_short_plugin_name():
    text = edit_containerd_cdi('[plugins.cri]\n  sandbox_image = "x"\n', (1, 7))
    assert tomllib.loads(text) == {"plugins": {"cri": {"sandbox_image": "x", **CDI_17}}}


def test_containerd_without_cdi_is_refused():
    with pytest.raises(NvcError) as info:
        edit_containerd_cdi("", (1, 6))
    assert info.value.stage == "cdi" and info.value.message.startswith("containerd 1.6 has no CDI support")
    with pytest.raises(NvcError, match=r"version = 3, which containerd 1.7 cannot read"):
        containerd_cdi_schema((1, 7), 3)


def test_this_machines_containerd_is_reported_unable(tmp_path):
    if shutil.which("containerd") is None:
        pytest.skip("containerd not installed")
    version = installed_version("containerd")
    if version is None or version >= (1, 7):
        pytest.skip(f"this containerd ({version}) has CDI")
    config = tmp_path / "config.toml"
    with pytest.raises(NvcError, match=rf"containerd {version[0]}\.{version[1]} has no CDI support"):
        apply_containerd_cdi(str(config))
    assert not config.exists()


def test_apply_writes_backup_and_dry_run_writes_nothing(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(EXISTING)
    change = apply_containerd_cdi(str(config), "1.7", dry_run=True)
    assert change.changed and not change.written and config.read_text() == EXISTING
    assert ("-  enable_cdi = false  # turned off by someone\n"
            "+  enable_cdi = true  # turned off by someone") in change.diff
    change = apply_containerd_cdi(str(config), "1.7", now=datetime(2026, 1, 2, 3, 4, 5))
    assert change.written and Path(change.backup_path).read_text() == EXISTING
    assert change.backup_path == f"{config}.nvc-backup-20260102030405"
    assert tomllib.loads(config.read_text())["plugins"]["io.containerd.grpc.v1.cri"]["enable_cdi"] is True
    assert not apply_containerd_cdi(str(config), "1.7").changed


def test_host_image_needs_a_version(tmp_path):
    with pytest.raises(NvcError, match="give it with --containerd-version"):
        apply_containerd_cdi("/etc/containerd/config.toml", root=str(tmp_path))
    change = apply_containerd_cdi("/etc/containerd/config.toml", "2.0", root=str(tmp_path))
    assert tomllib.loads((tmp_path / "etc/containerd/config.toml").read_text())["version"] == 3
    assert change.path == str(tmp_path / "etc/containerd/config.toml")


# --- docker -----------------------------------------------------------------------------------------------------


def test_docker_features_cdi():
    assert json.loads(edit_docker_cdi("")) == {"features": {"cdi": True}}
    base = ('{\n  "runtimes": {"nvidia": {"path": "/usr/bin/nvidia-container-runtime"}},\n'
            '  "features": {"buildkit": true}\n}\n')
    text = edit_docker_cdi(base)
    assert json.loads(text) == {"runtimes": {"nvidia": {"path": "/usr/bin/nvidia-container-runtime"}},
                                "features": {"buildkit": True, "cdi": True}}
    assert text.splitlines()[1].startswith('  "runtimes"')  # indentation and key order kept
    assert edit_docker_cdi(text) == text
    with pytest.raises(NvcError, match='"features" is not a JSON object'):
        edit_docker_cdi('{"features": true}')


def test_this_machines_dockerd_is_reported_unable(tmp_path):
    version = installed_version("dockerd")
    if version is None or version >= (25, 0):
        pytest.skip(f"dockerd here: {version}")
    with pytest.raises(NvcError, match=rf"dockerd {version[0]}\.{version[1]} has no CDI support"):
        apply_docker_cdi(str(tmp_path / "daemon.json"))
    change = apply_docker_cdi(str(tmp_path / "daemon.json"), "25.0")
    assert change.written and json.loads((tmp_path / "daemon.json").read_text()) == {"features": {"cdi": True}}


# --- command line -----------------------------------------------------------------------------------------------


def nvc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nvc", *args], capture_output=True, text=True, check=False,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)


def test_cli(tmp_path):
    config = tmp_path / "config.toml"
    res = nvc("setup", "containerd", "--cdi", "--containerd-version", "1.7", "--config", str(config), "--dry-run")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"--- /dev/null\n+++ {config}\n") and not config.exists()
    res = nvc("setup", "containerd", "--cdi", "--containerd-version", "1.6", "--config", str(config))
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.startswith("nvc: cdi error: containerd 1.6 has no CDI support") and res.stderr.count("\n") == 1
    res = nvc("setup", "docker", "--cdi", "--docker-version", "26.1", "--config", str(tmp_path / "daemon.json"))
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"{tmp_path / 'daemon.json'}: updated (new file)\n"
