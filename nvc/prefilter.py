"""Deciding cheaply, before any rule runs, that a container cannot be a GPU container: a conservative pre-filter.

Every container on a GPU node goes through the runtime shim, and every container whose runtime has our hook goes
through the hook, GPU or not. NVIDIA's rules (:mod:`nvc.request.container_env`) decide from the parsed ``config.json``
and config.toml; this module only answers "surely not a GPU container" or "maybe": a ``config.json`` that contains
none of the markers (:func:`nvc.commands.prefilter_memo.markers_for`) cannot make
:func:`nvc.request.container_env.gpu_request_from_spec` return a request, whatever the rules say in detail. Why
each marker:

* ``NVIDIA_``: ``NVIDIA_VISIBLE_DEVICES`` and every other variable the rules read;
* ``CUDA_VERSION``: a legacy CUDA image gets all GPUs without ``NVIDIA_VISIBLE_DEVICES``;
* ``nvidia-container-devices``: device lists given as volume mounts (the path may be spelled with ``//``, ``/./``
  or ``\\/``, never without this word);
* config.toml's ``swarm-resource`` names and the CDI annotation prefixes, cut before the first character JSON may
  escape (``/``, ``"``, ``\\``, control and non-ASCII characters);
* ``\\u``: JSON can spell any of the above with ``\\u`` escapes; its other escapes produce no letter, digit,
  ``_`` or ``-``;
* a NUL byte: JSON in UTF-16 or UTF-32 (which the spec reader accepts) holds no ASCII marker but always NULs.

So the filter can only err towards "maybe", which costs the full decision, never towards skipping a GPU container.
A spec that is broken in ways the rules would report (an env entry without ``=``, malformed JSON) but carries no
marker is left to the low-level runtime to judge, as for any container that is not ours.

The markers depend on config.toml, so the slow path memoises them, with what they depend on, in the answer cache
directory (``/run/nvc``, :mod:`nvc.host.nvml.cache`'s rules: root-only, never through a symlink):

* ``hook-prefilter.json`` for the hook (:func:`hook_may_skip`), valid while config.toml keeps its identity
  (device, inode, size, mtime, ctime) — the config cache's own key;
* ``runtime-shim.memo`` (plus a content-addressed ``runtime-shim-markers-*.pat``) for the runtime shim's sh
  launcher, which decides without starting Python (scripts/launchers/nvidia-container-runtime). sh can only compare
  modification times, so the memo carries config.toml's mtime as its own, and is only written when config.toml has
  not changed (mtime and ctime) for :data:`SETTLE_NS`: any later change gets a later mtime. Only a file given
  different content *and* the very same nanosecond mtime on purpose (``touch -r``) would be missed until reboot;
  ``NVC_NO_CACHE=1`` turns every memo off. The memo also records the environment the decision read and every
  runtime candidate the PATH search rejected, which the launcher re-checks.

This module is the reading side only, and sits at the top of the package (not in ``commands/``) because the hook's
launcher imports it on every container start: a container without NVIDIA variables then loads nothing but this
module and three small helpers, no package folder. The writers need the parsed config.toml and live with the
commands that have one: :mod:`nvc.commands.prefilter_memo` (the markers, the hook's memo) and
:mod:`nvc.commands.runtime_shim` (the shim's memo).
"""

import posix

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

FORMAT = 1
HOOK_MEMO = "hook-prefilter.json"
SHIM_MEMO = "runtime-shim.memo"
SHIM_MEMO_MAGIC = "nvc-runtime-shim-memo 1"
SHIM_MARKERS_PREFIX = "runtime-shim-markers-"
SHIM_MARKERS_SUFFIX = ".pat"
#: config.toml must have been left alone this long before a memo may rely on its mtime (timestamps are coarse).
SETTLE_NS = 2_000_000_000
#: The hook stages the launcher's pre-filter handles: only these, with no flag (``-config``, ``-debug``).
HOOK_STAGES = ("prestart", "createRuntime")
#: What the hook's pre-filter reads from the environment (the rest of it is none of its business).
_HOOK_ENV = ("NVIDIA_CTK_CONFIG_FILE_PATH", "XDG_CONFIG_HOME", "NVC_CACHE_DIR", "NVC_NO_CACHE")

FIXED_MARKERS = ("NVIDIA_", "CUDA_VERSION", "nvidia-container-devices", "\\u", "\0")


def may_request_gpu(data: bytes, markers: "Iterable[str]") -> bool:
    """False only when ``data`` (a ``config.json``) contains none of ``markers``."""
    return any(marker.encode() in data for marker in markers)


def config_identity(path: str) -> "list[int] | bool | None":
    """config.toml's identity, ``None`` when it does not exist (ENOENT), ``False`` when it is unusable."""
    try:
        st = posix.stat(path)
    except FileNotFoundError:
        return None
    except OSError:
        return False
    if (st.st_mode & 0o170000) != 0o100000:  # not a regular file: S_ISREG without importing stat
        return False
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def settled(identity: "list[int] | None") -> bool:
    import time

    return identity is None or time.time_ns() - max(identity[3], identity[4]) >= SETTLE_NS


# --- the hook ---------------------------------------------------------------------------------------------------


def hook_launcher_skips() -> bool:
    """Called by the hook's launcher (scripts/launchers/) before it imports the hook: True when the hook may exit 0
    at once. Reads stdin when the stage is one it handles, and puts what it read back as ``sys.stdin`` for the
    hook when it does not skip. Imports nothing but posix, jsonfast and this package's small helpers."""
    import sys

    if sys.argv[1:] not in ([stage] for stage in HOOK_STAGES):
        return False
    # Everything hook_may_skip imports, before stdin is read: an ImportError after it would lose the state.
    import io

    from nvc import config_location, jsonfast, private_files  # noqa: F401
    encoding = sys.getfilesystemencoding()
    errors = sys.getfilesystemencodeerrors()
    environ = {}
    for name in _HOOK_ENV:
        value = posix.environ.get(name.encode())
        if value is not None:
            environ[name] = value.decode(encoding, errors)
    stdin = sys.stdin
    raw = stdin.buffer.read()
    try:
        return hook_may_skip(environ, raw)
    except Exception:  # a doubt like any other: the hook decides
        return False
    finally:  # the hook reads the same bytes, decoded as stdin would have decoded them
        sys.stdin = io.TextIOWrapper(io.BytesIO(raw), encoding=stdin.encoding, errors=stdin.errors, newline="\n")


def hook_may_skip(environ: "Mapping[str, str]", raw_state: "bytes | str") -> bool:
    """True when the memo for this config.toml is valid and the bundle's ``config.json`` holds none of its
    markers. Any doubt (no memo, a changed config, an odd state, an unreadable spec) is False."""
    from nvc import jsonfast
    from nvc.config_location import config_file_path
    from nvc.private_files import cache_dir_path, caching_disabled, open_cache_dir, read_private_file

    if caching_disabled(environ):
        return False
    path, required = config_file_path(environ)
    if not path.startswith("/"):
        return False
    dir_fd = open_cache_dir(cache_dir_path(environ=environ))
    if dir_fd is None:
        return False
    try:
        memo = read_private_file(dir_fd, HOOK_MEMO)
    finally:
        posix.close(dir_fd)
    try:
        entry = jsonfast.loads(memo) if memo is not None else None
        state = jsonfast.loads(raw_state)
    except (ValueError, UnicodeDecodeError):
        return False
    if (
        not isinstance(entry, dict)
        or entry.get("format") != FORMAT
        or entry.get("config") != path
        or entry.get("id") != config_identity(path)
        or (entry.get("id") is None and required)  # a required config.toml that is missing: the hook's error
    ):
        return False
    markers = entry.get("markers")
    if not isinstance(markers, list) or not all(isinstance(m, str) for m in markers) or not isinstance(state, dict):
        return False
    bundle = state.get("bundle") or state.get("bundlePath") or posix.getcwd()
    pid = state.get("pid")
    if not isinstance(bundle, str) or type(pid) is not int or pid <= 0:
        return False
    try:
        with open((bundle if bundle.endswith("/") else bundle + "/") + "config.json", "rb") as handle:
            data = handle.read()
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return False
    return not may_request_gpu(data, markers)

