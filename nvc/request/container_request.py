"""From NVIDIA's container decision (a GPU request from the container's environment) and config.toml to one
``nvidia-container-cli`` call: the one mapping shared by the OCI hook and the runtime shim.

NVIDIA's hook execs ``nvidia-container-cli [globals] configure [options] ROOTFS`` with the host's environment plus
``[nvidia-container-cli] environment``. Ours either does exactly that (``[nvidia-container-cli] path``) or runs the
same CLI in-process. Both paths come from one :class:`CliInvocation`: :func:`cli_argv` renders it as NVIDIA's argv,
and the in-process path uses its :class:`~nvc.request.options.GlobalOptions`,
:class:`~nvc.request.configure_request.ConfigureRequest` and environment directly. The global options are built by the
CLI's own constructor (:func:`nvc.request.options.build_global_options`), so a value the CLI would refuse on its command
line (a relative ``root``, an unknown ``user``) is refused in-process too; tests/test_hook_parity.py parses every
rendered argv with the CLI's parser and checks it gives the same values.
"""

from __future__ import annotations

from nvc.record import record

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from nvc.request.configure_request import ConfigureRequest
    from nvc.request.container_env import GpuRequest
    from nvc.request.options import GlobalOptions
    from nvc.request.runtime_config import RuntimeConfig

#: The ``--debug`` target of NVIDIA's hook run with ``-debug``: it replaces ``[nvidia-container-cli] debug``.
DEBUG_FLAG_TARGET = "/dev/stderr"
#: ``--cuda-compat-mode`` when the flag is not passed (libnvidia-container's default).
CLI_DEFAULT_CUDA_COMPAT_MODE = "mount"


@record(frozen=True)
class CliInvocation:
    """One ``nvidia-container-cli configure`` call, as values.

    ``cuda_compat_flag``: the ``--cuda-compat-mode`` value NVIDIA's hook passes, None when it passes none (the
    request then carries the CLI's default). ``environment``: ``[nvidia-container-cli] environment`` as
    (name, value) pairs, in file order; a later entry for the same name wins."""

    options: GlobalOptions
    request: ConfigureRequest
    cuda_compat_flag: str | None = None
    environment: tuple[tuple[str, str], ...] = ()


def cuda_compat_flag(config: RuntimeConfig) -> str | None:
    """NVIDIA's hook's ``--cuda-compat-mode`` for ``[nvidia-container-runtime.modes.legacy] cuda-compat-mode``:
    ``ldconfig`` and ``mount`` as they are; ``disabled`` and ``hook`` as ``disabled`` (in hook mode the runtime
    handles compat libraries with a CDI hook, so the CLI must not); unset (``""``) as ``disabled``, or as no flag
    (the CLI's default, mount) when ``[features] allow-cuda-compat-libs-from-container = true``."""
    mode = config.runtime.modes.legacy.cuda_compat_mode
    if mode in ("ldconfig", "mount"):
        return mode
    if mode in ("disabled", "hook"):
        return "disabled"
    return None if config.features.allow_cuda_compat_libs_from_container else "disabled"


def configure_request_from_gpu(
    gpu: GpuRequest, config: RuntimeConfig, rootfs: str, pid: int | None, *, gvisor: bool = False
) -> ConfigureRequest:
    """The :class:`~nvc.request.configure_request.ConfigureRequest` NVIDIA's hook would pass to ``nvidia-container-cli
    configure`` for a GPU container."""
    from nvc.request.configure_request import ConfigureRequest

    return ConfigureRequest(
        rootfs=rootfs,
        pid=pid,
        devices=gpu.devices,
        capabilities=gpu.capabilities,
        requirements=gpu.requirements,
        ldconfig=config.cli.ldconfig or None,
        mig_config=(gpu.mig_config,) if gpu.mig_config else (),
        mig_monitor=(gpu.mig_monitor,) if gpu.mig_monitor else (),
        imex_channels=gpu.imex_channels,
        no_cgroups=config.cli.no_cgroups,
        cuda_compat_mode=cuda_compat_flag(config) or CLI_DEFAULT_CUDA_COMPAT_MODE,
        gvisor=gvisor,
    )


def debug_target(config: RuntimeConfig, debug_flag: bool) -> str | None:
    """Where the CLI's debug log goes: stderr with the hook's ``-debug``, else ``[nvidia-container-cli] debug``."""
    return DEBUG_FLAG_TARGET if debug_flag else (config.cli.debug or None)


def global_options_from_config(config: RuntimeConfig, *, debug_flag: bool = False) -> GlobalOptions:
    """:class:`~nvc.request.options.GlobalOptions` from ``[nvidia-container-cli]`` and ``[features]``, as the CLI would
    build them from NVIDIA's hook's global flags; ``debug_flag`` is the hook's ``-debug`` (``--debug=/dev/stderr``
    in place of the configured log file)."""
    from nvc.request.options import build_global_options

    return build_global_options(
        debug=debug_target(config, debug_flag),
        load_kmods=config.cli.load_kmods,
        no_pivot=config.cli.no_pivot,
        user=config.cli.user or None,
        root=config.cli.root or "/",
        ldcache=config.cli.ldcache or "/etc/ld.so.cache",
        no_create_imex_channels=config.features.disable_imex_channel_creation,
    )


def cli_invocation(
    gpu: GpuRequest, config: RuntimeConfig, rootfs: str, pid: int | None, *, debug_flag: bool = False
) -> CliInvocation:
    """The whole call NVIDIA's hook makes for this container (both of our hook's paths act on it)."""
    environment = tuple((entry.partition("=")[0], entry.partition("=")[2]) for entry in config.cli.environment)
    return CliInvocation(
        options=global_options_from_config(config, debug_flag=debug_flag),
        request=configure_request_from_gpu(gpu, config, rootfs, pid),
        cuda_compat_flag=cuda_compat_flag(config),
        environment=environment,
    )


def cli_argv(cli_path: str, config: RuntimeConfig, invocation: CliInvocation) -> list[str]:
    """NVIDIA's hook's argv for an external ``nvidia-container-cli`` (same flags, same order). Global flags are
    rendered from ``[nvidia-container-cli]`` as written (``--root=/`` stays, ``--user=`` keeps names), the rest
    from the request."""
    cli, request = config.cli, invocation.request
    argv = [cli_path]
    if cli.root:
        argv.append(f"--root={cli.root}")
    if cli.load_kmods:
        argv.append("--load-kmods")
    if invocation.options.no_create_imex_channels:
        argv.append("--no-create-imex-channels")
    if cli.no_pivot:
        argv.append("--no-pivot")
    if invocation.options.debug:
        argv.append(f"--debug={invocation.options.debug}")
    if cli.ldcache:
        argv.append(f"--ldcache={cli.ldcache}")
    if cli.user:
        argv.append(f"--user={cli.user}")
    argv.append("configure")
    if invocation.cuda_compat_flag:
        argv.append(f"--cuda-compat-mode={invocation.cuda_compat_flag}")
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
    argv.extend([f"--pid={request.pid}", request.rootfs])
    return argv
