"""Command line, argv-compatible with ``nvidia-container-cli``: ``PROG [GLOBAL...] COMMAND [OPTIONS...] [ROOTFS]``.

Installed both as ``nvc`` and ``nvidia-container-cli``. Global options come before the command, as with NVIDIA's
argp parser. Every failure becomes one line ``PROG: <stage> error: <message>`` and exit status 1, in ``main``.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass

import click

from nvc import CLI_COMPAT_VERSION, __version__
from nvc.errors import NvcError


@dataclass
class GlobalOptions:
    """Options that precede the command."""

    debug: str | None = None
    load_kmods: bool = False
    no_pivot: bool = False
    user: tuple[int, int] | None = None
    root: str = "/"
    ldcache: str = "/etc/ld.so.cache"
    no_create_imex_channels: bool = False


def _prog_name() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "nvc"
    return "nvidia-container-cli" if name == "nvidia-container-cli" else "nvc"


def parse_user(value: str | None) -> tuple[int, int] | None:
    """``--user[=UID[:GID]]``: without a value, the caller's own ids (NVIDIA's default is root)."""
    if value is None:
        return None
    if value == "":
        return os.geteuid(), os.getegid()
    uid_text, _, gid_text = value.partition(":")
    try:
        uid = int(uid_text)
        gid = int(gid_text) if gid_text else uid
    except ValueError:
        raise NvcError("input", f"invalid user: {value}") from None
    if uid < 0 or gid < 0:
        raise NvcError("input", f"invalid user: {value}")
    return uid, gid


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
@click.option("-r", "--root", default="/", show_default=True, metavar="PATH", help="Path to the driver root.")
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

    driver = query_nvml(opts.root, opts.ldcache, opts.user)
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of both console scripts: run the command, turn every failure into one line and exit 1."""
    prog = _prog_name()
    try:
        cli.main(args=argv, prog_name=prog, standalone_mode=False)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
