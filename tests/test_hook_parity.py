"""The hook does what NVIDIA's hook does for each config key, on both of its paths (issue 16).

Each row of the table names NVIDIA's behaviour (nvidia-container-runtime-hook 1.17/1.20, cmd/nvidia-container-
runtime-hook: main.go, hook_config.go, container_config.go) for one config + container environment, and gives the
argv NVIDIA's hook hands to ``nvidia-container-cli`` (after argv[0]) or the line it refuses with. For every row that
proceeds, the argv of the exec path is parsed back with our CLI's own parser and must give exactly the global
options and request the in-process path uses: the two paths cannot drift apart. The subprocess tests run the real
entry point, exec'ing a recording CLI (argv, environment, exit status), and the root tests inject into a held
mount namespace with the in-process path and with our CLI exec'd, where the config's ``environment`` must reach
NVML in both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nvc.commands.hook import exec_environment, plan_hook
from nvc.errors import NvcError
from nvc.request.argv import configure_request, global_options, parse_command_line
from nvc.request.container_env import HOOK_MODE_ERROR, is_qualified_cdi_name
from nvc.request.container_request import cli_argv
from nvc.request.runtime_config import parse_config

REPO = Path(__file__).resolve().parent.parent
CLI = "/usr/bin/nvidia-container-cli"
BUNDLE = "/b"
PID = 42
ROOTFS = f"{BUNDLE}/rootfs"
TAIL = [f"--pid={PID}", ROOTFS]
CU = ["--compute", "--utility"]
# What NVIDIA's hook passes for a plain `NVIDIA_VISIBLE_DEVICES=0` container with the default config (host without
# ldconfig.real): the global flags, then configure's.
DEFAULT_HEAD = ["--load-kmods", "configure", "--cuda-compat-mode=ldconfig", "--ldconfig=@/sbin/ldconfig"]
VOLUME = "/var/run/nvidia-container-devices"
ACCEPT_VOLUMES = "accept-nvidia-visible-devices-as-volume-mounts = true\n"


def no_real(path: str) -> bool:
    return False


def spec_for(env, mounts=(), privileged=False):
    caps = ["CAP_SYS_ADMIN"] if privileged else ["CAP_CHOWN"]
    return {"ociVersion": "1.0.2", "process": {"env": list(env), "capabilities": {"bounding": caps}},
            "root": {"path": "rootfs"},
            "mounts": [{"source": "/dev/null", "destination": m, "type": "bind"} for m in mounts]}


def decide(config_text, env, mounts=(), debug=False, privileged=False):
    config = parse_config(config_text, "config.toml", path_exists=no_real)
    return config, plan_hook(config, {"pid": PID, "bundle": BUNDLE}, spec_for(env, mounts, privileged), BUNDLE,
                             debug_flag=debug)


# (id, NVIDIA's behaviour, config.toml, container env, volume mounts, -debug, expected argv after argv[0] | refusal)
ROWS = [
    ("defaults", "the shipped defaults: load-kmods, ldconfig compat mode, host ldconfig",
     "", ["NVIDIA_VISIBLE_DEVICES=0"], (), False,
     [*DEFAULT_HEAD, "--device=0", *CU, *TAIL]),
    ("global-flag-order", "main.go: --root, --load-kmods, --no-create-imex-channels, --no-pivot, --debug, "
     "--ldcache, --user, in this order, before configure",
     '[nvidia-container-cli]\nroot = "/run/nvidia/driver"\nno-pivot = true\ndebug = "/var/log/nvct.log"\n'
     'ldcache = "/etc/ld.so.cache.x"\nuser = "0:0"\n[features]\ndisable-imex-channel-creation = true\n',
     ["NVIDIA_VISIBLE_DEVICES=0"], (), False,
     ["--root=/run/nvidia/driver", "--load-kmods", "--no-create-imex-channels", "--no-pivot",
      "--debug=/var/log/nvct.log", "--ldcache=/etc/ld.so.cache.x", "--user=0:0", *DEFAULT_HEAD[1:], "--device=0",
      *CU, *TAIL]),
    # 1. [features] disable-imex-channel-creation
    ("imex-creation-disabled", "disable-imex-channel-creation = true adds the global --no-create-imex-channels",
     "[features]\ndisable-imex-channel-creation = true\n", ["NVIDIA_VISIBLE_DEVICES=0"], (), False,
     ["--load-kmods", "--no-create-imex-channels", *DEFAULT_HEAD[1:], "--device=0", *CU, *TAIL]),
    ("imex-creation-disabled-no-kmods", "... and stands alone without load-kmods",
     "[nvidia-container-cli]\nload-kmods = false\n[features]\ndisable-imex-channel-creation = true\n",
     ["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_IMEX_CHANNELS=0"], (), False,
     ["--no-create-imex-channels", *DEFAULT_HEAD[1:], "--device=0", "--imex-channel=0", *CU, *TAIL]),
    # 3. -debug
    ("debug-flag", "-debug passes --debug=/dev/stderr",
     "", ["NVIDIA_VISIBLE_DEVICES=0"], (), True,
     ["--load-kmods", "--debug=/dev/stderr", *DEFAULT_HEAD[1:], "--device=0", *CU, *TAIL]),
    ("debug-flag-wins", "-debug replaces [nvidia-container-cli] debug (else-if in main.go)",
     '[nvidia-container-cli]\ndebug = "/var/log/nvct.log"\n', ["NVIDIA_VISIBLE_DEVICES=0"], (), True,
     ["--load-kmods", "--debug=/dev/stderr", *DEFAULT_HEAD[1:], "--device=0", *CU, *TAIL]),
    ("debug-config", "[nvidia-container-cli] debug alone is --debug=FILE",
     '[nvidia-container-cli]\ndebug = "/var/log/nvct.log"\n', ["NVIDIA_VISIBLE_DEVICES=0"], (), False,
     ["--load-kmods", "--debug=/var/log/nvct.log", *DEFAULT_HEAD[1:], "--device=0", *CU, *TAIL]),
    # 4./5. cuda-compat-mode (nvidiaContainerCliCUDACompatModeFlags)
    ("compat-hook", "cuda-compat-mode = hook passes --cuda-compat-mode=disabled (compat is a CDI hook's job)",
     '[nvidia-container-runtime.modes.legacy]\ncuda-compat-mode = "hook"\n', ["NVIDIA_VISIBLE_DEVICES=0"], (),
     False, ["--load-kmods", "configure", "--cuda-compat-mode=disabled", "--ldconfig=@/sbin/ldconfig",
             "--device=0", *CU, *TAIL]),
    ("compat-mount", "cuda-compat-mode = mount passes mount",
     '[nvidia-container-runtime.modes.legacy]\ncuda-compat-mode = "mount"\n', ["NVIDIA_VISIBLE_DEVICES=0"], (),
     False, ["--load-kmods", "configure", "--cuda-compat-mode=mount", "--ldconfig=@/sbin/ldconfig",
             "--device=0", *CU, *TAIL]),
    ("compat-disabled", "cuda-compat-mode = disabled passes disabled",
     '[nvidia-container-runtime.modes.legacy]\ncuda-compat-mode = "disabled"\n', ["NVIDIA_VISIBLE_DEVICES=0"], (),
     False, ["--load-kmods", "configure", "--cuda-compat-mode=disabled", "--ldconfig=@/sbin/ldconfig",
             "--device=0", *CU, *TAIL]),
    ("compat-unset", 'cuda-compat-mode = "" is unset: --cuda-compat-mode=disabled',
     '[nvidia-container-runtime.modes.legacy]\ncuda-compat-mode = ""\n', ["NVIDIA_VISIBLE_DEVICES=0"], (),
     False, ["--load-kmods", "configure", "--cuda-compat-mode=disabled", "--ldconfig=@/sbin/ldconfig",
             "--device=0", *CU, *TAIL]),
    ("compat-unset-allowed", 'cuda-compat-mode = "" with allow-cuda-compat-libs-from-container: no flag at all '
     "(the CLI's default, mount)",
     '[nvidia-container-runtime.modes.legacy]\ncuda-compat-mode = ""\n[features]\n'
     "allow-cuda-compat-libs-from-container = true\n", ["NVIDIA_VISIBLE_DEVICES=0"], (), False,
     ["--load-kmods", "configure", "--ldconfig=@/sbin/ldconfig", "--device=0", *CU, *TAIL]),
    ("compat-set-allowed", "the feature flag only matters when the mode is unset",
     "[features]\nallow-cuda-compat-libs-from-container = true\n", ["NVIDIA_VISIBLE_DEVICES=0"], (), False,
     [*DEFAULT_HEAD, "--device=0", *CU, *TAIL]),
    # 6. the runtime mode (assertModeIsLegacy / ResolveAutoMode)
    ("mode-cdi", "mode = cdi: the hook refuses (the CDI path belongs to the runtime)",
     '[nvidia-container-runtime]\nmode = "cdi"\n', ["NVIDIA_VISIBLE_DEVICES=0"], (), False, HOOK_MODE_ERROR),
    ("mode-jit-cdi", "mode = jit-cdi: refused likewise",
     '[nvidia-container-runtime]\nmode = "jit-cdi"\n', ["NVIDIA_VISIBLE_DEVICES=0"], (), False, HOOK_MODE_ERROR),
    ("mode-csv", "mode = csv: refused likewise",
     '[nvidia-container-runtime]\nmode = "csv"\n', ["NVIDIA_VISIBLE_DEVICES=0"], (), False, HOOK_MODE_ERROR),
    ("mode-auto-cdi-names", "auto with only CDI names in NVIDIA_VISIBLE_DEVICES resolves to cdi: refused",
     "", ["NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=0,nvidia.com/gpu=GPU-1234"], (), False, HOOK_MODE_ERROR),
    ("mode-auto-mixed", "auto with a CDI name beside an index is legacy: both passed to the CLI",
     "", ["NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=0,1"], (), False,
     [*DEFAULT_HEAD, "--device=nvidia.com/gpu=0,1", *CU, *TAIL]),
    ("mode-auto-unqualified", "auto: a name the CDI parser refuses (ends with '-') is no CDI name: legacy",
     "", ["NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=0-"], (), False,
     [*DEFAULT_HEAD, "--device=nvidia.com/gpu=0-", *CU, *TAIL]),
    ("mode-auto-all", "auto with all: legacy", "", ["NVIDIA_VISIBLE_DEVICES=all"], (), False,
     [*DEFAULT_HEAD, "--device=all", *CU, *TAIL]),
    ("mode-auto-none", "auto with none (no device at all): legacy, driver files only",
     "", ["NVIDIA_VISIBLE_DEVICES=none"], (), False, [*DEFAULT_HEAD, *CU, *TAIL]),
    ("mode-legacy-cdi-names", "mode = legacy: CDI names go to the CLI as they are (its device error follows)",
     '[nvidia-container-runtime]\nmode = "legacy"\n', ["NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=0"], (), False,
     [*DEFAULT_HEAD, "--device=nvidia.com/gpu=0", *CU, *TAIL]),
    ("mode-skip-detection", "skip-mode-detection = true proceeds whatever the mode",
     '[nvidia-container-runtime]\nmode = "cdi"\n[nvidia-container-runtime-hook]\nskip-mode-detection = true\n',
     ["NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=0"], (), False,
     [*DEFAULT_HEAD, "--device=nvidia.com/gpu=0", *CU, *TAIL]),
    ("mode-cdi-not-gpu", "the mode is only checked for a GPU container: no NVIDIA_VISIBLE_DEVICES, nothing done",
     '[nvidia-container-runtime]\nmode = "cdi"\n', ["PATH=/bin"], (), False, None),
    ("mode-checked-after-env-rules", "the environment rules fail first (MIG in an unprivileged container)",
     '[nvidia-container-runtime]\nmode = "cdi"\n', ["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_MIG_CONFIG_DEVICES=all"],
     (), False, "cannot set MIG_CONFIG_DEVICES in non privileged container"),
    # 7. CDI devices as volume mounts (toolkit 1.20: image.VisibleDevices; 1.17 dropped them)
    ("volume-cdi", "a cdi/ volume mount is a CDI name: auto resolves to cdi and the hook refuses (1.20)",
     ACCEPT_VOLUMES, ["NVIDIA_VISIBLE_DEVICES=0"], (f"{VOLUME}/cdi/nvidia.com/gpu/0",), False, HOOK_MODE_ERROR),
    ("volume-cdi-equals", "cdi/<vendor>/<class>=<name> is the same request",
     ACCEPT_VOLUMES, [], (f"{VOLUME}/cdi/nvidia.com/gpu=all",), False, HOOK_MODE_ERROR),
    ("volume-cdi-legacy", "mode = legacy: the CDI name from the mount goes to the CLI (1.20)",
     ACCEPT_VOLUMES + '[nvidia-container-runtime]\nmode = "legacy"\n', [], (f"{VOLUME}/cdi/nvidia.com/gpu/0",),
     False, [*DEFAULT_HEAD, "--device=nvidia.com/gpu=0", *CU, *TAIL]),
    ("volume-cdi-mixed", "a CDI mount beside a plain one is legacy (not only CDI names): both passed",
     ACCEPT_VOLUMES, [], (f"{VOLUME}/cdi/nvidia.com/gpu/0", f"{VOLUME}/1"), False,
     [*DEFAULT_HEAD, "--device=nvidia.com/gpu=0,1", *CU, *TAIL]),
    ("volume-cdi-not-accepted", "without accept-...-as-volume-mounts the mount is not read: the env decides",
     "", ["NVIDIA_VISIBLE_DEVICES=0"], (f"{VOLUME}/cdi/nvidia.com/gpu/0",), False,
     [*DEFAULT_HEAD, "--device=0", *CU, *TAIL]),
    # 8. an empty requirement
    ("require-empty", "NVIDIA_REQUIRE_CUDA= is passed on as --require= (kept; see container_env.requirements)",
     "", ["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_REQUIRE_CUDA="], (), False,
     [*DEFAULT_HEAD, "--device=0", *CU, "--require=", *TAIL]),
    ("require-empty-legacy", "... and still makes a CUDA_VERSION image legacy (cuda>= added, all capabilities)",
     "[nvidia-container-cli]\nload-kmods = false\n", ["CUDA_VERSION=11.0", "NVIDIA_REQUIRE_CUDA="], (), False,
     ["configure", "--cuda-compat-mode=ldconfig", "--ldconfig=@/sbin/ldconfig", "--device=all", "--compat32",
      "--compute", "--display", "--graphics", "--ngx", "--utility", "--video", "--require=",
      "--require=cuda>=11.0", *TAIL]),
    # 9. duplicates: NVIDIA's de-duplication turns 0,0 into ",0"; ours keeps the list (README, differences)
    ("duplicate-devices", "DIFFERS: NVIDIA passes --device=,0; ours --device=0,0 (the CLI ignores duplicates)",
     "", ["NVIDIA_VISIBLE_DEVICES=0,0"], (), False, [*DEFAULT_HEAD, "--device=0,0", *CU, *TAIL]),
    # 2. environment does not change the argv (it is the exec environment, checked below)
    ("environment", "[nvidia-container-cli] environment changes the environment, not the argv",
     '[nvidia-container-cli]\nenvironment = ["A=1", "B=x=y"]\n', ["NVIDIA_VISIBLE_DEVICES=0"], (), False,
     [*DEFAULT_HEAD, "--device=0", *CU, *TAIL]),
]


@pytest.mark.parametrize(("name", "nvidia", "config_text", "env", "mounts", "debug", "expected"), ROWS,
                         ids=[row[0] for row in ROWS])
def test_hook_argv_is_nvidias(name, nvidia, config_text, env, mounts, debug, expected):
    if isinstance(expected, str):
        with pytest.raises(NvcError) as caught:
            decide(config_text, env, mounts, debug)
        assert (caught.value.stage, caught.value.message) == ("input", expected), nvidia
        return
    config, invocation = decide(config_text, env, mounts, debug)
    if expected is None:
        assert invocation is None, nvidia
        return
    argv = cli_argv(CLI, config, invocation)
    assert argv == [CLI, *expected], nvidia
    # Both paths are one: our own CLI, given this argv, builds what the in-process path runs.
    parsed = parse_command_line(argv[1:])
    assert parsed is not None and parsed.command == "configure"
    values = dict(parsed.values)
    rootfs, pid = values.pop("rootfs"), values.pop("pid")
    values.pop("dry_run")
    assert global_options(**{k: v for k, v in parsed.global_values.items() if k != "version"}) == invocation.options
    assert configure_request(rootfs, values, pid) == invocation.request


def test_environment_reaches_the_exec_and_wins():
    _, invocation = decide('[nvidia-container-cli]\nenvironment = ["A=1", "B=x=y", "PATH=/opt/bin", "A=2"]\n',
                           ["NVIDIA_VISIBLE_DEVICES=0", "LD_PRELOAD=/evil.so"])
    assert invocation.environment == (("A", "1"), ("B", "x=y"), ("PATH", "/opt/bin"), ("A", "2"))
    host = {"PATH": "/usr/bin", "LD_PRELOAD": "/host.so", "HOME": "/root", "B": "host"}
    # NVIDIA appends the entries to the hook's environment; a name set in both is the administrator's here (NVIDIA's
    # exec keeps both entries and the CLI's getenv sees the first: README, differences). Nothing of the
    # container's environment (its LD_PRELOAD) and nothing unsafe of the hook's own reaches the CLI.
    assert exec_environment(host, invocation) == {"PATH": "/opt/bin", "HOME": "/root", "B": "x=y", "A": "2"}


@pytest.mark.parametrize(
    ("debug", "config_debug", "path", "to_stderr"),
    [(True, "", None, True),
     (True, "/var/log/nvct.log", None, True),
     (False, "/var/log/nvct.log", "/var/log/nvct.log", False),
     (False, "", None, False)],
)
def test_in_process_log_goes_where_the_cli_debug_goes(debug, config_debug, path, to_stderr):
    """In-process, the hook's log (the CLI's, there) follows the same rule as --debug: -debug means stderr and
    only stderr, as NVIDIA's hook replaces the configured file with /dev/stderr."""
    from nvc.commands.hook import open_debug_log
    from nvc.request.container_request import debug_target

    config = parse_config(f'[nvidia-container-cli]\ndebug = "{config_debug}"\n', path_exists=no_real)
    log = open_debug_log(debug_target(config, debug))
    assert (log.path, log.stream is sys.stderr) == (path, to_stderr)


@pytest.mark.parametrize(
    ("device", "qualified"),
    [("nvidia.com/gpu=0", True), ("nvidia.com/gpu=GPU-4a1d6c2e", True), ("nvidia.com/gpu=all", True),
     ("nvidia.com/mig=0:1", True), ("a/b=c", True), ("vendor_1.x/class-2=dev.name:3", True),
     ("0", False), ("all", False), ("GPU-4a1d6c2e", False), ("nvidia.com/gpu", False), ("nvidia.com=0", False),
     ("/nvidia.com/gpu=0", False), ("nvidia.com/gpu=", False), ("=0", False), ("nvidia.com/=0", False),
     ("1nvidia.com/gpu=0", False), ("nvidia.com-/gpu=0", False), ("nvidia.com/gpu/x=0", False),
     ("nvidia.com/gpu=0-", False), ("nvidia.com/gpu=-0", False), ("nvidia.com/gpu=a b", False),
     ("nvidia.com/gpu=0=1", False), ("nvidïa.com/gpu=0", False)],
)
def test_cdi_qualified_names(device, qualified):
    """The CDI parser's rule NVIDIA's auto mode applies (tags.cncf.io/container-device-interface parser)."""
    assert is_qualified_cdi_name(device) is qualified


# --- the real entry point, exec'ing a recording CLI -------------------------------------------------------------

RECORDER = """#!/bin/sh
{ for arg in "$0" "$@"; do printf 'ARG %s\\n' "$arg"; done; env | sed 's/^/ENV /'; } > "$NVC_TEST_RECORD"
exit 7
"""


def run_real_hook(tmp_path: Path, config_text: str, env: list[str], args=("prestart",), mounts=(), top=""):
    """The hook as a runtime starts it; ``config_text`` continues the ``[nvidia-container-cli]`` table, ``top`` holds
    top-level keys."""
    recorder = tmp_path / "record-cli"
    recorder.write_text(RECORDER)
    recorder.chmod(0o755)
    config = tmp_path / "config.toml"
    config.write_text(f'{top}[nvidia-container-cli]\npath = "{recorder}"\n{config_text}')
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    (bundle / "config.json").write_text(json.dumps(spec_for(env, mounts)))
    record = tmp_path / "record.txt"
    record.unlink(missing_ok=True)
    hook_env = {"PATH": "/usr/bin:/bin", "NVC_TEST_RECORD": str(record), "NVC_NO_CACHE": "1",
                "LD_LIBRARY_PATH": "/from-runtime", "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-m", "nvc.commands.hook", f"-config={config}", *args],
                         input=json.dumps({"pid": os.getpid(), "bundle": str(bundle)}), capture_output=True,
                         text=True, env=hook_env, timeout=60, check=False)
    argv, environ = [], {}
    if record.exists():
        for line in record.read_text().splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "ARG":
                argv.append(rest)
            elif kind == "ENV":
                name, _, value = rest.partition("=")
                environ[name] = value
    return res, argv, environ, bundle


def test_recording_cli_gets_nvidias_argv_and_environment(tmp_path):
    res, argv, environ, bundle = run_real_hook(
        tmp_path, 'environment = ["NVC_ADDED=from config", "CUDA_MPS_PIPE_DIRECTORY=/run/mps"]\n'
                  "[features]\ndisable-imex-channel-creation = true\n",
        ["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_REQUIRE_CUDA=", "LD_PRELOAD=/container.so", "NVC_LEAK=container"],
        args=("-debug", "prestart"))
    assert res.returncode == 7  # the CLI's status is the hook's: the hook exec'd it
    assert argv[1:] == ["--load-kmods", "--no-create-imex-channels", "--debug=/dev/stderr", "configure",
                        "--cuda-compat-mode=ldconfig", f"--ldconfig={argv[6].split('=', 1)[1]}", "--device=0",
                        *CU, "--require=", f"--pid={os.getpid()}", str(bundle / "rootfs")]
    assert argv[6] in ("--ldconfig=@/sbin/ldconfig", "--ldconfig=@/sbin/ldconfig.real")
    assert environ["NVC_ADDED"] == "from config" and environ["CUDA_MPS_PIPE_DIRECTORY"] == "/run/mps"
    assert environ["NVC_TEST_RECORD"]  # the hook's own environment is kept...
    assert "LD_LIBRARY_PATH" not in environ and "PYTHONPATH" not in environ  # ...less what must not reach a CLI
    assert "LD_PRELOAD" not in environ and "NVC_LEAK" not in environ  # the container's never does
    assert "I" in res.stderr and "exec " in res.stderr  # -debug: the hook's own lines go to stderr too


@pytest.mark.parametrize(
    ("top", "config_text", "env", "mounts"),
    [("", '[nvidia-container-runtime]\nmode = "cdi"\n', ["NVIDIA_VISIBLE_DEVICES=0"], ()),
     ("", "", ["NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=0"], ()),
     (ACCEPT_VOLUMES, "", [], (f"{VOLUME}/cdi/nvidia.com/gpu/0",))],
    ids=["mode-cdi", "auto-cdi-names", "volume-mount-cdi"],
)
def test_recording_cli_not_run_when_the_mode_is_not_legacy(tmp_path, top, config_text, env, mounts):
    res, argv, _, _ = run_real_hook(tmp_path, config_text, env, mounts=mounts, top=top)
    assert (res.returncode, argv) == (1, [])
    assert res.stderr == f"nvidia-container-runtime-hook: input error: {HOOK_MODE_ERROR}\n"


def test_recording_cli_runs_with_skip_mode_detection(tmp_path):
    res, argv, _, _ = run_real_hook(tmp_path, "[nvidia-container-runtime-hook]\nskip-mode-detection = true\n",
                                    ["NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=0"])
    assert res.returncode == 7 and "--device=nvidia.com/gpu=0" in argv


def test_ignored_keys_are_reported_in_the_debug_log(tmp_path):
    res, argv, _, _ = run_real_hook(
        tmp_path, '[nvidia-container-runtime]\nlog-level = "debug"\n[nvidia-ctk]\npath = "/opt/nvidia-ctk"\n',
        ["NVIDIA_VISIBLE_DEVICES=0"], args=("-debug", "prestart"))
    assert res.returncode == 7 and argv
    warnings = [line for line in res.stderr.splitlines() if line.startswith("W")]
    assert len(warnings) == 2, res.stderr
    assert 'config.toml: nvidia-container-runtime.log-level = "debug" is ignored: ' in warnings[0]
    assert 'config.toml: nvidia-ctk.path = "/opt/nvidia-ctk" is ignored: nvc never runs nvidia-ctk' in warnings[1]
    res, _, _, _ = run_real_hook(tmp_path, '[nvidia-ctk]\npath = "/opt/nvidia-ctk"\n', ["NVIDIA_VISIBLE_DEVICES=0"])
    assert res.stderr == ""  # no debug log, no lines


# --- both paths on a real injection: the environment reaches NVML ---------------------------------------------


def _inject(tmp_path: Path, host, tools, config_text: str, name: str):
    """Run the hook (PATH's launcher, as a runtime does) for a GPU-0-by-UUID container in a held namespace."""
    bindir, runtime_env = tools
    bundle = tmp_path / name
    rootfs = bundle / "rootfs"
    for d in ("usr/lib64", "usr/bin", "dev", "proc", "etc"):
        (rootfs / d).mkdir(parents=True)
    uuid = host.gpus[0]["uuid"]
    (bundle / "config.json").write_text(json.dumps(spec_for([f"NVIDIA_VISIBLE_DEVICES={uuid}",
                                                             "NVIDIA_DRIVER_CAPABILITIES=utility"])))
    config = tmp_path / f"{name}.toml"
    config.write_text(f'[nvidia-container-cli]\nroot = "{host.root}"\nno-cgroups = true\n{config_text}')
    # No NVML answer cache, and no stub configuration in the hook's own environment: NVML must get it from
    # [nvidia-container-cli] environment, or it reports its two default GPUs, which have other UUIDs.
    env = {k: v for k, v in runtime_env.items() if k != "NVML_STUB_CONFIG"}
    env.update(NVC_NO_CACHE="1", NVIDIA_CTK_CONFIG_FILE_PATH=str(config))
    holder = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "600"])
    try:
        while os.readlink(f"/proc/{holder.pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
            subprocess.run(["sleep", "0.01"], check=True)
        res = subprocess.run([str(bindir / "nvidia-container-runtime-hook"), "prestart"], capture_output=True,
                             text=True, env=env, cwd=bundle, timeout=120, check=False,
                             input=json.dumps({"pid": holder.pid, "bundle": str(bundle)}))
        nodes = sorted(os.listdir(f"/proc/{holder.pid}/root{rootfs}/dev")) if res.returncode == 0 else None
    finally:
        holder.kill()
        holder.wait()
    return res, nodes


@pytest.mark.root
@pytest.mark.parametrize("path", ["in-process", "exec"])
def test_environment_reaches_nvml_on_both_paths(tmp_path, host, tools, path):
    bindir, _ = tools
    cli = f'path = "{bindir / "nvidia-container-cli"}"\n' if path == "exec" else ""
    stub = f'environment = ["NVML_STUB_CONFIG={host.env["NVML_STUB_CONFIG"]}"]\n'
    res, nodes = _inject(tmp_path, host, tools, cli + stub, "with-env")
    assert res.returncode == 0, res.stderr
    assert nodes == [f"nvidia{host.gpus[0]['minor']}", "nvidiactl"]
    res, nodes = _inject(tmp_path, host, tools, cli, "without-env")  # the control: same call, no environment
    assert res.returncode == 1
    assert res.stderr.endswith(f"device error: {host.gpus[0]['uuid']}: unknown device\n"), res.stderr
