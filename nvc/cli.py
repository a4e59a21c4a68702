"""Command line, argv-compatible with ``nvidia-container-cli``: ``PROG [GLOBAL...] COMMAND [OPTIONS...] [ROOTFS]``.

Installed both as ``nvc`` and ``nvidia-container-cli``. Global options come before the command, as with NVIDIA's
argp parser. Every failure becomes one line ``PROG: <stage> error: <message>`` and exit status 1, in ``main``.
"""

from __future__ import annotations

import os
import platform
import sys

import click

from nvc import CLI_COMPAT_VERSION, __version__
from nvc.components import Capability
from nvc.device_select import split_device_list
from nvc.errors import NvcError
from nvc.options import GlobalOptions, parse_user


def _prog_name() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "nvc"
    return "nvidia-container-cli" if name == "nvidia-container-cli" else "nvc"


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    # gVisor's runsc parses the first line to decide which flags it may pass: keep "cli-version: X.Y.Z" first.
    click.echo(f"cli-version: {CLI_COMPAT_VERSION}")
    click.echo(f"lib-version: {CLI_COMPAT_VERSION}")
    click.echo(f"build revision: nvc {__version__}")
    click.echo(f"build compiler: {platform.python_implementation()} {platform.python_version()}")
    click.echo(f"build platform: {platform.machine()}")
    ctx.exit(0)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-d", "--debug", metavar="FILE", help="Log debug information to FILE (appended).")
@click.option("-k", "--load-kmods", is_flag=True, help="Load kernel modules / create missing device nodes.")
@click.option("-n", "--no-pivot", is_flag=True, help="Do not use pivot_root (accepted for compatibility).")
@click.option("-u", "--user", metavar="UID[:GID]", is_flag=False, flag_value="", default=None,
              help="Run driver helpers as this user (default: unprivileged nobody for NVML).")
@click.option("-r", "--root", default="/", show_default=True, metavar="PATH", envvar="NVC_DRIVER_ROOT",
              help="Path to the driver root (also $NVC_DRIVER_ROOT, for callers like runsc that never pass it).")
@click.option("-l", "--ldcache", default="/etc/ld.so.cache", show_default=True, metavar="FILE",
              help="ld.so.cache inside the driver root.")
@click.option("--no-create-imex-channels", is_flag=True, help="Do not create IMEX channel device nodes.")
@click.option("-V", "--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Print version information and exit.")
@click.pass_context
def cli(ctx: click.Context, debug, load_kmods, no_pivot, user, root, ldcache, no_create_imex_channels) -> None:
    """NVIDIA container command line (nvc): inspect the driver and give containers the GPU."""
    if not root.startswith("/"):
        raise NvcError("input", f"invalid driver root: {root}")
    ctx.obj = GlobalOptions(
        debug=debug,
        load_kmods=load_kmods,
        no_pivot=no_pivot,
        user=parse_user(user),
        root=os.path.normpath(root),
        ldcache=ldcache,
        no_create_imex_channels=no_create_imex_channels,
    )


def _write(text: str) -> None:
    sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))
    sys.stdout.flush()


@cli.command()
@click.option("--csv", "as_csv", is_flag=True, help="Print in CSV format.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def info(opts: GlobalOptions, as_csv: bool, as_json: bool) -> None:
    """Report information about the driver and devices."""
    from nvc.inventory import query_nvml
    from nvc.listing import format_info_csv, format_info_text, format_json, info_json

    driver = query_nvml(opts.root, opts.ldcache, opts.user, load_kmods=opts.load_kmods)
    if as_json:
        _write(format_json(info_json(driver)))
    elif as_csv:
        _write(format_info_csv(driver))
    else:
        _write(format_info_text(driver))


@cli.command(name="list")
@click.option("-d", "--device", "devices", multiple=True, metavar="ID", help="Device UUID(s) or index(es) to list.")
@click.option("-l", "--libraries", is_flag=True, help="List driver libraries.")
@click.option("-b", "--binaries", is_flag=True, help="List driver binaries.")
@click.option("-i", "--ipcs", is_flag=True, help="List driver IPCs.")
@click.option("-f", "--firmwares", is_flag=True, help="List driver firmwares.")
@click.option("--compat32", is_flag=True, help="Also list 32-bit libraries.")
@click.option("--mig-config", multiple=True, metavar="ID", help="MIG devices to list config capabilities of.")
@click.option("--mig-monitor", multiple=True, metavar="ID", help="MIG devices to list monitor capabilities of.")
@click.option("--imex-channel", "imex_channels", multiple=True, metavar="ID", help="IMEX channel(s) to list.")
@click.option("--no-persistenced", is_flag=True, help="Do not list the persistenced socket.")
@click.option("--no-fabricmanager", is_flag=True, help="Do not list the fabricmanager socket.")
@click.option("--no-gsp-firmware", is_flag=True, help="Do not list GSP firmware.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per item (nvc extension).")
@click.option("--rootfs", metavar="DIR", help="Container rootfs whose layout decides library targets (JSON).")
@click.pass_obj
def list_(opts: GlobalOptions, as_json: bool, **options) -> None:
    """List driver components (device nodes, binaries, libraries, IPCs, firmware)."""
    from nvc.inventory import build_inventory
    from nvc.listing import ListRequest, format_json, format_list_text, select_list_items

    request = ListRequest(**{k: tuple(v) if isinstance(v, tuple) else v for k, v in options.items()})
    inventory = build_inventory(opts.root, opts.ldcache, opts.user, allow_no_nvml=True)
    if inventory.nvml_error is not None:
        click.echo(
            f"{_prog_name()}: warning: {inventory.nvml_error}; "
            f"listing driver {inventory.driver_version} files without device nodes",
            err=True,
        )
    items = select_list_items(inventory, request)
    _write(format_json([item.to_json() for item in items]) if as_json else format_list_text(items))


_CAPABILITY_FLAGS = (
    ("-c", "--compute", "compute"),
    ("-u", "--utility", "utility"),
    ("-v", "--video", "video"),
    ("-g", "--graphics", "graphics"),
    ("-D", "--display", "display"),
    ("-n", "--ngx", "ngx"),
    (None, "--compat32", "compat32"),
)


def _capability_options(func):
    for short, long, cap in reversed(_CAPABILITY_FLAGS):
        decls = [d for d in (short, long) if d]
        func = click.option(*decls, cap, is_flag=True, help=f"Enable {cap} capability.")(func)
    return func


_REQUEST_OPTIONS = (
    click.option("-d", "--device", "devices", multiple=True, metavar="ID", help="Device UUID(s) or index(es)."),
    click.option("-r", "--require", "requirements", multiple=True, metavar="EXPR", help="Container requirement."),
    click.option("-l", "--ldconfig", metavar="PATH", help="Path to the ldconfig binary (@ prefix: a host binary)."),
    _capability_options,
    click.option("--mig-config", multiple=True, metavar="ID", help="Enable MIG configuration of these devices."),
    click.option("--mig-monitor", multiple=True, metavar="ID", help="Enable MIG monitoring of these devices."),
    click.option("--imex-channel", "imex_channels", multiple=True, metavar="ID", help="IMEX channel(s) to expose."),
    click.option("--no-cgroups", is_flag=True, help="Don't set up device cgroups."),
    click.option("--no-devbind", is_flag=True, help="Don't bind mount device nodes."),
    click.option("--no-persistenced", is_flag=True, help="Don't include the persistenced socket."),
    click.option("--no-fabricmanager", is_flag=True, help="Don't include the fabricmanager socket."),
    click.option("--no-gsp-firmware", is_flag=True, help="Don't include GSP firmware."),
    click.option("--no-cntlibs", is_flag=True, help="Don't overwrite host mounts with container libraries."),
    click.option("--cuda-compat-mode", type=click.Choice(["mount", "ldconfig", "disabled"]), default="mount",
                 show_default=True, help="How CUDA forward-compat libraries in the image are used."),
    click.option("--exec-ldconfig", is_flag=True,
                 help="Run ldconfig in the container instead of writing its ld.so.cache in-process (nvc extension)."),
    click.option("--gvisor", is_flag=True, help="gVisor nvproxy context (automatic when --pid is runsc's gofer)."),
)


def _request_options(func):
    """The options of a container request, shared by configure and oci-edits (one definition of the grammar)."""
    for decorator in reversed(_REQUEST_OPTIONS):
        func = decorator(func)
    return func


def _request(rootfs: str | None, options: dict, pid: int | None = None):
    from nvc.request import ConfigureRequest

    if not rootfs or not rootfs.startswith("/") or os.path.normpath(rootfs) == "/":
        raise NvcError("input", "invalid rootfs directory")
    caps = frozenset(Capability(cap) for _, _, cap in _CAPABILITY_FLAGS if options.pop(cap))
    gvisor = options.pop("gvisor")
    return ConfigureRequest(
        rootfs=os.path.normpath(rootfs),
        pid=pid,
        devices=tuple(split_device_list(options.pop("devices"))),
        capabilities=caps,
        mig_config=tuple(options.pop("mig_config")),
        mig_monitor=tuple(options.pop("mig_monitor")),
        imex_channels=tuple(options.pop("imex_channels")),
        requirements=tuple(options.pop("requirements")),
        gvisor=gvisor,
        no_cgroups=options.pop("no_cgroups") or gvisor,
        **options,
    )


@cli.command()
@click.option("-p", "--pid", type=int, metavar="PID", help="Container PID (default: the caller's namespaces).")
@_request_options
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing (nvc extension).")
@click.argument("rootfs", required=False)
@click.pass_obj
def configure(opts: GlobalOptions, rootfs: str | None, pid: int | None, dry_run: bool, **options) -> None:
    """Configure a container with GPU support by exposing device drivers to it."""
    from nvc.configure import configure_container

    for line in configure_container(opts, _request(rootfs, options, pid), dry_run=dry_run):
        click.echo(line)


@cli.command(name="oci-edits")
@_request_options
@click.option("--ldcache-out", metavar="FILE",
              help="Write the container's merged ld.so.cache here (the edits mount it over /etc/ld.so.cache).")
@click.argument("rootfs", required=False)
@click.pass_obj
def oci_edits(opts: GlobalOptions, rootfs: str | None, ldcache_out: str | None, **options) -> None:
    """Print the OCI spec edits (mounts, devices, cgroup rules, env) that give ROOTFS the driver: for runtimes
    without hook support such as gVisor's runsc (nvc extension)."""
    from nvc.oci_edits import oci_edits_command

    text, notes = oci_edits_command(opts, _request(rootfs, options), ldcache_out)
    for note in notes:
        click.echo(f"{_prog_name()}: note: {note}", err=True)
    _write(text)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False,
                               "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def runtime(args: tuple[str, ...]) -> None:
    """nvidia-container-runtime: edit a GPU container's spec on create/run, then exec runc/crun/runsc."""
    from nvc.runtime_shim import main as shim_main

    code = shim_main(list(args))
    if code:
        raise click.exceptions.Exit(code)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False,
                               "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def hook(args: tuple[str, ...]) -> None:
    """The OCI hook (same as nvidia-container-runtime-hook): [-config FILE] [-debug] STAGE."""
    from nvc.hook import main as hook_main

    code = hook_main(list(args))
    if code:
        raise click.exceptions.Exit(code)


@cli.command()
@click.option("-C", "cache_file", metavar="FILE", help="Cache file to print (default: --ldcache inside --root).")
@click.pass_obj
def ldcache(opts: GlobalOptions, cache_file: str | None) -> None:
    """Print an ld.so.cache exactly as `ldconfig -p` does (nvc extension)."""
    from nvc.ldcache import LdCacheError, format_cache, read_cache
    from nvc.rootpath import host_path, resolve_in_root

    if cache_file is None:
        cache_file = host_path(opts.root, resolve_in_root(opts.root, opts.ldcache))
    try:
        cache = read_cache(cache_file)
    except LdCacheError as exc:
        raise NvcError("detection", str(exc)) from None
    _write(format_cache(cache, cache_file))


@cli.group()
def setup() -> None:
    """Configure containerd or docker to run GPU containers (runc + our hook, or gVisor's runsc with nvproxy)."""


def _setup_common(func):
    for decorator in reversed((
        click.option("--config", "config_path", metavar="PATH", help="Configuration file to edit."),
        click.option("--name", "runtime_name", default="nvidia", show_default=True, help="Runtime name."),
        click.option("--runsc", "runsc_path", metavar="PATH", help="runsc binary (default: found in PATH)."),
        click.option("--shim", "shim_path", metavar="PATH", help="nvidia-container-runtime shim (default: PATH)."),
        click.option("--set-default", is_flag=True, help="Make it the default runtime."),
        click.option("--root", "host_root", default="/", show_default=True, metavar="DIR",
                     help="Edit the files of a host mounted at DIR."),
        click.option("--dry-run", is_flag=True, help="Print the change as a diff; write nothing."),
    )):
        func = decorator(func)
    return func


@setup.command(name="containerd")
@click.option("--runtime", type=click.Choice(["runsc", "runc"]), default="runsc", show_default=True)
@click.option("--runsc-config", "runsc_config_path", metavar="PATH", help="runsc GPU options file to write.")
@_setup_common
def setup_containerd(runtime, runsc_config_path, config_path, runtime_name, runsc_path, shim_path, set_default,
                     host_root, dry_run) -> None:
    """Add a GPU runtime to containerd's config.toml (runsc: io.containerd.runsc.v1 with nvproxy)."""
    from nvc import setup_config as sc

    kwargs = {"config_path": config_path or sc.CONTAINERD_CONFIG,
              "runsc_config_path": runsc_config_path or sc.RUNSC_GPU_CONFIG}
    changes = sc.apply_containerd(runtime=runtime, runtime_name=runtime_name, shim_path=shim_path,
                                  runsc_path=runsc_path, set_default=set_default, dry_run=dry_run, root=host_root,
                                  **kwargs)
    click.echo(sc.format_changes(changes, dry_run=dry_run), nl=False)


@setup.command(name="docker")
@click.option("--runtime", type=click.Choice(["runc", "runsc"]), default="runc", show_default=True)
@_setup_common
def setup_docker(runtime, config_path, runtime_name, runsc_path, shim_path, set_default, host_root,
                 dry_run) -> None:
    """Add a GPU runtime to docker's daemon.json (runsc: --nvproxy --nvproxy-docker)."""
    from nvc import setup_config as sc

    change = sc.apply_docker(config_path=config_path or sc.DOCKER_DAEMON_CONFIG, runtime=runtime,
                             runtime_name=runtime_name, runsc_path=runsc_path, shim_path=shim_path,
                             set_default=set_default, dry_run=dry_run, root=host_root)
    click.echo(sc.format_changes([change], dry_run=dry_run), nl=False)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print findings as JSON.")
@click.option("--root", "host_root", default="/", show_default=True, metavar="DIR", help="Diagnose a host at DIR.")
@click.option("--path", "runtime_path", metavar="PATH", help="PATH of containerd/dockerd (default: systemd's).")
def doctor(as_json: bool, host_root: str, runtime_path: str | None) -> None:
    """Check this host's GPU container setup (containerd, docker, runsc, hooks, driver) and say how to fix it."""
    from nvc.doctor import DoctorPaths, diagnose, findings_to_json, format_findings, has_errors

    paths = DoctorPaths(root=host_root, **({"runtime_path": runtime_path} if runtime_path else {}))
    findings = diagnose(paths)
    if as_json:
        from nvc.listing import format_json

        _write(format_json(findings_to_json(findings)))
    else:
        _write(format_findings(findings))
    if has_errors(findings):
        raise click.exceptions.Exit(1)


def main(argv: list[str] | None = None) -> int:
    """Entry point of both console scripts: run the command, turn every failure into one line and exit 1."""
    prog = _prog_name()
    try:
        result = cli.main(args=argv, prog_name=prog, standalone_mode=False)
    except NvcError as exc:
        click.echo(f"{prog}: {exc}", err=True)
        return 1
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        no_command = type(exc).__name__ == "NoArgsIsHelpError"
        if no_command and exc.ctx is not None:
            click.echo(exc.ctx.get_usage(), err=True)
        click.echo(f"{prog}: {'missing command' if no_command else exc.format_message()}", err=True)
        click.echo(f"Try `{prog} --help' for more information.", err=True)
        return 1
    except click.Abort:
        return 1
    except BrokenPipeError:
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug of ours still gets one line, never a traceback
        if os.environ.get("NVC_TRACEBACK"):
            raise
        click.echo(f"{prog}: error: {type(exc).__name__}: {exc}", err=True)
        return 1
    # click returns the code of an Exit raised by a command instead of raising it when not in standalone mode.
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
