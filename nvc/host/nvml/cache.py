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

# proc_driver and rootpath are imported where they are used: the hook's pre-filter (nvc.prefilter) uses this
# module's private-file helpers on every container start and needs nothing else from here.
import os

from nvc.private_files import (  # noqa: F401 - the directory's rules live there; re-exported for its users
    CACHE_DIR_ENV,
    DEFAULT_CACHE_DIR,
    MAX_ENTRIES,
    MAX_ENTRY_BYTES,
    NO_CACHE_ENV,
    STALE_TMP_SECONDS,
    cache_dir_path,
    caching_disabled,
    entry_name,
    open_cache_dir,
    read_json_entry,
    read_private_file,
    sha256_hex,
    write_private_file,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from nvc.driver_info import DriverInfo
    from nvc.rootpath import DriverRoot

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"  # the host's, whatever the driver root
FORMAT = 1
MAX_PROC_BYTES = 1 << 16  # /proc files we digest are a few hundred bytes
MAX_CAP_NAMES = 8192  # a capabilities tree larger than this is not cached

_PROC = "/proc/driver/nvidia"


def cached_query(
    library_path: str,
    root: DriverRoot,
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
        state = _snapshot(library_path, root, user)
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


def _snapshot(library_path: str, driver_root: DriverRoot, user: tuple[int, int] | None) -> _State | None:
    """The key and the checked /proc state now; ``None`` when the answer must not be cached."""
    from nvc.host.proc_driver import parse_nvrm_version
    root = driver_root.canonical()
    try:
        version = parse_nvrm_version(_read_small(root.host_path(_PROC + "/version")).decode(errors="replace"))
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
        "driver_root": root.path,
        "library": os.path.realpath(library_path),
        "library_id": [lib.st_dev, lib.st_ino, lib.st_size, lib.st_mtime_ns],
        "driver_version": version,
        "user": list(user) if user is not None else None,
    }
    return _State(key, gpus, mig_caps)


def _read_small(path: str) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read(MAX_PROC_BYTES)


def _proc_gpus(root: DriverRoot) -> dict[str, str] | None:
    """``{bus id directory: sha256 of its information file}`` for ``<root>/proc/driver/nvidia/gpus``."""
    gpus_dir = root.host_path(_PROC + "/gpus")
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


def _capability_names_digest(root: DriverRoot) -> str | None:
    """SHA-256 of the sorted names under ``<root>/proc/driver/nvidia/capabilities`` (MIG instances live there)."""
    base = root.host_path(_PROC + "/capabilities")
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
