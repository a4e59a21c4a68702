"""From NVIDIA's container decision (a GPU request from the container's environment) and config.toml to the
configure request and global options: the one mapping shared by the OCI hook and the runtime shim, the same
argv NVIDIA's hook hands to ``nvidia-container-cli configure``."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from nvc.container_env import GpuRequest
    from nvc.options import GlobalOptions
    from nvc.request import ConfigureRequest
    from nvc.runtime_config import RuntimeConfig


def configure_request_from_gpu(
    gpu: GpuRequest, config: RuntimeConfig, rootfs: str, pid: int | None, *, gvisor: bool = False
) -> ConfigureRequest:
    """The :class:`~nvc.request.ConfigureRequest` NVIDIA's hook would pass to ``nvidia-container-cli configure``
    for a GPU container."""
    from nvc.request import ConfigureRequest

    compat_mode = config.runtime.modes.legacy.cuda_compat_mode
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
        cuda_compat_mode=compat_mode if compat_mode in ("mount", "ldconfig", "disabled") else "mount",
        gvisor=gvisor,
    )


def global_options_from_config(config: RuntimeConfig) -> GlobalOptions:
    """:class:`~nvc.options.GlobalOptions` from ``[nvidia-container-cli]``."""
    from nvc.options import GlobalOptions, parse_user

    return GlobalOptions(
        debug=config.cli.debug or None,
        load_kmods=config.cli.load_kmods,
        no_pivot=config.cli.no_pivot,
        user=parse_user(config.cli.user) if config.cli.user else None,
        root=config.cli.root or "/",
        ldcache=config.cli.ldcache or "/etc/ld.so.cache",
    )
