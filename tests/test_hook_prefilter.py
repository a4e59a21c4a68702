"""The hook's pre-filter (nvc/prefilter.py): a container whose config.json carries no GPU marker is left alone
without loading config.toml or NVIDIA's rules — but only while the memo the full path wrote still matches
config.toml, and never when a debug log or -debug asks to see every container."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nvc import prefilter

REPO = Path(__file__).resolve().parent.parent
LAUNCHER = REPO / "scripts/launchers/nvidia-container-runtime-hook"
# The launcher's Python part, run by this interpreter with nvc on sys.path; it says which way the hook went.
PROBE = ("import sys, atexit; sys.path.insert(0, sys.argv.pop(1)); "
         "atexit.register(lambda: sys.stderr.write('FULL\\n' if 'nvc.request.runtime_config' in sys.modules "
         "else 'SKIPPED\\n')); sys.argv[0] = {launcher!r}; exec(compile(open({launcher!r}).read(), {launcher!r}, "
         "'exec'))").format(launcher=str(LAUNCHER))


@pytest.fixture(scope="module")
def settled(tmp_path_factory):
    """A config.toml old enough for a memo (its ctime cannot be set back: wait once for the module)."""
    base = tmp_path_factory.mktemp("hookpf")
    config = base / "config.toml"
    config.write_text('swarm-resource = "MY_GPU"\n')
    other = base / "other.toml"
    other.write_text("")
    (base / "touched.toml").write_text("")  # for the one test that changes its ctime
    time.sleep(prefilter.SETTLE_NS / 1e9 + 0.1)
    return base, config, other


def hook(tmp: Path, config: Path, env_list: list[str], *flags: str, extra_env: dict | None = None):
    bundle = tmp / "b"
    bundle.mkdir(exist_ok=True)
    spec = {"ociVersion": "1.0.2", "process": {"env": env_list, "capabilities": {"bounding": []}},
            "root": {"path": "rootfs"}, "mounts": []}
    (bundle / "config.json").write_text(json.dumps(spec))
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "NVC_CACHE_DIR": str(tmp / "cache"),
           "NVIDIA_CTK_CONFIG_FILE_PATH": str(config), **(extra_env or {})}
    state = json.dumps({"ociVersion": "1.0.2", "id": "x", "pid": os.getpid(), "bundle": str(bundle)})
    res = subprocess.run([sys.executable, "-I", "-S", "-c", PROBE, str(REPO), *flags, "prestart"], input=state, env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    lines = res.stderr.splitlines()
    if lines and lines[-1] in ("FULL", "SKIPPED"):
        return res.returncode, lines[-1], lines[:-1]
    return res.returncode, "SKIPPED", lines  # the launcher's skip ends with _exit: no atexit handler runs


def test_no_gpu_container_is_skipped_once_the_memo_exists(settled, tmp_path):
    _base, config, _other = settled
    assert hook(tmp_path, config, ["PATH=/bin"]) == (0, "FULL", [])  # first: the full path writes the memo
    assert (tmp_path / "cache" / prefilter.HOOK_MEMO).exists()
    assert hook(tmp_path, config, ["PATH=/bin"]) == (0, "SKIPPED", [])
    assert hook(tmp_path, config, ["PATH=/bin", "BROKEN"])[1] == "SKIPPED"  # not ours to judge: runc's
    # a marker: the rules decide (void: not a GPU container after all)
    assert hook(tmp_path, config, ["NVIDIA_VISIBLE_DEVICES=void"]) == (0, "FULL", [])
    assert hook(tmp_path, config, ["MY_GPU="]) == (0, "FULL", [])  # config.toml's swarm name is a marker
    # a GPU request is always decided in full (here it fails on the capability: proof the rules ran)
    rc, went, lines = hook(tmp_path, config, ["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=bogus"])
    assert (rc, went) == (1, "FULL") and "unsupported capabilities" in lines[0]
    # the debug switches see every container
    assert hook(tmp_path, config, ["PATH=/bin"], "-debug")[1] == "FULL"
    assert hook(tmp_path, config, ["PATH=/bin"], extra_env={"NVC_NO_CACHE": "1"})[1] == "FULL"


def test_memo_follows_config_identity(settled, tmp_path):
    _base, config, other = settled
    assert hook(tmp_path, config, ["PATH=/bin"])[1] == "FULL"
    assert hook(tmp_path, config, ["PATH=/bin"])[1] == "SKIPPED"
    assert hook(tmp_path, other, ["PATH=/bin"])[1] == "FULL"  # another file: another memo
    assert hook(tmp_path, other, ["PATH=/bin"])[1] == "SKIPPED"
    assert hook(tmp_path, config, ["PATH=/bin"])[1] == "FULL"
    touched = _base / "touched.toml"
    assert hook(tmp_path, touched, ["PATH=/bin"])[1] == "FULL"
    assert hook(tmp_path, touched, ["PATH=/bin"])[1] == "SKIPPED"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns))  # same times, new ctime: no longer the same file
    assert hook(tmp_path, touched, ["PATH=/bin"])[1] == "FULL"
    assert hook(tmp_path, touched, ["PATH=/bin"])[1] == "FULL"  # and too fresh to be memoised again
    assert hook(tmp_path, tmp_path / "missing.toml", ["PATH=/bin"])[0] == 1  # required and missing: an error
    assert hook(tmp_path, tmp_path / "missing.toml", ["PATH=/bin"])[0] == 1


def test_broken_config_is_never_skipped(settled, tmp_path):
    _base, config, _other = settled
    assert hook(tmp_path, config, ["PATH=/bin"])[1] == "FULL"
    broken = tmp_path / "broken.toml"
    broken.write_text("this is = = not toml")
    rc, went, lines = hook(tmp_path, broken, ["PATH=/bin"])
    assert (rc, went) == (1, "FULL") and "invalid TOML" in lines[0]  # the full path reports it, as before


def test_installed_launcher_skips_with_five_small_modules_and_no_os(settled, tmp_path):
    """A normal install (nvc in the prefix's own site-packages): the hook of a container without NVIDIA variables
    imports nvc, the pre-filter and three helpers — no stage package, not os, not the hook, not the rules."""
    _base, config, _other = settled
    assert hook(tmp_path, config, ["PATH=/bin"])[1] == "FULL"  # writes the memo
    prefix = tmp_path / "prefix"
    site = prefix / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    site.mkdir(parents=True)
    (site / "nvc").symlink_to(REPO / "nvc")
    real = os.path.realpath(sys.executable)
    (prefix / "pyvenv.cfg").write_text(f"home = {os.path.dirname(real)}\n")
    (prefix / "bin").mkdir()
    (prefix / "bin/python").symlink_to(real)
    launcher = prefix / "bin/nvidia-container-runtime-hook"
    launcher.write_bytes(LAUNCHER.read_bytes())
    env = {"PATH": os.environ["PATH"], "NVC_CACHE_DIR": str(tmp_path / "cache"),
           "NVIDIA_CTK_CONFIG_FILE_PATH": str(config)}
    state = json.dumps({"ociVersion": "1.0.2", "id": "x", "pid": os.getpid(), "bundle": str(tmp_path / "b")})
    res = subprocess.run([str(prefix / "bin/python"), "-X", "importtime", "-I", "-S", str(launcher), "prestart"],
                         input=state, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    modules = {line.rsplit("|", 1)[1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert sorted(m for m in modules if m.startswith("nvc")) == [
        "nvc", "nvc.config_location", "nvc.jsonfast", "nvc.prefilter", "nvc.private_files"]
    assert not modules & {"os", "nvc.commands.hook", "nvc.request.runtime_config", "nvc.request.container_env",
        "typing", "json", "re"}
