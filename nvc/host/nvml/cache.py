"""Remember NVML's answer for a driver root, so the hot path (every container start) runs no NVML while it holds.

Asking NVML costs a forked, confined helper and an ``nvmlInit``: a few milliseconds with the persistence daemon,
100 ms to seconds without it (the driver initialises every GPU, then tears them down again). The answer only
changes when the driver, its library or the GPUs change, so it is stored on disk and reused while these still
hold:

* the key (the file name is the SHA-256 of it): the boot id, the driver root, the NVML library's identity
  (``st_dev``, ``st_ino``, ``st_size``, ``st_mtime_ns`` of the resolved file), the kernel module's version from
  ``<root>/proc/driver/nvidia/version`` and the helper's credentials;
* checked on every hit, with a few small reads: the set of ``<root>/proc/driver/nvidia/gpus/*`` directories equals
  the cached GPUs' bus ids and each ``information`` file still has the cached digest; the names under
  ``<root>/proc/driver/nvidia/capabilities`` (one ``gpuN/mig/giX[/ciY]`` directory per MIG instance) are unchanged,
  so creating or destroying MIG instances is noticed.

No kernel module (no ``/proc`` version file) means no caching: NVML is asked, and its error reported, every time.

The store is a directory (``/run/nvc``: tmpfs, gone at reboot) holding one JSON file per key, mode 0600 in a 0700
directory owned by us. Nothing there is trusted blindly: the directory is opened with ``O_NOFOLLOW`` and refused
unless it is ours and not group/world-writable, every file access is relative to that descriptor and never
follows a symlink, writes go to a temporary file renamed into place. Any problem with the cache (unreadable,
corrupt, refused, a full disk) falls back to asking NVML; it never fails the query. ``$NVC_CACHE_DIR`` overrides the
directory, ``$NVC_NO_CACHE=1`` turns caching off.

File format (``<sha256 of the key>.json``)::

    {"format": 1,
     "key": {"format": 1, "boot_id": "...", "driver_root": "/", "library": "/usr/lib/.../libnvidia-ml.so.535.x",
             "library_id": [st_dev, st_ino, st_size, st_mtime_ns], "driver_version": "535.x", "user": null},
     "gpus": {"0000:3b:00.0": "<sha256 of its information file>", ...},
     "mig_caps": "<sha256 of the sorted names under /proc/driver/nvidia/capabilities>",
     "info": DriverInfo.to_dict()}
"""

from __future__ import annotations

# proc_driver and rootpath are imported where they are used: the hook's pre-filter (nvc.commands.prefilter) uses this
# module's private-file helpers on every container start and needs nothing else from here.
import os

from nvc.private_files import (  # noqa: F401 - the directory's rules live there; re-exported for its users
    CACHE_DIR_ENV,
    DEFAULT_CACHE_DIR,
    MAX_ENTRY_BYTES,
    NO_CACHE_ENV,
    cache_dir_path,
    caching_disabled,
    open_cache_dir,
    read_private_file,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from nvc.driver_info import DriverInfo

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"  # the host's, whatever the driver root
FORMAT = 1
MAX_ENTRIES = 64  # entries kept in the directory; the oldest go when a write passes this
MAX_PROC_BYTES = 1 << 16  # /proc files we digest are a few hundred bytes
MAX_CAP_NAMES = 8192  # a capabilities tree larger than this is not cached
STALE_TMP_SECONDS = 60.0  # a temporary file older than this was left by a crashed writer

_PROC = "/proc/driver/nvidia"
_ENTRY_SUFFIX = ".json"
_HEX = frozenset("0123456789abcdef")


def sha256_hex(data: bytes) -> str:
    """SHA-256 hex digest without importing :mod:`hashlib` (3 ms of OpenSSL set-up on the hot path)."""
    try:
        from _sha256 import sha256  # CPython's builtin implementation: no OpenSSL to load
    except ImportError:  # pragma: no cover - a Python built without it
        from hashlib import sha256
    return sha256(data).hexdigest()


def cached_query(
    library_path: str,
    driver_root: str,
    query: Callable[[], DriverInfo],
    cache_dir: str = DEFAULT_CACHE_DIR,
    *,
    user: tuple[int, int] | None = None,
) -> DriverInfo:
    """``query()``'s answer, from the cache when the driver, its library and the GPUs are unchanged.

    ``library_path`` is the host path of the root's ``libnvidia-ml.so.1`` that ``query`` loads; ``user`` is the
    ``(uid, gid)`` the query runs as (part of the key: NVML may see fewer GPUs as another user). Errors from
    ``query`` propagate and are never cached; errors of the cache itself only cost a call to ``query``.
    """
    if caching_disabled():
        return query()
    try:
        state = _snapshot(library_path, driver_root, user)
        dir_fd = open_cache_dir(cache_dir_path(cache_dir)) if state is not None else None
    except Exception:  # a bug or a surprise in the cache must not cost the answer
        state, dir_fd = None, None
    if state is None or dir_fd is None:
        return query()
    try:
        try:
            cached = _load(dir_fd, state)
        except Exception:
            cached = None
        if cached is not None:
            return cached
        info = query()  # its errors are the caller's
        try:
            _store(dir_fd, state, info)
        except Exception:
            pass
        return info
    finally:
        os.close(dir_fd)


class _State:
    """What the answer depends on, read before NVML is asked (a change while it runs makes the entry stale)."""

    __slots__ = ("gpus", "key", "mig_caps", "name")

    def __init__(self, key: dict[str, Any], gpus: dict[str, str], mig_caps: str) -> None:
        self.key = key
        self.gpus = gpus
        self.mig_caps = mig_caps
        self.name = entry_name(key)


def entry_name(key: dict[str, Any]) -> str:
    """The file name of the entry for ``key``: the SHA-256 of its canonical JSON, ``.json``."""
    from nvc import jsonfast

    return sha256_hex(jsonfast.dumps(key, sort_keys=True).encode()) + _ENTRY_SUFFIX


def _snapshot(library_path: str, driver_root: str, user: tuple[int, int] | None) -> _State | None:
    """The key and the checked /proc state now; ``None`` when the answer must not be cached."""
    from nvc.host.proc_driver import parse_nvrm_version
    from nvc.rootpath import host_path

    root = os.path.realpath(driver_root)
    try:
        version = parse_nvrm_version(_read_small(host_path(root, _PROC + "/version")).decode(errors="replace"))
        boot_id = _read_small(BOOT_ID_PATH).decode(errors="replace").strip()
        lib = os.stat(library_path)  # follows the soname link: the file actually loaded
    except OSError:
        return None
    if not version or not boot_id:
        return None
    gpus = _proc_gpus(root)
    mig_caps = _capability_names_digest(root)
    if gpus is None or mig_caps is None:
        return None
    key = {
        "format": FORMAT,
        "boot_id": boot_id,
        "driver_root": root,
        "library": os.path.realpath(library_path),
        "library_id": [lib.st_dev, lib.st_ino, lib.st_size, lib.st_mtime_ns],
        "driver_version": version,
        "user": list(user) if user is not None else None,
    }
    return _State(key, gpus, mig_caps)


def _read_small(path: str) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read(MAX_PROC_BYTES)


def _proc_gpus(root: str) -> dict[str, str] | None:
    """``{bus id directory: sha256 of its information file}`` for ``<root>/proc/driver/nvidia/gpus``."""
    from nvc.rootpath import host_path

    gpus_dir = host_path(root, _PROC + "/gpus")
    try:
        names = os.listdir(gpus_dir)
    except FileNotFoundError:
        names = []
    except OSError:
        return None
    digests = {}
    for name in names:
        try:
            data = _read_small(os.path.join(gpus_dir, name, "information"))
        except OSError:
            return None
        digests[name] = sha256_hex(data)
    return digests


def _capability_names_digest(root: str) -> str | None:
    """SHA-256 of the sorted names under ``<root>/proc/driver/nvidia/capabilities`` (MIG instances live there)."""
    from nvc.rootpath import host_path

    base = host_path(root, _PROC + "/capabilities")
    names: list[str] = []
    pending = [""]
    while pending:
        rel = pending.pop()
        try:
            entries = os.scandir(os.path.join(base, rel) if rel else base)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return None
        with entries:
            for entry in entries:
                path = f"{rel}/{entry.name}" if rel else entry.name
                names.append(path)
                if entry.is_dir(follow_symlinks=False):
                    pending.append(path)
        if len(names) > MAX_CAP_NAMES:
            return None
    names.sort()
    return sha256_hex("\n".join(names).encode(errors="surrogateescape"))


def _load(dir_fd: int, state: _State) -> DriverInfo | None:
    """The cached answer if the entry is ours, well-formed and still matches ``state``."""
    from nvc.driver_info import DriverInfo
    from nvc.host.proc_driver import proc_bus_id

    entry = read_json_entry(dir_fd, state.name)
    if (
        entry is None
        or entry.get("format") != FORMAT
        or entry.get("key") != state.key
        or entry.get("gpus") != state.gpus
        or entry.get("mig_caps") != state.mig_caps
        or not isinstance(entry.get("info"), dict)
    ):
        return None
    try:
        info = DriverInfo.from_dict(entry["info"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if {proc_bus_id(gpu.bus_id) for gpu in info.gpus} != set(state.gpus):
        return None
    return info


def read_json_entry(dir_fd: int, name: str) -> dict[str, Any] | None:
    """:func:`read_private_file` decoded as a JSON object; ``None`` when unsafe, missing or not an object."""
    from nvc import jsonfast

    data = read_private_file(dir_fd, name)
    if data is None:
        return None
    try:
        entry = jsonfast.loads(data)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def write_private_file(dir_fd: int, name: str, data: bytes) -> None:
    """Write ``name`` atomically: a private (0600) temporary file in the same directory, renamed over the name,
    then prune the directory (:func:`_prune`). Raises on failure (callers suppress)."""
    from nvc.atomic_write import replace_file

    replace_file(name, data, 0o600, dir_fd=dir_fd)
    _prune(dir_fd, keep=name)


def _store(dir_fd: int, state: _State, info: DriverInfo) -> None:
    """Write the entry atomically: a private temporary file in the same directory, renamed over the name."""
    import json

    from nvc.host.proc_driver import proc_bus_id

    if {proc_bus_id(gpu.bus_id) for gpu in info.gpus} != set(state.gpus):
        return  # NVML and /proc disagree (a GPU NVML cannot see?): such an entry would never validate
    data = json.dumps(
        {"format": FORMAT, "key": state.key, "gpus": state.gpus, "mig_caps": state.mig_caps, "info": info.to_dict()},
        sort_keys=True,
    ).encode()
    write_private_file(dir_fd, state.name, data)


def _is_entry_name(name: str) -> bool:
    stem = name[: -len(_ENTRY_SUFFIX)]
    return name.endswith(_ENTRY_SUFFIX) and len(stem) == 64 and set(stem) <= _HEX


def _prune(dir_fd: int, keep: str) -> None:
    """Bound the directory: drop the oldest entries beyond :data:`MAX_ENTRIES` and stale temporary files.

    Only names this module writes are touched, so a directory shared through ``$NVC_CACHE_DIR`` keeps its other
    files. Runs after a write only (the slow path).
    """
    import time

    now = time.time()
    entries: list[tuple[int, str]] = []
    with os.scandir(dir_fd) as it:
        for item in it:
            name = item.name
            if name == keep:
                continue
            try:
                st = item.stat(follow_symlinks=False)
            except OSError:
                continue
            if name.startswith(".") and name.endswith(".tmp") and _is_entry_name(name[1:70]):
                if now - st.st_mtime > STALE_TMP_SECONDS:
                    _unlink(dir_fd, name)
            elif _is_entry_name(name):
                entries.append((st.st_mtime_ns, name))
    excess = len(entries) + 1 - MAX_ENTRIES
    if excess > 0:
        entries.sort()
        for _mtime, name in entries[:excess]:
            _unlink(dir_fd, name)


def _unlink(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass
