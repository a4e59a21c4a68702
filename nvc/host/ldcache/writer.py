"""Values -> ld.so.cache bytes exactly as glibc 2.36's ``ldconfig`` writes them, and merging injected libraries.

Why: after bind-mounting the driver libraries into a container, NVIDIA's tool execs the container's ``ldconfig``
(a fork + exec + a directory scan on every container start). Instead we read the container's existing cache, add
the entries ldconfig would add for the injected libraries (:func:`merge_libraries`), and write the result
(:func:`serialize_cache`) -- pure Python, no subprocess: for a 500-entry cache about 1 ms to parse, 1 ms to
merge a driver's libraries and 1 ms to serialize.

What "exactly" means here (each point checked against the real ldconfig by ``tests/test_ldcache_writer.py``):

* Entry order is glibc's ``compare()`` from ``elf/cache.c``: key by ``_dl_cache_libcmp`` *descending* (digit runs
  compare as numbers), then flags descending, then glibc-hwcaps entries before the others (by subdirectory name),
  then more legacy hwcap bits first, then hwcap and osversion descending; ties keep insertion order (ldconfig
  inserts each library after the entries that compare equal, so the directory scanned first comes first, and
  that is the one ``ld.so`` picks). :func:`sort_entries` reproduces it; :func:`serialize_cache` writes entries in
  the order given, because a parsed cache is already in glibc's order.
* The string table is glibc's ``stringtable_finalize`` (``elf/stringtable.c``): every distinct string once,
  sorted by its reversed bytes in descending order, and each string stored as the tail of the previous one when
  it is a suffix of it. ldconfig interns every glibc-hwcaps subdirectory name it finds, even of empty
  subdirectories; those names appear in the table but nowhere else, so :func:`load_cache_image` recovers them
  (``extra_strings``) to rebuild the table byte for byte.
* The extension area follows the string table at the next 4-byte boundary: directory, glibc-hwcaps name array
  (sorted names, only those used by entries), generator string. In a compat file glibc stores the hwcaps name
  offsets relative to the *new header* although readers treat them as file offsets; we reproduce that bug.
* Old and compat tables hold the entries whose in-memory hwcap is 0 (glibc-hwcaps entries included, legacy
  hwcap subdirectory entries excluded); compat pads the old table to an even count by repeating the last
  entry. glibc 2.36 itself crashes writing old/compat caches that contain legacy hwcap entries; we write the
  intended layout instead.

New entries get osversion 0 (2.36's ldconfig no longer records one) and, in glibc-hwcaps subdirectories, the
ISA level the caller gives (ldconfig reads it from the x86 ISA property note). Native byte order only. Strings
are ``str`` decoded with UTF-8 + surrogateescape, as the reader returns them.

Typical use, for a container root (the runtime does the I/O; everything but ldconfig_search_dirs is pure)::

    directories = ldconfig_search_dirs(rootfs)            # ld.so.conf + system dirs, ldconfig's order and names
    data = merge_cache_bytes(old_cache_bytes, additions, directories=directories)
    for link, target in soname_links(additions):          # the SONAME links ldconfig would create
        ...                                                # symlink(target, rootfs + link) unless present
    ...                                                    # write data to rootfs/etc/ld.so.cache atomically

Not reproduced: ldconfig's aux-cache, its removal of stale SONAME links, and anything the existing cache
lacks (a stale cache stays stale apart from the additions; ldconfig would rescan every directory).
"""

from __future__ import annotations

import _bisect as bisect  # bisect.py is Python wrappers _bisect replaces: skip it
import _struct as struct  # struct.py only re-exports _struct: one module fewer to import per start
import os
import posixpath
import stat
import sys

from nvc.host.ldcache import format as fmt
from nvc.host.ldcache.reader import CacheEntry, LdCache, parse_cache
from nvc.record import record, replace

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the OCI hook milliseconds at start-up
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = [
    "LAYOUTS",
    "CacheImage",
    "LibraryAddition",
    "SearchDirectory",
    "dl_cache_libcmp",
    "ldconfig_search_dirs",
    "libcmp_key",
    "load_cache_image",
    "merge_cache_bytes",
    "merge_libraries",
    "serialize_cache",
    "serialize_image",
    "soname_links",
    "sort_entries",
]

#: The layouts ``ldconfig -c`` writes: "new" (default since glibc 2.32), "compat" (old table + new), "old".
LAYOUTS = ("new", "compat", "old")

GLIBC_HWCAPS_DIR = "glibc-hwcaps"

_OLD_HEADER = struct.Struct("=11sxI")  # magic, pad, nlibs
_OLD_ENTRY = struct.Struct("=iII")
_NEW_HEADER = struct.Struct("=20sIIB3xI12x")  # magic+version, nlibs, len_strings, flags, extension_offset
_NEW_ENTRY = struct.Struct("=iIIIQ")
_EXT_HEADER = struct.Struct("=II")
_EXT_SECTION = struct.Struct("=IIII")
_U32 = struct.Struct("=I")
_U32_MAX = 0xFFFFFFFF
#: ``cache_extension_size`` in glibc: the directory sized for every known tag (generator + glibc-hwcaps), which
#: is where save_cache places the hwcaps array even when fewer sections are written.
_EXT_FULL_DIRECTORY = fmt.EXTENSION_HEADER_SIZE + 2 * fmt.EXTENSION_SECTION_SIZE
_LOW32 = 0xFFFFFFFF
_HOST_ENDIAN = fmt.ENDIAN_LITTLE if sys.byteorder == "little" else fmt.ENDIAN_BIG

#: ``char`` is unsigned on these machines, signed elsewhere (x86, i386): _dl_cache_libcmp subtracts plain chars,
#: so bytes >= 0x80 sort below "\0" on x86 and above everything on these.
_UNSIGNED_CHAR_MACHINES = ("aarch64", "arm", "ppc", "powerpc", "s390", "riscv")
_CHAR_IS_SIGNED = not os.uname().machine.lower().startswith(_UNSIGNED_CHAR_MACHINES)

#: Byte -> b"1" for an ASCII digit, b"0" otherwise: digit runs are then found with bytes.find, in C (no ``re`` on
#: the hook path: importing it costs about 5 ms per container start).
_DIGIT_MASK = bytes(0x31 if 0x30 <= c <= 0x39 else 0x30 for c in range(256))


def _encode(text: str) -> bytes:
    return text.encode(fmt.STRING_ENCODING, fmt.STRING_ERRORS)


def _decode(raw: bytes) -> str:
    return raw.decode(fmt.STRING_ENCODING, fmt.STRING_ERRORS)


# --- glibc's orderings ---------------------------------------------------------------------------------------------


def _int32(value: int) -> int:
    """``value`` wrapped to a C int, as _dl_cache_libcmp's digit accumulation wraps on overflow."""
    value &= _LOW32
    return value - (1 << 32) if value & 0x80000000 else value


def libcmp_key(name: str | bytes) -> tuple[int, ...]:
    """A sort key ordering names like glibc's ``_dl_cache_libcmp`` (ascending), without a Python-level cmp.

    Each digit run becomes ``(1, number)``, every other byte ``(0, C char value)`` and the end ``(0, 0)``, so a
    digit outranks any other byte, the end outranks only bytes that are negative as C chars, and digit runs
    compare numerically ("libfoo.so.10" > "libfoo.so.9"). Exact except for digit runs whose values differ by
    2**31 or more, where C's ``val1 - val2`` itself overflows.
    """
    raw = _encode(name) if isinstance(name, str) else name
    out: list[int] = []
    for index, part in enumerate(_split_digit_runs(raw)):
        if index % 2:
            out += (1, _int32(int(part)))
        else:
            for byte in part:
                out += (0, byte - 256 if _CHAR_IS_SIGNED and byte >= 0x80 else byte)
    out += (0, 0)
    return tuple(out)


def _split_digit_runs(raw: bytes) -> list[bytes]:
    """``re.split(rb"([0-9]+)", raw)``: non-digit parts (maybe empty) alternating with ASCII digit runs."""
    find = raw.translate(_DIGIT_MASK).find
    parts: list[bytes] = []
    position = 0
    while True:
        start = find(b"1", position)
        if start < 0:
            parts.append(raw[position:])
            return parts
        end = find(b"0", start)
        if end < 0:
            end = len(raw)
        parts += (raw[position:start], raw[start:end])
        position = end


#: Byte -> 127 - (its C char value): a byte order that reverses _dl_cache_libcmp's char order, end (0) -> 127.
_DESCENDING_CHAR = bytes(127 - (c - 256 if _CHAR_IS_SIGNED and c >= 0x80 else c) for c in range(256))


def _descending_libcmp_key(raw: bytes) -> tuple[int, ...]:
    """A key sorting names in *descending* _dl_cache_libcmp order (the cache's order), built mostly in C.

    Same structure as libcmp_key with every comparison reversed: each non-digit byte is one value (reversed char
    order), a digit run is ``(-1, -number)`` (below any byte, larger numbers first), and the end is 127.
    """
    # The loop of _split_digit_runs inlined: this runs for every entry of the cache on each merge (hot path).
    find = raw.translate(_DIGIT_MASK).find
    out: list[int] = []
    position = 0
    while True:
        start = find(b"1", position)
        if start < 0:
            out += raw[position:].translate(_DESCENDING_CHAR)
            out.append(127)
            return tuple(out)
        if start > position:
            out += raw[position:start].translate(_DESCENDING_CHAR)
        end = find(b"0", start)
        if end < 0:
            end = len(raw)
        number = int(raw[start:end])
        out += (-1, -(_int32(number) if end - start > 9 else number))  # up to 9 digits never wrap
        position = end


def dl_cache_libcmp(left: str | bytes, right: str | bytes) -> int:
    """glibc's ``_dl_cache_libcmp`` (negative, 0, positive), for checks and ldconfig's "which file is newer"."""
    a, b = libcmp_key(left), libcmp_key(right)
    return (a > b) - (a < b)


def _is_subdir_entry(entry: CacheEntry) -> bool:
    """True for a glibc-hwcaps subdirectory entry (whose in-memory hwcap is 0 in ldconfig)."""
    return entry.hwcaps_subdir is not None


def _memory_hwcap(entry: CacheEntry) -> int:
    """The ``hwcap`` ldconfig's ``cache_entry`` holds: 0 for glibc-hwcaps entries, the legacy mask otherwise."""
    return 0 if _is_subdir_entry(entry) else entry.hwcap


def _entry_sort_key(entry: CacheEntry, keys: dict[str, tuple[int, ...]]) -> tuple:
    """Ascending key equivalent to glibc's ``compare()`` (elf/cache.c), which sorts keys in descending order."""
    negated = keys.get(entry.key)
    if negated is None:
        negated = keys[entry.key] = _descending_libcmp_key(_encode(entry.key))
    subdir = entry.hwcaps_subdir
    hwcap = _memory_hwcap(entry)
    return (
        negated,
        -entry.flags,
        0 if subdir is not None else 1,  # glibc-hwcaps entries first: ld.so stops at the first other entry
        _encode(subdir) if subdir is not None else b"",  # strcmp order
        -hwcap.bit_count(),
        -hwcap,
        -entry.osversion,
    )


def sort_entries(entries: Iterable[CacheEntry]) -> list[CacheEntry]:
    """``entries`` in the order ldconfig writes them, given in the order ldconfig would add them.

    The sort is stable, matching ldconfig's insertion (each entry goes after those comparing equal), so entries
    with the same key, flags and hwcaps (the same SONAME in several directories) keep their relative order: pass
    them in directory scan order. Sorting a cache ldconfig wrote returns it unchanged.
    """
    keys: dict[str, tuple[int, ...]] = {}
    return sorted(entries, key=lambda entry: _entry_sort_key(entry, keys))


# --- string table ----------------------------------------------------------------------------------------------------


def _string_table(strings: Iterable[bytes]) -> tuple[bytes, dict[bytes, int]]:
    """glibc's ``stringtable_finalize``: (table bytes, offset of each string), with tail merging.

    The order (reversed strings, descending; a string before its own suffixes) puts every string right after the
    longest string it is a suffix of, so one comparison with the previous string finds the merge.
    """
    order = sorted(set(strings), key=lambda s: s[::-1], reverse=True)
    offsets: dict[bytes, int] = {}
    table = bytearray()
    previous = b""
    previous_offset = -1
    for string in order:
        if previous_offset >= 0 and previous.endswith(string):
            offset = previous_offset + len(previous) - len(string)
        else:
            offset = len(table)
            table += string
            table.append(0)
        offsets[string] = offset
        previous, previous_offset = string, offset
    return bytes(table), offsets


# --- writing ---------------------------------------------------------------------------------------------------------


def _old_table(entries: Sequence[CacheEntry], layout: str) -> list[CacheEntry]:
    """The entries of the libc5-era table: those with in-memory hwcap 0; compat pads to an even count."""
    old = [entry for entry in entries if _memory_hwcap(entry) == 0]
    if layout == "compat" and len(old) % 2:
        old.append(old[-1])  # glibc duplicates the last entry so the new header stays 8-byte aligned
    return old


def _check_entry(entry: CacheEntry) -> None:
    if not -(1 << 31) <= entry.flags < (1 << 31):
        raise ValueError(f"entry {entry.key!r}: flags {entry.flags} do not fit a 32-bit int")
    if not 0 <= entry.osversion <= _U32_MAX:
        raise ValueError(f"entry {entry.key!r}: osversion {entry.osversion} does not fit 32 bits")
    if not 0 <= entry.hwcap < (1 << 64):
        raise ValueError(f"entry {entry.key!r}: hwcap {entry.hwcap} does not fit 64 bits")
    if "\0" in entry.key or "\0" in entry.value or (entry.hwcaps_subdir and "\0" in entry.hwcaps_subdir):
        raise ValueError(f"entry {entry.key!r}: strings cannot contain NUL")


def serialize_cache(
    entries: Sequence[CacheEntry],
    layout: str = "new",
    generator: str | None = None,
    hwcaps_subdirs: Sequence[str] = (),
    *,
    extra_strings: Sequence[str] = (),
) -> bytes:
    """The ld.so.cache bytes glibc 2.36's ``save_cache`` writes for ``entries`` (in the order given).

    ``layout`` is "new", "compat" or "old". ``generator`` is the extension's tag-0 text (ldconfig writes
    ``ldconfig (Debian GLIBC ...) stable release version 2.36``; keep the container's own); ``None`` writes no
    generator section, and no extension area at all unless glibc-hwcaps entries need one (the form of caches
    written before glibc 2.33). ``hwcaps_subdirs`` and ``extra_strings`` are interned in the string table
    without being referenced, as ldconfig interns every glibc-hwcaps subdirectory it finds; they change only the
    table's bytes, which is what makes a rewrite byte-identical.

    An entry is a glibc-hwcaps entry when its ``hwcaps_subdir`` is set: its hwcap is rewritten to bit 62 | the
    ISA-level bits it already had | the index of its subdirectory in the (sorted, used-only) name array.
    Raises ValueError for an unknown layout, a field out of range, a NUL inside a string, or a file over 4 GiB.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown ld.so.cache layout {layout!r} (expected one of {', '.join(LAYOUTS)})")
    for entry in entries:
        _check_entry(entry)
    has_old = layout != "new"
    has_new = layout != "old"

    used = sorted({_encode(e.hwcaps_subdir) for e in entries if e.hwcaps_subdir is not None})
    index_of = {name: index for index, name in enumerate(used)}
    strings: set[bytes] = set(used)
    for entry in entries:
        strings.add(_encode(entry.key))
        strings.add(_encode(entry.value))
    strings.update(_encode(name) for name in hwcaps_subdirs)
    strings.update(_encode(text) for text in extra_strings)
    if any(b"\0" in s for s in strings):
        raise ValueError("ld.so.cache strings cannot contain NUL")
    table, offsets = _string_table(strings)

    old = _old_table(entries, layout) if has_old else []
    old_size = fmt.OLD_HEADER_SIZE + len(old) * fmt.OLD_ENTRY_SIZE if has_old else 0
    pad = (-old_size % fmt.NEW_CACHE_ALIGN) if layout == "compat" else 0
    new_size = fmt.NEW_HEADER_SIZE + len(entries) * fmt.NEW_ENTRY_SIZE if has_new else 0
    str_offset = new_size  # string offsets count from the new header (old: from the end of the old table)
    strings_end = old_size + pad + new_size + len(table)

    gen = _encode(generator) if generator is not None else None
    extension_offset = 0
    extension = b""
    if has_new and (gen is not None or used):
        extension_offset = -(-strings_end // 4) * 4
        extension = _extension(extension_offset, gen, [str_offset + offsets[name] for name in used])
    total = (extension_offset + len(extension)) if extension_offset else strings_end
    if total > _U32_MAX:
        raise ValueError(f"ld.so.cache would be {total} bytes, more than its 32-bit offsets can address")

    out = bytearray(total)
    if has_old:
        _OLD_HEADER.pack_into(out, 0, fmt.OLD_MAGIC, len(old))
        position = fmt.OLD_HEADER_SIZE
        for entry in old:
            key, value = offsets[_encode(entry.key)], offsets[_encode(entry.value)]
            _OLD_ENTRY.pack_into(out, position, entry.flags, str_offset + key, str_offset + value)
            position += fmt.OLD_ENTRY_SIZE
    if has_new:
        base = old_size + pad
        _NEW_HEADER.pack_into(
            out, base, fmt.NEW_MAGIC_VERSION, len(entries), len(table), _HOST_ENDIAN, extension_offset
        )
        position = base + fmt.NEW_HEADER_SIZE
        for entry in entries:
            hwcap = entry.hwcap
            if entry.hwcaps_subdir is not None:
                isa = hwcap & (fmt.DL_CACHE_HWCAP_ISA_LEVEL_MASK << 32) if fmt.is_hwcaps_extension(hwcap) else 0
                hwcap = fmt.DL_CACHE_HWCAP_EXTENSION | isa | index_of[_encode(entry.hwcaps_subdir)]
            key, value = offsets[_encode(entry.key)], offsets[_encode(entry.value)]
            _NEW_ENTRY.pack_into(
                out, position, entry.flags, str_offset + key, str_offset + value, entry.osversion, hwcap
            )
            position += fmt.NEW_ENTRY_SIZE
    start = old_size + pad + new_size
    out[start : start + len(table)] = table
    if extension_offset:
        out[extension_offset:] = extension
    return bytes(out)


def _extension(offset: int, generator: bytes | None, hwcaps_offsets: Sequence[int]) -> bytes:
    """glibc's ``write_extensions``: directory, then the hwcaps name offsets, then the generator string.

    glibc computes the hwcaps array position for a full two-section directory and, without hwcaps, moves the
    generator back by one section; we keep exactly those positions (a missing generator leaves a gap).
    """
    hwcaps_offset = offset + _EXT_FULL_DIRECTORY
    hwcaps_size = 4 * len(hwcaps_offsets)
    generator_offset = hwcaps_offset + hwcaps_size if hwcaps_offsets else hwcaps_offset - fmt.EXTENSION_SECTION_SIZE
    sections: list[tuple[int, int, int]] = []
    if generator is not None:
        sections.append((fmt.EXTENSION_TAG_GENERATOR, generator_offset, len(generator)))
    if hwcaps_offsets:
        sections.append((fmt.EXTENSION_TAG_GLIBC_HWCAPS, hwcaps_offset, hwcaps_size))
    end = generator_offset + len(generator) if generator is not None else hwcaps_offset + hwcaps_size
    out = bytearray(end - offset)
    _EXT_HEADER.pack_into(out, 0, fmt.EXTENSION_MAGIC, len(sections))
    for index, (tag, section_offset, size) in enumerate(sections):
        _EXT_SECTION.pack_into(
            out, fmt.EXTENSION_HEADER_SIZE + index * fmt.EXTENSION_SECTION_SIZE, tag, 0, section_offset, size
        )
    for index, name_offset in enumerate(hwcaps_offsets):
        _U32.pack_into(out, hwcaps_offset - offset + 4 * index, name_offset)
    if generator is not None:
        out[generator_offset - offset :] = generator
    return bytes(out)


# --- reading a cache back for rewriting --------------------------------------------------------------------------


@record(frozen=True, slots=True)
class CacheImage:
    """A parsed cache plus what a byte-identical rewrite needs beyond :class:`LdCache`.

    ``cache`` is :func:`parse_cache`'s result, except that in a compat file the glibc-hwcaps names are read
    where ldconfig meant them (new-header-relative), not where glibc's readers look (so they are the real
    names, not the garbage ``ldconfig -p`` shows). ``extra_strings`` are strings in the string table that no
    entry or hwcaps array references: the names of empty glibc-hwcaps subdirectories.
    """

    cache: LdCache
    extra_strings: tuple[str, ...] = ()


def _new_base(data: bytes, cache: LdCache) -> int:
    """File offset of the new header (0 for "new", after the padded old table for "compat")."""
    if cache.layout == "new":
        return 0
    (nlibs,) = _U32.unpack_from(data, len(fmt.OLD_MAGIC) + 1)
    return -(-(fmt.OLD_HEADER_SIZE + nlibs * fmt.OLD_ENTRY_SIZE) // fmt.NEW_CACHE_ALIGN) * fmt.NEW_CACHE_ALIGN


def _c_string(data: bytes, offset: int) -> bytes | None:
    if not 0 <= offset < len(data):
        return None
    end = data.find(b"\0", offset)
    return None if end < 0 else data[offset:end]


def _compat_hwcaps_names(data: bytes, base: int) -> tuple[str, ...] | None:
    """The glibc-hwcaps names of a compat file, read relative to its new header; None if unreadable."""
    size = len(data)
    extension_offset = _U32.unpack_from(data, base + 32)[0]
    if not extension_offset or extension_offset % 4 or extension_offset + fmt.EXTENSION_HEADER_SIZE > size:
        return None
    magic, count = _EXT_HEADER.unpack_from(data, extension_offset)
    first = extension_offset + fmt.EXTENSION_HEADER_SIZE
    if magic != fmt.EXTENSION_MAGIC or first + count * fmt.EXTENSION_SECTION_SIZE > size:
        return None
    found: tuple[int, int] | None = None
    for index in range(count):
        tag, _flags, offset, length = _EXT_SECTION.unpack_from(data, first + index * fmt.EXTENSION_SECTION_SIZE)
        if tag == fmt.EXTENSION_TAG_GLIBC_HWCAPS:
            found = (offset, length)
    if found is None or found[0] % 4 or found[1] % 4 or found[0] + found[1] > size:
        return None
    names = []
    for (name_offset,) in _U32.iter_unpack(data[found[0] : found[0] + found[1]]):
        name = _c_string(data, base + name_offset)
        if name is None:
            return None
        names.append(_decode(name))
    return tuple(names)


def _fix_compat_hwcaps(data: bytes, cache: LdCache) -> LdCache:
    """Replace the reader's view of a compat file's glibc-hwcaps names (file-relative, usually garbage) by the
    names ldconfig wrote (new-header-relative); drop them if even those cannot be read."""
    names = _compat_hwcaps_names(data, _new_base(data, cache)) or ()
    entries = []
    for entry in cache.entries:
        subdir = None
        if entry.hwcap and fmt.is_hwcaps_extension(entry.hwcap) and (entry.hwcap & _LOW32) < len(names):
            subdir = names[entry.hwcap & _LOW32]
        entries.append(entry if entry.hwcaps_subdir == subdir else replace(entry, hwcaps_subdir=subdir))
    return replace(cache, entries=tuple(entries), hwcaps_subdirs=names)


def _string_region(data: bytes, cache: LdCache) -> bytes:
    """The string table bytes as stored (new/compat: ``len_strings`` after the entries; old: up to EOF)."""
    if cache.layout == "old":
        return data[fmt.OLD_HEADER_SIZE + len(cache.old_entries) * fmt.OLD_ENTRY_SIZE :]
    base = _new_base(data, cache)
    (len_strings,) = _U32.unpack_from(data, base + 24)
    start = base + fmt.NEW_HEADER_SIZE + len(cache.entries) * fmt.NEW_ENTRY_SIZE
    return data[start : start + len_strings]


def load_cache_image(data: bytes | bytearray | memoryview) -> CacheImage:
    """Parse ``data`` (raises LdCacheError like :func:`parse_cache`) keeping what a byte-identical rewrite needs.

    ``serialize_image(load_cache_image(data)) == data`` for every cache glibc 2.33+'s ldconfig writes.
    """
    data = bytes(data)
    cache = parse_cache(data)
    if cache.layout == "compat" and cache.hwcaps_subdirs:
        cache = _fix_compat_hwcaps(data, cache)
    referenced = {_encode(e.key) for e in cache.entries} | {_encode(e.value) for e in cache.entries}
    referenced.update(_encode(e.key) for e in cache.old_entries)
    referenced.update(_encode(e.value) for e in cache.old_entries)
    referenced.update(_encode(e.hwcaps_subdir) for e in cache.entries if e.hwcaps_subdir is not None)
    extra: list[str] = []
    seen: set[bytes] = set()
    for chunk in _string_region(data, cache).split(b"\0")[:-1]:
        # A chunk is the longest string ending at its NUL; if no entry names it, ldconfig interned it anyway.
        if chunk and chunk not in referenced and chunk not in seen:
            seen.add(chunk)
            extra.append(_decode(chunk))
    return CacheImage(cache, tuple(extra))


def serialize_image(image: CacheImage) -> bytes:
    """Write ``image`` back in its own layout, generator and string table (the inverse of load_cache_image)."""
    cache = image.cache
    return serialize_cache(
        cache.entries, cache.layout, cache.generator, cache.hwcaps_subdirs, extra_strings=image.extra_strings
    )


# --- merging injected libraries ------------------------------------------------------------------------------------


@record(frozen=True, slots=True)
class LibraryAddition:
    """A library injected into the container, as ldconfig would find it.

    ``path`` is the library file inside the container (e.g. ``/usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05``)
    and ``soname`` its DT_SONAME (``libcuda.so.1``); ``flags`` its cache flags (``FLAG_ELF_LIBC6 | ARCH_X8664``).
    A file under ``DIR/glibc-hwcaps/NAME/`` becomes a glibc-hwcaps entry for NAME with ``isa_level`` in bits
    32..41 of its hwcap, pointing at the file itself (ldconfig does that there, and creates no SONAME link).
    """

    soname: str
    path: str
    flags: int = fmt.FLAG_ELF_LIBC6 | fmt.ARCH_X8664
    isa_level: int = 0

    @property
    def directory(self) -> str:
        """The directory holding the file."""
        return posixpath.dirname(self.path) or "/"

    @property
    def filename(self) -> str:
        return posixpath.basename(self.path)


@record(frozen=True, slots=True)
class SearchDirectory:
    """A directory ldconfig scans: ``name`` as ldconfig spells it in cache paths, ``real`` its canonical path
    inside the root (they differ behind symlinks, e.g. ``/lib/x86_64-linux-gnu`` vs ``/usr/lib/...`` on
    merged-/usr systems, where ldconfig keeps the first name it was given for a directory)."""

    name: str
    real: str


def _hwcaps_split(directory: str) -> tuple[str, str | None]:
    """(scanned parent directory, glibc-hwcaps subdirectory name or None) for a library's directory."""
    parent = posixpath.dirname(directory)
    if posixpath.basename(parent) == GLIBC_HWCAPS_DIR and parent != directory:
        return posixpath.dirname(parent) or "/", posixpath.basename(directory)
    return directory, None


def _check_addition(addition: LibraryAddition) -> None:
    if not addition.soname or "/" in addition.soname or "\0" in addition.soname:
        raise ValueError(f"bad SONAME {addition.soname!r}")
    if not addition.path.startswith("/") or not addition.filename or "\0" in addition.path:
        raise ValueError(f"library path must be absolute and name a file: {addition.path!r}")
    if not 0 <= addition.isa_level <= fmt.DL_CACHE_HWCAP_ISA_LEVEL_MASK:
        raise ValueError(f"{addition.path}: ISA level {addition.isa_level} is out of range")


def _winners(additions: Sequence[LibraryAddition]) -> dict[tuple[str, str], LibraryAddition]:
    """One library per (directory, SONAME), chosen like ldconfig's ``search_dir``: the "newest" file name.

    ldconfig replaces a library by another with the same SONAME only when ``_dl_cache_libcmp(old, new) < 0``
    (so libfoo.so.1.10 beats libfoo.so.1.9; on a tie the first one stays).
    """
    chosen: dict[tuple[str, str], LibraryAddition] = {}
    for addition in additions:
        _check_addition(addition)
        slot = (posixpath.normpath(addition.directory), addition.soname)
        current = chosen.get(slot)
        if current is None or dl_cache_libcmp(current.filename, addition.filename) < 0:
            chosen[slot] = addition
    return chosen


def soname_links(additions: Sequence[LibraryAddition]) -> list[tuple[str, str]]:
    """The SONAME symlinks ldconfig would create for ``additions``: ``(link path, relative target)`` pairs.

    For each directory and SONAME the winning file (see :func:`merge_libraries`) gets ``DIR/SONAME -> FILE``
    unless the file already is named SONAME; nothing in glibc-hwcaps subdirectories. Like ldconfig, the target
    is the bare file name. Only the given files are considered: another file in the directory with the same
    SONAME and a "newer" name would win in ldconfig. ldconfig also leaves a regular file named SONAME alone and
    skips a link that already resolves to the file; the caller checks the filesystem for those.
    """
    links = []
    for (directory, soname), addition in _winners(additions).items():
        if _hwcaps_split(directory)[1] is not None or addition.filename == soname:
            continue
        links.append((posixpath.join(directory, soname), addition.filename))
    return links


class _DirectoryRanks:
    """ldconfig's scan order: maps a cache path's directory to its position, and real paths to ldconfig names."""

    def __init__(self, directories: Sequence[SearchDirectory] | None) -> None:
        self._rank: dict[str, int] = {}
        self._name: dict[str, str] = {}
        for index, directory in enumerate(directories or ()):
            self._rank.setdefault(directory.name, index)
            self._name.setdefault(directory.name, directory.name)
        for directory in directories or ():
            self._name.setdefault(directory.real, directory.name)
        self._last = len(directories or ())

    def name(self, directory: str) -> str:
        return self._name.get(directory, directory)

    def rank(self, value_path: str) -> tuple[int, int]:
        """(directory position, 0 for the directory itself / 1 for its glibc-hwcaps subdirectories)."""
        directory, subdir = _hwcaps_split(posixpath.dirname(value_path) or "/")
        return (self._rank.get(directory, self._last), 0 if subdir is None else 1)


def merge_libraries(
    cache: LdCache,
    additions: Sequence[LibraryAddition],
    *,
    directories: Sequence[SearchDirectory] | None = None,
) -> LdCache:
    """``cache`` plus the entries ldconfig would make for ``additions``, in ldconfig's order.

    ldconfig keeps one entry per directory and SONAME, whose path is ``DIR/SONAME`` (the SONAME link) or, in a
    glibc-hwcaps subdirectory, the file itself. So each addition replaces an existing entry with the same key in
    the same directory (whatever its flags), and is otherwise inserted where ldconfig's sorted insertion puts it.
    Entries with the same key, flags and hwcaps in different directories stay in directory scan order (ld.so
    takes the first usable one): give ``directories`` (see :func:`ldconfig_search_dirs`) to place a new entry
    among them and to spell its directory as ldconfig does (``/lib/x86_64-linux-gnu`` for a library put in
    ``/usr/lib/x86_64-linux-gnu`` on merged-/usr). Without it the library's directory is used as is and a new
    entry goes after its equals, as if its directory were scanned last.

    Assumes the existing cache is current (ldconfig would rescan everything) and that the additions' directories
    are ones ldconfig scans. The result keeps layout and generator; its glibc-hwcaps indices are renumbered. An
    old-format cache has no hwcap field, so its glibc-hwcaps entries are recognised by their paths: in the
    result they have ``hwcaps_subdir`` set (and hwcap 0), which serialize_cache needs to intern their names.
    """
    ranks = _DirectoryRanks(directories)
    new_entries: list[CacheEntry] = []
    for (directory, soname), addition in _winners(additions).items():
        parent, subdir = _hwcaps_split(directory)
        scanned = ranks.name(parent)
        if subdir is None:
            value = posixpath.join(scanned, soname)
            hwcap = 0
        else:
            value = posixpath.join(scanned, GLIBC_HWCAPS_DIR, subdir, addition.filename)
            hwcap = fmt.DL_CACHE_HWCAP_EXTENSION | (addition.isa_level << 32)
        new_entries.append(CacheEntry(addition.flags, soname, value, 0, hwcap, subdir))
    for entry in new_entries:
        _check_entry(entry)

    existing = cache.entries if cache.layout != "old" else _subdirs_from_paths(cache.entries)
    replaced = {(e.key, posixpath.dirname(e.value)) for e in new_entries}
    kept = [e for e in existing if (e.key, posixpath.dirname(e.value)) not in replaced]

    keys: dict[str, tuple[int, ...]] = {}
    sort_keys = [_entry_sort_key(e, keys) for e in kept]
    merged = list(kept)
    for entry in new_entries:
        key = _entry_sort_key(entry, keys)
        low = bisect.bisect_left(sort_keys, key)
        high = bisect.bisect_right(sort_keys, key, lo=low)
        position = high
        if directories is not None:  # among equals, before the first entry from a later-scanned directory
            rank = ranks.rank(entry.value)
            position = next((i for i in range(low, high) if ranks.rank(merged[i].value) > rank), high)
        merged.insert(position, entry)
        sort_keys.insert(position, key)

    merged_tuple = _renumber_hwcaps(merged) if cache.layout != "old" else tuple(replace(e, hwcap=0) for e in merged)
    names = tuple(sorted({e.hwcaps_subdir for e in merged_tuple if e.hwcaps_subdir is not None}, key=_encode))
    old = tuple(_as_old(e) for e in _old_table(merged_tuple, cache.layout)) if cache.layout != "new" else ()
    return replace(cache, entries=merged_tuple, old_entries=old, hwcaps_subdirs=names)


def _subdirs_from_paths(entries: Sequence[CacheEntry]) -> list[CacheEntry]:
    """Old-format entries with ``hwcaps_subdir`` recovered from their paths (``DIR/glibc-hwcaps/NAME/FILE``).

    The old table has no hwcap field, but ldconfig sorted (and will sort) those entries as glibc-hwcaps ones, so
    merging needs to know them; serialize_cache also interns their names again, as ldconfig does.
    """
    out = []
    for entry in entries:
        if entry.hwcaps_subdir is None and entry.hwcap == 0:
            subdir = _hwcaps_split(posixpath.dirname(entry.value) or "/")[1]
            if subdir is not None:
                entry = replace(entry, hwcaps_subdir=subdir)
        out.append(entry)
    return out


def _renumber_hwcaps(entries: Sequence[CacheEntry]) -> tuple[CacheEntry, ...]:
    """Point each glibc-hwcaps entry's hwcap index at its name in the sorted array serialize_cache will write."""
    names = sorted({_encode(e.hwcaps_subdir) for e in entries if e.hwcaps_subdir is not None})
    index_of = {name: index for index, name in enumerate(names)}
    out = []
    for entry in entries:
        if entry.hwcaps_subdir is not None:
            isa = entry.hwcap & (fmt.DL_CACHE_HWCAP_ISA_LEVEL_MASK << 32) if fmt.is_hwcaps_extension(entry.hwcap) else 0
            hwcap = fmt.DL_CACHE_HWCAP_EXTENSION | isa | index_of[_encode(entry.hwcaps_subdir)]
            if hwcap != entry.hwcap:
                entry = replace(entry, hwcap=hwcap)
        out.append(entry)
    return tuple(out)


def _as_old(entry: CacheEntry) -> CacheEntry:
    """How the old table shows an entry: no osversion, no hwcap, no subdirectory."""
    return CacheEntry(entry.flags, entry.key, entry.value, 0, 0, None)


def merge_cache_bytes(
    data: bytes | bytearray | memoryview,
    additions: Sequence[LibraryAddition],
    *,
    directories: Sequence[SearchDirectory] | None = None,
) -> bytes:
    """The container's cache ``data`` with ``additions`` merged in, as bytes in the same layout and generator.

    Raises LdCacheError when ``data`` is not a cache, ValueError for a bad addition.
    """
    image = load_cache_image(data)
    merged = merge_libraries(image.cache, additions, directories=directories)
    return serialize_cache(
        merged.entries, merged.layout, merged.generator, merged.hwcaps_subdirs, extra_strings=image.extra_strings
    )


# --- ldconfig's directory list for a root (I/O) ---------------------------------------------------------------------

#: The directories Debian/Ubuntu's ldconfig always scans after ld.so.conf (SLIBDIR, LIBDIR and their multiarch
#: variants, by ``uname -m``); RPM-based distributions build ldconfig with /lib64 and /usr/lib64 instead.
_MULTIARCH = {
    "x86_64": "x86_64-linux-gnu",
    "aarch64": "aarch64-linux-gnu",
    "ppc64le": "powerpc64le-linux-gnu",
    "s390x": "s390x-linux-gnu",
    "riscv64": "riscv64-linux-gnu",
}
_MAX_CONF_FILES = 1024
_MAX_CONF_BYTES = 1 << 20


def _resolve_in_root(root: str, path: str) -> str | None:
    """Canonical ``path`` inside ``root`` as chroot(2) would resolve it (absolute links stay in the root).

    Returns the path inside the root ("/usr/lib/..."), or None when it does not exist or loops.
    """
    from nvc.rootpath import RootPathError, resolve_in_root

    try:
        return resolve_in_root(root, path, strict=True)
    except RootPathError:
        return None


def _read_small_file(path: str) -> bytes | None:
    """A regular file's first _MAX_CONF_BYTES, or None; never blocks on a FIFO planted in a container root."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(_MAX_CONF_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)


def _glob_names(directory: str, pattern: str) -> list[str]:
    """The names in ``directory`` matching the shell pattern ``pattern`` (no ``/``), sorted (C order).

    The same list as ``[os.path.basename(p) for p in sorted(glob.glob(os.path.join(glob.escape(directory),
    pattern)))]``: ``*`` and ``?`` are matched here (the usual ``include /etc/ld.so.conf.d/*.conf``) because
    importing glob (re, fnmatch) costs the OCI hook milliseconds; ``[...]`` sets, an empty pattern and a directory
    whose name itself holds glob characters (never seen in practice) go to glob itself.
    """
    if not pattern or "[" in pattern or "*" in directory or "?" in directory or "[" in directory:
        import glob

        matches = sorted(glob.glob(os.path.join(glob.escape(directory), pattern)))
        return [os.path.basename(match) for match in matches]
    if "*" not in pattern and "?" not in pattern:  # a plain name: glob only checks that it exists
        return [pattern] if os.path.lexists(os.path.join(directory, pattern)) else []
    try:
        with os.scandir(directory or ".") as entries:
            names = [entry.name for entry in entries]
    except OSError:
        return []
    if not pattern.startswith("."):  # glob's * and ? never match a leading dot unless the pattern has one
        names = [name for name in names if not name.startswith(".")]
    return sorted(name for name in names if _wildcard_match(pattern, name))


def _wildcard_match(pattern: str, name: str) -> bool:
    """fnmatch's ``*`` (any run, newlines too) and ``?`` (any one character) semantics; other characters literal.

    Splitting at ``*`` leaves fixed-length pieces: the first must match at the start, the last at the end, and
    each one between at its leftmost place after the previous (leftmost is never worse for what follows).
    """
    pieces = pattern.split("*")
    if len(pieces) == 1:
        return len(name) == len(pattern) and _piece_at(pattern, name, 0)
    first, last = pieces[0], pieces[-1]
    if len(first) + len(last) > len(name) or not _piece_at(first, name, 0):
        return False
    end = len(name) - len(last)
    if not _piece_at(last, name, end):
        return False
    position = len(first)
    for piece in pieces[1:-1]:
        while True:
            if position + len(piece) > end:
                return False
            if _piece_at(piece, name, position):
                break
            position += 1
        position += len(piece)
    return True


def _piece_at(piece: str, name: str, position: int) -> bool:
    """``piece`` (``?`` matching any character) equals ``name[position:position + len(piece)]``."""
    if "?" not in piece:
        return name.startswith(piece, position)
    if position + len(piece) > len(name):
        return False
    return all(p == "?" or p == c for p, c in zip(piece, name[position : position + len(piece)], strict=True))


def _conf_lines(root: str, conf: str, budget: list[int], depth: int = 0) -> list[str]:
    """Directory lines of ld.so.conf ``conf`` (a path inside ``root``), ``include`` globs expanded in C order."""
    real = _resolve_in_root(root, conf)
    if real is None or depth > 16 or budget[0] <= 0:
        return []
    budget[0] -= 1
    text = _read_small_file(os.path.join(root, real.lstrip("/")))
    if text is None:
        return []
    out: list[str] = []
    for raw in text.split(b"\n"):
        line = _decode(raw.split(b"#", 1)[0]).lstrip(" \t\n\v\f\r")
        if not line:
            continue
        if line.startswith("include") and line[7:8] in (" ", "\t"):
            for pattern in line[8:].replace("\t", " ").split(" "):
                if not pattern:
                    continue
                if not pattern.startswith("/"):
                    pattern = posixpath.join(posixpath.dirname(conf), pattern)
                base = _resolve_in_root(root, posixpath.dirname(pattern))
                if base is None:
                    continue
                host_dir = os.path.join(root, base.lstrip("/"))
                for name in _glob_names(host_dir, posixpath.basename(pattern)):
                    inside = posixpath.join(base, name)
                    out.extend(_conf_lines(root, inside, budget, depth + 1))
        elif line[:5].lower() == "hwcap" and line[5:6] in (" ", "\t"):
            continue
        else:
            out.append(line)
    return out


def ldconfig_search_dirs(
    rootfs: str | os.PathLike[str],
    *,
    config: str = "/etc/ld.so.conf",
    system_dirs: Sequence[str] | None = None,
) -> tuple[SearchDirectory, ...]:
    """The directories ldconfig would scan in ``rootfs``, in its order, with duplicates removed as it does.

    ld.so.conf lines (``include`` globs sorted in the C locale, ``DIR=TYPE`` suffixes and trailing slashes
    dropped), then the system directories; a directory whose inode was already listed is skipped, so the first
    spelling wins. ``system_dirs`` defaults to Debian's list for this machine when the root has the multiarch
    directory, else ``/lib64``, ``/usr/lib64`` (RPM-style); the container's ldconfig has them compiled in.
    glibc-hwcaps subdirectories are not listed (merge_libraries ranks them right after their parent).
    """
    root = os.fspath(rootfs)
    lines = _conf_lines(root, config, [_MAX_CONF_FILES])
    if system_dirs is None:
        triplet = _MULTIARCH.get(os.uname().machine)
        if triplet and _resolve_in_root(root, f"/usr/lib/{triplet}") is not None:
            system_dirs = (f"/lib/{triplet}", f"/usr/lib/{triplet}", "/lib", "/usr/lib")
        else:
            system_dirs = ("/lib64", "/usr/lib64")
    seen: set[tuple[int, int]] = set()
    out: list[SearchDirectory] = []
    for line in [*lines, *system_dirs]:
        name = line.split("=", 1)[0].rstrip(" \t\n\v\f\r").rstrip("/")
        if not name:
            continue
        real = _resolve_in_root(root, name)
        if real is None:
            continue
        try:
            st = os.stat(os.path.join(root, real.lstrip("/")))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        out.append(SearchDirectory(name, real))
    return tuple(out)
