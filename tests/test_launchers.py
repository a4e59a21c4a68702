"""The installed fast launchers (scripts/launchers): sh/Python polyglots that start the interpreter of the `nvc`
console script with -I -S and find nvc without site for a normal install, falling back to site (editable installs)
and to a plain start (PYTHONPATH set-ups such as fixtures/tools.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAUNCHERS = {"nvidia-container-cli": "nvc.commands.cli_main", "nvidia-container-runtime-hook": "nvc.commands.hook",
             "nvidia-container-runtime": "nvc.commands.runtime_shim", "nvidia-cdi-hook": "nvc.commands.cdi_hook",
             "nvc-hook-helper": "nvc.commands.hook_helper"}


def test_launchers_are_one_template_and_packaged():
    template = (REPO / "scripts/launchers/nvidia-container-cli").read_text()
    for name, module in LAUNCHERS.items():
        path = REPO / "scripts/launchers" / name
        text = path.read_text()
        if name == "nvidia-container-runtime":  # the template plus the shim's sh fast path (test_shim_fastpath.py)
            head, begin, rest = text.partition("# --- begin runtime shim fast path ---\n")
            _block, end, tail = rest.partition("# --- end runtime shim fast path ---\n")
            assert begin and end
            text = head + tail
        fast = '"nvc.prefilter:hook_launcher_skips"' if module == "nvc.commands.hook" else "None"
        helper = {"nvc.commands.hook": '"nvc.helper_probe:try_helper"',
                  "nvc.commands.cli_main": '"nvc.helper_probe:try_helper_cli"'}.get(module, "None")
        client_tool = {"nvc.commands.hook": "hook", "nvc.commands.cli_main": "cli"}.get(module, "")
        assert text == template.replace("client_tool=cli ", f"client_tool={client_tool} ").replace(
            'MODULE = "nvc.commands.cli_main"', f'MODULE = "{module}"').replace(
            "FAST = None", f"FAST = {fast}").replace('HELPER = "nvc.helper_probe:try_helper_cli"',
                                                     f"HELPER = {helper}"), name
        assert text.startswith("#!/bin/sh\n")  # pip rewrites only #!python, and drops what follows it
        assert os.access(path, os.X_OK)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            compile(text, name, "exec")
        assert callable(__import__(module, fromlist=["main"]).main)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert sorted(project["tool"]["setuptools"]["script-files"]) == sorted(f"scripts/launchers/{n}" for n in LAUNCHERS)
    assert set(project["project"]["scripts"]) == {"nvc"}


def _fake_bin(bindir: Path, interpreter: str = sys.executable) -> Path:
    """A scripts directory as pip leaves it: the `nvc` console script (its shebang names the interpreter) and the
    launcher, copied as is."""
    bindir.mkdir(parents=True)
    (bindir / "nvc").write_text(f"#!{interpreter}\nimport sys\nfrom nvc.commands.cli_main import main\n"
                                "sys.exit(main())\n")
    (bindir / "nvc").chmod(0o755)
    shutil.copy2(REPO / "scripts/launchers/nvidia-container-cli", bindir / "nvidia-container-cli")
    return bindir / "nvidia-container-cli"


def _run(cmd, env_extra=None):
    env = {"PATH": os.environ["PATH"], "NVC_LAUNCHER_TRACE": "1", **(env_extra or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=60)


def test_launcher_falls_back_when_nvc_is_only_on_pythonpath(tmp_path):
    # The base interpreter, not a venv that may have nvc installed (CI's has it, editable): there nvc is found
    # only through PYTHONPATH.
    base = getattr(sys, "_base_executable", sys.executable)
    probe = subprocess.run([base, "-c", "import nvc"], cwd="/", env={"PATH": os.environ["PATH"]},
                           capture_output=True, check=False)
    if probe.returncode == 0:
        pytest.skip(f"nvc is installed for {base}: no interpreter without it to test the fallback with")
    launcher = _fake_bin(tmp_path / "bin", base)
    res = _run([str(launcher), "--version"], {"PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("cli-version: ")
    # first the isolated attempt, then the plain start that honours PYTHONPATH
    assert "isolated=1 no_site=1" in res.stderr and "isolated=0 no_site=0" in res.stderr


def test_launcher_through_a_symlink_elsewhere(tmp_path):
    launcher = _fake_bin(tmp_path / "venv/bin")
    (tmp_path / "usr/local/bin").mkdir(parents=True)
    link = tmp_path / "usr/local/bin/nvidia-container-cli"
    link.symlink_to(launcher)
    res = _run([str(link), "configure", "--pid=1", "/"], {"PYTHONPATH": str(REPO)})
    assert res.returncode == 1
    assert res.stderr.endswith("nvidia-container-cli: input error: invalid rootfs directory\n")
    assert "isolated=1" in res.stderr  # the shebang of venv/bin/nvc was found through the link


@pytest.mark.slow
def test_normal_install_runs_isolated_without_site(tmp_path):
    """pip install of a wheel into a fresh venv: the launchers start with -I -S and still find nvc."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(REPO), "-w", str(wheels)],
                   check=True, capture_output=True, timeout=300)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    wheel = next(wheels.glob("nvc-*.whl"))
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    for name in LAUNCHERS:
        assert (venv / "bin" / name).read_text().startswith("#!/bin/sh\n")
    res = _run([str(venv / "bin/nvidia-container-cli"), "--version"], {"PYTHONPATH": "/nonexistent"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("cli-version: ")
    assert res.stderr == "nvc-launcher: isolated=1 no_site=1 site=False\n"
    res = _run([str(venv / "bin/nvidia-container-cli"), "--load-kmods", "configure", "--pid=1", "/"])
    assert res.stderr.endswith("nvidia-container-cli: input error: invalid rootfs directory\n")
    assert "site=False" in res.stderr
    res = _run([str(venv / "bin/nvidia-container-runtime-hook"), "poststart"])
    assert "isolated=1 no_site=1" in res.stderr


def test_the_fixture_wrappers_and_benches_read_the_same_entry_points_as_the_launchers():
    """fixtures/tools.py's wrappers import TOOLS; a bench's --compare reads an older checkout's modules from its
    launchers and pyproject (launcher_modules, console_entry): here, all of them name the same, existing mains."""
    import importlib

    from fixtures.tools import TOOLS, console_entry, launcher_modules

    # Every launcher but the hook helper's, a service the wrappers' runtimes never call (tests start it themselves).
    assert launcher_modules(REPO) == TOOLS == {k: v for k, v in LAUNCHERS.items() if k != "nvc-hook-helper"}
    module, function = console_entry(REPO)
    assert (module, function) == ("nvc.commands.cli_main", "main")
    for name in (*TOOLS.values(), module):
        assert callable(importlib.import_module(name).main), name
