"""``nvc doctor``: find the set-up mistakes that make GPU containers fail, before a container does.

Every check here is one of the failures people actually hit with gVisor (runsc + nvproxy) or runc + NVIDIA's hook
(``shared/reference/gvisor.md``), and most of them surface far away from their cause: a pod that hangs in
ContainerCreating, ``waiting for sandbox to start: EOF``, ``nvidia-smi: not found`` in a container that started
fine. So each :class:`Finding` says *what* is wrong (naming the file and key), *why* it breaks (the symptom users
see), and the *fix* — where one exists, the ``nvc setup ...`` command that writes the right configuration.

Nothing is read from fixed places: :class:`DoctorPaths` names every input — config files, the services' PATH,
``/proc`` files, ``/dev``, and how to run a binary — and resolves absolute paths found *inside* configs (a runsc
TOML named by ``ConfigPath``, a ``binary_name``) under its ``root``, so a fixture tree reproduces a whole host.
The checks only read; the only processes started are ``--version``-style queries of binaries the configs name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from nvc.commands.doctor_gvisor import check_platforms, check_runsc_flags, driver_fix, supported_drivers
from nvc.commands.doctor_inputs import (  # the types are doctor's interface too: importers name them from here
    CLI_NAME,
    HOOK_NAME,
    SEVERITIES,
    CommandResult,
    DeviceNodeEntry,
    DoctorPaths,
    Finding,
    _Context,
    _GpuRuntime,
    run_command,
    scan_device_nodes,
)
from nvc.commands.setup_config import (
    CONTAINERD_CONFIG,
    CRI_PLUGIN,
    DOCKER_DAEMON_CONFIG,
    RUNSC_GPU_CONFIG,
    RUNSC_OPTIONS_TYPE,
    SHIM_NAME,
)

_GPU_NAME = re.compile(r"nvidia|gpu", re.IGNORECASE)
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})  # what Go's flag package reads as true


def _truthy(value: str | None) -> bool:
    return value is not None and value in _GO_TRUE


def _setup_fix(
    service: str, runtime: str, config: str, default_config: str, name: str = "nvidia", runsc_config: str = ""
) -> str:
    """The ``nvc setup`` command line that rewrites this runtime correctly (only non-default options shown)."""
    option = f" --config {config}" if config != default_config else ""
    if name != "nvidia":
        option += f" --name {name}"
    if runsc_config and runsc_config != RUNSC_GPU_CONFIG:
        option += f" --runsc-config {runsc_config}"
    restart = "systemctl restart containerd" if service == "containerd" else "systemctl restart docker"
    return f"`nvc setup {service} --runtime {runtime}{option}`, then `{restart}`"


# ---------------------------------------------------------------------------------------------------------------
# containerd


def _check_containerd(ctx: _Context) -> list[Finding]:
    import tomllib

    paths = ctx.paths
    config = paths.containerd_config
    text = paths.read(config)
    if text is None:
        return []
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return [
            Finding(
                "error",
                f"{config} is not valid TOML ({exc})",
                f"containerd refuses to start: `failed to load TOML from {config}`; every container on the host is "
                "down with it",
                f"fix the syntax, or restore the last `{config}.nvc-backup-*`",
                "containerd.config-syntax",
            )
        ]
    version = doc.get("version", 1) if doc else 2
    findings = _check_containerd_schema(doc, version, config)
    active = CRI_PLUGIN.get(version) if isinstance(version, int) else None
    runtimes = _dig(doc, ("plugins", active, "containerd", "runtimes")) if active else None
    for name, table in (runtimes or {}).items():
        if isinstance(table, dict):
            findings += _check_containerd_runtime(ctx, name, table)
    return findings


def _dig(doc: Mapping[str, Any], keys: Iterable[str | None]) -> Any:
    node: Any = doc
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _check_containerd_schema(doc: Mapping[str, Any], version: Any, config: str) -> list[Finding]:
    """Runtime tables written for another config version than the file declares: containerd never sees them."""
    plugins = doc.get("plugins") if isinstance(doc.get("plugins"), Mapping) else {}
    findings = []
    if version not in CRI_PLUGIN:
        return [
            Finding(
                "error",
                f"{config}: unknown config version {version!r}",
                "containerd refuses to start with an unsupported config version",
                "use `version = 2` (containerd 1.x and 2.x) or `version = 3` (containerd 2.x)",
                "containerd.config-version",
            )
        ]
    if version == 1 and _dig(plugins, (CRI_PLUGIN[2], "containerd", "runtimes")):
        names = ", ".join(sorted(plugins[CRI_PLUGIN[2]]["containerd"]["runtimes"]))
        findings.append(
            Finding(
                "error",
                f"{config} has no `version = 2` line, so containerd reads it as version 1 and ignores the "
                f'[plugins."{CRI_PLUGIN[2]}"] runtimes ({names})',
                'kubelet / crictl report `no runtime for "<name>" is configured`; pods using the RuntimeClass '
                "never start",
                f"add `version = 2` as the first line of {config}, then `systemctl restart containerd`",
                "containerd.config-version-missing",
            )
        )
    if version >= 2 and "cri" in plugins:
        findings.append(
            Finding(
                "error",
                f"{config} declares version {version} but uses the version-1 table [plugins.cri]",
                'containerd refuses to start: `invalid plugin key URI "cri" expect io.containerd.x.vx`',
                f'rename [plugins.cri...] to [plugins."{CRI_PLUGIN[version]}"...]',
                "containerd.config-version-mismatch",
            )
        )
    if version == 3 and _dig(plugins, (CRI_PLUGIN[2], "containerd", "runtimes")):
        names = ", ".join(sorted(plugins[CRI_PLUGIN[2]]["containerd"]["runtimes"]))
        findings.append(
            Finding(
                "error",
                f"{config} is version 3 (containerd 2.x) but defines runtimes ({names}) under "
                f'[plugins."{CRI_PLUGIN[2]}"], where containerd 2.x no longer looks',
                'kubelet / crictl report `no runtime for "<name>" is configured`',
                f'move them to [plugins."{CRI_PLUGIN[3]}".containerd.runtimes.<name>] '
                f"(`nvc setup containerd` writes the right table for the file's version)",
                "containerd.config-version-mismatch",
            )
        )
    return findings


def _check_containerd_runtime(ctx: _Context, name: str, table: Mapping[str, Any]) -> list[Finding]:
    runtime_type = str(table.get("runtime_type", ""))
    options = table.get("options") if isinstance(table.get("options"), Mapping) else {}
    where = f'containerd runtime "{name}"'
    config = ctx.paths.containerd_config
    runsc_config = str(options.get("ConfigPath") or "") if runtime_type == "io.containerd.runsc.v1" else ""
    fix_runsc = _setup_fix("containerd", "runsc", config, CONTAINERD_CONFIG, name, runsc_config)
    fix_runc = _setup_fix("containerd", "runc", config, CONTAINERD_CONFIG, name)
    if runtime_type.startswith("io.containerd.runc."):
        return _check_containerd_runc(ctx, where, runtime_type, options, fix_runsc, fix_runc)
    if runtime_type == "io.containerd.runsc.v1":
        return _check_containerd_runsc(ctx, where, name, options, fix_runsc)
    return []


def _check_containerd_runc(
    ctx: _Context, where: str, runtime_type: str, options: Mapping[str, Any], fix_runsc: str, fix_runc: str
) -> list[Finding]:
    binary = str(options.get("BinaryName") or "")
    if not binary:
        return []
    base = os.path.basename(binary)
    hang = (
        f"runc's shim ({runtime_type}) cannot drive gVisor: the container start hangs (pods stay in ContainerCreating)"
    )
    if base == "runsc":
        return [
            Finding(
                "error",
                f'{where} pairs runtime_type = "{runtime_type}" with BinaryName = "{binary}"',
                hang,
                'use gVisor\'s own shim, runtime_type = "io.containerd.runsc.v1": ' + fix_runsc,
                "containerd.runc-shim-runsc",
            )
        ]
    if ctx.paths.which(binary) is None:
        return [
            Finding(
                "error",
                f'{where}: BinaryName "{binary}" does not exist (or is not executable) in containerd\'s PATH',
                f"every container on this runtime fails to start: the shim cannot execute {binary} "
                "(no such file or directory)",
                f"install it, or point BinaryName at the right path: {fix_runc}",
                "containerd.binary-missing",
            )
        ]
    if base != SHIM_NAME:
        return []
    target = ctx.shim_target()
    if target == "runsc":
        return [
            Finding(
                "error",
                f"{where} runs {binary} under runc's shim ({runtime_type}), and that shim execs runsc "
                f"(runtimes = {ctx.shim_runtimes()} in {ctx.paths.nvidia_runtime_config})",
                hang,
                'give gVisor its own runtime with runtime_type = "io.containerd.runsc.v1": ' + fix_runsc,
                "containerd.runc-shim-runsc",
            )
        ]
    ctx.gpu_runtimes.append(_GpuRuntime(where, "runc", fix_runc))
    if target is None:
        return [_shim_target_missing(ctx, where, binary)]
    return [Finding("ok", f"{where}: runc's shim with {binary} (which execs {target})", check="containerd.runtime")]


def _shim_target_missing(ctx: _Context, where: str, binary: str) -> Finding:
    return Finding(
        "error",
        f"{where}: {binary} finds none of its runtimes {ctx.shim_runtimes()} in PATH "
        f"({ctx.paths.nvidia_runtime_config})",
        "every container on this runtime fails to start: the shim has no OCI runtime to exec",
        "install runc, or list the runtime's path under [nvidia-container-runtime] runtimes",
        "shim.no-runtime",
    )


def _runsc_flags(config: Mapping[str, Any]) -> dict[str, str]:
    flags = config.get("runsc_config") if isinstance(config.get("runsc_config"), Mapping) else {}
    return {str(k): (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in flags.items()}


def _check_containerd_runsc(
    ctx: _Context, where: str, name: str, options: Mapping[str, Any], fix_runsc: str
) -> list[Finding]:
    import tomllib

    paths = ctx.paths
    findings: list[Finding] = []
    config_path = str(options.get("ConfigPath") or "")
    type_url = str(options.get("TypeUrl") or "")
    runsc_config: dict[str, Any] = {}
    if config_path:
        if type_url != RUNSC_OPTIONS_TYPE:
            findings.append(
                Finding(
                    "error",
                    f'{where}: options.TypeUrl is "{type_url}", not "{RUNSC_OPTIONS_TYPE}"',
                    "gVisor's shim refuses the options and no container on this runtime starts: "
                    f'`unsupported option type "{type_url}"`',
                    f'set TypeUrl = "{RUNSC_OPTIONS_TYPE}": {fix_runsc}',
                    "containerd.runsc-typeurl",
                )
            )
        text = paths.read(config_path)
        if text is None:
            findings.append(
                Finding(
                    "error",
                    f"{where}: its runsc config {config_path} (options.ConfigPath) does not exist",
                    f'every container on this runtime fails to start: `decode config file "{config_path}": '
                    "no such file or directory`",
                    fix_runsc,
                    "containerd.runsc-config-missing",
                )
            )
            return findings
        try:
            runsc_config = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            findings.append(
                Finding(
                    "error",
                    f"{where}: its runsc config {config_path} is not valid TOML ({exc})",
                    f'every container on this runtime fails to start: `decode config file "{config_path}"`',
                    f"fix the syntax, or rewrite it: {fix_runsc}",
                    "containerd.runsc-config-syntax",
                )
            )
            return findings
        typed = sorted(k for k, v in (runsc_config.get("runsc_config") or {}).items() if not isinstance(v, str))
        if typed:
            findings.append(
                Finding(
                    "error",
                    f"{where}: [runsc_config] in {config_path} has non-string values ({', '.join(typed)})",
                    "gVisor's shim reads [runsc_config] as strings only, so every container on this runtime fails "
                    f'to start: `decode config file "{config_path}": ... incompatible types`',
                    'quote the values (nvproxy = "true", not nvproxy = true): ' + fix_runsc,
                    "containerd.runsc-config-types",
                )
            )
    flags = _runsc_flags(runsc_config)
    if not (_GPU_NAME.search(name) or _truthy(flags.get("nvproxy"))):
        return findings  # a plain gVisor runtime: not ours to judge
    binary = str(runsc_config.get("binary_name") or "runsc")
    base = os.path.basename(binary)
    via_shim = base == SHIM_NAME
    resolved = paths.which(binary)
    runsc = paths.which("runsc") if via_shim else resolved
    if resolved is None:
        findings.append(
            Finding(
                "error",
                f'{where}: binary_name "{binary}" ({config_path or "default"}) is not found in containerd\'s PATH',
                "every container on this runtime fails to start: the shim cannot execute it",
                f"install runsc there, or set binary_name to where it is: {fix_runsc}",
                "containerd.runsc-binary-missing",
            )
        )
    nvproxy = _truthy(flags.get("nvproxy"))
    if not nvproxy:
        findings.append(_no_nvproxy_finding(ctx, where, runsc, config_path or "(no ConfigPath)", fix_runsc))
    legacy = _truthy(flags.get("nvproxy-docker"))
    if via_shim:
        legacy = True
        findings += _check_shim_for_runsc(ctx, where, binary, fix_runsc)
    elif nvproxy and not legacy:
        findings.append(
            Finding(
                "warning",
                f"{where}: runsc has nvproxy but nothing adds NVIDIA's hook (no nvproxy-docker in "
                f"{config_path or 'its config'}, binary_name is runsc itself)",
                "under containerd's CRI nobody adds the legacy hook, so only pods whose spec already carries "
                "/dev/nvidiactl and the driver mounts (CDI) get the GPU; the others start without the driver: "
                "`nvidia-smi: not found`",
                'add nvproxy-docker = "true" to [runsc_config]: ' + fix_runsc,
                "containerd.runsc-no-hook",
            )
        )
    ctx.gpu_runtimes.append(_GpuRuntime(where, "runsc", fix_runsc, runsc, flags, legacy))
    if not any(f.severity == "error" for f in findings):
        findings.append(
            Finding(
                "ok",
                f"{where}: gVisor shim (io.containerd.runsc.v1), binary {binary}, "
                f"nvproxy {'on' if nvproxy else 'off'}, config {config_path}",
                check="containerd.runtime",
            )
        )
    return findings


def _no_nvproxy_finding(ctx: _Context, where: str, runsc: str | None, config: str, fix: str) -> Finding:
    from nvc.host.gvisor_drivers import NVPROXY_AUTO_RELEASE

    release = ctx.runsc_release(runsc)
    automatic = release is not None and release >= NVPROXY_AUTO_RELEASE
    return Finding(
        "warning" if automatic else "error",
        f"{where} is a GPU runtime but runsc runs without nvproxy ({config})",
        (
            "this runsc turns nvproxy on only for specs that list /dev/nvidiactl or carry NVIDIA's hook; others "
            "start without the GPU"
            if automatic
            else "runsc does not proxy the GPU: containers start, but `nvidia-smi: not found` / CUDA finds no device"
        ),
        'set nvproxy = "true" in [runsc_config]: ' + fix,
        "runsc.no-nvproxy",
    )


def _check_shim_for_runsc(ctx: _Context, where: str, binary: str, fix: str) -> list[Finding]:
    """runsc reached through the nvidia-container-runtime shim: the shim must exec runsc and add a hook whose name
    runsc recognises (it never runs that hook; it does the work itself)."""
    findings = []
    target = ctx.shim_target()
    config = ctx.paths.nvidia_runtime_config
    if target != "runsc":
        findings.append(
            Finding(
                "error",
                f"{where} runs runsc through {binary}, but that shim execs {target or 'nothing'} "
                f"(first of runtimes = {ctx.shim_runtimes()} found in PATH, {config})",
                "the container does not run under gVisor: it fails to start (runc does not understand runsc's "
                "flags) or runs with runc's weaker isolation",
                f'set runtimes = ["runsc"] under [nvidia-container-runtime] in {config}, or point binary_name at '
                f"runsc directly: {fix}",
                "runsc.shim-target",
            )
        )
    hook = ctx.shim_hook_path()
    if not hook.endswith("/" + HOOK_NAME) and hook != HOOK_NAME:
        findings.append(
            Finding(
                "error",
                f"{where}: the shim adds the prestart hook {hook} ({config}), a name runsc does not recognise",
                "runsc then runs it as an ordinary hook, on the host with the sandbox's pid, where the container's "
                "root is not visible: the start fails in the hook, or the container has no driver "
                "(`nvidia-smi: not found`)",
                f'set path = "/usr/bin/{HOOK_NAME}" under [nvidia-container-runtime-hook] in {config} '
                f"(runsc matches the path suffix /{HOOK_NAME})",
                "runsc.hook-name",
            )
        )
    return findings


# ---------------------------------------------------------------------------------------------------------------
# Docker


def _check_docker(ctx: _Context) -> list[Finding]:
    import json

    paths = ctx.paths
    config = paths.docker_daemon_config
    text = paths.read(config)
    if text is None or not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return [
            Finding(
                "error",
                f"{config} is not valid JSON ({exc})",
                f"dockerd refuses to start: `unable to configure the Docker daemon with file {config}`",
                f"fix the syntax, or restore the last `{config}.nvc-backup-*`",
                "docker.config-syntax",
            )
        ]
    runtimes = data.get("runtimes") if isinstance(data, dict) else None
    findings: list[Finding] = []
    for name, entry in (runtimes or {}).items():
        if isinstance(entry, dict) and entry.get("path"):
            findings += _check_docker_runtime(ctx, name, entry)
    return findings


def _parse_flags(args: Iterable[Any]) -> dict[str, str]:
    flags = {}
    for arg in args:
        text = str(arg).lstrip("-")
        key, sep, value = text.partition("=")
        flags[key] = value if sep else "true"
    return flags


def _check_docker_runtime(ctx: _Context, name: str, entry: Mapping[str, Any]) -> list[Finding]:
    paths = ctx.paths
    where = f'docker runtime "{name}"'
    path = str(entry["path"])
    base = os.path.basename(path)
    kind = "runsc" if base == "runsc" else "runc"
    fix = _setup_fix("docker", kind, paths.docker_daemon_config, DOCKER_DAEMON_CONFIG, name)
    if paths.which(path) is None:
        return [
            Finding(
                "error",
                f'{where}: path "{path}" does not exist (or is not executable) in dockerd\'s PATH',
                f"`docker run --runtime={name}` fails: the shim cannot execute {path} (no such file or directory)",
                f"install it, or correct the path: {fix}",
                "docker.binary-missing",
            )
        ]
    flags = _parse_flags(entry.get("runtimeArgs") or [])
    findings: list[Finding] = []
    if base == "runsc":
        if not (_GPU_NAME.search(name) or _truthy(flags.get("nvproxy"))):
            return []
        runsc = paths.which(path)
        if not _truthy(flags.get("nvproxy")):
            findings.append(_no_nvproxy_finding(ctx, where, runsc, "no --nvproxy in runtimeArgs", fix))
        # `docker run --gpus` adds the legacy hook, which runsc recognises: runsc runs the CLI itself.
        ctx.gpu_runtimes.append(_GpuRuntime(where, "runsc", fix, runsc, flags, legacy=True))
    elif base == SHIM_NAME:
        target = ctx.shim_target()
        if target == "runsc":
            findings += _check_shim_for_runsc(ctx, where, path, fix)
            ctx.gpu_runtimes.append(_GpuRuntime(where, "runsc", fix, paths.which("runsc"), {}, legacy=True))
        else:
            ctx.gpu_runtimes.append(_GpuRuntime(where, "runc", fix))
            if target is None:
                findings.append(_shim_target_missing(ctx, where, path))
    else:
        return []
    findings += _check_docker_hook(ctx, where)
    if not any(f.severity == "error" for f in findings):
        findings.append(
            Finding(
                "ok", f"{where}: {path} {' '.join(entry.get('runtimeArgs') or [])}".rstrip(), check="docker.runtime"
            )
        )
    return findings


def _check_docker_hook(ctx: _Context, where: str) -> list[Finding]:
    """``docker run --gpus`` needs nvidia-container-runtime-hook in dockerd's PATH, whatever the runtime."""
    if ctx.paths.which(HOOK_NAME):
        return []
    return [
        Finding(
            "error",
            f"{where}: {HOOK_NAME} is not in dockerd's PATH ({ctx.paths.runtime_path})",
            '`docker run --gpus ...` fails: `could not select device driver "" with capabilities: [[gpu]]`',
            f"install nvc's {HOOK_NAME} into /usr/bin (or another directory of that PATH), then restart dockerd: it "
            "looks the hook up once, at start, and offers `--gpus` only if it was found",
            "docker.hook-missing",
        )
    ]


# ---------------------------------------------------------------------------------------------------------------
# OCI hooks.d (podman, CRI-O)


def _check_hooks_dirs(ctx: _Context) -> list[Finding]:
    import json

    paths = ctx.paths
    findings = []
    gvisor = any(r.kind == "runsc" for r in ctx.gpu_runtimes)
    for directory in paths.hooks_dirs:
        try:
            names = sorted(os.listdir(paths.host(directory)))
        except OSError:
            continue
        for file_name in names:
            if not file_name.endswith(".json"):
                continue
            hook_file = os.path.join(directory, file_name)
            try:
                hook = json.loads(paths.read(hook_file) or "").get("hook", {})
                hook_path = str(hook.get("path", ""))
            except (ValueError, AttributeError):
                continue
            base = os.path.basename(hook_path)
            if "nvidia" not in base or base == "nvidia-cdi-hook":
                continue
            if not paths.is_executable(hook_path):
                findings.append(
                    Finding(
                        "error",
                        f"{hook_file}: hook path {hook_path} does not exist",
                        "podman / CRI-O fail every container the hook applies to (the hook cannot be executed)",
                        f"install {hook_path}, or remove {hook_file}",
                        "hooks.binary-missing",
                    )
                )
            elif gvisor and not hook_path.endswith("/" + HOOK_NAME):
                findings.append(
                    Finding(
                        "warning",
                        f"{hook_file}: hook {hook_path} is not named {HOOK_NAME}, the only name runsc recognises",
                        "under runsc the hook runs as an ordinary hook, on the host with the sandbox's pid, where "
                        "the container's root is not visible: GPU containers fail or lack the driver",
                        f'point "path" at /usr/bin/{HOOK_NAME}',
                        "runsc.hook-name",
                    )
                )
    return findings


# ---------------------------------------------------------------------------------------------------------------
# runsc, nvidia-container-cli, the driver, device nodes


def _check_runsc_binaries(ctx: _Context) -> list[Finding]:
    from nvc.host.gvisor_drivers import NVPROXY_FIRST_RELEASE

    findings = []
    seen = set()
    for runtime in ctx.gpu_runtimes:
        runsc = runtime.runsc
        if runtime.kind != "runsc" or not runsc or runsc in seen:
            continue
        seen.add(runsc)
        result = ctx.runsc_version(runsc)
        if result is None or result.returncode != 0:
            detail = "could not be executed" if result is None else (result.stderr.strip() or "non-zero exit")
            findings.append(
                Finding(
                    "error",
                    f"{runsc} --version fails ({detail})",
                    "a runsc that does not run cannot start any sandbox: `waiting for sandbox to start: EOF`",
                    "reinstall gVisor's runsc",
                    "runsc.broken",
                )
            )
            continue
        release = ctx.runsc_release(runsc)
        first_line = result.stdout.strip().splitlines()[0] if result.stdout.strip() else "?"
        if release is not None and release < NVPROXY_FIRST_RELEASE:
            findings.append(
                Finding(
                    "error",
                    f"{runsc} is {first_line}, older than nvproxy (release-{NVPROXY_FIRST_RELEASE})",
                    "runsc rejects the GPU flags: `flag provided but not defined: -nvproxy`",
                    "install a current gVisor release",
                    "runsc.too-old",
                )
            )
        else:
            findings.append(Finding("ok", f"{runsc}: {first_line}", check="runsc.version"))
    return findings


def _check_cli(ctx: _Context) -> list[Finding]:
    if not ctx.gpu_runtimes:
        return []
    paths = ctx.paths
    gvisor = [r for r in ctx.gpu_runtimes if r.kind == "runsc" and r.legacy]
    # runsc looks the CLI up in its own PATH and ignores config.toml; NVIDIA's hook honours [nvidia-container-cli].
    name = CLI_NAME if gvisor else ctx.shim_cli_path()
    cli = paths.which(name)
    if cli is None:
        users = ", ".join(r.where for r in (gvisor or ctx.gpu_runtimes))
        why = (
            "runsc cannot give the sandbox the driver: `failed to locate nvidia-container-cli in PATH`, and the "
            "GPU container fails to start"
            if gvisor
            else "the prestart hook fails and the container does not start: "
            "`error running prestart hook #0: exit status 1`"
        )
        return [
            Finding(
                "error",
                f"{name} is not in the PATH of containerd/dockerd ({paths.runtime_path}), needed by {users}",
                why,
                "install nvc so that nvidia-container-cli is in /usr/bin or /usr/local/bin (a virtualenv's bin "
                "directory is not in the services' PATH; symlink it)",
                "cli.missing",
            )
        ]
    result = paths.run_binary(cli, "--version")
    if result is None or result.returncode != 0:
        detail = "could not be executed" if result is None else (result.stderr.strip() or "non-zero exit")
        return [
            Finding(
                "error",
                f"{cli} --version fails ({detail})",
                "every GPU container start fails when the CLI runs: "
                + ("`nvidia-container-cli configure failed`" if gvisor else "`error running prestart hook #0`"),
                f"reinstall nvc, or fix {cli} (a wrapper script pointing at a removed virtualenv?)",
                "cli.broken",
            )
        ]
    first = result.stdout.strip().splitlines()[0] if result.stdout.strip() else ""
    if gvisor and not first.startswith("cli-version:"):
        return [
            Finding(
                "warning",
                f"{cli} --version does not start with `cli-version:` (got {first!r})",
                "runsc reads that first line to decide which flags it may pass (e.g. --cuda-compat-mode); "
                "without it CUDA forward-compat libraries in images are not used",
                "use nvc's nvidia-container-cli, which prints `cli-version: X.Y.Z` first",
                "cli.version-line",
            )
        ]
    return [Finding("ok", f"{cli}: {first}", check="cli.version")]


def _check_driver(ctx: _Context) -> list[Finding]:
    from nvc.host.gvisor_drivers import driver_support
    from nvc.host.proc_driver import parse_nvrm_version

    paths = ctx.paths
    gvisor = [r for r in ctx.gpu_runtimes if r.kind == "runsc"]
    text = paths.read(paths.proc_driver_version)
    if text is None:
        return []  # nvc.commands.doctor_driver reports the missing kernel module, whatever else is set up
    host_version = parse_nvrm_version(text)
    if host_version is None:
        return [
            Finding(
                "warning",
                f"cannot read the driver version from {paths.proc_driver_version}",
                "its first line is not the usual `NVRM version: ... Kernel Module X.Y.Z`",
                "",
                "driver.version-unknown",
            )
        ]
    findings = []
    seen = set()
    for runtime in gvisor:
        forced = runtime.flags.get("nvproxy-driver-version") or ""
        version = forced or host_version
        allow = _truthy(runtime.flags.get("nvproxy-allow-unsupported-driver"))
        key = (runtime.runsc, version, allow)
        if key in seen:
            continue
        seen.add(key)
        listed, unlisted = supported_drivers(paths, runtime.runsc)
        source = (f"`{runtime.runsc} nvproxy list-supported-drivers`" if listed
                  else f"nvc's copy of gVisor's table, as {unlisted}")
        support = driver_support(version, listed)
        label = f"driver {version}" + (" (forced by nvproxy-driver-version)" if forced else "")
        if support == "supported":
            findings.append(
                Finding("ok", f"{label} is supported by gVisor's nvproxy ({source})", check="driver.gvisor")
            )
        elif support == "unsupported":
            findings.append(
                Finding(
                    "warning" if allow else "error",
                    f"{label} is not supported by gVisor's nvproxy ({source}), used by {runtime.where}",
                    f"the sandbox fails to boot with `unsupported Nvidia driver version: {version}`, which users only "
                    "see as `waiting for sandbox to start: EOF`"
                    + (" (nvproxy-allow-unsupported-driver is set: it may start, and misbehave)" if allow else ""),
                    driver_fix(version, runtime.runsc, listed),
                    "driver.gvisor-unsupported",
                )
            )
        else:
            findings.append(
                Finding(
                    "warning",
                    f"{label} is not in nvc's copy of gVisor's driver table, and runsc could not be asked "
                    f"({unlisted})",
                    "if this runsc does not support it, the sandbox fails to boot: `waiting for sandbox to start: EOF`",
                    f"check `{runtime.runsc or 'runsc'} nvproxy list-supported-drivers`",
                    "driver.gvisor-unknown",
                )
            )
    return findings  # the version itself: nvc.commands.doctor_driver's kernel-module finding


# Which /proc/devices names own a node: 195 is "nvidia-frontend" (older drivers) or "nvidia"; the rest are dynamic.
_NODE_OWNERS: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    (re.compile(r"^nvidia-caps-imex-channels/"), ("nvidia-caps-imex-channels",)),
    (re.compile(r"^nvidia-caps/"), ("nvidia-caps",)),
    (re.compile(r"^nvidia-uvm(-tools)?$"), ("nvidia-uvm",)),
    (re.compile(r"^nvidia-nvswitch(ctl|\d+)$"), ("nvidia-nvswitch",)),
    (re.compile(r"^nvidia-nvlink$"), ("nvidia-nvlink",)),
    (re.compile(r"^nvidia(ctl|\d+|-modeset)$"), ("nvidia-frontend", "nvidia")),
)


def _node_owners(name: str) -> tuple[str, ...] | None:
    for pattern, owners in _NODE_OWNERS:
        if pattern.match(name):
            return owners
    return None


def _check_device_nodes(ctx: _Context) -> list[Finding]:
    from nvc.host.proc_driver import parse_device_majors

    paths = ctx.paths
    devices_text = paths.read(paths.proc_devices)
    if devices_text is None:
        return []
    majors = parse_device_majors(devices_text)
    dev_dir = paths.dev_dir.rstrip("/")
    wrong_major: list[str] = []
    orphaned: dict[str, list[str]] = {}
    orphaned_targets: dict[str, set[str]] = {}
    not_char: list[str] = []
    checked = 0
    for node in paths.list_device_nodes(paths.host(paths.dev_dir)):
        owners = _node_owners(node.name)
        if owners is None:
            continue
        checked += 1
        full = f"{dev_dir}/{node.name}"
        if not node.is_char:
            not_char.append(full)
            continue
        expected = {majors[o] for o in owners if o in majors}
        if not expected:
            orphaned.setdefault(owners[0], []).append(full)
            top = node.name.split("/")[0]
            orphaned_targets.setdefault(owners[0], set()).add(f"{dev_dir}/{top}")
        elif node.major not in expected:
            want = "/".join(str(m) for m in sorted(expected))
            wrong_major.append(f"{full} ({node.major}:{node.minor}, driver has {want})")
    findings = []
    if wrong_major:
        findings.append(
            Finding(
                "error",
                f"stale device nodes, major number not the driver's: {_some(wrong_major)}",
                "opening them reaches no driver (ENXIO, `No such device or address`): NVML / CUDA fail to "
                "initialise in every container that gets them, and under gVisor the sandbox cannot open them",
                "delete them and let the driver recreate them: `rm` the listed nodes, then "
                "`nvidia-modprobe -u -c=0` (or `nvidia-container-cli --load-kmods info`)",
                "devices.stale-major",
            )
        )
    for owner, nodes in sorted(orphaned.items()):
        findings.append(
            Finding(
                "warning",
                f"device nodes for a driver that is not loaded (no {owner!r} in {paths.proc_devices}): {_some(nodes)}",
                "they are left over from a driver that was unloaded or replaced; containers given them get nodes "
                "that open nothing, and MIG / capability lookups fail",
                f"remove them (`rm -r {' '.join(sorted(orphaned_targets[owner]))}`) or load the driver module "
                "that owns them",
                "devices.orphaned",
            )
        )
    if not_char:
        findings.append(
            Finding(
                "error",
                f"not device nodes (regular files or directories named like one): {_some(not_char)}",
                "a container given them opens a plain file instead of the driver: NVML / CUDA fail to initialise",
                "remove them; the driver (`nvidia-modprobe`) creates the real nodes",
                "devices.not-char",
            )
        )
    if checked and not findings:
        findings.append(Finding("ok", f"{checked} NVIDIA device nodes match {paths.proc_devices}", check="devices"))
    return findings


def _some(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


# ---------------------------------------------------------------------------------------------------------------
# Entry points


def diagnose(paths: DoctorPaths | None = None) -> list[Finding]:
    """Run every check; findings in check order (configs, hooks, runsc, CLI, driver, device nodes, CDI, then
    :mod:`nvc.commands.doctor_driver`'s driver chain, run whatever else is set up)."""
    ctx = _Context(paths or DoctorPaths())
    findings = _check_containerd(ctx)
    findings += _check_docker(ctx)
    findings += _check_hooks_dirs(ctx)
    findings += _check_runsc_binaries(ctx)
    findings += check_runsc_flags(ctx) + check_platforms(ctx)
    findings += _check_cli(ctx)
    findings += _check_driver(ctx)
    findings += _check_device_nodes(ctx)
    from nvc.commands.doctor_cdi import check_cdi

    # CDI specs and the runtimes reading them (nvc/commands/doctor_cdi.py)
    cdi = check_cdi(ctx.paths, ctx.shim_config())
    findings += cdi
    cdi_on = any(f.check == "cdi.enabled" for f in cdi)
    if not ctx.gpu_runtimes and not cdi_on and not any(f.severity == "error" for f in findings):
        findings.append(
            Finding(
                "warning",
                "no GPU runtime is configured for containerd or Docker",
                "without one, containers get no GPU unless every spec is edited by hand",
                "`nvc setup containerd --runtime runsc` (gVisor) or `nvc setup containerd --runtime runc`; "
                "for Docker `nvc setup docker --runtime runc|runsc`",
                "setup.none",
            )
        )
    if ctx.paths.driver_checks:
        from nvc.commands.doctor_driver import check_driver

        findings += check_driver(ctx.paths)
    return findings


def has_errors(findings: Iterable[Finding]) -> bool:
    """Whether ``nvc doctor`` should exit non-zero."""
    return any(f.severity == "error" for f in findings)


def findings_to_json(findings: Sequence[Finding]) -> dict[str, Any]:
    """``nvc doctor --json``: the findings plus counts, JSON-serialisable."""
    counts = {s: sum(1 for f in findings if f.severity == s) for s in SEVERITIES}
    return {
        "findings": [f.to_dict() for f in findings],
        "errors": counts["error"],
        "warnings": counts["warning"],
        "ok": counts["ok"],
    }


def format_findings(findings: Sequence[Finding]) -> str:
    """Human text: errors first, then warnings, then what is fine, and a one-line summary."""
    order = {s: i for i, s in enumerate(SEVERITIES)}
    lines = []
    for finding in sorted(findings, key=lambda f: order[f.severity]):
        lines.append(f"{finding.severity.upper() if finding.severity != 'ok' else 'ok':<8}{finding.what}")
        if finding.why:
            lines.append(f"{'':<8}why: {finding.why}")
        if finding.fix:
            lines.append(f"{'':<8}fix: {finding.fix}")
    counts = {s: sum(1 for f in findings if f.severity == s) for s in SEVERITIES}
    lines.append(f"{counts['error']} error(s), {counts['warning']} warning(s), {counts['ok']} ok")
    return "\n".join(lines) + "\n"


__all__ = [
    "CommandResult",
    "DeviceNodeEntry",
    "DoctorPaths",
    "Finding",
    "diagnose",
    "findings_to_json",
    "format_findings",
    "has_errors",
    "run_command",
    "scan_device_nodes",
]
