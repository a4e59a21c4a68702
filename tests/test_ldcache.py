"""nvc.host.ldcache against the real glibc ``ldconfig``: byte-identical ``-p`` output, layouts, arches, hwcaps, errors.

Real caches come from ``ldconfig -r ROOT -c new|old|compat`` over copies of this host's libraries (some placed in
glibc-hwcaps subdirectories), from Debian's ``libc6-i386`` package when apt has it cached, from the host's own
``/etc/ld.so.cache``, and from the NVIDIA driver fixtures once ``fixtures.driver_roots`` exists. Cases glibc's writer
never produces (every ABI class, legacy hwcap masks, osversion, odd bytes, odd extension areas, arm64 flags on an
x86 host) are built by the small writer below and still printed by the real ``ldconfig -p`` for comparison.
"""

from __future__ import annotations

import glob
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from nvc.host import ldcache
from nvc.host.ldcache import (
    ARCH_AARCH64,
    ARCH_ARMHF,
    ARCH_I386,
    ARCH_PPC64,
    ARCH_X8664,
    FLAG_ELF_LIBC6,
    CacheEntry,
    LdCache,
    LdCacheError,
    format_cache,
    host_arch_classes,
    parse_cache,
    read_cache,
)

LDCONFIG = shutil.which("ldconfig") or next(
    (p for p in ("/usr/sbin/ldconfig", "/sbin/ldconfig") if os.access(p, os.X_OK)), None
)
needs_ldconfig = pytest.mark.skipif(LDCONFIG is None, reason="glibc ldconfig not installed")
GENERATOR = b"ldconfig (nvc test writer) stable release version 0.0"


# --- a tiny ld.so.cache writer (test-only; nvc never writes caches in this format by itself) -------------------------


@dataclass(frozen=True)
class Lib:
    """One entry to write: raw bytes for the strings so tests can use any byte sequence."""

    key: bytes
    value: bytes
    flags: int = FLAG_ELF_LIBC6 | ARCH_X8664
    osversion: int = 0
    hwcap: int = 0


def build_cache(
    libs: list[Lib],
    *,
    layout: str = "new",
    generator: bytes | None = GENERATOR,
    hwcaps: tuple[bytes, ...] = (),
    endian: int = 2,
    extra_sections: tuple[tuple[int, bytes], ...] = (),
    old_libs: list[Lib] | None = None,
) -> bytes:
    """Cache bytes in ``layout`` laid out the way glibc's ``save_cache`` does.

    New-format strings are relative to the new header, old-format ones to the end of the old table; the extension
    directory and its sections use file offsets, and the hwcaps array holds *new-header-relative* string offsets
    (as glibc writes them, which is why compat files show ``hwcap: ""``). ``extra_sections`` appends
    (tag, payload) sections after the standard ones.
    """
    assert layout in ("new", "old", "compat")
    old_libs = libs if old_libs is None else old_libs
    has_old = layout != "new"
    has_new = layout != "old"
    old_size = 16 + 12 * len(old_libs) if has_old else 0
    new_base = -(-old_size // 8) * 8 if has_new else old_size
    new_size = 48 + 24 * len(libs) if has_new else 0
    strings_start = new_base + new_size

    table = bytearray()
    positions: dict[bytes, int] = {}

    def put(text: bytes) -> int:
        if text not in positions:
            positions[text] = strings_start + len(table)
            table.extend(text + b"\0")
        return positions[text]

    new_rows = b""
    if has_new:
        for lib in libs:
            key, value = put(lib.key) - new_base, put(lib.value) - new_base
            new_rows += struct.pack("<iIIIQ", lib.flags, key, value, lib.osversion, lib.hwcap)
    old_rows = b""
    if has_old:
        for lib in old_libs:
            old_rows += struct.pack("<iII", lib.flags, put(lib.key) - old_size, put(lib.value) - old_size)
    hwcaps_offsets = [put(name) - new_base for name in hwcaps]

    out = bytearray()
    extension_offset = 0
    if has_old:
        out += b"ld.so-1.7.0\0" + struct.pack("<I", len(old_libs)) + old_rows
        out += b"\0" * (new_base - len(out))
    if has_new:
        if generator is not None or hwcaps or extra_sections:
            extension_offset = -(-(strings_start + len(table)) // 4) * 4
        out += b"glibc-ld.so.cache1.1" + struct.pack(
            "<IIB3xI3I", len(libs), len(table), endian, extension_offset, 0, 0, 0
        )
        out += new_rows
    out += table
    if has_new and extension_offset:
        out += b"\0" * (extension_offset - len(out))
        payloads: list[tuple[int, bytes]] = []
        if generator is not None:
            payloads.append((0, generator))
        if hwcaps:
            payloads.append((1, b"".join(struct.pack("<I", o) for o in hwcaps_offsets)))
        payloads.extend(extra_sections)
        cursor = extension_offset + 8 + 16 * len(payloads)
        directory = struct.pack("<II", 0xEAA42174, len(payloads))
        blobs = b""
        for tag, payload in payloads:
            cursor += -cursor % 4
            blobs += b"\0" * (cursor - (extension_offset + 8 + 16 * len(payloads) + len(blobs)))
            directory += struct.pack("<IIII", tag, 0, cursor, len(payload))
            blobs += payload
            cursor += len(payload)
        out += directory + blobs
    return bytes(out)


def new_header_field(data: bytes, name: str, base: int = 0) -> int:
    """Read a field of the new header at ``base`` (tests patch caches at these offsets)."""
    offsets = {"nlibs": 20, "len_strings": 24, "extension_offset": 32}
    return struct.unpack_from("<I", data, base + offsets[name])[0]


def patched(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    buf = bytearray(data)
    struct.pack_into(fmt, buf, offset, *values)
    return bytes(buf)


# --- running the real ldconfig -----------------------------------------------------------------------------------


def ldconfig_print(path: str | Path) -> subprocess.CompletedProcess[bytes]:
    """``ldconfig -p -C path`` in the C locale (messages untranslated), raw bytes."""
    assert LDCONFIG is not None
    env = {"LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    return subprocess.run([LDCONFIG, "-p", "-C", str(path)], capture_output=True, env=env, timeout=30, check=False)


def ours(path: str | Path) -> bytes:
    """What nvc prints for ``path``, encoded the way the CLI writes it."""
    return format_cache(read_cache(path), str(path)).encode(ldcache.STRING_ENCODING, ldcache.STRING_ERRORS)


def assert_same_as_ldconfig(path: str | Path) -> None:
    result = ldconfig_print(path)
    assert result.returncode == 0, result.stderr
    mine = ours(path)
    if mine != result.stdout:  # show a readable diff instead of two huge byte strings
        import difflib

        diff = difflib.unified_diff(
            result.stdout.decode("latin-1").splitlines(True), mine.decode("latin-1").splitlines(True), "ldconfig", "nvc"
        )
        pytest.fail("".join(list(diff)[:40]))


def run_ldconfig_build(root: Path, fmt: str, name: str) -> Path:
    """``ldconfig -r root -X -c fmt`` into ``root/etc/<name>``; -X so it never touches the copied files' links."""
    assert LDCONFIG is not None
    subprocess.run(
        [LDCONFIG, "-r", str(root), "-X", "-c", fmt, "-C", f"/etc/{name}"],
        check=True,
        capture_output=True,
        env={"LC_ALL": "C", "PATH": os.environ.get("PATH", "")},
        timeout=60,
    )
    return root / "etc" / name


# --- real caches ---------------------------------------------------------------------------------------------------

HOST_LIBS = (
    "libz.so.1",
    "libzstd.so.1",
    "libexpat.so.1",
    "libffi.so.8",
    "libbz2.so.1.0",
    "liblzma.so.5",
    "libm.so.6",
    "libgcc_s.so.1",
    "libstdc++.so.6",
    "libcrypt.so.1",
)


def _host_libdir() -> Path | None:
    for candidate in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64"):
        if os.path.exists(os.path.join(candidate, "libz.so.1")):
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def host_root_caches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """new/old/compat caches written by the real ldconfig over copies of host libraries, with glibc-hwcaps dirs."""
    if LDCONFIG is None:
        pytest.skip("glibc ldconfig not installed")
    libdir = _host_libdir()
    if libdir is None:
        pytest.skip("no host library directory with libz.so.1")
    root = tmp_path_factory.mktemp("hostroot")
    dest = root / libdir.relative_to("/")
    v3 = dest / "glibc-hwcaps" / "x86-64-v3"
    v2 = dest / "glibc-hwcaps" / "x86-64-v2"
    for d in (v3, v2, root / "etc"):
        d.mkdir(parents=True, exist_ok=True)
    copied = [name for name in HOST_LIBS if (libdir / name).exists()]
    for name in copied:
        shutil.copy(libdir / name, dest / name)
    for name in copied[:3]:
        shutil.copy(libdir / name, v3 / name)
    shutil.copy(libdir / copied[0], v2 / copied[0])
    (root / "etc" / "ld.so.conf").write_text(f"/{libdir.relative_to('/')}\n")
    return {fmt: run_ldconfig_build(root, fmt, f"ld.so.cache.{fmt}") for fmt in ("new", "old", "compat")}


@pytest.fixture(scope="session")
def i386_caches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Caches over Debian's real 32-bit x86 libc (``libc6-i386``, ``lib32gcc-s1``) from apt's package cache."""
    if LDCONFIG is None or shutil.which("dpkg-deb") is None:
        pytest.skip("needs ldconfig and dpkg-deb")
    debs = sorted(glob.glob("/var/cache/apt/archives/libc6-i386_*.deb")) + sorted(
        glob.glob("/var/cache/apt/archives/lib32gcc-s1_*.deb")
    )
    if not debs:
        pytest.skip("libc6-i386 .deb not in apt's cache")
    root = tmp_path_factory.mktemp("i386root")
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", deb, str(root)], check=True, capture_output=True, timeout=60)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "ld.so.conf").write_text("/lib32\n/usr/lib32\n")
    return {fmt: run_ldconfig_build(root, fmt, f"ld.so.cache.{fmt}") for fmt in ("new", "old", "compat")}


@needs_ldconfig
@pytest.mark.parametrize("fmt", ["new", "old", "compat"])
def test_ldconfig_built_host_libs_byte_identical(host_root_caches: dict[str, Path], fmt: str) -> None:
    assert_same_as_ldconfig(host_root_caches[fmt])


@needs_ldconfig
@pytest.mark.parametrize("fmt", ["new", "old", "compat"])
def test_ldconfig_built_i386_byte_identical(i386_caches: dict[str, Path], fmt: str) -> None:
    assert_same_as_ldconfig(i386_caches[fmt])
    entries = read_cache(i386_caches[fmt]).entries
    assert entries and all(e.arch_class == ARCH_I386 for e in entries)
    assert any(e.flags == FLAG_ELF_LIBC6 for e in entries)


@needs_ldconfig
@pytest.mark.skipif(not os.path.isfile("/etc/ld.so.cache"), reason="host has no /etc/ld.so.cache")
def test_host_cache_byte_identical() -> None:
    assert_same_as_ldconfig("/etc/ld.so.cache")


DRIVER_CACHE_KEYS = ["new", "old", "compat", "hwcaps", "arm64"]


@pytest.fixture(scope="session")
def driver_caches(request: pytest.FixtureRequest) -> dict[str, Path]:
    """The NVIDIA driver fixture caches, skipped until ``fixtures.driver_roots`` is available."""
    try:
        import fixtures.driver_roots  # noqa: F401
    except ModuleNotFoundError:
        pytest.skip("fixtures.driver_roots not available yet")
    fixture_set = request.getfixturevalue("fixture_set")
    return {key: Path(value) for key, value in dict(fixture_set.caches).items()}


@needs_ldconfig
@pytest.mark.parametrize("key", DRIVER_CACHE_KEYS)
def test_driver_fixture_caches_byte_identical(driver_caches: dict[str, Path], key: str) -> None:
    if key not in driver_caches:
        pytest.skip(f"fixture set has no {key!r} cache")
    assert_same_as_ldconfig(driver_caches[key])
    cache = read_cache(driver_caches[key])
    assert any(e.key.startswith("libcuda.so") for e in cache.entries)


# --- hand-built caches, still printed by the real ldconfig ------------------------------------------------------

ALL_FLAGS = (
    [t | a for a in range(0, 0x1400, 0x100) for t in (FLAG_ELF_LIBC6,)]
    + [0x0300 | t for t in (0, 1, 2, 3, 4, 0x7F, 0xFF)]
    + [0xFF03, 0x0003, 0x0001, -1, -0x7FFFFFFF - 1, 0x7FFFFFFF, 0x12345603]
)
ODD_BYTES = [
    Lib(b"lib\xff\xfe.so", b"/p/\xc3\xa9t\xc3\xa9/\x80"),
    Lib(b"libsp ace.so.1", b"/p/with\ttab/and\nnewline"),
    Lib(b"lib\xe2\x82\xac.so", b"/p/\xed\xa0\x80surrogate-bytes"),
    Lib(b"", b""),
]
LEGACY_HWCAPS = [
    Lib(b"libhw1.so", b"/p/hw1", hwcap=1),
    Lib(b"libhwtop.so", b"/p/hwtop", hwcap=0xFFFFFFFFFFFFFFFF),
    Lib(b"libhwbit42.so", b"/p/bit42", hwcap=(1 << 62) | (1 << 42)),  # extension bit plus a non-ISA bit: legacy
    Lib(b"libhwbig.so", b"/p/hwbig", hwcap=(1 << 62) | 7),  # extension index past the array: printed as hex
]
HWCAPS_EXT = [
    Lib(b"libz.so.1", b"/usr/lib/x86_64-linux-gnu/glibc-hwcaps/x86-64-v3/libz.so.1", hwcap=(1 << 62) | 1),
    Lib(b"libz.so.1", b"/usr/lib/x86_64-linux-gnu/glibc-hwcaps/x86-64-v2/libz.so.1", hwcap=1 << 62),
    Lib(b"libz.so.1", b"/usr/lib/x86_64-linux-gnu/glibc-hwcaps/x86-64-v4/libz.so.1", hwcap=(1 << 62) | (3 << 32) | 2),
    Lib(b"libz.so.1", b"/usr/lib/x86_64-linux-gnu/libz.so.1"),
]
OSVERSIONS = [
    Lib(b"libos%d.so" % i, b"/p/os%d" % i, osversion=v) for i, v in enumerate((0x20600, 0x07010203, 0xFFFFFFFF))
]
ARM64 = [
    Lib(b"libcuda.so.1", b"/usr/lib/aarch64-linux-gnu/libcuda.so.1", flags=FLAG_ELF_LIBC6 | ARCH_AARCH64),
    Lib(b"libcuda.so.1", b"/usr/lib/arm-linux-gnueabihf/libcuda.so.1", flags=FLAG_ELF_LIBC6 | ARCH_ARMHF),
    Lib(b"libcuda.so.1", b"/usr/lib/arm-linux-gnueabi/libcuda.so.1", flags=FLAG_ELF_LIBC6 | 0x0B00),
    Lib(b"ld-linux-aarch64.so.1", b"/lib/ld-linux-aarch64.so.1", flags=FLAG_ELF_LIBC6 | ARCH_AARCH64),
]
HWCAP_NAMES = (b"x86-64-v2", b"x86-64-v3", b"x86-64-v4")

HANDMADE: dict[str, tuple[list[Lib], dict]] = {
    "all-flags": ([Lib(b"lib%d.so" % i, b"/p/%d" % i, flags=f) for i, f in enumerate(ALL_FLAGS)], {}),
    "odd-bytes": (ODD_BYTES, {"generator": b"gen \xff\xfe bytes"}),
    "legacy-hwcap": (LEGACY_HWCAPS, {"hwcaps": HWCAP_NAMES}),
    "hwcaps-ext": (HWCAPS_EXT, {"hwcaps": HWCAP_NAMES}),
    "osversion": (OSVERSIONS, {}),
    "arm64": (ARM64, {}),
    "empty": ([], {}),
    "no-extension": (ARM64, {"generator": None}),
    "empty-generator": (ARM64, {"generator": b""}),
    "generator-with-nul": (ARM64, {"generator": b"a\0b\nc"}),
    "unknown-tags": (HWCAPS_EXT, {"hwcaps": HWCAP_NAMES, "extra_sections": ((2, b"xyz"), (0xFFFFFFFF, b""))}),
    "duplicate-tag": (ARM64, {"extra_sections": ((0, b"second generator wins"),)}),
    "hwcaps-odd-size": (HWCAPS_EXT, {"hwcaps": (), "extra_sections": ((1, b"\0\0\0\0\0"),)}),
    "hwcaps-empty": (HWCAPS_EXT, {"hwcaps": (), "extra_sections": ((1, b""),)}),
    "endian-unset": (ARM64, {"endian": 0}),
    "endian-high-bits": (ARM64, {"endian": 0xFE}),  # only the low two bits count
}


@needs_ldconfig
@pytest.mark.parametrize("layout", ["new", "old", "compat"])
@pytest.mark.parametrize("case", sorted(HANDMADE))
def test_handmade_byte_identical(tmp_path: Path, case: str, layout: str) -> None:
    libs, options = HANDMADE[case]
    path = tmp_path / f"{case}.{layout}.cache"
    path.write_bytes(build_cache(libs, layout=layout, **options))
    assert_same_as_ldconfig(path)


@needs_ldconfig
@pytest.mark.parametrize(
    "data",
    [
        pytest.param(build_cache(ARM64, endian=3), id="big-endian-flag"),
        pytest.param(build_cache(ARM64, endian=1), id="invalid-endian-flag"),
        pytest.param(build_cache(ARM64, endian=4), id="endian-bits-zero-but-flag-set"),
        pytest.param(build_cache(ARM64, layout="compat", endian=3), id="compat-big-endian"),
        pytest.param(b"not a cache at all, no no", id="bad-magic"),
        pytest.param(b"ld.so-1.7.", id="short"),
    ],
)
def test_rejected_like_ldconfig(tmp_path: Path, data: bytes) -> None:
    """Whatever the real ldconfig refuses to print, we refuse to parse."""
    path = tmp_path / "bad.cache"
    path.write_bytes(data)
    assert ldconfig_print(path).returncode != 0
    with pytest.raises(LdCacheError):
        parse_cache(data)


# --- layouts, arch classes, hwcaps ---------------------------------------------------------------------------------


def test_layouts_and_tables() -> None:
    libs = HWCAPS_EXT + ARM64
    new = parse_cache(build_cache(libs, hwcaps=HWCAP_NAMES))
    old = parse_cache(build_cache(libs, layout="old"))
    compat = parse_cache(build_cache(libs, layout="compat", hwcaps=HWCAP_NAMES))
    assert (new.layout, old.layout, compat.layout) == ("new", "old", "compat")
    keys = [lib.key.decode() for lib in libs]
    assert [e.key for e in new.entries] == keys
    assert [e.value for e in compat.entries] == [lib.value.decode() for lib in libs]
    assert new.old_entries == ()
    assert old.entries == old.old_entries and [e.key for e in old.entries] == keys
    assert all(e.hwcap == 0 and e.osversion == 0 for e in old.entries)
    assert [e.key for e in compat.old_entries] == keys
    assert new.generator == compat.generator == GENERATOR.decode()
    assert old.generator is None and old.hwcaps_subdirs == ()


def test_hwcaps_subdirectories_resolved() -> None:
    cache = parse_cache(build_cache(HWCAPS_EXT, hwcaps=HWCAP_NAMES))
    assert cache.hwcaps_subdirs == ("x86-64-v2", "x86-64-v3", "x86-64-v4")
    assert [e.hwcaps_subdir for e in cache.entries] == ["x86-64-v3", "x86-64-v2", "x86-64-v4", None]
    assert format_cache(cache, "c").splitlines()[3] == (
        '\tlibz.so.1 (libc6,x86-64, hwcap: "x86-64-v4") => /usr/lib/x86_64-linux-gnu/glibc-hwcaps/x86-64-v4/libz.so.1'
    )


def test_compat_hwcaps_names_read_from_file_start_like_glibc() -> None:
    """glibc resolves the hwcaps array relative to the file even in compat files; the names come out wrong there."""
    data = build_cache(HWCAPS_EXT, layout="compat", hwcaps=HWCAP_NAMES)
    cache = parse_cache(data)
    assert len(cache.hwcaps_subdirs) == 3
    assert cache.hwcaps_subdirs != ("x86-64-v2", "x86-64-v3", "x86-64-v4")
    assert cache.entries[0].hwcaps_subdir == cache.hwcaps_subdirs[1]


def test_legacy_hwcap_not_a_subdirectory() -> None:
    cache = parse_cache(build_cache(LEGACY_HWCAPS, hwcaps=HWCAP_NAMES))
    assert [e.hwcaps_subdir for e in cache.entries] == [None] * 4
    lines = format_cache(cache, "c").splitlines()
    assert lines[1].endswith("(libc6,x86-64, hwcap: 0x0000000000000001) => /p/hw1")
    assert "hwcap: 0x4000000000000007" in lines[4]


def test_every_arch_class_text() -> None:
    text = format_cache(parse_cache(build_cache([Lib(b"l", b"/l", flags=f) for f in ALL_FLAGS])), "c")
    for expected in (
        "(libc6)",
        "(libc6,64bit)",
        "(libc6,IA-64)",
        "(libc6,x86-64)",
        "(libc6,N32)",
        "(libc6,x32)",
        "(libc6,hard-float)",
        "(libc6,AArch64)",
        "(libc6,soft-float)",
        "(libc6,nan2008)",
        "(libc6,N32,nan2008)",
        "(libc6,64bit,nan2008)",
        "(libc6,double-float)",
        "(libc6,4352)",  # LoongArch: 2.36's printer has no name for it
        "(libc4,x86-64)",
        "(ELF,x86-64)",
        "(libc5,x86-64)",
        "(unknown,x86-64)",
        "(unknown,65280)",
    ):
        assert expected in text


def test_arm64_cache_classes() -> None:
    cache = parse_cache(build_cache(ARM64))
    native, compat32 = host_arch_classes("aarch64")
    assert [e.arch_class for e in cache.entries] == [native, compat32, 0x0B00, native]
    assert all(e.is_elf for e in cache.entries)


def test_host_arch_classes() -> None:
    assert host_arch_classes("x86_64") == (ARCH_X8664, ARCH_I386)
    assert host_arch_classes("aarch64") == (ARCH_AARCH64, ARCH_ARMHF)
    assert host_arch_classes("ppc64le") == (ARCH_PPC64, None)
    assert host_arch_classes() == host_arch_classes(os.uname().machine)
    with pytest.raises(ValueError):
        host_arch_classes("m68k")


def test_entry_flag_helpers() -> None:
    entry = CacheEntry(0x0303, "libc.so.6", "/lib/libc.so.6", 0, 0, None)
    assert entry.arch_class == ARCH_X8664 and entry.is_elf
    assert not CacheEntry(0x0302 & ~1, "a", "b", 0, 0).is_elf
    assert CacheEntry(-1, "a", "b", 0, 0).arch_class == 0xFF00


def test_odd_bytes_round_trip() -> None:
    cache = parse_cache(build_cache(ODD_BYTES))
    for entry, lib in zip(cache.entries, ODD_BYTES, strict=True):
        assert entry.key.encode("utf-8", "surrogateescape") == lib.key
        assert os.fsencode(entry.value) == lib.value


def test_format_header_and_trailer() -> None:
    text = format_cache(LdCache("new", (), (), "gen", ()), "/x/ld.so.cache")
    assert text == "0 libs found in cache `/x/ld.so.cache'\nCache generated by: gen\n"
    assert format_cache(LdCache("old", (), (), None, ()), "p") == "0 libs found in cache `p'\n"


def test_accepts_bytearray_and_memoryview() -> None:
    data = build_cache(ARM64)
    assert parse_cache(bytearray(data)) == parse_cache(memoryview(data)) == parse_cache(data)


# --- errors --------------------------------------------------------------------------------------------------------


def _error(data: bytes) -> str:
    with pytest.raises(LdCacheError) as info:
        parse_cache(data)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_errors_are_one_line_and_specific() -> None:
    good = build_cache(HWCAPS_EXT, hwcaps=HWCAP_NAMES)
    size = len(good)
    ext = new_header_field(good, "extension_offset")
    assert "empty" in _error(b"")
    assert "not an ld.so.cache" in _error(b"GARBAGE" * 4)
    assert "truncated" in _error(good[:40])
    assert "of 4294967295 past end of file" in _error(patched(good, 20, "<I", 0xFFFFFFFF))
    assert "entry 2 of 4" in _error(good[: 48 + 24 * 2 + 10])
    assert "big-endian" in _error(patched(good, 28, "<B", 3))
    # first entry's key offset just past the end, then at the last byte (a generator blob has no NUL)
    assert "entry 0 name at offset" in _error(patched(good, 48 + 4, "<I", size))
    plain = build_cache(ARM64)
    assert plain.endswith(GENERATOR)
    assert "entry 0 path at offset" in _error(patched(plain, 48 + 8, "<I", len(plain) - 1))
    assert "no NUL" in _error(patched(plain, 48 + 8, "<I", len(plain) - 1))
    assert "not 4-byte aligned" in _error(patched(good, 32, "<I", ext + 2))
    assert "extension directory at offset" in _error(patched(good, 32, "<I", size))
    assert "magic" in _error(patched(good, ext, "<I", 0x12345678))
    assert "sections is past end" in _error(patched(good, ext + 4, "<I", 0x10000000))
    assert "tag 0" in _error(patched(good, ext + 8 + 8, "<I", size))  # generator section offset
    assert "glibc-hwcaps name" in _error(patched(good, struct.unpack_from("<I", good, ext + 24 + 8)[0], "<I", size))


def test_byteswapped_count_gets_a_hint() -> None:
    data = build_cache(ARM64, endian=0)
    swapped = patched(data, 20, ">I", len(ARM64))
    assert "byte-swapped" in _error(swapped)


def test_old_table_checks() -> None:
    data = build_cache(ARM64, layout="old")
    assert "of 1000 past end of file" in _error(patched(data, 12, "<I", 1000))
    assert "old-format entry 0 name" in _error(patched(data, 16 + 4, "<I", len(data)))


def test_hwcap_index_past_array_is_not_an_error() -> None:
    """glibc treats it as "no subdirectory" (ld.so then skips the entry); so do we."""
    cache = parse_cache(build_cache([Lib(b"a", b"/a", hwcap=(1 << 62) | 99)], hwcaps=HWCAP_NAMES))
    assert cache.entries[0].hwcaps_subdir is None


def test_read_cache_errors(tmp_path: Path) -> None:
    with pytest.raises(LdCacheError, match=str(tmp_path / "missing")):
        read_cache(tmp_path / "missing")
    with pytest.raises(LdCacheError, match="not a regular file"):
        read_cache(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(LdCacheError, match="not a regular file"):
        read_cache(fifo)  # must not block waiting for a writer
    huge = tmp_path / "huge"
    with open(huge, "wb") as f:
        f.truncate(ldcache.MAX_CACHE_SIZE + 1)  # sparse: costs no disk
    with pytest.raises(LdCacheError, match="larger than"):
        read_cache(huge)
    bad = tmp_path / "bad"
    bad.write_bytes(b"x" * 64)
    with pytest.raises(LdCacheError, match=f"^{bad}: not an ld.so.cache"):
        read_cache(bad)
    if os.geteuid() != 0:
        unreadable = tmp_path / "unreadable"
        unreadable.write_bytes(build_cache(ARM64))
        unreadable.chmod(0)
        with pytest.raises(LdCacheError, match="Permission denied"):
            read_cache(unreadable)


# --- speed and import weight --------------------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.isfile("/etc/ld.so.cache"), reason="host has no /etc/ld.so.cache")
def test_host_cache_parses_in_milliseconds() -> None:
    data = Path("/etc/ld.so.cache").read_bytes()
    parse_cache(data)
    best = min(_timed(parse_cache, data) for _ in range(5))
    assert best < 0.05, f"parse took {best * 1000:.1f} ms"


def _timed(func: Callable[[bytes], object], arg: bytes) -> float:
    start = time.perf_counter()
    func(arg)
    return time.perf_counter() - start


def test_import_is_light() -> None:
    code = "import sys, nvc.host.ldcache; print(' '.join(sorted(sys.modules)))"
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo, timeout=60
    ).stdout.split()
    for heavy in ("subprocess", "platform", "json", "elftools", "click", "pynvml", "cffi", "mmap", "nvc.commands.cli"):
        assert heavy not in out
