"""ld.so.cache bytes -> values.

The parser accepts exactly what glibc 2.36's ``ldconfig -p`` accepts and reads the same things from the file, so
that :func:`nvc.host.ldcache.printer.format_cache` can reproduce its output byte for byte. Where glibc reads blindly
(string offsets and entry counts are never checked against the file size, strings are read up to a NUL wherever
it is), we check and raise :class:`LdCacheError` instead: a cache glibc would crash on or misread is corrupt.

Layout facts that are easy to get wrong (all verified against the real ldconfig):

* Entry strings of the new format are relative to the start of the *new header*; those of the old format to the
  end of the old entry table (which, in a compat file, is where the pad before the new header starts).
* The extension directory offset, its section offsets, and the string offsets in the glibc-hwcaps array are all
  relative to the start of the *file*. In a compat file glibc (both ``ldconfig -p`` and ``ld.so``) therefore looks
  up hwcaps names at the wrong place; we do the same, so ``hwcaps_subdir`` is what glibc sees (often ``""``).
* Entry ``flags`` is a signed 32-bit field; ``hwcap`` is unsigned 64-bit.

No I/O except :func:`read_cache`; no global state.
"""

from __future__ import annotations

import _struct as struct  # struct.py only re-exports _struct: one module fewer to import per start
import os
import stat
import sys

from nvc.host.ldcache import format as fmt
from nvc.record import record

#: Refuse larger files: the biggest real caches are a few MiB, and this bounds memory on a hostile root.
MAX_CACHE_SIZE = 256 * 1024 * 1024

_OLD_ENTRY = struct.Struct("=iII")  # flags, key, value
_NEW_ENTRY = struct.Struct("=iIIIQ")  # flags, key, value, osversion, hwcap
_NEW_HEADER_FIELDS = struct.Struct("=IIB3xI")  # nlibs, len_strings, flags, extension_offset (after the magic)
_EXT_HEADER = struct.Struct("=II")  # magic, count
_EXT_SECTION = struct.Struct("=IIII")  # tag, flags, offset, size
_U32 = struct.Struct("=I")
#: Bytes of strings parse_cache may scan: this many times the file size, plus slack for tiny files.
_STRING_BUDGET_FACTOR = 8
_STRING_BUDGET_SLACK = 1 << 20
_HOST_ENDIAN = fmt.ENDIAN_LITTLE if sys.byteorder == "little" else fmt.ENDIAN_BIG


class LdCacheError(ValueError):
    """The file is not a usable ld.so.cache; the message is one human-readable line."""


@record(frozen=True, slots=True)
class CacheEntry:
    """One library record, as the file stores it (strings decoded with UTF-8 + surrogateescape)."""

    flags: int  # type (low byte) | ABI class (second byte); signed 32-bit as on disk
    key: str  # the SONAME ld.so looks up, e.g. "libcuda.so.1"
    value: str  # the path of the library file
    osversion: int  # minimum kernel version, unused by glibc >= 2.35 (0 in the old format)
    hwcap: int  # legacy hwcap mask, or bit 62 + glibc-hwcaps index (0 in the old format)
    hwcaps_subdir: str | None = None  # glibc-hwcaps subdirectory name when ``hwcap`` selects one

    @property
    def arch_class(self) -> int:
        """The ABI class (``flags & FLAG_ARCH_MASK``), e.g. ``ARCH_X8664``; compare with host_arch_classes()."""
        return self.flags & fmt.FLAG_ARCH_MASK

    @property
    def is_elf(self) -> bool:
        """True for ELF entries (types 1 and 3), the only ones glibc's loader will use (libc4/libc5 are a.out era)."""
        return bool(self.flags & fmt.FLAG_ELF)


@record(frozen=True, slots=True)
class LdCache:
    """A parsed cache: the table glibc uses plus the extension data."""

    layout: str  # "old" | "new" | "compat"
    entries: tuple[CacheEntry, ...]  # the table glibc reads, in file order (the new one for "new"/"compat")
    old_entries: tuple[CacheEntry, ...] = ()  # the libc5-era table ("old" and "compat" files), in file order
    generator: str | None = None  # extension tag 0, e.g. "ldconfig (Debian GLIBC 2.36-9) stable release ..."
    hwcaps_subdirs: tuple[str, ...] = ()  # extension tag 1, in file order (glibc writes them sorted)


class _StringTable:
    """NUL-terminated string lookups in the whole file, by absolute offset, memoized.

    Keys and paths repeat across entries (one SONAME per arch, one path per SONAME link), so memoizing saves decodes;
    only the string itself is sliced, never the table.

    Scanning for the NUL costs as much as the string is long, so a hostile file whose entries all point at different
    offsets of one huge string would cost O(entries x length). A budget of bytes scanned, a small multiple of the
    file size, keeps the work linear: glibc's writer shares string tails (a SONAME is often a suffix of its path),
    so a real cache reads each byte at most about twice.
    """

    __slots__ = ("_budget", "_data", "_memo", "_size")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._size = len(data)
        self._memo: dict[int, str] = {}
        self._budget = _STRING_BUDGET_FACTOR * self._size + _STRING_BUDGET_SLACK

    def at(self, offset: int, what: str) -> str:
        text = self._memo.get(offset)
        if text is not None:
            return text
        if offset >= self._size:
            raise LdCacheError(
                f"corrupt ld.so.cache: {what} at offset {offset} is past end of file ({self._size} bytes)"
            )
        end = self._data.find(b"\0", offset)
        if end < 0:
            raise LdCacheError(f"corrupt ld.so.cache: {what} at offset {offset} has no NUL terminator")
        self._budget -= end - offset + 1
        if self._budget < 0:
            raise LdCacheError(
                f"corrupt ld.so.cache: {what} at offset {offset}: entries reference overlapping strings"
                f" totalling more than {_STRING_BUDGET_FACTOR} times the file size"
            )
        text = self._data[offset:end].decode(fmt.STRING_ENCODING, fmt.STRING_ERRORS)
        self._memo[offset] = text
        return text


def parse_cache(data: bytes | bytearray | memoryview) -> LdCache:
    """Parse an ld.so.cache image (any of the three layouts). Raises LdCacheError only.

    Whenever this returns, glibc 2.36's ``ldconfig -p`` prints the same file successfully and ``format_cache``
    reproduces its output (checked by a differential fuzz test). We refuse more than glibc in three places, all
    of which glibc only survives by reading past the end of the file or by ignoring data: a string (entry name,
    path, or glibc-hwcaps name, referenced or not) that starts past the end or lacks its NUL terminator; an entry
    table longer than the file (glibc checks this for the old table only); and a corrupt old table in a compat
    file (glibc ignores that table). An empty file is refused too (``ldconfig -p`` prints nothing for it).
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    size = len(data)
    if size == 0:
        # ldconfig -p prints nothing at all for an empty file; ld.so ignores it. Neither is a table we can return.
        raise LdCacheError("empty ld.so.cache")
    if size < fmt.OLD_HEADER_SIZE:
        raise LdCacheError(f"not an ld.so.cache file: only {size} bytes")
    strings = _StringTable(data)
    if data.startswith(fmt.OLD_MAGIC):
        return _parse_old_or_compat(data, strings)
    if data.startswith(fmt.NEW_MAGIC_VERSION):
        entries, generator, hwcaps = _parse_new(data, 0, strings)
        return LdCache("new", entries, (), generator, hwcaps)
    raise LdCacheError(f"not an ld.so.cache file: unknown magic {data[:20]!r}")


def read_cache(path: str | os.PathLike[str]) -> LdCache:
    """Read and parse the cache at ``path``; every failure (I/O included) is an LdCacheError naming the path.

    Opens non-blocking and insists on a regular file, so a FIFO or device planted in a container root cannot hang
    or flood us.
    """
    name = os.fsdecode(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise LdCacheError(f"cannot read ld.so.cache {name}: not a regular file")
            if st.st_size > MAX_CACHE_SIZE:
                raise LdCacheError(f"cannot read ld.so.cache {name}: larger than {MAX_CACHE_SIZE >> 20} MiB")
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(MAX_CACHE_SIZE + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise LdCacheError(f"cannot read ld.so.cache {name}: {exc.strerror or exc}") from None
    if len(data) > MAX_CACHE_SIZE:
        raise LdCacheError(f"cannot read ld.so.cache {name}: larger than {MAX_CACHE_SIZE >> 20} MiB")
    try:
        return parse_cache(data)
    except LdCacheError as exc:
        raise LdCacheError(f"{name}: {exc}") from None


# --- layouts ---------------------------------------------------------------------------------------------------------


def _parse_old_or_compat(data: bytes, strings: _StringTable) -> LdCache:
    """An old table, possibly followed (at the next 8-aligned offset) by a complete new cache (compat layout)."""
    size = len(data)
    (nlibs,) = _U32.unpack_from(data, len(fmt.OLD_MAGIC) + 1)
    room = (size - fmt.OLD_HEADER_SIZE) // fmt.OLD_ENTRY_SIZE
    if nlibs > room:
        raise LdCacheError(
            f"truncated ld.so.cache: old-format entry {room} of {nlibs} past end of file ({size} bytes)"
            + _byteswap_hint(nlibs, room)
        )
    table_end = fmt.OLD_HEADER_SIZE + nlibs * fmt.OLD_ENTRY_SIZE
    old_entries = _old_entries(data, table_end, strings)

    # glibc: the embedded new cache counts only if the file extends strictly past its header and the magic matches.
    new_base = -(-table_end // fmt.NEW_CACHE_ALIGN) * fmt.NEW_CACHE_ALIGN
    if size > new_base + fmt.NEW_HEADER_SIZE and data.startswith(fmt.NEW_MAGIC_VERSION, new_base):
        entries, generator, hwcaps = _parse_new(data, new_base, strings)
        return LdCache("compat", entries, old_entries, generator, hwcaps)
    return LdCache("old", old_entries, old_entries)


def _old_entries(data: bytes, table_end: int, strings: _StringTable) -> tuple[CacheEntry, ...]:
    """The old table; its strings are relative to the end of the table."""
    view = memoryview(data)[fmt.OLD_HEADER_SIZE : table_end]
    entries = []
    for index, (flags, key, value) in enumerate(_OLD_ENTRY.iter_unpack(view)):
        entries.append(
            CacheEntry(
                flags,
                strings.at(table_end + key, f"old-format entry {index} name"),
                strings.at(table_end + value, f"old-format entry {index} path"),
                0,
                0,
                None,
            )
        )
    return tuple(entries)


def _parse_new(
    data: bytes, base: int, strings: _StringTable
) -> tuple[tuple[CacheEntry, ...], str | None, tuple[str, ...]]:
    """The new-format cache whose header starts at ``base``: (entries, generator, hwcaps subdirectory names)."""
    size = len(data)
    if size - base < fmt.NEW_HEADER_SIZE:
        raise LdCacheError(f"truncated ld.so.cache: header at offset {base} past end of file ({size} bytes)")
    nlibs, _len_strings, flags, extension_offset = _NEW_HEADER_FIELDS.unpack_from(
        data, base + len(fmt.NEW_MAGIC_VERSION)
    )
    _check_endianness(flags)

    table = base + fmt.NEW_HEADER_SIZE
    room = (size - table) // fmt.NEW_ENTRY_SIZE
    if nlibs > room:
        raise LdCacheError(
            f"truncated ld.so.cache: entry {room} of {nlibs} past end of file ({size} bytes)"
            + _byteswap_hint(nlibs, room)
        )
    generator, hwcaps = _parse_extensions(data, extension_offset, strings)

    entries = []
    view = memoryview(data)[table : table + nlibs * fmt.NEW_ENTRY_SIZE]
    for index, (eflags, key, value, osversion, hwcap) in enumerate(_NEW_ENTRY.iter_unpack(view)):
        subdir = None
        if hwcap and hwcaps and fmt.is_hwcaps_extension(hwcap):
            slot = hwcap & 0xFFFFFFFF
            if slot < len(hwcaps):  # glibc: an index past the array means "no subdirectory", not an error
                subdir = hwcaps[slot]
        entries.append(
            CacheEntry(
                eflags,
                strings.at(base + key, f"entry {index} name"),
                strings.at(base + value, f"entry {index} path"),
                osversion,
                hwcap,
                subdir,
            )
        )
    return tuple(entries), generator, hwcaps


def _check_endianness(flags: int) -> None:
    """Refuse a cache written for the other byte order, with glibc's rule: 0 = unknown (accept), else low 2 bits."""
    if flags == 0 or flags & fmt.ENDIAN_MASK == _HOST_ENDIAN:
        return
    endian = flags & fmt.ENDIAN_MASK
    if endian in (fmt.ENDIAN_LITTLE, fmt.ENDIAN_BIG):
        theirs = "little" if endian == fmt.ENDIAN_LITTLE else "big"
        raise LdCacheError(f"ld.so.cache is {theirs}-endian but this host reads {sys.byteorder}-endian caches only")
    if endian == fmt.ENDIAN_INVALID:
        raise LdCacheError("ld.so.cache is marked invalid (endianness byte 1)")
    raise LdCacheError(f"ld.so.cache has an unknown endianness byte {flags:#04x}")


def _parse_extensions(data: bytes, offset: int, strings: _StringTable) -> tuple[str | None, tuple[str, ...]]:
    """The extension directory at file ``offset`` (0 = none): (generator, glibc-hwcaps names).

    Same validation as glibc's ``cache_extension_load``: a bad directory is an error, unknown tags are skipped,
    a later section with the same tag wins, and a hwcaps section that is empty or not 4-aligned is dropped.
    """
    if offset == 0:
        return None, ()
    size = len(data)
    if offset % 4:
        raise LdCacheError(f"corrupt ld.so.cache: extension directory offset {offset} is not 4-byte aligned")
    if offset + fmt.EXTENSION_HEADER_SIZE > size:
        raise LdCacheError(
            f"corrupt ld.so.cache: extension directory at offset {offset} is past end of file ({size} bytes)"
        )
    magic, count = _EXT_HEADER.unpack_from(data, offset)
    if magic != fmt.EXTENSION_MAGIC:
        raise LdCacheError(f"corrupt ld.so.cache: bad extension directory magic {magic:#010x}")
    first = offset + fmt.EXTENSION_HEADER_SIZE
    end = first + count * fmt.EXTENSION_SECTION_SIZE
    if end > size:
        raise LdCacheError(
            f"corrupt ld.so.cache: extension directory of {count} sections is past end of file ({size} bytes)"
        )
    sections: dict[int, tuple[int, int]] = {}
    for tag, _flags, sec_offset, sec_size in _EXT_SECTION.iter_unpack(memoryview(data)[first:end]):
        if sec_offset + sec_size > size:
            raise LdCacheError(
                f"corrupt ld.so.cache: extension section (tag {tag}) at offset {sec_offset} size {sec_size}"
                f" is past end of file ({size} bytes)"
            )
        if tag in (fmt.EXTENSION_TAG_GENERATOR, fmt.EXTENSION_TAG_GLIBC_HWCAPS):
            sections[tag] = (sec_offset, sec_size)

    generator = None
    if fmt.EXTENSION_TAG_GENERATOR in sections:
        sec_offset, sec_size = sections[fmt.EXTENSION_TAG_GENERATOR]
        # A sized blob, not NUL-terminated; ldconfig prints it with fwrite, embedded NULs included.
        generator = data[sec_offset : sec_offset + sec_size].decode(fmt.STRING_ENCODING, fmt.STRING_ERRORS)

    hwcaps: tuple[str, ...] = ()
    if fmt.EXTENSION_TAG_GLIBC_HWCAPS in sections:
        sec_offset, sec_size = sections[fmt.EXTENSION_TAG_GLIBC_HWCAPS]
        if sec_size and not sec_offset % 4 and not sec_size % 4:
            view = memoryview(data)[sec_offset : sec_offset + sec_size]
            hwcaps = tuple(
                strings.at(name_offset, f"glibc-hwcaps name {index}")
                for index, (name_offset,) in enumerate(_U32.iter_unpack(view))
            )
    return generator, hwcaps


def _byteswap_hint(count: int, room: int) -> str:
    """Point at the likely cause when a count only makes sense byte-swapped (a foreign-endian cache)."""
    swapped = int.from_bytes(count.to_bytes(4, sys.byteorder), "big" if sys.byteorder == "little" else "little")
    return " (the header looks byte-swapped: a cache for the other byte order?)" if swapped <= room else ""
