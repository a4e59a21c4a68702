"""The launchers' first look for the hook helper: one ``stat`` of its socket, before anything else is loaded.

The helper (:mod:`nvc.commands.hook_helper`) is optional and most hosts run none; on those, this module and one
failed ``stat`` are all a container start pays for it. When the socket is there, :mod:`nvc.hook_client` checks
it and offers the start (its docstring has the rules). The launchers of ``nvidia-container-runtime-hook`` and
``nvidia-container-cli`` call :func:`try_helper` and :func:`try_helper_cli` (their ``HELPER``).
"""

import posix
import sys

SOCKET_NAME = "hook.sock"
NO_HELPER_ENV = "NVC_NO_HELPER"
CLIENT_MARKER_ENV = "NVC_HELPER_CLIENT"  # set by the compiled client when it hands a start back (_client_offered)
DEFAULT_CACHE_DIR = "/run/nvc"  # nvc.private_files.DEFAULT_CACHE_DIR (kept equal by a test)
_HOOK_STAGES = ("prestart", "createRuntime")


def try_helper() -> "int | None":
    """The OCI hook's exit status from the helper, or ``None``: run the hook in this process."""
    if _client_offered() or sys.argv[1:] not in ([stage] for stage in _HOOK_STAGES):
        return None
    return _offer("hook", True)


def try_helper_cli() -> "int | None":
    """The same for ``nvidia-container-cli``, for its ``configure`` only (what runsc and containerd's oci-hook exec
    on every start); other commands are diagnoses that a person runs, where a fresh process is the point."""
    if _client_offered() or "configure" not in sys.argv[1:]:
        return None
    return _offer("cli", False)


def socket_directory() -> "bytes | None":
    """The directory holding a helper's socket (``$NVC_CACHE_DIR`` or /run/nvc), or ``None``: no helper to try."""
    if posix.environ.get(NO_HELPER_ENV.encode(), b"") not in (b"", b"0"):
        return None
    directory = posix.environ.get(b"NVC_CACHE_DIR") or DEFAULT_CACHE_DIR.encode()
    if not directory.startswith(b"/"):
        return None
    try:
        posix.stat(directory + b"/" + SOCKET_NAME.encode(), follow_symlinks=False)
    except OSError:
        trace("absent")
        return None
    return directory


def _client_offered() -> bool:
    """Whether the compiled client (hooks/client/nvc-hook-client.c) offered this start already and the helper
    said no ("offered"), rather than leaving the offer to us ("deferred"). Its variable goes from this process's
    environment before anything reads it: the hook's environment is the runtime's, as without the client."""
    key = CLIENT_MARKER_ENV.encode()
    value = posix.environ.pop(key, None)
    if value is None:
        return False
    posix.unsetenv(key)
    os = sys.modules.get("os")
    if os is not None:
        os.environ.pop(CLIENT_MARKER_ENV, None)
    if value == b"offered":
        trace("offered by the client")
        return True
    return False


def _offer(tool: str, with_state: bool) -> "int | None":
    directory = socket_directory()
    if directory is None:
        return None
    from nvc.hook_client import offer

    return offer(directory, SOCKET_NAME, tool, with_state, trace)


def trace(what: str) -> None:
    """``NVC_LAUNCHER_TRACE=1``: say on stderr what became of the helper (tests and debugging)."""
    if posix.environ.get(b"NVC_LAUNCHER_TRACE"):
        sys.stderr.write(f"nvc-launcher: helper={what}\n")
