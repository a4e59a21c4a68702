"""The systemd unit pair in hooks/ that keeps the CDI spec true: systemd's own verifier accepts both files, and
the service's ExecStart, run as written (in a private mount namespace whose /run is a fresh tmpfs, as at boot),
writes a spec podman can read."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fixtures.systemd_units import stand_in_binary, verify_units

REPO = Path(__file__).resolve().parent.parent
SERVICE = REPO / "hooks/nvc-cdi-refresh.service"
PATH_UNIT = REPO / "hooks/nvc-cdi-refresh.path"


def _unit(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def test_systemd_analyze_verify_accepts_the_pair(tmp_path):
    # the ExecStart binary must exist for verify: a stand-in at the same kind of path
    nvc = stand_in_binary(tmp_path / "bin/nvc")
    units = tmp_path / "units"
    units.mkdir()
    (units / SERVICE.name).write_text(SERVICE.read_text().replace("/usr/local/bin/nvc", str(nvc)))
    shutil.copy(PATH_UNIT, units / PATH_UNIT.name)
    res = verify_units(units, SERVICE.name, PATH_UNIT.name)
    if res is None:
        pytest.skip("systemd-analyze not installed")
    assert res.returncode == 0, res.stderr
    assert res.stdout + res.stderr == ""  # not even a warning (an unknown key only warns)
    # ...and the verifier does catch a broken unit: the check can fail.
    (units / "broken.path").write_text("[Path]\nPathChanged=relative/path\nUnit=nvc-cdi-refresh.service\n")
    res = verify_units(units, "broken.path")
    assert "relative/path" in res.stderr


def test_the_path_unit_starts_the_service_and_watches_absolute_files():
    path_unit = _unit(PATH_UNIT)
    assert path_unit.get("Path", "Unit") == SERVICE.name
    watched = [line.split("=", 1)[1] for line in PATH_UNIT.read_text().splitlines()
               if line.startswith("PathChanged=")]
    assert watched == ["/etc/ld.so.cache", "/usr/bin/nvidia-smi"]
    service = _unit(SERVICE)
    assert service.get("Service", "Type") == "oneshot"
    assert service.get("Install", "WantedBy") == "multi-user.target"


@pytest.mark.root
def test_exec_start_writes_the_spec(tmp_path, host, tools):
    """The ExecStart line as written (only the binary swapped for this checkout's CLI), on the fake GPU host."""
    _, env = tools
    command = shlex.split(_unit(SERVICE).get("Service", "ExecStart"))
    assert command[0] == "/usr/local/bin/nvc"
    output = command[command.index("--output") + 1]
    assert output == "/var/run/cdi/nvidia.yaml"
    argv = [sys.executable, "-m", "nvc", *command[1:]]
    host_spec_before = os.path.lexists(output)
    script = ('mount -t tmpfs -o mode=755 nvc-run /run && mkdir -m 0755 /run/cdi && "$@" && '
              f'cat {output} && stat -c %a {output}')  # fmt: skip
    res = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *argv],
                         env={**os.environ, **env, "PYTHONPATH": str(REPO)}, cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.endswith("\n644\n")  # the file's mode
    spec = yaml.safe_load(res.stdout[: -len("644\n")])
    assert spec["kind"] == "nvidia.com/gpu" and spec["cdiVersion"] == "0.5.0"  # what podman 4.3 reads
    hook_args = spec["containerEdits"]["hooks"][0]["args"]
    assert hook_args[hook_args.index("--host-driver-version") + 1] == "535.309.01"
    assert os.path.lexists(output) == host_spec_before  # the host's /run was not touched
