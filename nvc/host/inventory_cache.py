"""Remember where a driver root's files are, so a container start reads no ld.so.cache and checks no ELF headers.

Driver discovery (:mod:`nvc.host.discovery`) parses the root's ld.so.cache, checks the ELF identity of every candidate
library and resolves some 65 paths inside the root: about 13 ms on every container start, for an answer that only
changes when the driver is installed, upgraded or removed. The answer is stored next to NVML's answer
(:mod:`nvc.host.nvml.cache`: same directory, same private-file helpers, same ``$NVC_CACHE_DIR`` / ``$NVC_NO_CACHE``) and
reused while it provably still holds:

* the key (the file name is the SHA-256 of it): the real driver root, the root's ld.so.cache (its resolved host
  path and ``st_dev``/``st_ino``/``st_size``/``st_mtime_ns``: ``ldconfig`` rewrites it on every driver install),
  the machine (which fixes the ABI classes looked up) and the ``PATH`` / ``CUDA_MPS_PIPE_DIRECTORY`` values
  discovery used;
* stored with the answer and checked on every hit with one ``lstat`` each: every library, binary and firmware
  file found and the NVML library (same inode, size, mtime), and every directory the lookups depend on — the
  directories holding those files and the ld.so.cache's symlinks, each ``$PATH`` directory and the firmware
  directory (same inode and mtime, or still missing) — so a replaced file, a re-pointed symlink or a new binary
  earlier in ``$PATH`` is noticed;
* the driver version: NVML is asked (through its own cache) with the cached library path, and the cached files are
  used only when they were found for that version;
* IPC sockets (persistenced, fabricmanager, MPS) come and go with daemons: they are looked up afresh every time.

A hit imports neither :mod:`nvc.host.ldcache` nor :mod:`nvc.host.elf`. Any problem with the cache only costs the full
discovery; entries are only written after a discovery that succeeded.

Entry format (``<sha256 of the key>.json``)::

    {"format": 1, "key": {...}, "nvml_library": "/usr/lib/.../libnvidia-ml.so.535.x", "driver_version": "535.x",
     "files": {"library": [[name, in-root path, host path, capability or null], ...], "library32": [...],
               "binary": [...], "firmware": [...]},
     "check_files": [[host path, st_ino, st_size, st_mtime_ns], ...],
     "check_dirs": [[host path, st_ino, st_mtime_ns] or [host path, null], ...]}
"""

from __future__ import annotations

import os

from nvc.host.nvml.cache import (
    DEFAULT_CACHE_DIR,
    cache_dir_path,
    caching_disabled,
    entry_name,
    open_cache_dir,
    read_json_entry,
    write_private_file,
)
from nvc.rootpath import DriverRoot, RootPathError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from typing import Any

    from nvc.host.discovery import DriverFiles

FORMAT = 1
_KINDS = ("library", "library32", "binary", "firmware")


class InventoryCache:
    """One driver root's discovery entry: open with :meth:`open`, then :meth:`nvml_library`, :meth:`files`,
    :meth:`store`. Every method swallows the cache's own errors (they only cost a discovery)."""

    __slots__ = ("dir_fd", "entry", "environ", "key", "name", "root")

    def __init__(self, dir_fd: int, root: DriverRoot, key: dict[str, Any], environ) -> None:
        self.dir_fd = dir_fd
        self.root = root
        self.key = key
        self.environ = environ
        self.name = entry_name(key)
        self.entry: dict[str, Any] | None = None

    @classmethod
    def open(cls, root: DriverRoot, ldcache: str, environ=None, cache_dir: str = DEFAULT_CACHE_DIR):
        """The cache for this root and ld.so.cache, its entry loaded and checked; ``None`` when caching is off,
        the ld.so.cache cannot be found (discovery reports that) or the directory is not safe."""
        if caching_disabled():
            return None
        env = os.environ if environ is None else environ
        dir_fd = None
        try:
            ldcache_host = root.locate(ldcache)
            st = os.stat(ldcache_host)
            key = {
                "format": FORMAT,
                "kind": "discovery",
                "driver_root": root.canonical().path,
                "driver_root_arg": root.path,
                "ldcache": ldcache_host,
                "ldcache_id": [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns],
                "machine": os.uname().machine,
                "path": env.get("PATH"),
                "mps_pipe_directory": env.get("CUDA_MPS_PIPE_DIRECTORY"),
            }
            dir_fd = open_cache_dir(cache_dir_path(cache_dir))
            if dir_fd is None:
                return None
            self = cls(dir_fd, root, key, env)
            try:
                self.entry = self._load()
            except Exception:
                pass
            return self
        except Exception:  # RootPathError, OSError, or a surprise: no caching this time
            if dir_fd is not None:
                os.close(dir_fd)
            return None

    def close(self) -> None:
        if self.dir_fd is not None:
            os.close(self.dir_fd)
            self.dir_fd = None

    def __enter__(self) -> InventoryCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _load(self) -> dict[str, Any] | None:
        entry = read_json_entry(self.dir_fd, self.name)
        if (
            entry is None
            or entry.get("format") != FORMAT
            or entry.get("key") != self.key
            or not isinstance(entry.get("nvml_library"), str)
            or not isinstance(entry.get("driver_version"), str)
            or not isinstance(entry.get("files"), dict)
        ):
            return None
        for path, ino, size, mtime in entry["check_files"]:
            st = os.lstat(path)
            if (st.st_ino, st.st_size, st.st_mtime_ns) != (ino, size, mtime):
                return None
        for item in entry["check_dirs"]:
            path, ident = item[0], item[1:]
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if ident != [None]:
                    return None
                continue
            if [st.st_ino, st.st_mtime_ns] != ident:
                return None
        return entry

    def nvml_library(self) -> str | None:
        """The cached in-root path of the root's ``libnvidia-ml.so.1``, if the entry holds."""
        return self.entry["nvml_library"] if self.entry is not None else None

    def files(self, version: str) -> DriverFiles | None:
        """The cached files of ``version`` (IPC sockets looked up now), or ``None``."""
        if self.entry is None or self.entry["driver_version"] != version:
            return None
        try:
            return self._files(version)
        except Exception:
            return None

    def _files(self, version: str) -> DriverFiles:
        from nvc.components import Capability
        from nvc.host.discovery import DriverFile, DriverFiles, find_ipcs

        stored = self.entry["files"]

        def rebuild(kind: str) -> tuple[DriverFile, ...]:
            return tuple(
                DriverFile(kind, name, path, host, Capability(cap) if cap is not None else None)
                for name, path, host, cap in stored[kind]
            )

        return DriverFiles(
            driver_root=self.root.path,
            driver_version=version,
            libraries=rebuild("library"),
            libraries32=rebuild("library32"),
            binaries=rebuild("binary"),
            ipcs=find_ipcs(self.root, self.environ.get("CUDA_MPS_PIPE_DIRECTORY")),
            firmwares=rebuild("firmware"),
        )

    def store(self, nvml_library: str, files: DriverFiles, lookup_paths: set[str]) -> None:
        """Record a successful discovery. ``lookup_paths``: in-root paths the lookups started from (cache entries)."""
        try:
            self._store(nvml_library, files, lookup_paths)
        except Exception:
            pass

    def _store(self, nvml_library: str, files: DriverFiles, lookup_paths: set[str]) -> None:
        import json

        from nvc import components as comp

        root = self.root
        env_path = self.environ.get("PATH") or comp.DEFAULT_PATH
        path_dirs = [d for d in env_path.split(":") if d.startswith("/")]
        starts = set(lookup_paths)
        starts.update(f"{d}/{f.name}" for d in path_dirs for f in files.binaries)
        dirs = set(path_dirs)
        for start in starts:  # every directory holding a symlink on the way (Debian's /etc/alternatives...)
            dirs.update(_link_dirs(root, start))
        dirs.add(comp.FIRMWARE_DIR_TEMPLATE.format(version=files.driver_version))
        stored: dict[str, list] = {kind: [] for kind in _KINDS}
        check_files = []
        file_hosts = [root.host_path(nvml_library)]
        dirs.add(os.path.dirname(nvml_library))
        for kind, group in (
            ("library", files.libraries),
            ("library32", files.libraries32),
            ("binary", files.binaries),
            ("firmware", files.firmwares),
        ):
            for f in group:
                cap = f.capability.value if f.capability is not None else None
                stored[kind].append([f.name, f.path, f.host_path, cap])
                file_hosts.append(f.host_path)
                if kind != "firmware":  # firmware's directory is added (resolved) below
                    dirs.add(os.path.dirname(f.path))
        for path in file_hosts:
            st = os.lstat(path)
            check_files.append([path, st.st_ino, st.st_size, st.st_mtime_ns])
        check_dirs = []
        paths = set()
        for inner in dirs:
            paths.add(root.host_path(inner))  # the name looked up (a symlink re-pointed is noticed)
            try:
                paths.add(root.locate(inner))  # the directory read
            except RootPathError:
                pass
        for path in sorted(paths):
            try:
                st = os.lstat(path)
                check_dirs.append([path, st.st_ino, st.st_mtime_ns])
            except FileNotFoundError:
                check_dirs.append([path, None])
        data = json.dumps(
            {
                "format": FORMAT,
                "key": self.key,
                "nvml_library": nvml_library,
                "driver_version": files.driver_version,
                "files": stored,
                "check_files": check_files,
                "check_dirs": check_dirs,
            },
            sort_keys=True,
        ).encode()
        write_private_file(self.dir_fd, self.name, data)


def _link_dirs(root: DriverRoot, inner: str, limit: int = 40) -> list[str]:
    """The in-root directories of each hop of ``inner``'s symlink chain (its last components only): re-pointing
    any of these symlinks changes its directory's mtime."""
    import posixpath

    out = []
    for _ in range(limit):
        parent = posixpath.dirname(inner)
        out.append(parent)
        try:
            resolved_parent = root.resolve(parent)
            target = os.readlink(root.host_path(f"{resolved_parent}/{posixpath.basename(inner)}"))
        except (OSError, RootPathError):
            break
        inner = posixpath.normpath(target if target.startswith("/") else f"{resolved_parent}/{target}")
    return out
