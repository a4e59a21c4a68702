"""Our own ld.so.cache reader: the three glibc layouts, the extension area, and ``ldconfig -p`` output.

Driver discovery reads the host's (or a driver root's) cache through :func:`read_cache` and keeps the entries
whose ABI class matches :func:`host_arch_classes`; the CLI's ``ldconfig -p``-style listing uses
:func:`format_cache`. :mod:`nvc.host.ldcache.writer` writes caches as glibc's ldconfig does and merges injected
libraries (:func:`merge_cache_bytes`); its names are exported here but imported lazily, so importing this
package still costs only ``struct`` and ``nvc.record``.
"""

from nvc.host.ldcache.format import (
    ARCH_AARCH64,
    ARCH_ARMHF,
    ARCH_ARMSF,
    ARCH_I386,
    ARCH_IA64,
    ARCH_LARCH_DOUBLE,
    ARCH_LARCH_SOFT,
    ARCH_MIPS32_NAN2008,
    ARCH_MIPS64_N32,
    ARCH_MIPS64_N32_NAN2008,
    ARCH_MIPS64_N64,
    ARCH_MIPS64_N64_NAN2008,
    ARCH_PPC64,
    ARCH_RISCV_DOUBLE,
    ARCH_RISCV_SOFT,
    ARCH_S390X,
    ARCH_SPARC64,
    ARCH_X32,
    ARCH_X8664,
    DL_CACHE_HWCAP_EXTENSION,
    FLAG_ARCH_MASK,
    FLAG_ELF,
    FLAG_ELF_LIBC5,
    FLAG_ELF_LIBC6,
    FLAG_LIBC4,
    FLAG_REQUIRED_MASK,
    FLAG_TYPE_MASK,
    STRING_ENCODING,
    STRING_ERRORS,
    arch_text,
    host_arch_classes,
    is_hwcaps_extension,
    type_text,
)
from nvc.host.ldcache.reader import MAX_CACHE_SIZE, CacheEntry, LdCache, LdCacheError, parse_cache, read_cache

#: The writer (nvc.host.ldcache.writer) is imported on first use of one of these names, so readers don't pay for it.
_WRITER_EXPORTS = frozenset(
    {
        "CacheImage",
        "LibraryAddition",
        "SearchDirectory",
        "ldconfig_search_dirs",
        "load_cache_image",
        "merge_cache_bytes",
        "merge_libraries",
        "serialize_cache",
        "serialize_image",
        "soname_links",
        "sort_entries",
    }
)


#: The printer is only for `nvc ldcache`: imported on first use too, off the container-start path.
_PRINTER_EXPORTS = frozenset({"format_cache", "format_entry"})


def __getattr__(name: str) -> object:
    if name in _WRITER_EXPORTS:
        from nvc.host.ldcache import writer

        return getattr(writer, name)
    if name in _PRINTER_EXPORTS:
        from nvc.host.ldcache import printer

        return getattr(printer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ARCH_AARCH64",
    "ARCH_ARMHF",
    "ARCH_ARMSF",
    "ARCH_I386",
    "ARCH_IA64",
    "ARCH_LARCH_DOUBLE",
    "ARCH_LARCH_SOFT",
    "ARCH_MIPS32_NAN2008",
    "ARCH_MIPS64_N32",
    "ARCH_MIPS64_N32_NAN2008",
    "ARCH_MIPS64_N64",
    "ARCH_MIPS64_N64_NAN2008",
    "ARCH_PPC64",
    "ARCH_RISCV_DOUBLE",
    "ARCH_RISCV_SOFT",
    "ARCH_S390X",
    "ARCH_SPARC64",
    "ARCH_X32",
    "ARCH_X8664",
    "DL_CACHE_HWCAP_EXTENSION",
    "FLAG_ARCH_MASK",
    "FLAG_ELF",
    "FLAG_ELF_LIBC5",
    "FLAG_ELF_LIBC6",
    "FLAG_LIBC4",
    "FLAG_REQUIRED_MASK",
    "FLAG_TYPE_MASK",
    "MAX_CACHE_SIZE",
    "STRING_ENCODING",
    "STRING_ERRORS",
    "CacheEntry",
    "CacheImage",
    "LdCache",
    "LdCacheError",
    "LibraryAddition",
    "SearchDirectory",
    "arch_text",
    "format_cache",
    "format_entry",
    "host_arch_classes",
    "is_hwcaps_extension",
    "ldconfig_search_dirs",
    "load_cache_image",
    "merge_cache_bytes",
    "merge_libraries",
    "parse_cache",
    "read_cache",
    "serialize_cache",
    "serialize_image",
    "soname_links",
    "sort_entries",
    "type_text",
]
