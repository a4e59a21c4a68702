"""``nvidia-container-runtime``: a runc-compatible shim that gives GPU containers the driver, then execs the real
runtime (also ``nvc runtime``).

``nvidia-container-runtime [global flags] COMMAND [flags] [ID]``. On ``create`` and ``run`` it loads
``<bundle>/config.json`` and config.toml, decides from the container's environment whether this is a GPU
container (:func:`nvc.request.container_env.gpu_request_from_spec`, NVIDIA's rules) and, if it is, edits the spec:

* ``legacy`` mode: add the prestart hook ``nvidia-container-runtime-hook prestart`` (absolute path, found in PATH)
  unless an NVIDIA hook is already there — the hook injects when runc/crun run it;
* ``cdi`` mode (and ``auto`` when the request names CDI devices): the edits of the requested CDI devices from the
  host's spec files, applied to the spec as podman or containerd would (:mod:`nvc.commands.cdi_shim_mode`);
* ``spec`` mode (also what ``jit-cdi`` selects here): plan in-process and merge the plan as spec edits
  (:mod:`nvc.emit.oci_edits`: bind mounts, ``linux.devices``, cgroup rules, a merged ld.so.cache written next to
  config.json). This is the only path that works under gVisor's runsc, which never runs a hook where its mounts
  could reach the sandbox;
* ``auto``: spec edits when the low-level runtime is runsc, the hook otherwise.

config.json is written back atomically, then the first runtime of config.toml's ``runtimes`` (default runc, crun)
found in PATH is exec'd with the original arguments. Every other command (start, state, kill, delete, ...) is
exec'd at once: no spec, no plan, no heavy imports — this runs for every container operation. Only the
``runtimes`` list is read from config.toml there (when the file exists), because ``delete`` must reach the same
runtime ``create`` did.

Global flags of runc, crun and runsc pass through untouched; to find the command we skip them, knowing which take
a value (``--root DIR`` as well as ``--root=DIR``). Nothing of the container's environment (``process.env``)
reaches a process we exec: the runtime gets this process's own environment. Failures are one line,
``nvidia-container-runtime: <stage> error: ...``, and exit 1; never a traceback.
"""

from __future__ import annotations

import os
import sys

from nvc.errors import NvcError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: typing (and collections.abc) cost ~10 ms of every Python start
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from nvc.debuglog import DebugLog
    from nvc.request.container_env import GpuRequest
    from nvc.request.runtime_config import RuntimeConfig

PROG = "nvidia-container-runtime"
DEFAULT_RUNTIMES = ("runc", "crun")
#: Commands whose spec we edit; everything else is passed straight through.
MODIFY_COMMANDS = frozenset({"create", "run"})
HOOK_NAMES = ("nvidia-container-runtime-hook", "nvidia-container-toolkit")
HOOK_STAGE_KEYS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
SPEC_MODES = frozenset({"spec", "cdi", "jit-cdi"})
HOOK_MODES = frozenset({"legacy"})
#: Where NVIDIA's shim also looks for the hook when PATH lacks it.
FALLBACK_BIN_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")

#: Global flags (runc, crun, runsc; with one or two dashes) that take a value, so ``--flag VALUE`` is two words.
VALUE_FLAGS = frozenset({
    # runc / crun
    "root", "log", "log-format", "log-level", "criu", "rootless", "cgroup-manager",
    # runsc (Go flag package: -flag VALUE or -flag=VALUE)
    "debug-log", "panic-log", "coverage-log", "debug-log-format", "log-fd", "debug-log-fd", "panic-log-fd",
    "platform", "platform_device_path", "network", "file-access", "file-access-mounts", "overlay2", "watchdog-action",
    "panic-signal", "strace-syscalls", "strace-log-size", "num-network-channels", "ref-leak-mode", "host-uds",
    "host-fifo", "traceback", "qdisc", "gso", "cgroupfs", "dcache", "profile-block", "profile-cpu", "profile-heap",
    "profile-mutex", "trace", "metric-server", "final-metrics-log", "pod-init-config", "reproduce-nat",
    "nvproxy-driver-version", "nvproxy-allowed-driver-capabilities", "config", "host-settings",
    "allow-packet-endpoint-write", "fdlimit", "profiling-metrics", "profiling-metrics-log", "profiling-metrics-rate-us",
    "stdioFDs", "user-log", "net-disconnect-ok",
})
#: Words that can be the command: an unknown flag followed by one of these is taken as a boolean flag.
KNOWN_COMMANDS = frozenset({
    "checkpoint", "create", "delete", "events", "exec", "features", "init", "kill", "list", "pause", "ps",
    "restore", "resume", "run", "spec", "start", "state", "update", "help", "h", "boot", "gofer", "debug", "do",
    "flags", "install", "uninstall", "wait", "port-forward", "symbolize", "syscalls", "usage", "mitigate", "tar",
    "trace", "nvproxy", "platforms", "metric-metadata", "metric-export", "metric-server", "version",
})
#: ``create``/``run`` flags naming the bundle.
BUNDLE_FLAGS = ("bundle", "b")


# --- argv -------------------------------------------------------------------------------------------------------


def _flag_name(arg: str) -> tuple[str, bool]:
    """(name without dashes, whether ``=value`` is attached)."""
    name, eq, _ = arg.lstrip("-").partition("=")
    return name, bool(eq)


def find_command(argv: list[str]) -> int | None:
    """Index of the command in ``argv`` (the first word that is neither a flag nor a flag's value), or None.

    A known value-taking flag without ``=`` consumes the next word. An unknown flag is taken as boolean unless
    the word after it is not a command either, in which case that word was its value.
    """
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return i + 1 if i + 1 < len(argv) else None
        if not arg.startswith("-") or arg == "-":
            return i
        name, attached = _flag_name(arg)
        if not attached and name in VALUE_FLAGS:
            i += 2
            continue
        if (not attached and name not in VALUE_FLAGS and i + 1 < len(argv) and not argv[i + 1].startswith("-")
                and argv[i + 1] not in KNOWN_COMMANDS):
            i += 2  # an unknown flag with a value: "--new-flag VALUE COMMAND"
            continue
        i += 1
    return None


def find_bundle(argv: list[str], command_index: int, cwd: str | None = None) -> str:
    """The bundle of ``create``/``run``: ``--bundle B``, ``-b B``, ``--bundle=B``, ``-bundle B`` (runsc), else
    the current directory; relative paths are relative to it."""
    base = cwd or os.getcwd()
    bundle = None
    args = argv[command_index + 1:]
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            break
        if arg.startswith("-"):
            name, attached = _flag_name(arg)
            if name in BUNDLE_FLAGS:
                if attached:
                    bundle = arg.split("=", 1)[1]
                elif i + 1 < len(args):
                    bundle = args[i + 1]
                    i += 1
        i += 1
    return os.path.normpath(os.path.join(base, bundle)) if bundle else base


# --- runtime lookup ---------------------------------------------------------------------------------------------


def path_candidates(name: str, path: str | None, fallback: tuple[str, ...] = ()) -> list[str]:
    """Where :func:`which` looks for ``name``, in order: the name itself when it holds a ``/``, else each PATH
    directory (an empty entry is the working directory), then ``fallback``."""
    if "/" in name:
        return [name]
    return [os.path.join(directory or ".", name) for directory in [*(path or "").split(os.pathsep), *fallback]]


def is_executable_file(path: str) -> bool:
    """What :func:`which` accepts: executable for us and not a directory."""
    return os.access(path, os.X_OK) and not os.path.isdir(path)


def which(name: str, path: str | None, fallback: tuple[str, ...] = ()) -> str | None:
    """``name`` as an executable: an absolute path is taken as is (if executable), else searched in PATH (then in
    ``fallback``). No shutil: this runs on the pass-through path."""
    for candidate in path_candidates(name, path, fallback):
        if is_executable_file(candidate):
            return candidate if os.path.isabs(candidate) and "/" not in name else os.path.abspath(candidate)
    return None


# --- the memo the shim's sh launcher decides from (nvc.prefilter's docstring: format, rules) -----------
# Written here, next to which(): the memo must name exactly the runtime which() would find.

def remember_shim_decision(
    environ: Mapping[str, str], config: RuntimeConfig, runtime: str, me: str | None
) -> None:
    """After the shim's ``create``/``run`` loaded ``config`` and found ``runtime``: write the memo its sh launcher
    decides from (:mod:`nvc.prefilter`'s docstring). Never raises; writes only when the memo changes."""
    try:
        _remember_shim_decision(environ, config, runtime, me)
    except Exception:  # a memo we cannot write only costs the next call a Python start
        pass


def shim_memo_lines(
    environ: Mapping[str, str], config: RuntimeConfig, runtime: str, me: str | None
) -> tuple[list[str], int | None] | None:
    """The memo's lines (without the markers line) and the mtime it must carry; None when the decision must not
    be memoised: it depends on the working directory, on this shim's own path, on a debug log that must see every
    call, or on a config.toml that changed too recently."""
    from nvc import prefilter
    from nvc.config_location import CONFIG_PATH_ENV, XDG_CONFIG_HOME_ENV, config_file_path

    if config.runtime.debug not in ("", "/dev/null") or me is None:
        return None
    path, required = config_file_path(environ)
    identity = prefilter.config_identity(path)
    if (not os.path.isabs(path) or identity is False or (identity is None and required)
            or not prefilter.settled(identity)):
        return None
    lines = [prefilter.SHIM_MEMO_MAGIC, f"ctk {environ.get(CONFIG_PATH_ENV, '')}",
             f"xdg {environ.get(XDG_CONFIG_HOME_ENV, '')}", f"path {environ.get('PATH', '')}", f"config {path}",
             "absent" if identity is None else "file"]
    hit = None
    for name in config.runtime.runtimes:
        if "/" in name and os.path.abspath(name) != name:
            return None  # which() checks the name but returns it normalised: sh could not tell them apart
        for candidate in path_candidates(name, environ.get("PATH")):
            if not os.path.isabs(candidate):
                return None  # found relative to the working directory
            if is_executable_file(candidate):
                if os.path.realpath(candidate) == me:
                    return None
                hit = candidate
                break
            lines.append(f"skip {candidate}")
        if hit is not None:
            break
    if hit != runtime:
        return None
    lines.append(f"runtime {hit}")
    if any("\n" in line for line in lines):
        return None
    return lines, None if identity is None else identity[3]


def _remember_shim_decision(
    environ: Mapping[str, str], config: RuntimeConfig, runtime: str, me: str | None
) -> None:
    from nvc import prefilter
    from nvc.atomic_write import replace_file
    from nvc.commands.prefilter_memo import markers_for
    from nvc.host.nvml import cache as store

    if store.caching_disabled(environ):
        return
    found = shim_memo_lines(environ, config, runtime, me)
    if found is None:
        return
    lines, mtime_ns = found
    patterns = ("\n".join(markers_for(config)) + "\n").encode()
    pattern_name = prefilter.SHIM_MARKERS_PREFIX + store.sha256_hex(patterns)[:32] + prefilter.SHIM_MARKERS_SUFFIX
    memo = ("\n".join([*lines[:-1], f"markers {pattern_name}", lines[-1], "end"]) + "\n").encode()
    dir_fd = store.open_cache_dir(store.cache_dir_path(environ=environ))
    if dir_fd is None:
        return
    try:
        if store.read_private_file(dir_fd, pattern_name) != patterns:
            replace_file(pattern_name, patterns, 0o600, dir_fd=dir_fd)
            _drop_other_pattern_files(dir_fd, keep=pattern_name)
        memo_name = prefilter.SHIM_MEMO
        if store.read_private_file(dir_fd, memo_name) == memo and (
            mtime_ns is None or os.stat(memo_name, dir_fd=dir_fd, follow_symlinks=False).st_mtime_ns == mtime_ns
        ):
            return
        replace_file(memo_name, memo, 0o600, dir_fd=dir_fd, mtime_ns=mtime_ns)
    finally:
        os.close(dir_fd)


def _drop_other_pattern_files(dir_fd: int, keep: str) -> None:
    """Marker files of earlier configs. A memo that still names one just sends its next call to Python."""
    from nvc import prefilter

    prefix, suffix = prefilter.SHIM_MARKERS_PREFIX, prefilter.SHIM_MARKERS_SUFFIX
    for name in os.listdir(dir_fd):
        if name != keep and name.startswith(prefix) and name.endswith(suffix):
            try:
                os.unlink(name, dir_fd=dir_fd)
            except OSError:
                pass


def _this_shim() -> str | None:
    return os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else None


def find_runtime(runtimes: tuple[str, ...] | list[str], environ: Mapping[str, str]) -> str:
    """The first of ``runtimes`` found (absolute entries as they are), never this shim itself."""
    me = _this_shim()
    for name in runtimes:
        found = which(name, environ.get("PATH"))
        if found and os.path.realpath(found) != me:
            return found
    raise NvcError("initialization", f"no low-level runtime found in PATH (looked for {', '.join(runtimes)})")


def passthrough_runtimes(environ: Mapping[str, str]) -> tuple[str, ...]:
    """``[nvidia-container-runtime] runtimes`` from config.toml without loading the whole config: the file is
    only opened when it exists, and only tomllib is imported. Unreadable or malformed → the defaults (the
    ``create`` path validates the file properly and reports errors there)."""
    from nvc.config_location import config_file_path

    path, _required = config_file_path(environ)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return DEFAULT_RUNTIMES
    import tomllib

    try:
        table = tomllib.loads(data.decode("utf-8")).get("nvidia-container-runtime", {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return DEFAULT_RUNTIMES
    runtimes = table.get("runtimes") if isinstance(table, dict) else None
    if isinstance(runtimes, list) and runtimes and all(isinstance(r, str) for r in runtimes):
        return tuple(runtimes)
    return DEFAULT_RUNTIMES


def is_runsc(runtime_path: str) -> bool:
    """gVisor's runtime, by name (``runsc``, ``/usr/bin/runsc``, ``runsc-gpu``...)."""
    return os.path.basename(runtime_path).startswith("runsc")


def exec_runtime(runtime_path: str, argv: list[str]) -> None:
    """Replace this process by the runtime with the original arguments and this process's environment."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(runtime_path, [runtime_path, *argv])
    except OSError as exc:
        raise NvcError("initialization", f"cannot exec {runtime_path}: {(exc.strerror or str(exc)).lower()}") from None


# --- the edits --------------------------------------------------------------------------------------------------


def effective_mode(mode: str, runtime_path: str) -> str:
    """``spec`` or ``legacy``: auto picks spec edits for runsc (it never runs a hook usefully), the hook else."""
    if mode == "auto":
        return "spec" if is_runsc(runtime_path) else "legacy"
    if mode in SPEC_MODES:
        return "spec"
    if mode in HOOK_MODES:
        return "legacy"
    raise NvcError("input", f"unsupported [nvidia-container-runtime] mode {mode!r} (auto, legacy, spec, cdi, jit-cdi)")


def has_nvidia_hook(spec: Mapping[str, Any]) -> bool:
    """An NVIDIA hook is already in the spec (Docker ``--gpus`` adds one): adding ours would inject twice."""
    hooks = spec.get("hooks")
    if not isinstance(hooks, dict):
        return False
    for stage in HOOK_STAGE_KEYS:
        for hook in hooks.get(stage) or []:
            path = hook.get("path") if isinstance(hook, dict) else None
            if isinstance(path, str) and path.rstrip("/").endswith(HOOK_NAMES):
                return True
    return False


def add_prestart_hook(spec: Mapping[str, Any], hook_path: str) -> dict[str, Any]:
    """``spec`` with NVIDIA's legacy prestart hook appended (NVIDIA's form: args = [basename, "prestart"])."""
    import copy

    out = copy.deepcopy(spec)
    hooks = out.get("hooks")
    if not isinstance(hooks, dict):
        hooks = out["hooks"] = {}
    prestart = hooks.get("prestart")
    hooks["prestart"] = [*(prestart if isinstance(prestart, list) else []),
                         {"path": hook_path, "args": [os.path.basename(hook_path), "prestart"]}]
    return out


def find_hook(config: RuntimeConfig, environ: Mapping[str, str]) -> str:
    """The hook's absolute path: ``[nvidia-container-runtime-hook] path``, searched in PATH then the usual bins."""
    name = config.hook.path or HOOK_NAMES[0]
    found = which(name, environ.get("PATH"), FALLBACK_BIN_DIRS)
    if found is None:
        raise NvcError("initialization", f"could not find {name} in PATH")
    return found


def _gvisor_capabilities(gpu: GpuRequest, spec: Mapping[str, Any]) -> GpuRequest:
    """runsc's rule: ``all`` (or the default) is limited to what nvproxy serves; an explicit capability outside
    it stays in the request and is refused by the planner, as runsc refuses it."""
    from nvc.record import replace
    from nvc.request.container_env import ENV_DRIVER_CAPABILITIES, parse_environment
    from nvc.request.gvisor import SUPPORTED_CAPABILITIES

    process = spec.get("process")
    env = parse_environment(process.get("env") if isinstance(process, dict) else None)
    requested = {item.strip() for item in env.get(ENV_DRIVER_CAPABILITIES, "").split(",") if item.strip()}
    if not requested or "all" in requested:
        return replace(gpu, capabilities=gpu.capabilities & SUPPORTED_CAPABILITIES)
    return gpu


def spec_with_edits(
    spec: dict[str, Any], gpu: GpuRequest, config: RuntimeConfig, bundle: str, gvisor: bool, log: DebugLog
) -> dict[str, Any]:
    """Plan in-process for the bundle's rootfs and merge the plan as spec edits; writes the merged ld.so.cache
    to ``<bundle>/nvc-ld.so.cache`` (mounted over the container's ``/etc/ld.so.cache``)."""
    from nvc.commands.hook import container_rootfs
    from nvc.emit.oci_edits import LDCACHE_FILE_NAME, apply_edits, edits_for_plan, write_file_atomic
    from nvc.plan.build import build_plan
    from nvc.record import replace
    from nvc.request.container_request import configure_request_from_gpu, global_options_from_config

    rootfs = container_rootfs({}, spec, bundle)
    if gvisor:
        gpu = _gvisor_capabilities(gpu, spec)
    request = configure_request_from_gpu(gpu, config, rootfs, None, gvisor=gvisor)
    if gvisor:
        # The sandbox cannot use a host unix socket through a bind mount (runsc refuses the mount: EPERM), and
        # nvproxy does not proxy persistenced/fabricmanager anyway.
        request = replace(request, no_persistenced=True, no_fabricmanager=True)
    plan = build_plan(global_options_from_config(config), request)
    ldcache_file = os.path.join(bundle, LDCACHE_FILE_NAME)
    edits = edits_for_plan(plan, ldcache_file)
    if edits.ldcache is not None:
        write_file_atomic(ldcache_file, edits.ldcache, 0o644)
    for note in (*plan.warnings, *edits.notes):
        log.info(note, where="runtime")
    log.info(f"spec edits: {len(edits.mounts)} mounts, {len(edits.devices)} devices", where="runtime")
    return apply_edits(spec, edits)


def write_spec(path: str, spec: Mapping[str, Any]) -> None:
    """config.json back in place by temp file + rename, keeping its mode."""
    from nvc import jsonfast  # json.dumps's output without importing json
    from nvc.atomic_write import replace_file  # not oci_edits' wrapper: that module loads the planner

    try:
        mode = os.stat(path).st_mode & 0o7777
    except OSError:
        mode = 0o644
    replace_file(os.path.abspath(path), jsonfast.dumps(spec).encode(), mode, fsync=True)


def prepare_create(argv: list[str], command_index: int, environ: Mapping[str, str]) -> str:
    """The ``create``/``run`` path: edit the bundle's spec when it is a GPU container; returns the runtime."""
    from nvc.commands.hook import load_spec
    from nvc.debuglog import DebugLog
    from nvc.request.container_env import gpu_request_from_spec
    from nvc.request.runtime_config import load_config

    config = load_config(None, environ)
    debug = config.runtime.debug
    log = DebugLog(debug if debug and debug != "/dev/null" else None)
    if log.enabled:
        from nvc.request.config_keys import ignored_settings

        for line in ignored_settings(config):
            log.warning(line, where="runtime")
    runtime = find_runtime(config.runtime.runtimes, environ)
    remember_shim_decision(environ, config, runtime, _this_shim())
    bundle = find_bundle(argv, command_index)
    spec = load_spec(bundle)
    from nvc.commands.cdi_shim_mode import cdi_request, spec_with_cdi_devices

    cdi_devices = cdi_request(spec, config)  # None: CDI mode does not apply (nvc/commands/cdi_shim_mode.py)
    if cdi_devices is not None:
        if cdi_devices:
            write_spec(os.path.join(bundle, "config.json"), spec_with_cdi_devices(spec, cdi_devices, config, log))
        log.info(f"cdi mode: {len(cdi_devices)} CDI device(s); exec {runtime}", where="runtime")
        return runtime
    gpu = gpu_request_from_spec(spec, config)
    if gpu is None:
        log.info(f"not a GPU container: exec {runtime} unchanged", where="runtime")
        return runtime
    mode = effective_mode(config.runtime.mode, runtime)
    if mode == "legacy":
        if has_nvidia_hook(spec):
            log.info("an NVIDIA hook is already in the spec", where="runtime")
            return runtime
        edited = add_prestart_hook(spec, find_hook(config, environ))
    else:
        edited = spec_with_edits(spec, gpu, config, bundle, is_runsc(runtime), log)
    write_spec(os.path.join(bundle, "config.json"), edited)
    log.info(f"{mode} mode: edited {bundle}/config.json; exec {runtime}", where="runtime")
    return runtime


def run(argv: list[str], environ: Mapping[str, str]) -> int:
    """Find the command; edit the spec on create/run; exec the runtime (returns only on an error raised)."""
    index = find_command(argv)
    command = argv[index] if index is not None and index < len(argv) else None
    asks_help = index is not None and any(a in ("-h", "--help", "-help") for a in argv[index + 1:])
    if command not in MODIFY_COMMANDS or index is None or asks_help:
        exec_runtime(find_runtime(passthrough_runtimes(environ), environ), argv)
        return 0  # not reached
    runtime = prepare_create(argv, index, environ)
    exec_runtime(runtime, argv)
    return 0  # not reached


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: one line on stderr and exit 1 on any failure, never a traceback."""
    from nvc.errors import run_reporting_errors

    args = sys.argv[1:] if argv is None else list(argv)
    # An OSError reaching here comes from writing config.json or the cache into the bundle.
    return run_reporting_errors(PROG, lambda: run(args, os.environ), os_error_stage="container")


if __name__ == "__main__":
    sys.exit(main())
