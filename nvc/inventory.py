"""The host side of every decision: driver version, GPUs and driver files of one driver root.

This ties the pieces together in NVIDIA's order — read the root's ld.so.cache, load the root's NVML to learn the
driver version and GPUs, then look up the files of exactly that version. When NVML cannot start (no kernel driver),
``allow_no_nvml`` keeps going with the version stamped on the driver's files, so an admin can still see what a
container would get; the NVML error is kept to be reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from nvc import components as comp
from nvc.discovery import DriverFiles, discover_files, find_nvml_library, load_ldcache, version_from_library_name
from nvc.driver_info import DriverInfo
from nvc.errors import NvcError
from nvc.proc_driver import parse_nvrm_version
from nvc.rootpath import host_path

DEFAULT_LDCACHE = "/etc/ld.so.cache"
NVML_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Inventory:
    driver_root: str
    files: DriverFiles
    driver_info: DriverInfo | None
    nvml_error: NvcError | None = None

    @property
    def driver_version(self) -> str:
        return self.files.driver_version


def query_nvml(
    driver_root: str = "/",
    ldcache: str = DEFAULT_LDCACHE,
    user: tuple[int, int] | None = None,
    cache=None,
    load_kmods: bool = False,
) -> DriverInfo:
    """Driver version and GPUs from the root's own libnvidia-ml (raises ``initialization`` errors)."""
    from nvc.ldcache.format import host_arch_classes
    from nvc.nvml.cache import cached_query

    def query_driver(*args, **kwargs):
        from nvc.nvml.query import query_driver as query

        return query(*args, **kwargs)

    if cache is None:
        cache = load_ldcache(driver_root, ldcache)
    library = host_path(driver_root, find_nvml_library(cache, driver_root, host_arch_classes()[0]))
    if load_kmods:
        from nvc.kmods import load_kernel_modules

        load_kernel_modules(driver_root)
    info = cached_query(
        library,
        driver_root,
        lambda: query_driver(library, driver_root=driver_root, timeout=NVML_TIMEOUT_SECONDS, user=user),
        user=user,
    )
    if load_kmods:
        load_kernel_modules(driver_root, [gpu.minor for gpu in info.gpus])
    return info


def fallback_driver_version(driver_root: str, cache) -> str | None:
    """The driver version without NVML: the kernel module's /proc file, else libnvidia-ml's real file name."""
    from nvc.ldcache import host_arch_classes

    try:
        with open(host_path(driver_root, comp.PROC_DRIVER + "/version"), encoding="utf-8", errors="replace") as f:
            version = parse_nvrm_version(f.read())
        if version:
            return version
    except OSError:
        pass
    try:
        return version_from_library_name(find_nvml_library(cache, driver_root, host_arch_classes()[0]))
    except NvcError:
        return None


def build_inventory(
    driver_root: str = "/",
    ldcache: str = DEFAULT_LDCACHE,
    user: tuple[int, int] | None = None,
    allow_no_nvml: bool = False,
    environ: dict[str, str] | None = None,
    load_kmods: bool = False,
) -> Inventory:
    """Everything the host offers. NVML failures raise unless ``allow_no_nvml`` (then ``driver_info`` is None)."""
    from nvc.ldcache import host_arch_classes

    cache = load_ldcache(driver_root, ldcache)
    info: DriverInfo | None = None
    nvml_error: NvcError | None = None
    try:
        info = query_nvml(driver_root, ldcache, user, cache=cache, load_kmods=load_kmods)
        version = info.driver_version
    except NvcError as exc:
        if not allow_no_nvml or exc.stage != "initialization":
            raise
        nvml_error = exc
        fallback = fallback_driver_version(driver_root, cache)
        if fallback is None:
            raise
        version = fallback
    files = discover_files(driver_root, cache, version, host_arch_classes(), environ)
    return Inventory(driver_root=driver_root, files=files, driver_info=info, nvml_error=nvml_error)
