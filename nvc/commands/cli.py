"""Command line, argv-compatible with ``nvidia-container-cli``: ``PROG [GLOBAL...] COMMAND [OPTIONS...] [ROOTFS]``.

Installed both as ``nvc`` and ``nvidia-container-cli``. Global options come before the command, as with NVIDIA's
argp parser. Every failure becomes one line ``PROG: <stage> error: <message>`` and exit status 1, in ``main``.
"""

from __future__ import annotations

import os
import sys

import click

from nvc.errors import NvcError
from nvc.request import argv as grammar
from nvc.request.argv import prog_name as _prog_name
from nvc.request.options import GlobalOptions


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(grammar.version_text(), nl=False)
    ctx.exit(0)


def _click_option(opt: grammar.Opt):
    """One click option from the grammar's data (nvc.request.argv): the same names, parameter, kind, default and
    help."""
    kwargs: dict = {"help": opt.help}
    if opt.metavar:
        kwargs["metavar"] = opt.metavar
    if opt.kind == grammar.FLAG:
        kwargs["is_flag"] = True
    elif opt.kind == grammar.MULTI:
        kwargs["multiple"] = True
    elif opt.kind == grammar.OPTIONAL:
        kwargs.update(is_flag=False, flag_value="", default=None)
    elif opt.kind == grammar.CHOICE:
        kwargs["type"] = click.Choice(list(opt.choices or ()))
    elif opt.kind == grammar.VERSION:
        return click.option(*opt.names, is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
                            help=opt.help)
    if opt.convert is int:
        kwargs["type"] = int
    if opt.default is not None:
        kwargs.update(default=opt.default, show_default=opt.show_default)
    if opt.envvar:
        kwargs["envvar"] = opt.envvar
    return click.option(*opt.names, opt.dest, **kwargs)


def _options(table: tuple[grammar.Opt, ...]):
    """Decorate a command with a grammar table's options, in the table's order (``--help`` lists them so)."""

    def decorate(func):
        for opt in reversed(table):
            func = _click_option(opt)(func)
        return func

    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@_options(grammar.GLOBAL_OPTIONS)
@click.pass_context
def cli(ctx: click.Context, **values) -> None:
    """NVIDIA container command line (nvc): inspect the driver and give containers the GPU."""
    ctx.obj = grammar.global_options(**values)


def _write(text: str) -> None:
    sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))
    sys.stdout.flush()


@cli.command()
@_options(grammar.INFO_OPTIONS)
@click.pass_obj
def info(opts: GlobalOptions, as_csv: bool, as_json: bool) -> None:
    """Report information about the driver and devices."""
    from nvc.emit.listing import format_info_csv, format_info_text, format_json, info_json
    from nvc.host.inventory import query_nvml

    # Always the driver's own answer, never the NVML cache's: `info` is what people run on a broken host.
    driver = query_nvml(opts.driver_root, opts.ldcache, opts.user, load_kmods=opts.load_kmods, use_cache=False)
    if as_json:
        _write(format_json(info_json(driver)))
    elif as_csv:
        _write(format_info_csv(driver))
    else:
        _write(format_info_text(driver))


@cli.command(name="list")
@_options(grammar.LIST_OPTIONS)
@click.pass_obj
def list_(opts: GlobalOptions, as_json: bool, **options) -> None:
    """List driver components (device nodes, binaries, libraries, IPCs, firmware)."""
    from nvc.emit.listing import ListRequest, format_json, format_list_text, select_list_items
    from nvc.host.inventory import build_inventory

    request = ListRequest(**{k: tuple(v) if isinstance(v, tuple) else v for k, v in options.items()})
    # A diagnosis command like `info` (NVIDIA's has no cache at all): NVML is asked now, so the device nodes listed
    # and the "NVML failed" warning are today's truth. No container start runs `list`, so the cache buys nothing.
    inventory = build_inventory(opts.driver_root, opts.ldcache, opts.user, allow_no_nvml=True, use_nvml_cache=False)
    if inventory.nvml_error is not None:
        click.echo(
            f"{_prog_name()}: warning: {inventory.nvml_error}; "
            f"listing driver {inventory.driver_version} files without device nodes",
            err=True,
        )
    items = select_list_items(inventory, request)
    _write(format_json([item.to_json() for item in items]) if as_json else format_list_text(items))


@cli.command()
@_options(grammar.CONFIGURE_OPTIONS)
@click.argument("rootfs", required=False)
@click.pass_obj
def configure(opts: GlobalOptions, rootfs: str | None, pid: int | None, dry_run: bool, **options) -> None:
    """Configure a container with GPU support by exposing device drivers to it."""
    from nvc.commands import configure

    configure.run_configure(opts, grammar.configure_request(rootfs, options, pid), dry_run)


@cli.command(name="oci-edits")
@_options(grammar.OCI_EDITS_OPTIONS)
@click.argument("rootfs", required=False)
@click.pass_obj
def oci_edits(opts: GlobalOptions, rootfs: str | None, ldcache_out: str | None, **options) -> None:
    """Print the OCI spec edits (mounts, devices, cgroup rules, env) that give ROOTFS the driver: for runtimes
    without hook support such as gVisor's runsc (nvc extension)."""
    from nvc.emit.oci_edits import oci_edits_command

    text, notes = oci_edits_command(opts, grammar.configure_request(rootfs, options), ldcache_out)
    for note in notes:
        click.echo(f"{_prog_name()}: note: {note}", err=True)
    _write(text)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False,
                               "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def runtime(args: tuple[str, ...]) -> None:
    """nvidia-container-runtime: edit a GPU container's spec on create/run, then exec runc/crun/runsc."""
    from nvc.commands.runtime_shim import main as shim_main

    code = shim_main(list(args))
    if code:
        raise click.exceptions.Exit(code)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False,
                               "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def hook(args: tuple[str, ...]) -> None:
    """The OCI hook (same as nvidia-container-runtime-hook): [-config FILE] [-debug] STAGE."""
    from nvc.commands.hook import main as hook_main

    code = hook_main(list(args))
    if code:
        raise click.exceptions.Exit(code)


@cli.command()
@click.option("-C", "cache_file", metavar="FILE", help="Cache file to print (default: --ldcache inside --root).")
@click.pass_obj
def ldcache(opts: GlobalOptions, cache_file: str | None) -> None:
    """Print an ld.so.cache exactly as `ldconfig -p` does (nvc extension)."""
    from nvc.host.ldcache import LdCacheError, format_cache, read_cache

    if cache_file is None:
        cache_file = opts.driver_root.locate(opts.ldcache)
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
@click.option("--cdi", is_flag=True, help="Instead of a runtime: turn on containerd's own CDI support "
              "(enable_cdi, cdi_spec_dirs; containerd 1.7+).")
@click.option("--containerd-version", metavar="X.Y", help="With --cdi: the containerd to write for "
              "(default: `containerd --version`).")
@_setup_common
def setup_containerd(runtime, runsc_config_path, cdi, containerd_version, config_path, runtime_name, runsc_path,
                     shim_path, set_default, host_root, dry_run) -> None:
    """Add a GPU runtime to containerd's config.toml (runsc: io.containerd.runsc.v1 with nvproxy), or with --cdi
    let containerd read the CDI specs itself."""
    from nvc.commands import setup_config as sc

    if cdi:
        from nvc.commands.setup_cdi import apply_containerd_cdi

        change = apply_containerd_cdi(config_path or sc.CONTAINERD_CONFIG, containerd_version, dry_run=dry_run,
                                      root=host_root)
        click.echo(sc.format_changes([change], dry_run=dry_run), nl=False)
        return
    kwargs = {"config_path": config_path or sc.CONTAINERD_CONFIG,
              "runsc_config_path": runsc_config_path or sc.RUNSC_GPU_CONFIG}
    changes = sc.apply_containerd(runtime=runtime, runtime_name=runtime_name, shim_path=shim_path,
                                  runsc_path=runsc_path, set_default=set_default, dry_run=dry_run, root=host_root,
                                  **kwargs)
    click.echo(sc.format_changes(changes, dry_run=dry_run), nl=False)


@setup.command(name="docker")
@click.option("--runtime", type=click.Choice(["runc", "runsc"]), default="runc", show_default=True)
@click.option("--cdi", is_flag=True, help="Instead of a runtime: turn on docker's CDI feature (docker 25+).")
@click.option("--docker-version", metavar="X.Y", help="With --cdi: the dockerd to write for "
              "(default: `dockerd --version`).")
@_setup_common
def setup_docker(runtime, cdi, docker_version, config_path, runtime_name, runsc_path, shim_path, set_default,
                 host_root, dry_run) -> None:
    """Add a GPU runtime to docker's daemon.json (runsc: --nvproxy --nvproxy-docker), or with --cdi turn on
    docker's CDI feature."""
    from nvc.commands import setup_config as sc

    if cdi:
        from nvc.commands.setup_cdi import apply_docker_cdi

        change = apply_docker_cdi(config_path or sc.DOCKER_DAEMON_CONFIG, docker_version, dry_run=dry_run,
                                  root=host_root)
        click.echo(sc.format_changes([change], dry_run=dry_run), nl=False)
        return
    change = sc.apply_docker(config_path=config_path or sc.DOCKER_DAEMON_CONFIG, runtime=runtime,
                             runtime_name=runtime_name, runsc_path=runsc_path, shim_path=shim_path,
                             set_default=set_default, dry_run=dry_run, root=host_root)
    click.echo(sc.format_changes([change], dry_run=dry_run), nl=False)


@cli.group()
def cdi() -> None:
    """CDI (Container Device Interface): GPUs for podman, containerd, CRI-O and docker --device nvidia.com/gpu=N."""


@cdi.command(name="list")
@click.option("--spec-dir", "spec_dirs", multiple=True, metavar="DIR",
              help="A CDI spec directory (repeatable; default: /etc/cdi then /var/run/cdi).")
@click.option("--json", "as_json", is_flag=True, help="Print names, their spec files and problems as JSON.")
def cdi_list(spec_dirs: tuple[str, ...], as_json: bool) -> None:
    """Print the fully qualified CDI device names the spec directories define, one per line."""
    from nvc.emit.cdi.registry import DEFAULT_SPEC_DIRS, load_registry, registry_to_json

    registry = load_registry(spec_dirs or DEFAULT_SPEC_DIRS)
    if as_json:
        from nvc.emit.listing import format_json

        _write(format_json(registry_to_json(registry)))
    else:
        _write("".join(f"{name}\n" for name in registry.names()))
    unusable = [*map(str, registry.problems), *(str(c) for c in registry.conflicts if c.duplicate)]
    for line in unusable:
        click.echo(f"{_prog_name()}: cdi error: {line}", err=True)
    if unusable:
        raise click.exceptions.Exit(1)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print findings as JSON.")
@click.option("--root", "host_root", metavar="DIR", help="Diagnose a host at DIR (same as the global --root).")
@click.option("--path", "runtime_path", metavar="PATH", help="PATH of containerd/dockerd (default: systemd's).")
@click.option("--probe", is_flag=True, help="Start a test sandbox on each runsc platform in use (root).")
@click.pass_obj
def doctor(opts: GlobalOptions, as_json: bool, host_root: str | None, runtime_path: str | None, probe: bool) -> None:
    """Check this host's GPU container setup (driver, containerd, docker, runsc, hooks) and say how to fix it."""
    from nvc.commands.doctor import DoctorPaths, diagnose, findings_to_json, format_findings, has_errors

    paths = DoctorPaths(root=_doctor_root(opts.root, host_root), ldcache=opts.ldcache, probe=probe,
                        **({"runtime_path": runtime_path} if runtime_path else {}))
    findings = diagnose(paths)
    if as_json:
        from nvc.emit.listing import format_json

        _write(format_json(findings_to_json(findings)))
    else:
        _write(format_findings(findings))
    if has_errors(findings):
        raise click.exceptions.Exit(1)


@cdi.command(name="generate")
@click.option("--output", "output", metavar="FILE", help="Write the spec here (atomically, mode 0644); default stdout.")
@click.option("--format", "spec_format", type=click.Choice(["json", "yaml"]),
              help="Output format (default: from the --output extension, yaml otherwise).")
@click.option("--driver-root", metavar="DIR", help="Driver root (default: the global --root, /).")
@click.option("--dev-root", metavar="DIR", help="Where /dev holds the device nodes (default: the driver root).")
@click.option("--device-name-strategy", "strategies", multiple=True, type=click.Choice(["index", "uuid", "type-index"]),
              help="Device names to write, repeatable (default: index and uuid).")
@click.option("--vendor", default="nvidia.com", show_default=True, help="CDI vendor of the kind.")
@click.option("--class", "device_class", default="gpu", show_default=True, help="CDI class of the kind.")
@click.option("--hook-path", "--nvidia-cdi-hook-path", "hook_path", metavar="PATH",
              help="The createContainer hook the spec names (default: our nvidia-cdi-hook as installed).")
@click.option("--driver-capabilities", "capabilities", multiple=True, metavar="LIST",
              help="Capabilities whose files the spec mounts (compute,utility,...; default: all, as `nvc list`).")
@click.option("--mode", type=click.Choice(["auto", "nvml", "management"]), default="auto", show_default=True,
              help="management: no NVML, one device 'all' with the nodes found under /dev.")
@click.option("--annotations/--no-annotations", "annotations", default=False, show_default=True,
              help="Add the nvc/driver-* annotations (cdiVersion 0.6.0: consumers older than CDI 0.6, such as "
                   "Debian 12's podman 4.3, refuse such a spec).")
@click.pass_obj
def cdi_generate(opts: GlobalOptions, output, spec_format, driver_root, dev_root, strategies, vendor, device_class,
                 hook_path, capabilities, mode, annotations) -> None:
    """Write a CDI spec for this host's GPUs (nvidia-ctk cdi generate's options)."""
    from nvc.emit.cdi.generate import DEFAULT_STRATEGIES, GenerateRequest, generate_spec, parse_capabilities
    from nvc.emit.cdi.spec import dump, format_for, write_spec

    request = GenerateRequest(
        driver_root=os.path.abspath(driver_root or opts.root), dev_root=dev_root and os.path.abspath(dev_root),
        ldcache=opts.ldcache, user=opts.user,
        vendor=vendor, device_class=device_class, strategies=tuple(strategies) or DEFAULT_STRATEGIES,
        hook_path=hook_path, capabilities=parse_capabilities(capabilities), mode=mode,
        annotations=annotations,
    )
    spec, notes = generate_spec(request)
    for note in notes:
        click.echo(f"{_prog_name()}: note: {note}", err=True)
    text = dump(spec, format_for(output, spec_format))
    if output:
        write_spec(output, text)
    else:
        _write(text)


def _doctor_root(global_root: str, doctor_root: str | None) -> str:
    """`nvc --root DIR doctor` and `nvc doctor --root DIR` diagnose the same DIR. Given both, they must agree (the
    global one is "/" unless set): two different hosts in one command line is a mistake, not a precedence rule."""
    if doctor_root is None:
        return global_root
    if not doctor_root.startswith("/"):
        raise NvcError("input", f"invalid driver root: {doctor_root}")
    doctor_root = os.path.normpath(doctor_root)
    if global_root != "/" and doctor_root != global_root:
        raise NvcError("input", f"doctor --root {doctor_root} and the global --root {global_root} name different "
                                "hosts: give one")
    return doctor_root


def click_main(argv: list[str] | None = None) -> int:
    """Run the command line through click: turn every failure into one line and exit 1."""
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
    sys.exit(click_main())
