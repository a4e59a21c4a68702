"""The command-line grammar of ``nvidia-container-cli`` as data, and a click-free parser over it for the hot path.

One grammar, two parsers: :mod:`nvc.commands.cli` builds its click options from the tables below (``--help``, error
messages and usage stay click's), and :func:`parse_configure` parses the same tables with a tiny getopt_long-style
loop that follows click's rules (``--opt=value``, ``--opt value``, ``-dVALUE``, ``-d VALUE``, bundled short flags
``-cu``, ``--``, options after the positional ROOTFS). gVisor's runsc and containerd's ``oci-hook`` run
``nvidia-container-cli ... configure ...`` on every container start, and importing click costs more than the rest
of the parse; so the fast parser handles what it fully understands and answers ``None`` for everything else (help,
an unknown option, a missing or bad value, another command), which the caller then hands to click for the proper
error or usage. tests/test_argv.py proves both parsers produce the same request on a table of command lines.

Also here, click-free: building :class:`GlobalOptions` and :class:`ConfigureRequest` from parsed values (both
parsers call these), the program name and the ``--version`` text.
"""

from __future__ import annotations

import os
import sys

FLAG = "flag"  # --name: True when given
VALUE = "value"  # --name VALUE / --name=VALUE / -nVALUE / -n VALUE: the last one given wins
MULTI = "multi"  # like VALUE, every occurrence kept, in order (a tuple)
CHOICE = "choice"  # VALUE restricted to ``choices``
OPTIONAL = "optional"  # --name[=VALUE]: a value only when attached with "=" or not looking like an option
VERSION = "version"  # -V/--version: print the version and exit, whatever else is on the line (eager)


class Opt:
    """One option: its names (``-d``, ``--device``), the parameter it fills (``dest``), its kind and help."""

    __slots__ = ("choices", "convert", "default", "dest", "envvar", "help", "kind", "metavar", "names",
                 "show_default")

    def __init__(self, names: tuple[str, ...], dest: str, kind: str, help: str, *, metavar: str | None = None,
                 default: object = None, choices: tuple[str, ...] | None = None, convert=None,
                 envvar: str | None = None, show_default: bool = False) -> None:
        self.names = names
        self.dest = dest
        self.kind = kind
        self.help = help
        self.metavar = metavar
        self.default = default
        self.choices = choices
        self.convert = convert  # int for --pid: a value that fails to convert is click's to report
        self.envvar = envvar  # read when the option is not given and the variable is non-empty (as click does)
        self.show_default = show_default

    def initial(self) -> object:
        """The value when the option is not on the command line."""
        if self.envvar and os.environ.get(self.envvar):
            return os.environ[self.envvar]
        if self.kind == FLAG or self.kind == VERSION:
            return False
        if self.kind == MULTI:
            return ()
        return self.default

    def __repr__(self) -> str:
        return f"Opt({'/'.join(self.names)} -> {self.dest}, {self.kind})"


GLOBAL_OPTIONS = (
    Opt(("-d", "--debug"), "debug", VALUE, "Log debug information to FILE (appended).", metavar="FILE"),
    Opt(("-k", "--load-kmods"), "load_kmods", FLAG, "Load kernel modules / create missing device nodes."),
    Opt(("-n", "--no-pivot"), "no_pivot", FLAG, "Do not use pivot_root (accepted for compatibility)."),
    Opt(("-u", "--user"), "user", OPTIONAL,
        "Run driver helpers as this user (default: unprivileged nobody for NVML).", metavar="UID[:GID]"),
    Opt(("-r", "--root"), "root", VALUE,
        "Path to the driver root (also $NVC_DRIVER_ROOT, for callers like runsc that never pass it).",
        metavar="PATH", default="/", envvar="NVC_DRIVER_ROOT", show_default=True),
    Opt(("-l", "--ldcache"), "ldcache", VALUE, "ld.so.cache inside the driver root.", metavar="FILE",
        default="/etc/ld.so.cache", show_default=True),
    Opt(("--no-create-imex-channels",), "no_create_imex_channels", FLAG, "Do not create IMEX channel device nodes."),
    Opt(("-V", "--version"), "version", VERSION, "Print version information and exit."),
)

# (short, long, capability): the capability flags, in NVIDIA's order.
CAPABILITY_FLAGS = (
    ("-c", "--compute", "compute"),
    ("-u", "--utility", "utility"),
    ("-v", "--video", "video"),
    ("-g", "--graphics", "graphics"),
    ("-D", "--display", "display"),
    ("-n", "--ngx", "ngx"),
    (None, "--compat32", "compat32"),
)
CUDA_COMPAT_MODES = ("mount", "ldconfig", "disabled")

# The options of a container request, shared by configure and oci-edits.
REQUEST_OPTIONS = (
    Opt(("-d", "--device"), "devices", MULTI, "Device UUID(s) or index(es).", metavar="ID"),
    Opt(("-r", "--require"), "requirements", MULTI, "Container requirement.", metavar="EXPR"),
    Opt(("-l", "--ldconfig"), "ldconfig", VALUE, "Path to the ldconfig binary (@ prefix: a host binary).",
        metavar="PATH"),
    *(Opt(tuple(n for n in (short, long) if n), cap, FLAG, f"Enable {cap} capability.")
      for short, long, cap in CAPABILITY_FLAGS),
    Opt(("--mig-config",), "mig_config", MULTI, "Enable MIG configuration of these devices.", metavar="ID"),
    Opt(("--mig-monitor",), "mig_monitor", MULTI, "Enable MIG monitoring of these devices.", metavar="ID"),
    Opt(("--imex-channel",), "imex_channels", MULTI, "IMEX channel(s) to expose.", metavar="ID"),
    Opt(("--no-cgroups",), "no_cgroups", FLAG, "Don't set up device cgroups."),
    Opt(("--no-devbind",), "no_devbind", FLAG, "Don't bind mount device nodes."),
    Opt(("--no-persistenced",), "no_persistenced", FLAG, "Don't include the persistenced socket."),
    Opt(("--no-fabricmanager",), "no_fabricmanager", FLAG, "Don't include the fabricmanager socket."),
    Opt(("--no-gsp-firmware",), "no_gsp_firmware", FLAG, "Don't include GSP firmware."),
    Opt(("--no-cntlibs",), "no_cntlibs", FLAG, "Don't overwrite host mounts with container libraries."),
    Opt(("--cuda-compat-mode",), "cuda_compat_mode", CHOICE, "How CUDA forward-compat libraries in the image are used.",
        choices=CUDA_COMPAT_MODES, default="mount", show_default=True),
    Opt(("--exec-ldconfig",), "exec_ldconfig", FLAG,
        "Run ldconfig in the container instead of writing its ld.so.cache in-process (nvc extension)."),
    Opt(("--gvisor",), "gvisor", FLAG, "gVisor nvproxy context (automatic when --pid is runsc's gofer)."),
)

CONFIGURE_OPTIONS = (
    Opt(("-p", "--pid"), "pid", VALUE, "Container PID (default: the caller's namespaces).", metavar="PID",
        convert=int),
    *REQUEST_OPTIONS,
    Opt(("--dry-run",), "dry_run", FLAG, "Print the plan and change nothing (nvc extension)."),
)

OCI_EDITS_OPTIONS = (
    *REQUEST_OPTIONS,
    Opt(("--ldcache-out",), "ldcache_out", VALUE,
        "Write the container's merged ld.so.cache here (the edits mount it over /etc/ld.so.cache).", metavar="FILE"),
)

INFO_OPTIONS = (
    Opt(("--csv",), "as_csv", FLAG, "Print in CSV format."),
    Opt(("--json",), "as_json", FLAG, "Print as JSON."),
)

LIST_OPTIONS = (
    Opt(("-d", "--device"), "devices", MULTI, "Device UUID(s) or index(es) to list.", metavar="ID"),
    Opt(("-l", "--libraries"), "libraries", FLAG, "List driver libraries."),
    Opt(("-b", "--binaries"), "binaries", FLAG, "List driver binaries."),
    Opt(("-i", "--ipcs"), "ipcs", FLAG, "List driver IPCs."),
    Opt(("-f", "--firmwares"), "firmwares", FLAG, "List driver firmwares."),
    Opt(("--compat32",), "compat32", FLAG, "Also list 32-bit libraries."),
    Opt(("--mig-config",), "mig_config", MULTI, "MIG devices to list config capabilities of.", metavar="ID"),
    Opt(("--mig-monitor",), "mig_monitor", MULTI, "MIG devices to list monitor capabilities of.", metavar="ID"),
    Opt(("--imex-channel",), "imex_channels", MULTI, "IMEX channel(s) to list.", metavar="ID"),
    Opt(("--no-persistenced",), "no_persistenced", FLAG, "Do not list the persistenced socket."),
    Opt(("--no-fabricmanager",), "no_fabricmanager", FLAG, "Do not list the fabricmanager socket."),
    Opt(("--no-gsp-firmware",), "no_gsp_firmware", FLAG, "Do not list GSP firmware."),
    Opt(("--json",), "as_json", FLAG, "Print one JSON object per item (nvc extension)."),
    Opt(("--rootfs",), "rootfs", VALUE, "Container rootfs whose layout decides library targets (JSON).",
        metavar="DIR"),
)


class _Unsure(Exception):
    """The fast parser does not fully understand the line: click must parse it (and report what is wrong)."""


def _parse_options(table: tuple[Opt, ...], args: list[str], *, interspersed: bool) -> tuple[dict, list[str]]:
    """Parse ``args`` against ``table`` the way click's parser does: (values by dest, positional arguments).

    ``interspersed``: options may follow positional arguments (a command); otherwise the first positional argument
    and everything after it are returned untouched (the global options before the command). Raises
    :class:`_Unsure` for anything click would report or treat specially.
    """
    by_name = {name: opt for opt in table for name in opt.names}
    values = {opt.dest: opt.initial() for opt in table}
    positional: list[str] = []
    rargs = list(args)
    while rargs:
        arg = rargs.pop(0)
        if arg == "--":
            positional.extend(rargs)
            break
        if arg[:1] != "-" or len(arg) == 1:
            positional.append(arg)
            if not interspersed:
                positional.extend(rargs)
                break
            continue
        if arg.startswith("--"):
            name, eq, attached = arg.partition("=")
            opt = by_name.get(name)
            if opt is None:
                raise _Unsure(arg)
            if eq:
                if opt.kind in (FLAG, VERSION):
                    raise _Unsure(arg)  # click: "option does not take a value"
                _store(opt, values, attached)
                continue
            _take(opt, values, rargs)
            continue
        # A cluster of short options: -cu, -d0, -cd0 (a value option takes the rest of the cluster, or the next arg).
        for pos in range(1, len(arg)):
            opt = by_name.get("-" + arg[pos])
            if opt is None:
                raise _Unsure(arg)
            if opt.kind in (FLAG, VERSION):
                values[opt.dest] = True
                continue
            if pos + 1 < len(arg):
                rargs.insert(0, arg[pos + 1:])
            _take(opt, values, rargs)
            break
    return values, positional


def _take(opt: Opt, values: dict, rargs: list[str]) -> None:
    if opt.kind in (FLAG, VERSION):
        values[opt.dest] = True
        return
    if opt.kind == OPTIONAL or not rargs:
        raise _Unsure(opt.names[-1])  # --user without "=", or a missing value: click decides
    _store(opt, values, rargs.pop(0))


def _store(opt: Opt, values: dict, text: str) -> None:
    if opt.kind == MULTI:
        values[opt.dest] = (*values[opt.dest], text)
        return
    if opt.kind == CHOICE and text not in opt.choices:
        raise _Unsure(text)
    if opt.convert is not None:
        try:
            values[opt.dest] = opt.convert(text)
        except ValueError:
            raise _Unsure(text) from None
        return
    values[opt.dest] = text


class FastParse:
    """A command line the fast parser fully understood: global option values, the command, its values."""

    __slots__ = ("command", "global_values", "values")

    def __init__(self, global_values: dict, command: str | None, values: dict) -> None:
        self.global_values = global_values
        self.command = command
        self.values = values

    @property
    def version(self) -> bool:
        return bool(self.global_values["version"])


def parse_command_line(args: list[str]) -> FastParse | None:
    """``[GLOBAL...] configure [OPTIONS...] [ROOTFS]`` (or ``--version``) parsed without click; None: ask click.

    ``values`` holds, by parameter name, exactly what click passes to the configure command (including
    ``rootfs``); ``global_values`` what it passes to the group.
    """
    try:
        global_values, rest = _parse_options(GLOBAL_OPTIONS, args, interspersed=False)
        if global_values["version"]:
            return FastParse(global_values, None, {})  # eager, as click's: the rest of the line is not looked at
        if not rest or rest[0] != "configure":
            return None
        values, positional = _parse_options(CONFIGURE_OPTIONS, rest[1:], interspersed=True)
    except _Unsure:
        return None
    if len(positional) > 1:
        return None  # click: "Got unexpected extra argument"
    values["rootfs"] = positional[0] if positional else None
    return FastParse(global_values, "configure", values)


def global_options(debug=None, load_kmods=False, no_pivot=False, user=None, root="/", ldcache="/etc/ld.so.cache",
                   no_create_imex_channels=False):
    """The group's values as :class:`GlobalOptions` (:func:`nvc.request.options.build_global_options`, shared with the
    hook's in-process CLI)."""
    from nvc.request.options import build_global_options

    return build_global_options(debug=debug, load_kmods=load_kmods, no_pivot=no_pivot, user=user, root=root,
                                ldcache=ldcache, no_create_imex_channels=no_create_imex_channels)


def configure_request(rootfs: str | None, options: dict, pid: int | None = None):
    """A request option table's values (``REQUEST_OPTIONS`` dests) as a :class:`ConfigureRequest`."""
    from nvc.components import Capability
    from nvc.errors import NvcError
    from nvc.request.configure_request import ConfigureRequest
    from nvc.request.device_select import split_device_list

    if not rootfs or not rootfs.startswith("/") or os.path.normpath(rootfs) == "/":
        raise NvcError("input", "invalid rootfs directory")
    options = dict(options)
    caps = frozenset(Capability(cap) for _, _, cap in CAPABILITY_FLAGS if options.pop(cap))
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


def prog_name() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "nvc"
    return "nvidia-container-cli" if name == "nvidia-container-cli" else "nvc"


def version_text() -> str:
    """``--version``: gVisor's runsc parses the first line to decide which flags it may pass, keep it first.

    The build lines say what platform.python_implementation(), python_version() and machine() say, without
    importing platform (and re): runsc asks for this on container starts."""
    from nvc import CLI_COMPAT_VERSION, __version__

    names = {"cpython": "CPython", "pypy": "PyPy", "ironpython": "IronPython", "jython": "Jython"}
    implementation = names.get(sys.implementation.name, sys.implementation.name)
    return (f"cli-version: {CLI_COMPAT_VERSION}\n"
            f"lib-version: {CLI_COMPAT_VERSION}\n"
            f"build revision: nvc {__version__}\n"
            f"build compiler: {implementation} {sys.version.split()[0]}\n"
            f"build platform: {os.uname().machine}\n")
