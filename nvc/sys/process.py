"""Process-attribute calls (prctl) for children we confine before exec."""

from __future__ import annotations

from nvc.sys._ffi import libc, raise_errno

PR_SET_NO_NEW_PRIVS = 38


def set_no_new_privs() -> None:
    """No setuid/file-capability gains across exec for this process and its children."""
    _ffi, lib = libc()
    if lib.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise_errno("prctl")
