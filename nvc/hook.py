"""``nvidia-container-runtime-hook``: the OCI prestart/createRuntime hook, injecting in-process.

``nvidia-container-runtime-hook [-config FILE] [-debug] prestart|createRuntime|poststart|poststop``: read
config.toml, then the container state from stdin, then ``<bundle>/config.json``; decide from the container's
environment whether it is a GPU container and what it gets (:mod:`nvc.container_env`); then configure it in this
very process — no second interpreter, no exec of a CLI — unless ``[nvidia-container-cli] path`` names an external
CLI, which is then exec'd with NVIDIA's argv. The container's environment is only ever *read*: nothing from it
reaches a process we start. Not a GPU container → exit 0, nothing done.

Go-style flags (``-config=F``, ``-config F``, ``--config F``, ``-debug``) are parsed by hand: this is the hot path
of every container start and must not import click.
"""

from __future__ import annotations

import os
import sys

from nvc import jsonfast
from nvc.errors import NvcError

PROG = "nvidia-container-runtime-hook"
INJECT_STAGES = ("prestart", "createRuntime")
NOOP_STAGES = ("poststart", "poststop", "createContainer", "startContainer")
USAGE = f"Usage: {PROG} [-config FILE] [-debug] prestart|createRuntime|poststart|poststop\n"
# Variables that must never reach a host process we exec, whatever environment the runtime gave us.
_UNSAFE_ENV_PREFIXES = ("LD_", "PYTHON", "GCONV_PATH", "MALLOC_")


class HookUsageError(Exception):
    pass


def parse_args(argv: list[str]) -> tuple[str | None, bool, str | None]:
    """(config path, debug, stage) from Go ``flag``-style arguments."""
    config: str | None = None
    debug = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--" or not arg.startswith("-") or arg == "-":
            if arg == "--":
                i += 1
            break
        name, eq, value = arg.lstrip("-").partition("=")
        if name == "config":
            if not eq:
                i += 1
                if i >= len(argv):
                    raise HookUsageError("flag needs an argument: -config")
                value = argv[i]
            config = value
        elif name == "debug":
            debug = value.lower() in ("", "1", "t", "true") if eq else True
        elif name in ("h", "help"):
            raise HookUsageError("")
        else:
            raise HookUsageError(f"flag provided but not defined: -{name}")
        i += 1
    rest = argv[i:]
    return config, debug, rest[0] if rest else None


def read_state(stream) -> dict:
    try:
        state = jsonfast.load(stream)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NvcError("input", f"failed to decode container state: {exc}") from None
    if not isinstance(state, dict):
        raise NvcError("input", "failed to decode container state: not a JSON object")
    return state


def load_spec(bundle: str) -> dict:
    """``<bundle>/config.json``, read leniently: only the fields the decision needs must be well-formed."""
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            spec = jsonfast.loads(f.read())
    except OSError as exc:
        raise NvcError("input", f"failed to read OCI spec: {path}: {(exc.strerror or '').lower()}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise NvcError("input", f"failed to decode OCI spec: {path}: {exc}") from None
    if not isinstance(spec, dict):
        raise NvcError("input", f"failed to decode OCI spec: {path}: not a JSON object")
    return spec


def container_rootfs(state: dict, spec: dict, bundle: str) -> str:
    """The rootfs path: crun's state ``root`` wins (it is right under ``--userns nomap``), else ``root.path``;
    relative paths are relative to the bundle."""
    root = state.get("root")
    if not isinstance(root, str) or not root:
        spec_root = spec.get("root")
        root = spec_root.get("path") if isinstance(spec_root, dict) else None
    if not isinstance(root, str) or not root:
        raise NvcError("input", "OCI spec has no root.path")
    return os.path.normpath(root if os.path.isabs(root) else os.path.join(bundle, root))


def external_cli_argv(cli_path: str, config, request, pid: int, rootfs: str, debug: str | None) -> list[str]:
    """NVIDIA's hook argv for an external ``nvidia-container-cli`` (oci-hook.md)."""
    cli = config.cli
    argv = [cli_path]
    if cli.root:
        argv.append(f"--root={cli.root}")
    if cli.load_kmods:
        argv.append("--load-kmods")
    if cli.no_pivot:
        argv.append("--no-pivot")
    if debug:
        argv.append(f"--debug={debug}")
    if cli.ldcache:
        argv.append(f"--ldcache={cli.ldcache}")
    if cli.user:
        argv.append(f"--user={cli.user}")
    argv.append("configure")
    if request.cuda_compat_mode:
        argv.append(f"--cuda-compat-mode={request.cuda_compat_mode}")
    if request.ldconfig:
        argv.append(f"--ldconfig={request.ldconfig}")
    if request.no_cgroups:
        argv.append("--no-cgroups")
    if request.devices:
        argv.append(f"--device={','.join(request.devices)}")
    if request.mig_config:
        argv.append(f"--mig-config={','.join(request.mig_config)}")
    if request.mig_monitor:
        argv.append(f"--mig-monitor={','.join(request.mig_monitor)}")
    if request.imex_channels:
        argv.append(f"--imex-channel={','.join(request.imex_channels)}")
    argv.extend(f"--{cap.value}" for cap in sorted(request.capabilities, key=lambda c: c.value))
    argv.extend(f"--require={req}" for req in request.requirements)
    argv.extend([f"--pid={pid}", rootfs])
    return argv


def safe_environment(environ) -> dict[str, str]:
    return {k: v for k, v in environ.items() if not k.startswith(_UNSAFE_ENV_PREFIXES)}


def run_hook(argv: list[str], stdin, environ) -> int:
    config_path, debug, stage = parse_args(argv)
    if stage in NOOP_STAGES:
        return 0
    if stage not in INJECT_STAGES:
        raise HookUsageError(f"unknown stage: {stage}" if stage else "missing stage")
    from nvc.container_env import gpu_request_from_spec
    from nvc.container_request import configure_request_from_gpu, global_options_from_config
    from nvc.debuglog import DebugLog
    from nvc.runtime_config import load_config
    config = load_config(config_path, environ)
    log_path = config.cli.debug or None
    log = DebugLog(log_path, stream=sys.stderr if debug else None)
    state = read_state(stdin)
    bundle = state.get("bundle") or state.get("bundlePath") or os.getcwd()
    pid = state.get("pid")
    if not isinstance(bundle, str) or not isinstance(pid, int) or pid <= 0:
        raise NvcError("input", "container state has no valid pid/bundle")
    spec = load_spec(bundle)
    gpu = gpu_request_from_spec(spec, config)
    if gpu is None:
        log.info("not a GPU container: nothing to do", where="hook")
        return 0
    from nvc.gvisor import SANDBOX_NAME, process_name

    if process_name(pid) == SANDBOX_NAME:
        raise NvcError(
            "container",
            "this container runs in gVisor (runsc): a hook cannot inject into the sandbox; run runsc with "
            "--nvproxy (and --nvproxy-docker) and register the hook as .../nvidia-container-runtime-hook so "
            "runsc calls nvidia-container-cli itself",
        )
    rootfs = container_rootfs(state, spec, bundle)
    request = configure_request_from_gpu(gpu, config, rootfs, pid)
    log.info(f"{stage}: container pid {pid}, rootfs {rootfs}, devices {','.join(gpu.devices) or 'none'}, "
             f"capabilities {','.join(sorted(c.value for c in gpu.capabilities))}", where="hook")
    if config.cli.path:
        argv_out = external_cli_argv(config.cli.path, config, request, pid, rootfs, log_path)
        log.info(f"exec {' '.join(argv_out)}", where="hook")
        sys.stdout.flush()
        os.execve(config.cli.path, argv_out, safe_environment(environ))
    from nvc.configure import configure_container

    opts = global_options_from_config(config)
    for line in configure_container(opts, request, log=log):
        print(line, file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: one line on stderr and exit 1 on any failure (runc shows it to the user)."""
    from nvc.errors import run_reporting_errors

    args = sys.argv[1:] if argv is None else argv

    def run() -> int:
        try:
            return run_hook(args, sys.stdin, os.environ)
        except HookUsageError as exc:
            if str(exc):
                sys.stderr.write(f"{PROG}: {exc}\n")
            sys.stderr.write(USAGE)
            return 2

    return run_reporting_errors(PROG, run)


if __name__ == "__main__":
    sys.exit(main())
