"""``nvidia-container-runtime-hook``: the OCI prestart/createRuntime hook, injecting in-process.

``nvidia-container-runtime-hook [-config FILE] [-debug] prestart|createRuntime|poststart|poststop``: read
config.toml, then the container state from stdin, then ``<bundle>/config.json``; decide from the container's
environment whether it is a GPU container and what it gets (:mod:`nvc.request.container_env`); then configure it in this
very process — no second interpreter, no exec of a CLI — unless ``[nvidia-container-cli] path`` names an external
CLI, which is then exec'd with NVIDIA's argv. Both paths carry out one decision (:func:`plan_hook`, a
:class:`~nvc.request.container_request.CliInvocation`), so each config key means the same on both. The container's
environment is only ever *read*: nothing from it reaches a process we start. Not a GPU container → exit 0, nothing
done; a malformed input → one ``input error`` line and exit 1.

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
    """The container state on stdin: a JSON object, or ``input error: failed to decode container state: ...``
    whatever the bytes are (not JSON, not UTF-8, nested too deeply, huge)."""
    try:
        state = jsonfast.load(stream)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NvcError("input", f"failed to decode container state: {exc}") from None
    except RecursionError:
        raise NvcError("input", "failed to decode container state: nested too deeply") from None
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
    except (ValueError, UnicodeDecodeError) as exc:  # also open()'s "embedded null byte"
        raise NvcError("input", f"failed to decode OCI spec: {path}: {exc}") from None
    except RecursionError:
        raise NvcError("input", f"failed to decode OCI spec: {path}: nested too deeply") from None
    if not isinstance(spec, dict):
        raise NvcError("input", f"failed to decode OCI spec: {path}: not a JSON object")
    return spec


def state_bundle(state: dict) -> str:
    """The bundle directory: ``bundle``, else very old Docker's ``bundlePath``, else the current directory (runc
    starts hooks in the bundle)."""
    bundle = state.get("bundle") or state.get("bundlePath") or os.getcwd()
    if not isinstance(bundle, str):
        raise NvcError("input", "failed to decode container state: bundle is not a string")
    if "\0" in bundle:
        raise NvcError("input", "failed to decode container state: bundle path contains a NUL byte")
    return bundle


def state_pid(state: dict) -> int:
    """The container's pid: a positive JSON integer (``true`` is not one, though Python calls it 1)."""
    pid = state.get("pid")
    if type(pid) is not int or pid <= 0:
        raise NvcError("input", "container state has no valid pid")
    return pid


def container_rootfs(state: dict, spec: dict, bundle: str) -> str:
    """The rootfs path: crun's state ``root`` wins (it is right under ``--userns nomap``), else ``root.path``;
    relative paths are relative to the bundle."""
    root = state.get("root")
    if isinstance(root, str) and "\0" in root:
        raise NvcError("input", "failed to decode container state: root contains a NUL byte")
    if not isinstance(root, str) or not root:
        spec_root = spec.get("root")
        root = spec_root.get("path") if isinstance(spec_root, dict) else None
    if not isinstance(root, str) or not root:
        raise NvcError("input", "OCI spec has no root.path")
    if "\0" in root:
        raise NvcError("input", "OCI spec root.path contains a NUL byte")
    return os.path.normpath(root if os.path.isabs(root) else os.path.join(bundle, root))


def plan_hook(config, state: dict, spec: dict, bundle: str, *, debug_flag: bool = False):
    """What NVIDIA's hook decides for this container, in its order, without acting: None for a container that
    asks for no GPU, else the :class:`~nvc.request.container_request.CliInvocation` both of our paths carry out. Raises
    ``NvcError`` with NVIDIA's message where NVIDIA's hook refuses (the environment rules, the runtime mode)."""
    from nvc.request.container_env import check_hook_mode, gpu_request_from_spec
    from nvc.request.container_request import cli_argv, cli_invocation

    gpu = gpu_request_from_spec(spec, config)
    if gpu is None:
        return None
    check_hook_mode(config, gpu)
    pid = state_pid(state)
    invocation = cli_invocation(gpu, config, container_rootfs(state, spec, bundle), pid, debug_flag=debug_flag)
    for arg in cli_argv(config.cli.path or "nvidia-container-cli", config, invocation):
        if "\0" in arg:  # exec cannot pass it, and no path or device name holds one
            raise NvcError("input", f"invalid argument for nvidia-container-cli (NUL byte): {arg!r}")
    return invocation


def exec_argv(config, invocation) -> list[str] | None:
    """The argv to exec when ``[nvidia-container-cli] path`` names a CLI; None: the CLI runs in this process."""
    from nvc.request.container_request import cli_argv

    return cli_argv(config.cli.path, config, invocation) if config.cli.path else None


def exec_environment(environ, invocation) -> dict[str, str]:
    """The exec'd CLI's environment: the hook's own, less what must never reach a host process we start, plus
    ``[nvidia-container-cli] environment`` (the administrator's, so a name set there wins over the hook's)."""
    env = safe_environment(environ)
    env.update(invocation.environment)
    return env


def safe_environment(environ) -> dict[str, str]:
    return {k: v for k, v in environ.items() if not k.startswith(_UNSAFE_ENV_PREFIXES)}


def open_debug_log(target: str | None):
    """The hook's log, written where the CLI's ``--debug`` goes: stderr itself for ``-debug``."""
    from nvc.debuglog import DebugLog
    from nvc.request.container_request import DEBUG_FLAG_TARGET

    if target == DEBUG_FLAG_TARGET:
        return DebugLog(None, stream=sys.stderr)
    return DebugLog(target)


def prepare_hook(config_path: str | None, debug: bool, stdin, environ):
    """Everything NVIDIA's hook reads and decides, in its order, before it acts: (config, debug log, invocation or
    None). Every malformed input (config.toml, the state on stdin, config.json) ends here as one ``NvcError``."""
    from nvc.request.container_request import debug_target
    from nvc.request.runtime_config import load_config

    config = load_config(config_path, environ)
    log = open_debug_log(debug_target(config, debug))
    if log.enabled:
        from nvc.request.config_keys import ignored_settings

        for line in ignored_settings(config):
            log.warning(line, where="hook")
    state = read_state(stdin)
    bundle = state_bundle(state)
    spec = load_spec(bundle)
    return config, log, plan_hook(config, state, spec, bundle, debug_flag=debug)


def run_hook(argv: list[str], stdin, environ, exec_cli=None) -> int:
    """The hook's work. ``exec_cli(path, argv, env)`` replaces :func:`os.execve` for an external CLI (the resident
    helper declines such a start instead: see :mod:`nvc.commands.hook_helper`)."""
    config_path, debug, stage = parse_args(argv)
    if stage in NOOP_STAGES:
        return 0
    if stage not in INJECT_STAGES:
        raise HookUsageError(f"unknown stage: {stage}" if stage else "missing stage")
    config, log, invocation = prepare_hook(config_path, debug, stdin, environ)
    if invocation is None:
        if not log.enabled:  # the launcher's pre-filter may skip the next such container (a debug log sees all)
            from nvc.commands.prefilter_memo import remember_hook_config

            remember_hook_config(config_path, environ, config)
        log.info("not a GPU container: nothing to do", where="hook")
        return 0
    request = invocation.request
    from nvc.request.gvisor import SANDBOX_NAME, process_name

    if process_name(request.pid) == SANDBOX_NAME:
        raise NvcError(
            "container",
            "this container runs in gVisor (runsc): a hook cannot inject into the sandbox; run runsc with "
            "--nvproxy (and --nvproxy-docker) and register the hook as .../nvidia-container-runtime-hook so "
            "runsc calls nvidia-container-cli itself",
        )
    log.info(f"{stage}: container pid {request.pid}, rootfs {request.rootfs}, devices "
             f"{','.join(request.devices) or 'none'}, capabilities "
             f"{','.join(sorted(c.value for c in request.capabilities))}", where="hook")
    argv_out = exec_argv(config, invocation)
    if argv_out is not None:
        log.info(f"exec {' '.join(argv_out)}", where="hook")
        sys.stdout.flush()
        (exec_cli or os.execve)(argv_out[0], argv_out, exec_environment(environ, invocation))
    # In-process, this process is the CLI: the environment the exec'd CLI would get is this process's
    # (os.environ writes through to the C environment, so the NVML helper and anything exec'd inherit it too).
    os.environ.update(invocation.environment)
    from nvc.commands.configure import configure_container

    for line in configure_container(invocation.options, request, log=log):
        print(line, file=sys.stderr)
    return 0


def main(argv: list[str] | None = None, *, exec_cli=None) -> int:
    """Console-script entry point: one line on stderr and exit 1 on any failure (runc shows it to the user)."""
    from nvc.errors import run_reporting_errors

    if argv is None:  # run as the program (nvc/oneshot.py)
        from nvc import oneshot

        oneshot.begin()
    args = sys.argv[1:] if argv is None else argv

    def run() -> int:
        try:
            # Bytes, not text: the state is decoded as JSON decodes it (a BOM, UTF-16), not by the locale.
            return run_hook(args, getattr(sys.stdin, "buffer", sys.stdin), os.environ, exec_cli)
        except HookUsageError as exc:
            if str(exc):
                sys.stderr.write(f"{PROG}: {exc}\n")
            sys.stderr.write(USAGE)
            return 2

    code = run_reporting_errors(PROG, run)
    return oneshot.end(code) if argv is None else code


if __name__ == "__main__":
    sys.exit(main())
