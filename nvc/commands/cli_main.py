"""The entry point of ``nvidia-container-cli`` and ``nvc``: the click-free fast path for ``configure`` and
``--version`` (the grammar and its parser are :mod:`nvc.request.argv`), click (:mod:`nvc.commands.cli`) for the
rest.

Its own module, above both: the click CLI builds its options from the grammar, and the fast path hands what it does
not understand to click, so neither of those two modules imports the other's caller.
"""

from __future__ import annotations

import os
import sys

from nvc.request import argv as grammar


def report_error(prog: str, exc: BaseException) -> int:
    """The exit status and one stderr line for a failure outside click's own errors (same for both paths)."""
    from nvc.errors import NvcError

    if isinstance(exc, NvcError):
        sys.stderr.write(f"{prog}: {exc}\n")
        return 1
    if isinstance(exc, BrokenPipeError):
        return 1
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if os.environ.get("NVC_TRACEBACK"):
        raise exc
    sys.stderr.write(f"{prog}: error: {type(exc).__name__}: {exc}\n")
    return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``nvidia-container-cli``/``nvc``: the fast path for configure and --version, else click."""
    args = sys.argv[1:] if argv is None else list(argv)
    parsed = grammar.parse_command_line(args)
    if parsed is None:
        from nvc.commands.cli import click_main

        return click_main(args)
    if argv is None:  # run as the program (nvc/oneshot.py)
        from nvc import oneshot

        oneshot.begin()
    prog = grammar.prog_name()
    try:
        if parsed.version:
            sys.stdout.write(grammar.version_text())
            sys.stdout.flush()
            return 0
        values = dict(parsed.values)
        opts = grammar.global_options(**{k: v for k, v in parsed.global_values.items() if k != "version"})
        rootfs, pid, dry_run = values.pop("rootfs"), values.pop("pid"), values.pop("dry_run")
        from nvc.commands import configure

        configure.run_configure(opts, grammar.configure_request(rootfs, values, pid), dry_run)
    except (Exception, KeyboardInterrupt) as exc:
        code = report_error(prog, exc)
    else:
        code = 0
    return oneshot.end(code) if argv is None else code


if __name__ == "__main__":
    sys.exit(main())
