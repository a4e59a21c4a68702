"""The host side of every decision: driver version, GPUs and driver files of one driver root.

This ties the pieces together in NVIDIA's order — read the root's ld.so.cache, load the root's NVML to learn the
driver version and GPUs, then look up the files of exactly that version. When NVML cannot start (no kernel driver),
``allow_no_nvml`` keeps going with the version stamped on the driver's files, so an admin can still see what a
container would get; the NVML error is kept to be reported.
"""

from __future__ import annotations

from nvc import components as comp
from nvc.driver_info import DriverInfo
from nvc.errors import NvcError
from nvc.host.discovery import DriverFiles, discover_files, find_nvml_library, load_ldcache, version_from_library_name
from nvc.host.proc_driver import parse_nvrm_version
from nvc.record import record
from nvc.rootpath import HOST_ROOT, DriverRoot, require_driver_root

DEFAULT_LDCACHE = "/etc/ld.so.cache"
NVML_TIMEOUT_SECONDS = 10.0


@record(frozen=True)
class Inventory:
    driver_root: str
    files: DriverFiles
    driver_info: DriverInfo | None
    nvml_error: NvcError | None = None

    @property
    def driver_version(self) -> str:
        return self.files.driver_version

    @property
    def root(self) -> DriverRoot:
        """The driver root as the value that resolves inside it (``driver_root`` is its path, for serializing)."""
        return DriverRoot(self.driver_root)


def query_nvml(
    root: DriverRoot = HOST_ROOT,
    ldcache: str = DEFAULT_LDCACHE,
    user: tuple[int, int] | None = None,
    cache=None,
    load_kmods: bool = False,
    *,
    library: str | None = None,
    use_cache: bool = True,
) -> DriverInfo:
    """Driver version and GPUs from the root's own libnvidia-ml (raises ``initialization`` errors).

    ``library``: the in-root path of ``libnvidia-ml.so.1`` when already known (else looked up in the ld.so.cache).
    ``use_cache``: take NVML's answer from :mod:`nvc.host.nvml.cache` while it holds. Only container starts (hook,
    configure, oci-edits) want that; a diagnosis (``info``, ``list``, ``doctor``) passes ``False`` and always asks
    the driver, since the cache is checked against ``/proc`` and the library file, not against NVML itself: a
    driver whose ``nvmlInit`` now fails would still be served the old answer.
    """
    from nvc.host.nvml.cache import cached_query

    require_driver_root(root)

    def query_driver(*args, **kwargs):
        from nvc.host.nvml.query import query_driver as query

        return query(*args, **kwargs)

    if library is None:
        from nvc.host.ldcache.format import host_arch_classes

        if cache is None:
            cache = load_ldcache(root, ldcache)
        library = find_nvml_library(cache, root, host_arch_classes()[0])
    library = root.host_path(library)
    if load_kmods:
        from nvc.host.kmods import load_kernel_modules

        load_kernel_modules(root)
    def ask() -> DriverInfo:
        return query_driver(library, driver_root=root.path, timeout=NVML_TIMEOUT_SECONDS, user=user)

    info = cached_query(library, root, ask, user=user) if use_cache else ask()
    if load_kmods:
        load_kernel_modules(root, [gpu.minor for gpu in info.gpus])
    return info


def _proc_driver_version(root: DriverRoot) -> str | None:
    version_file = root.host_path(comp.PROC_DRIVER + "/version")
    try:
        with open(version_file, encoding="utf-8", errors="replace") as f:
            return parse_nvrm_version(f.read()) or None
    except OSError:
        return None


def build_inventory(
    root: DriverRoot = HOST_ROOT,
    ldcache: str = DEFAULT_LDCACHE,
    user: tuple[int, int] | None = None,
    allow_no_nvml: bool = False,
    environ: dict[str, str] | None = None,
    load_kmods: bool = False,
    use_nvml_cache: bool = True,
) -> Inventory:
    """Everything the host offers. NVML failures raise unless ``allow_no_nvml`` (then ``driver_info`` is None).

    ``use_nvml_cache``: see :func:`query_nvml`'s ``use_cache`` (container starts only).

    The file discovery (and the NVML library's lookup) is cached by :mod:`nvc.host.inventory_cache`: while its entry
    holds, the ld.so.cache is neither read nor parsed.
    """
    from nvc.host.inventory_cache import InventoryCache

    store = InventoryCache.open(require_driver_root(root), ldcache, environ)
    try:
        return _build_inventory(root, ldcache, user, allow_no_nvml, environ, load_kmods, store, use_nvml_cache)
    finally:
        if store is not None:
            store.close()


def _build_inventory(root: DriverRoot, ldcache, user, allow_no_nvml, environ, load_kmods, store,
                     use_nvml_cache) -> Inventory:
    cache = None
    library = store.nvml_library() if store is not None else None
    library_error: NvcError | None = None
    if library is None:
        from nvc.host.ldcache import host_arch_classes

        cache = load_ldcache(root, ldcache)
        try:
            library = find_nvml_library(cache, root, host_arch_classes()[0])
        except NvcError as exc:
            library_error = exc
    info: DriverInfo | None = None
    nvml_error: NvcError | None = None
    try:
        if library_error is not None:
            raise library_error
        info = query_nvml(root, ldcache, user, load_kmods=load_kmods, library=library,
                          use_cache=use_nvml_cache)
        version = info.driver_version
    except NvcError as exc:
        if not allow_no_nvml or exc.stage != "initialization":
            raise
        nvml_error = exc
        fallback = _proc_driver_version(root) or (
            version_from_library_name(library) if library is not None else None
        )
        if fallback is None:
            raise
        version = fallback
    files = store.files(version) if store is not None else None
    if files is None:
        from nvc.host.discovery import cache_lookup_paths
        from nvc.host.ldcache import host_arch_classes

        if cache is None:
            cache = load_ldcache(root, ldcache)
        arch_classes = host_arch_classes()
        files = discover_files(root, cache, version, arch_classes, environ)
        if store is not None and library is not None:
            store.store(library, files, cache_lookup_paths(cache, arch_classes))
    return Inventory(driver_root=root.path, files=files, driver_info=info, nvml_error=nvml_error)
