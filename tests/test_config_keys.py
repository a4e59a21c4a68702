"""Every config.toml key nvc parses changes what it does, or is reported as ignored (issue 16).

The test walks the schema (:func:`nvc.request.runtime_config.schema_leaves`), sets each key to a value other than its
default (in a context where the key can matter: ``allow-ldconfig-from-container`` only matters for an ldconfig
inside the container), and compares what the hook and the runtime shim then do with what they do without it:

- the hook: for a few containers (an unprivileged one asking through the environment, a swarm variable, a volume
  mount, IMEX and a requirement; one asking for a CDI name), NVIDIA's decision as :func:`nvc.commands.hook.plan_hook`
  makes it, and what each path carries out: the exec'd argv and environment, the in-process options and request;
- the shim: ``create`` of a GPU container in a scratch directory with recording runtimes and hooks on its PATH:
  which runtime it execs, the spec it writes, its debug log.

A key that changes neither must be in :data:`nvc.request.config_keys.IGNORED_KEYS` (and then appear in the debug log);
a key listed there must not change anything (the list would lie). A key someone adds to the schema without
giving it a reader or a reason fails here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nvc.commands.hook import exec_argv, exec_environment, plan_hook
from nvc.errors import NvcError
from nvc.request.config_keys import IGNORED_KEYS, ignored_settings
from nvc.request.runtime_config import RuntimeConfig, parse_config, schema_leaves

LEAVES = schema_leaves()
LOG_PLACEHOLDER = "@LOGDIR@"

CDI_MODE = {"nvidia-container-runtime": {"mode": "cdi"}}
# Keys whose generic probe (a flipped boolean, "/nvc-probe", ["nvc-probe"]) is not a valid or telling value:
# (context the key needs, the value to set).
PROBES = {
    "supported-driver-capabilities": ({}, "utility"),
    "swarm-resource": ({}, "DOCKER_RESOURCE_GPU"),
    "nvidia-container-cli.root": ({}, "/run/nvidia/driver"),
    "nvidia-container-cli.user": ({}, "0:0"),
    "nvidia-container-cli.environment": ({}, ["CUDA_MPS_PIPE_DIRECTORY=/run/mps"]),
    "nvidia-container-cli.ldconfig": ({}, "@/opt/sbin/ldconfig"),
    "nvidia-container-runtime.debug": ({}, f"{LOG_PLACEHOLDER}/runtime.log"),
    "nvidia-container-runtime.mode": ({}, "cdi"),
    "nvidia-container-runtime.runtimes": ({}, ["crun"]),
    "nvidia-container-runtime.modes.legacy.cuda-compat-mode": ({}, "mount"),
    # the CDI mode's keys act in cdi mode (nvc/commands/cdi_shim_mode.py): the device names, and which specs are read
    "nvidia-container-runtime.modes.cdi.default-kind": (CDI_MODE, "example.com/probe"),
    "nvidia-container-runtime.modes.cdi.annotation-prefixes": (CDI_MODE, ["nvc.probe/"]),
    "nvidia-container-runtime.modes.cdi.spec-dirs": (CDI_MODE, ["/nvc-probe"]),
    "nvidia-container-runtime-hook.path": ({}, "nvidia-container-toolkit"),
    "features.allow-ldconfig-from-container": ({"nvidia-container-cli": {"ldconfig": "/sbin/ldconfig"}}, True),
    "features.allow-cuda-compat-libs-from-container": (
        {"nvidia-container-runtime": {"modes": {"legacy": {"cuda-compat-mode": ""}}}}, True),
}

SPEC_ENVS = [
    ["NVIDIA_VISIBLE_DEVICES=0", "DOCKER_RESOURCE_GPU=1", "NVIDIA_IMEX_CHANNELS=0",
     "NVIDIA_REQUIRE_CUDA=cuda>=12.0"],
    ["NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=0"],
]
VOLUME_MOUNT = {"source": "/dev/null", "destination": "/var/run/nvidia-container-devices/2", "type": "bind"}


def _spec(env: list[str]) -> dict:
    # The annotation is under no default CDI annotation prefix: only the annotation-prefixes probe makes it count.
    return {"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "mounts": [VOLUME_MOUNT],
            "process": {"env": env, "capabilities": {"bounding": ["CAP_CHOWN"]}},
            "annotations": {"nvc.probe/gpu": "nvidia.com/gpu=1"}}


def _toml(table: dict, prefix: str = "") -> str:
    """A small TOML writer for nested tables of booleans, strings and string arrays."""
    scalars = [f"{key} = {json.dumps(value)}" for key, value in table.items() if not isinstance(value, dict)]
    lines = ([f"[{prefix}]"] if prefix and scalars else []) + scalars
    for key, value in table.items():
        if isinstance(value, dict):
            lines.append(_toml(value, f"{prefix}.{key}" if prefix else key))
    return "\n".join(line for line in lines if line) + "\n"


def _set(table: dict, dotted: str, value: object) -> dict:
    out = json.loads(json.dumps(table))
    node = out
    *parents, last = dotted.split(".")
    # NVIDIA's table names contain dots only as separators, except none do: split is exact here.
    for name in parents:
        node = node.setdefault(name, {})
    node[last] = value
    return out


def _probe(key: str, path: tuple[str, ...]) -> tuple[dict, object]:
    if key in PROBES:
        return PROBES[key]
    default = RuntimeConfig()
    for name in path:
        default = getattr(default, name)
    if isinstance(default, bool):
        return {}, not default
    if isinstance(default, str):
        return {}, "/nvc-probe"
    if isinstance(default, tuple):
        return {}, ["nvc-probe"]
    raise AssertionError(f"{key}: no probe for a {type(default).__name__}; add one to PROBES")


def _no_real(path: str) -> bool:
    return False


def hook_outcome(text: str) -> object:
    """What the hook decides and carries out, for each container, with this config.toml."""
    try:
        config = parse_config(text, "config.toml", path_exists=_no_real)
    except NvcError as exc:
        return ("config refused", exc.message)
    outcome = []
    for env in SPEC_ENVS:
        try:
            invocation = plan_hook(config, {"pid": 42}, _spec(env), "/b")
        except NvcError as exc:
            outcome.append(("refused", exc.message))
            continue
        if invocation is None:
            outcome.append("not a GPU container")
            continue
        outcome.append((exec_argv(config, invocation), exec_environment({}, invocation), invocation.options,
                        invocation.request, dict(invocation.environment)))
    return outcome


RECORDER = "#!/bin/sh\nexit 0\n"


def shim_outcome(text: str, work: Path) -> object:
    """What ``nvidia-container-runtime create`` does with this config.toml: runtime, written spec, debug logs."""
    from nvc.commands.runtime_shim import prepare_create

    work.mkdir(parents=True)
    bindir, logdir, bundle = work / "bin", work / "logs", work / "bundle"
    for directory in (bindir, logdir, bundle / "rootfs"):
        directory.mkdir(parents=True)
    for name in ("runc", "crun", "nvidia-container-runtime-hook", "nvidia-container-toolkit"):
        (bindir / name).write_text(RECORDER)
        (bindir / name).chmod(0o755)
    (bundle / "config.json").write_text(json.dumps(_spec(SPEC_ENVS[0])))
    config = work / "config.toml"
    config.write_text(text.replace(LOG_PLACEHOLDER, str(logdir)))
    environ = {"PATH": str(bindir), "NVIDIA_CTK_CONFIG_FILE_PATH": str(config), "NVC_NO_CACHE": "1"}
    try:
        runtime = prepare_create(["create", "--bundle", str(bundle), "probe"], 0, environ)
    except NvcError as exc:
        return ("refused", exc.message)
    spec = json.loads((bundle / "config.json").read_text())
    hooks = [(stage, [os.path.basename(h["path"]) for h in entries]) for stage, entries in
             sorted((spec.get("hooks") or {}).items())]
    return os.path.basename(runtime), hooks, sorted(os.listdir(logdir))


@pytest.mark.parametrize(("key", "path"), LEAVES, ids=[key for key, _ in LEAVES])
def test_every_key_is_read_or_reported_ignored(key, path, tmp_path):
    context, value = _probe(key, path)
    base_text, probe_text = _toml(context), _toml(_set(context, key, value))
    changed = hook_outcome(probe_text) != hook_outcome(base_text)
    if not changed:
        changed = shim_outcome(probe_text, tmp_path / "probe") != shim_outcome(base_text, tmp_path / "base")
    if key in IGNORED_KEYS:
        assert not changed, f"{key} is listed in IGNORED_KEYS but changes what nvc does: take it off the list"
        config = parse_config(probe_text, "config.toml", path_exists=_no_real)
        lines = ignored_settings(config)
        assert [line for line in lines if f" {key} = " in line] == [
            f"config.toml: {key} = {_format(value)} is ignored: {IGNORED_KEYS[key]}"]
        assert ignored_settings(parse_config(base_text, "config.toml", path_exists=_no_real)) == []
    else:
        assert changed, (f"config key {key} is parsed but changes nothing the hook or the runtime does: make it "
                         "act, or add it to nvc.request.config_keys.IGNORED_KEYS with the reason (logged as ignored)")


def _format(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_format(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"'


def test_ignored_keys_are_schema_keys():
    assert set(IGNORED_KEYS) <= {key for key, _ in LEAVES}


def test_schema_walk_sees_nested_tables():
    keys = {key for key, _ in LEAVES}
    assert {"disable-require", "nvidia-container-cli.environment", "nvidia-container-runtime.modes.cdi.spec-dirs",
            "nvidia-container-runtime.modes.legacy.cuda-compat-mode", "features.disable-imex-channel-creation",
            "nvidia-container-runtime-hook.skip-mode-detection"} <= keys
    assert "source" not in keys
    assert dict(LEAVES)["nvidia-container-runtime.modes.legacy.cuda-compat-mode"] == (
        "runtime", "modes", "legacy", "cuda_compat_mode")
