"""Global options shared by every entry point (CLI, hook, runsc's argv): plain values, no click, so the hot
paths can build them without importing the CLI framework."""

from __future__ import annotations

import os

from nvc.errors import NvcError
from nvc.record import record
from nvc.rootpath import DriverRoot


@record
class GlobalOptions:
    """Options that precede the command."""

    debug: str | None = None
    load_kmods: bool = False
    no_pivot: bool = False
    user: tuple[int, int] | None = None
    root: str = "/"
    ldcache: str = "/etc/ld.so.cache"
    no_create_imex_channels: bool = False

    @property
    def driver_root(self) -> DriverRoot:
        """``--root`` as the value every host-side module takes: paths are resolved inside it, never on the host."""
        return DriverRoot(self.root)


def build_global_options(
    debug: str | None = None,
    load_kmods: bool = False,
    no_pivot: bool = False,
    user: str | None = None,
    root: str = "/",
    ldcache: str = "/etc/ld.so.cache",
    no_create_imex_channels: bool = False,
) -> GlobalOptions:
    """The global options from their command-line values (raises ``NvcError`` for a relative root or a bad user):
    one constructor for the CLI's parsers and the hook, which runs the CLI in-process with the values it would
    otherwise put on the CLI's command line."""
    if not root.startswith("/"):
        raise NvcError("input", f"invalid driver root: {root}")
    return GlobalOptions(
        debug=debug,
        load_kmods=load_kmods,
        no_pivot=no_pivot,
        user=parse_user(user),
        root=os.path.normpath(root),
        ldcache=ldcache,
        no_create_imex_channels=no_create_imex_channels,
    )


def parse_user(value: str | None) -> tuple[int, int] | None:
    """``--user[=UID[:GID]]``: without a value, the caller's own ids (NVIDIA's default is root)."""
    if value is None:
        return None
    if value == "":
        return os.geteuid(), os.getegid()
    uid_text, _, gid_text = value.partition(":")
    try:
        uid = int(uid_text) if uid_text.isdigit() else _user_id(uid_text)
        gid = (int(gid_text) if gid_text.isdigit() else _group_id(gid_text)) if gid_text else uid
    except (ValueError, KeyError):
        raise NvcError("input", f"invalid user: {value}") from None
    if uid < 0 or gid < 0:
        raise NvcError("input", f"invalid user: {value}")
    return uid, gid


def _user_id(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid


def _group_id(name: str) -> int:
    import grp

    return grp.getgrnam(name).gr_gid
