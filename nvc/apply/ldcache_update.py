"""Update the container's ld.so.cache in-process, instead of exec'ing ldconfig in it.

What NVIDIA's tool gets from running ``ldconfig`` in the container — the injected libraries in
``/etc/ld.so.cache`` and their SONAME links (``libcuda.so.1 -> libcuda.so.535.x``) — is computed here with
:mod:`nvc.host.ldcache.writer`: the image's current cache merged with the new entries exactly as glibc's ldconfig
orders and writes them. That saves a fork+exec+chroot (~8 ms) on every container start.

Every file operation goes through the container's :class:`~nvc.apply.container_fs.RootFs` (resolved inside the rootfs,
never following the image's symlinks out of it); the new cache is written to a temporary file in the image's
``/etc`` and renamed over ``ld.so.cache`` (a symlink there is replaced, not followed). A cache we cannot read as
a glibc cache — corrupt, or in a layout we do not write — returns False: the caller falls back to ldconfig.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Sequence

    from nvc.debuglog import DebugLog  # annotations only: the CDI hook merges caches without a debug log

CACHE = "/etc/ld.so.cache"
_MAX_CACHE = 64 << 20


def _read_container_cache(root) -> bytes | None:
    """The image's cache bytes; None when it has none (a missing or dangling ``/etc/ld.so.cache``)."""
    try:
        fd = root.resolve_fd(CACHE, os.O_RDONLY)
    except OSError as exc:
        if getattr(exc, "errno", None) in (2, 40):  # ENOENT, ELOOP (e.g. a link to a host path: not the image's)
            return None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            size += len(chunk)
            if size > _MAX_CACHE:
                return b""  # absurd: treat as corrupt
        return b"".join(chunks)
    finally:
        os.close(fd)


def library_addition(source: str, target: str):
    """The cache entry ldconfig makes for one injected library: its DT_SONAME (the file name when it has none,
    as ldconfig does) and the ``libc6`` flags of its ABI class; None for a file ldconfig would not list."""
    from nvc.host.elf import cache_arch_class, read_identity_and_soname
    from nvc.host.ldcache import FLAG_ELF_LIBC6
    from nvc.host.ldcache.writer import LibraryAddition

    identity, soname = read_identity_and_soname(source)
    arch = cache_arch_class(identity)
    if arch is None:
        return None
    return LibraryAddition(soname=soname or os.path.basename(target), path=target, flags=FLAG_ELF_LIBC6 | arch)


def merge_container_cache(existing: bytes | None, rootfs: str, additions, first_dirs: Sequence[str]) -> bytes | None:
    """The container's cache with ``additions`` merged in as a fresh ldconfig run would write it (command-line
    dirs ``first_dirs`` scanned first); a fresh cache when ``existing`` is None; None when ``existing`` is not a
    cache we can read (corrupt, foreign byte order)."""
    from nvc.host.ldcache import LdCache, LdCacheError, parse_cache
    from nvc.host.ldcache.writer import merge_libraries, serialize_cache

    if existing is None:
        cache = LdCache(layout="new", entries=())
    else:
        try:
            cache = parse_cache(existing)
        except LdCacheError:
            return None
    search = search_dirs(rootfs, first_dirs)
    merged = merge_libraries(respell(cache, rootfs, search), additions, directories=search)
    return serialize_cache(merged.entries, merged.layout, merged.generator, merged.hwcaps_subdirs)


def search_dirs(rootfs: str, extra: Sequence[str]):
    """ldconfig's scan order: directories given on its command line first, then ld.so.conf, then system dirs;
    a directory seen again under another name keeps its first name."""
    from nvc.host.ldcache.writer import SearchDirectory, ldconfig_search_dirs
    from nvc.rootpath import resolve_in_root

    first = []
    known: set[str] = set()
    for name in extra:
        real = resolve_in_root(rootfs, name)
        if real not in known:
            first.append(SearchDirectory(name=name, real=real))
            known.add(real)
    return (*first, *(d for d in ldconfig_search_dirs(rootfs) if d.real not in known))


def respell(cache, rootfs: str, directories):
    """Existing entries of a directory that ldconfig now reaches first under another name (a command-line dir
    such as /usr/lib/x86_64-linux-gnu vs the cache's /lib/x86_64-linux-gnu on merged-/usr) get that name, as a
    fresh ldconfig run writes them."""
    from nvc.record import replace
    from nvc.rootpath import resolve_in_root

    names = {d.real: d.name for d in directories}
    resolved: dict[str, str] = {}
    entries = []
    for entry in cache.entries:
        directory, _, rest = entry.value.rpartition("/")
        base, marker, sub = directory.partition("/glibc-hwcaps/")
        if base not in resolved:
            resolved[base] = names.get(resolve_in_root(rootfs, base or "/"), base)
        wanted = resolved[base]
        if wanted != base:
            entry = replace(entry, value=f"{wanted}{marker}{sub}/{rest}")
        entries.append(entry)
    return replace(cache, entries=tuple(entries))


def _link(root, link: str, target: str, undo, log: DebugLog) -> None:
    """Create the SONAME link as ldconfig does (:meth:`~nvc.apply.container_fs.RootFs.ldconfig_symlink_at`)."""
    parent = root.make_dirs(os.path.dirname(link) or "/", undo=undo)
    try:
        if not root.ldconfig_symlink_at(parent, os.path.basename(link), target, link, undo=undo):
            log.warning(f"{link} is not a symlink in the container: left as is")
    finally:
        os.close(parent)


def update_ldcache(root, rootfs: str, libraries: Sequence[tuple[str, str]], directories: Sequence[str], undo,
                   log: DebugLog) -> bool:
    """Merge ``libraries`` (host source, container path) into the container's cache; False → use ldconfig."""
    from nvc.host.ldcache.writer import soname_links

    additions = [a for a in (library_addition(src, dst) for src, dst in libraries) if a is not None]
    payload = merge_container_cache(_read_container_cache(root), rootfs, additions, directories)
    if payload is None:
        log.info("container ld.so.cache is not one we can read: falling back to ldconfig")
        return False
    for link, target in soname_links(additions):
        _link(root, link, target, undo, log)
    from nvc.atomic_write import replace_file

    etc = root.make_dirs("/etc", undo=undo)
    try:
        replace_file("ld.so.cache", payload, 0o644, dir_fd=etc)
    finally:
        os.close(etc)
    log.info(f"wrote {CACHE} in the container: {len(additions)} libraries merged")
    return True
