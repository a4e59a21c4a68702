"""The ``nvidia-container-runtime`` shim: argv handling, the spec it hands a (fake, then real) low-level runtime,
and a GPU container started through it under gVisor's runsc."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from nvc.commands.runtime_shim import (
    add_prestart_hook,
    effective_mode,
    find_bundle,
    find_command,
    has_nvidia_hook,
    passthrough_runtimes,
    which,
)
from nvc.errors import NvcError

REPO = Path(__file__).resolve().parent.parent


# --- argv -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["create", "--bundle", "/b", "id"], "create"),
        (["--root", "/x", "create", "--bundle", "/b", "id"], "create"),
        (["--root=/x", "--log", "/l.json", "--log-format", "json", "--systemd-cgroup", "start", "id"], "start"),
        (["--debug", "--rootless", "false", "delete", "--force", "id"], "delete"),
        (["--nvproxy", "--platform=ptrace", "--network=none", "run", "-bundle", "/b", "id"], "run"),
        (["-root", "/state", "-platform", "ptrace", "-network", "none", "state", "id"], "state"),
        (["--debug-log", "/tmp/x/", "--nvproxy-docker", "create", "id"], "create"),
        (["--some-new-flag", "value", "kill", "id", "KILL"], "kill"),  # unknown flag with a value
        (["--some-new-switch", "create", "id"], "create"),  # unknown boolean flag
        (["--", "create"], "create"),
        (["--version"], None),
        ([], None),
    ],
)
def test_find_command(argv, command):
    index = find_command(argv)
    assert (argv[index] if index is not None else None) == command


@pytest.mark.parametrize(
    ("args", "bundle"),
    [
        (["create", "--bundle", "/b", "id"], "/b"),
        (["create", "-b", "/b", "id"], "/b"),
        (["create", "--bundle=/b/", "id"], "/b"),
        (["create", "-bundle", "rel", "id"], "/cwd/rel"),
        (["create", "--pid-file", "/p", "id"], "/cwd"),
        (["run", "--detach", "-b", "/b", "--", "id"], "/b"),
    ],
)
def test_find_bundle(args, bundle):
    argv = ["--root", "/x", *args]
    assert find_bundle(argv, find_command(argv), cwd="/cwd") == bundle


def test_modes():
    assert effective_mode("auto", "/usr/bin/runsc") == "spec"
    assert effective_mode("auto", "/usr/sbin/runc") == "legacy"
    assert effective_mode("legacy", "/usr/bin/runsc") == "legacy"
    for mode in ("spec", "cdi", "jit-cdi"):
        assert effective_mode(mode, "/usr/sbin/runc") == "spec"
    with pytest.raises(NvcError):
        effective_mode("csv", "/usr/sbin/runc")


def test_hook_added_once():
    spec = {"hooks": {"prestart": [{"path": "/usr/bin/other", "args": ["other"]}]}}
    out = add_prestart_hook(spec, "/usr/bin/nvidia-container-runtime-hook")
    assert out["hooks"]["prestart"] == [
        {"path": "/usr/bin/other", "args": ["other"]},
        {"path": "/usr/bin/nvidia-container-runtime-hook", "args": ["nvidia-container-runtime-hook", "prestart"]},
    ]
    assert spec["hooks"]["prestart"] == [{"path": "/usr/bin/other", "args": ["other"]}]
    assert has_nvidia_hook(out) and not has_nvidia_hook(spec) and not has_nvidia_hook({})
    assert has_nvidia_hook({"hooks": {"prestart": [{"path": "/usr/local/bin/nvidia-container-toolkit"}]}})


def test_passthrough_runtimes_reads_only_the_list(tmp_path):
    config = tmp_path / "config.toml"
    env = {"NVIDIA_CTK_CONFIG_FILE_PATH": str(config)}
    assert passthrough_runtimes(env) == ("runc", "crun")  # no file
    config.write_text('[nvidia-container-runtime]\nruntimes = ["runsc", "/opt/runc"]\n')
    assert passthrough_runtimes(env) == ("runsc", "/opt/runc")
    config.write_text("not = [toml")
    assert passthrough_runtimes(env) == ("runc", "crun")
    assert passthrough_runtimes({"XDG_CONFIG_HOME": str(tmp_path / "none")}) == ("runc", "crun")


def test_gvisor_capabilities_follow_runsc():
    from nvc.commands.runtime_shim import _gvisor_capabilities
    from nvc.components import Capability
    from nvc.request.container_env import GpuRequest

    every = frozenset(Capability)
    gpu = GpuRequest(devices=("0",), capabilities=every)

    def spec(*env: str) -> dict:
        return {"process": {"env": list(env)}}

    limited = {Capability.COMPUTE, Capability.UTILITY, Capability.GRAPHICS, Capability.VIDEO}
    assert _gvisor_capabilities(gpu, spec("NVIDIA_DRIVER_CAPABILITIES=all")).capabilities == limited
    assert _gvisor_capabilities(gpu, spec()).capabilities == limited  # a legacy image's implicit "all"
    explicit = GpuRequest(devices=("0",), capabilities=frozenset({Capability.DISPLAY}))
    assert _gvisor_capabilities(explicit, spec("NVIDIA_DRIVER_CAPABILITIES=display")) is explicit  # refused later


def test_which(tmp_path):
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert which("tool", f"/nonexistent:{tmp_path}") == str(tool)
    assert which(str(tool), None) == str(tool)
    assert which("tool", "/nonexistent") is None
    assert which("tool", "", (str(tmp_path),)) == str(tool)


def test_shim_stays_import_light():
    code = ("import sys, nvc.commands.runtime_shim; "
            "print(sorted(m for m in ('click', 'elftools', 'pynvml', 'tomllib', 'json', 'nvc.commands.configure', "
            "'nvc.request.runtime_config') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO))).stdout
    assert out.strip() == "[]"


# --- with a fake low-level runtime ------------------------------------------------------------------------------

FAKE_RUNTIME = """\
#!/bin/sh
# Records what a low-level runtime is given: argv, environment, the bundle's config.json.
out="$FAKE_RUNTIME_OUT"
for a in "$0" "$@"; do printf '%s\\n' "$a"; done > "$out/argv"
env > "$out/env"
if [ -f "$FAKE_RUNTIME_BUNDLE/config.json" ]; then cp "$FAKE_RUNTIME_BUNDLE/config.json" "$out/config.json"; fi
exit 0
"""


class Shim:
    """Runs the shim as a separate process with a fake runtime first in PATH and its own config.toml."""

    def __init__(self, tmp_path: Path, runtime: str = "runc") -> None:
        self.bin = tmp_path / "bin"
        self.out = tmp_path / "out"
        self.bin.mkdir()
        self.out.mkdir()
        self.runtime = self.bin / runtime
        self.runtime.write_text(FAKE_RUNTIME)
        self.runtime.chmod(0o755)
        self.hook = self.bin / "nvidia-container-runtime-hook"
        self.hook.write_text("#!/bin/sh\nexit 0\n")
        self.hook.chmod(0o755)
        self.config = tmp_path / "config.toml"
        self.config.write_text(f'[nvidia-container-runtime]\nruntimes = ["{runtime}"]\n')
        self.env = {"PATH": f"{self.bin}:/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO),
                    "NVIDIA_CTK_CONFIG_FILE_PATH": str(self.config), "FAKE_RUNTIME_OUT": str(self.out)}
        if "NVC_CACHE_DIR" in os.environ:  # the run's private cache (tests/conftest.py), not the host's /run/nvc
            self.env["NVC_CACHE_DIR"] = os.environ["NVC_CACHE_DIR"]

    def __call__(self, *args: str, bundle: Path | None = None, env: dict[str, str] | None = None):
        run_env = dict(self.env, **(env or {}))
        if bundle is not None:
            run_env["FAKE_RUNTIME_BUNDLE"] = str(bundle)
        return subprocess.run([sys.executable, "-m", "nvc.commands.runtime_shim", *args], capture_output=True,
            text=True,
                              env=run_env, timeout=120, check=False)

    def argv(self) -> list[str]:
        return (self.out / "argv").read_text().splitlines()

    def spec(self) -> dict:
        return json.loads((self.out / "config.json").read_text())

    def runtime_env(self) -> str:
        return (self.out / "env").read_text()


def write_bundle(bundle: Path, env: list[str], hooks: dict | None = None) -> Path:
    rootfs = bundle / "rootfs"
    for d in ("etc", "usr/lib64", "usr/bin", "dev", "proc"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    spec = {"ociVersion": "1.0.2-dev",
            "process": {"args": ["sh"], "env": ["PATH=/bin", *env], "cwd": "/",
                        "capabilities": {"bounding": ["CAP_KILL"]}},
            "root": {"path": "rootfs"}, "hostname": "x", "mounts": [{"destination": "/proc", "type": "proc",
                                                                   "source": "proc"}],
            "linux": {"namespaces": [{"type": "mount"}]}}
    if hooks:
        spec["hooks"] = hooks
    (bundle / "config.json").write_text(json.dumps(spec, indent=1))
    return bundle


def test_legacy_mode_adds_the_hook_and_execs_with_the_same_argv(tmp_path):
    shim = Shim(tmp_path)
    shim.config.write_text('[nvidia-container-runtime]\nmode = "legacy"\nruntimes = ["runc"]\n')
    bundle = write_bundle(tmp_path / "b", ["NVIDIA_VISIBLE_DEVICES=all", "LD_PRELOAD=/evil.so",
                                           "PATH=/container/bin"])
    (bundle / "config.json").chmod(0o600)
    args = ["--root", "/x", "--log-format", "json", "create", "--bundle", str(bundle), "--pid-file", "/p", "id"]
    res = shim(*args, bundle=bundle)
    assert res.returncode == 0, res.stderr
    assert shim.argv() == [str(shim.runtime), *args]
    spec = shim.spec()
    assert spec["hooks"]["prestart"] == [{"path": str(shim.hook), "args": ["nvidia-container-runtime-hook",
                                                                          "prestart"]}]
    assert spec["process"]["env"][1] == "NVIDIA_VISIBLE_DEVICES=all"  # the hook decides from it
    assert stat.S_IMODE((bundle / "config.json").stat().st_mode) == 0o600
    assert not [p.name for p in bundle.iterdir() if p.name.startswith(".")]  # no temp file left
    env = shim.runtime_env()
    assert "LD_PRELOAD" not in env and "/container/bin" not in env and "/evil.so" not in env


def test_existing_nvidia_hook_is_not_added_twice(tmp_path):
    shim = Shim(tmp_path)
    hooks = {"prestart": [{"path": "/usr/bin/nvidia-container-runtime-hook", "args": ["x", "prestart"]}]}
    bundle = write_bundle(tmp_path / "b", ["NVIDIA_VISIBLE_DEVICES=0"], hooks=hooks)
    before = (bundle / "config.json").read_bytes()
    assert shim("create", "--bundle", str(bundle), "id", bundle=bundle).returncode == 0
    assert (bundle / "config.json").read_bytes() == before


@pytest.mark.parametrize("env", [[], ["NVIDIA_VISIBLE_DEVICES=void"], ["NVIDIA_VISIBLE_DEVICES="]])
def test_non_gpu_bundle_is_untouched(tmp_path, env):
    shim = Shim(tmp_path)
    bundle = write_bundle(tmp_path / "b", env)
    before = (bundle / "config.json").read_bytes()
    res = shim("run", "-b", str(bundle), "id", bundle=bundle)
    assert res.returncode == 0, res.stderr
    assert (bundle / "config.json").read_bytes() == before
    assert shim.argv()[1:] == ["run", "-b", str(bundle), "id"]


@pytest.mark.parametrize("command", [["start", "id"], ["state", "id"], ["kill", "id", "9"], ["delete", "-f", "id"],
                                     ["--version"], ["create", "--help"]])
def test_other_commands_pass_straight_through(tmp_path, command):
    shim = Shim(tmp_path)
    bundle = write_bundle(tmp_path / "b", ["NVIDIA_VISIBLE_DEVICES=all"])
    shim.config.write_text('[nvidia-container-runtime]\nruntimes = ["runc"]\nmode = "bogus"\n')  # never read fully
    before = (bundle / "config.json").stat()
    args = ["--root", "/x", *command]
    res = shim(*args, bundle=bundle, env={"PWD": str(bundle)})
    assert res.returncode == 0, res.stderr
    assert shim.argv() == [str(shim.runtime), *args]
    after = (bundle / "config.json").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_runtimes_list_is_honoured_by_every_command(tmp_path):
    shim = Shim(tmp_path, runtime="my-runtime")
    absolute = tmp_path / "abs" / "runc"
    absolute.parent.mkdir()
    shutil.copy2(shim.runtime, absolute)
    shim.config.write_text(f'[nvidia-container-runtime]\nruntimes = ["missing", "{absolute}"]\n')
    assert shim("delete", "id").returncode == 0
    assert shim.argv()[0] == str(absolute)
    shim.config.write_text('[nvidia-container-runtime]\nruntimes = ["missing", "my-runtime"]\n')
    assert shim("state", "id").returncode == 0
    assert shim.argv()[0] == str(shim.runtime)


def test_errors_are_one_line(tmp_path):
    shim = Shim(tmp_path)
    res = shim("create", "--bundle", str(tmp_path / "nope"), "id")
    assert res.returncode == 1
    assert res.stderr.startswith("nvidia-container-runtime: input error: failed to read OCI spec")
    assert res.stderr.count("\n") == 1
    shim.config.write_text('[nvidia-container-runtime]\nruntimes = ["nonexistent-runtime"]\n')
    res = shim("start", "id")
    assert res.returncode == 1
    assert res.stderr == ("nvidia-container-runtime: initialization error: no low-level runtime found in PATH "
                          "(looked for nonexistent-runtime)\n")
    bundle = write_bundle(tmp_path / "b", ["NVIDIA_VISIBLE_DEVICES=all"])
    shim.config.write_text('[nvidia-container-runtime]\nruntimes = ["runc"]\nmode = "csv"\n')
    res = shim("create", "--bundle", str(bundle), "id")
    assert res.returncode == 1 and res.stderr.startswith("nvidia-container-runtime: input error: unsupported")
    shim.config.write_text('[nvidia-container-runtime]\nruntimes = ["runc"]\n')
    shim.hook.unlink()
    res = shim("create", "--bundle", str(bundle), "id", env={"PATH": str(shim.bin)})
    assert res.returncode in (0, 1)  # /usr/bin may hold a real hook; if not, one line
    if res.returncode == 1:
        assert res.stderr == ("nvidia-container-runtime: initialization error: could not find "
                              "nvidia-container-runtime-hook in PATH\n")
    res = shim("create", "--bundle", str(write_bundle(tmp_path / "c", ["NVIDIA_VISIBLE_DEVICES=all",
                                                                          "NVIDIA_DRIVER_CAPABILITIES=bogus"])), "id")
    assert res.returncode == 1 and res.stderr.startswith("nvidia-container-runtime: input error: unsupported capab")
    assert "Traceback" not in res.stderr


# --- spec mode: the plan merged into config.json ----------------------------------------------------------------


@pytest.mark.root
@pytest.mark.parametrize(("mode", "runtime"), [("spec", "runc"), ("jit-cdi", "crun"), ("auto", "runsc")])
def test_spec_mode_merges_the_plan(host, tmp_path, mode, runtime):
    shim = Shim(tmp_path, runtime=runtime)
    shim.config.write_text(f'[nvidia-container-cli]\nroot = "{host.root}"\n'
                           f'[nvidia-container-runtime]\nmode = "{mode}"\nruntimes = ["{runtime}"]\n')
    bundle = write_bundle(tmp_path / "b", ["NVIDIA_VISIBLE_DEVICES=1", "LD_PRELOAD=/evil.so"])
    args = ["--root", "/x", "create", "--bundle", str(bundle), "id"]
    res = shim(*args, bundle=bundle, env=host.env)
    assert res.returncode == 0, res.stderr
    assert shim.argv() == [str(shim.runtime), *args]
    spec = shim.spec()
    dests = {m["destination"]: m for m in spec["mounts"]}
    assert spec["mounts"][0] == {"destination": "/proc", "type": "proc", "source": "proc"}
    assert "/usr/lib64/libnvidia-ml.so.1" in dests and "/usr/bin/nvidia-smi" in dests
    assert dests["/etc/ld.so.cache"]["source"] == str(bundle / "nvc-ld.so.cache")
    listing = subprocess.run(["/sbin/ldconfig", "-p", "-C", str(bundle / "nvc-ld.so.cache")], capture_output=True,
                             text=True, check=True).stdout
    assert "libnvidia-ml.so.1 (libc6,x86-64) => /usr/lib64/libnvidia-ml.so.1" in listing
    assert ("/dev/nvidia0", 195, 0) in [(d["path"], d["major"], d["minor"]) for d in spec["linux"]["devices"]]
    assert "hooks" not in spec
    assert spec["process"]["env"] == ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=void", "LD_PRELOAD=/evil.so"]
    gvisor = runtime == "runsc"
    # under runsc: nvproxy's device set (no uvm-tools) and no host sockets (the sandbox refuses those mounts)
    assert ("/dev/nvidia-uvm-tools" in [d["path"] for d in spec["linux"]["devices"]]) is not gvisor
    assert ("/run/nvidia-persistenced/socket" in dests) is not gvisor
    assert "LD_PRELOAD" not in shim.runtime_env()


# --- real runtimes --------------------------------------------------------------------------------------------

SMI_SCRIPT = ("ldconfig -p | grep libnvidia-ml; ls /usr/bin/nvidia-smi; nvidia-smi > /tmp/smi.out 2>&1; "
              "echo smi-exit=$?; cat /tmp/smi.out")


def _real_runtime_setup(host, tmp_path: Path, runtime: str, mode: str):
    """A bundle started through the shim: ``runtime`` in PATH is a wrapper running our shim, whose config lists
    a second wrapper that execs the real runtime.

    That second wrapper also swaps the fake host's NVML stub (which the planner needed for its answers) for the
    real libnvidia-ml file before the container starts, so nvidia-smi inside meets the real library and fails
    for the real reason: no kernel driver.
    """
    rootfs_mod = pytest.importorskip("fixtures.rootfs")
    runtimes_mod = pytest.importorskip("fixtures.runtimes")
    from fixtures.driver_roots import DRIVER_VERSION, ensure_all

    real_runtime = shutil.which(runtime, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if real_runtime is None:
        pytest.skip(f"{runtime} not installed")
    name = f"libnvidia-ml.so.{DRIVER_VERSION}"
    real_lib = ensure_all().apt_root / "usr/lib/x86_64-linux-gnu/nvidia/current" / name
    stub = host.root / "usr/lib/x86_64-linux-gnu/nvidia/current" / name
    front, low = tmp_path / "front", tmp_path / "low"
    front.mkdir()
    low.mkdir()
    (front / runtime).write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m nvc.commands.runtime_shim '
        f'"$@"\n')
    (low / runtime).write_text(f'#!/bin/sh\ncp -f {real_lib} {stub}.new && mv -f {stub}.new {stub}\n'
                               f'exec {real_runtime} "$@"\n')
    for script in (front / runtime, low / runtime):
        script.chmod(0o755)
    config = tmp_path / "config.toml"
    config.write_text(f'[nvidia-container-cli]\nroot = "{host.root}"\n'
                      f'[nvidia-container-runtime]\nmode = "{mode}"\nruntimes = ["{low / runtime}"]\n'
                      f'debug = "{tmp_path / "shim.log"}"\n')
    bundle = tmp_path / "bundle"
    rootfs = rootfs_mod.copy_rootfs(rootfs_mod.busybox_rootfs(), bundle / "rootfs")
    runtimes_mod.make_bundle(bundle, rootfs, ["sh", "-c", SMI_SCRIPT], env=["NVIDIA_VISIBLE_DEVICES=0"])
    env = dict(os.environ, PATH=f"{front}:/usr/sbin:/usr/bin:/sbin:/bin", NVIDIA_CTK_CONFIG_FILE_PATH=str(config),
               **host.env)
    return runtimes_mod, bundle, env


@pytest.fixture
def own_host(tmp_path):
    """A fake host of its own: these tests replace its NVML stub by the real library."""
    if os.geteuid() != 0:
        pytest.skip("needs root (mknod)")
    from fixtures.gpu_host import make_gpu_host

    return make_gpu_host(tmp_path / "host")


def _check_smi_output(proc) -> None:
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "\tlibnvidia-ml.so.1 (libc6,x86-64) => /usr/lib64/libnvidia-ml.so.1" in lines
    assert "/usr/bin/nvidia-smi" in lines
    # Exit 9 = NVML "Driver Not Loaded": the library loaded, the (absent) kernel driver did not answer.
    # 127 or "error while loading shared libraries" would mean the injection failed.
    assert "smi-exit=9" in lines, proc.stdout
    assert "couldn't communicate with the NVIDIA driver" in proc.stdout
    assert "error while loading shared libraries" not in proc.stdout + proc.stderr


@pytest.mark.root
@pytest.mark.slow
def test_runsc_spec_mode_through_the_shim(own_host, tmp_path):
    """gVisor (no nvproxy in this build): the hook path cannot work, the spec path does."""
    runtimes_mod, bundle, env = _real_runtime_setup(own_host, tmp_path, "runsc", "auto")
    proc = runtimes_mod.run_runsc(bundle, env=env, timeout=120)
    _check_smi_output(proc)
    spec = json.loads((bundle / "config.json").read_text())
    assert "NVIDIA_VISIBLE_DEVICES=void" in spec["process"]["env"] and "hooks" not in spec


@pytest.mark.root
@pytest.mark.slow
def test_runc_spec_mode_through_the_shim(own_host, tmp_path):
    """The same edits under runc: device nodes from linux.devices, cgroup rules let nvidia-smi reach them."""
    runtimes_mod, bundle, env = _real_runtime_setup(own_host, tmp_path, "runc", "spec")
    proc = runtimes_mod.run_runc(bundle, env=env, timeout=120)
    _check_smi_output(proc)
