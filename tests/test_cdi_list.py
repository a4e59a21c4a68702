"""``nvc cdi list``: the qualified names in the spec directories, problems as one-line errors on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.test_cdi_registry import gpu_spec, write

REPO = Path(__file__).resolve().parent.parent


def nvc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nvc", *args], capture_output=True, text=True, check=False,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)


def test_list_prints_names_one_per_line(tmp_path):
    etc, run = tmp_path / "etc", tmp_path / "run"
    write(etc, "nvidia.json", gpu_spec(names=("0", "GPU-4a1d6c2e", "all")))
    write(run, "fpga.json", gpu_spec(names=("x",), kind="vendor.example/fpga"))
    res = nvc("cdi", "list", "--spec-dir", str(etc), "--spec-dir", str(run))
    assert res.returncode == 0, res.stderr
    assert res.stdout == "nvidia.com/gpu=0\nnvidia.com/gpu=GPU-4a1d6c2e\nnvidia.com/gpu=all\nvendor.example/fpga=x\n"
    assert res.stderr == ""


def test_list_json(tmp_path):
    spec = write(tmp_path, "nvidia.json", gpu_spec(names=("0",)))
    res = nvc("cdi", "list", "--spec-dir", str(tmp_path), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"spec_dirs": [str(tmp_path)], "devices": [{"name": "nvidia.com/gpu=0",
                                      "spec": spec}], "problems": [], "conflicts": []}


def test_list_reports_problems_and_fails(tmp_path):
    a = write(tmp_path, "a.json", gpu_spec(names=("0", "1")))
    b = write(tmp_path, "b.json", gpu_spec(names=("1",)))
    bad = write(tmp_path, "c.json", gpu_spec(names=("2",), version="0.3.0"))
    link = tmp_path.parent / f"{tmp_path.name}-link"
    link.symlink_to(tmp_path)
    res = nvc("cdi", "list", "--spec-dir", str(tmp_path), "--spec-dir", str(link))
    assert res.returncode == 1
    assert res.stdout == "nvidia.com/gpu=0\n"
    assert res.stderr.splitlines() == [
        f"nvc: cdi error: {bad}: invalid CDI spec: cdiVersion 0.3.0 is too old for the fields it uses: they need at "
        "least 0.5.0",
        f"nvc: cdi error: {link}: the spec directory is a symlink; refusing it: whoever controls where it points would "
        "decide which host files, devices and hooks CDI containers get. Make it a real directory",
        f"nvc: cdi error: nvidia.com/gpu=1 is defined by both {a} and {b}, so by neither",
    ]


def test_list_without_specs_prints_nothing(tmp_path):
    res = nvc("cdi", "list", "--spec-dir", str(tmp_path / "absent"))
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
