"""nvc.host.ldcache.writer against the real glibc 2.36 tools: byte-identical rewrites, merges equal to ``ldconfig``,
the dynamic loader using our cache in a chroot, and the SONAME links ldconfig creates.

Real data: the host's /etc/ld.so.cache, caches ``ldconfig -r ROOT`` writes over copies of host libraries (with
glibc-hwcaps subdirectories, an empty one, and a legacy ``tls`` subdirectory), the NVIDIA driver fixture caches
when they are built, and libraries compiled here with ``gcc -shared -Wl,-soname,...``. The tests that run
``ldconfig -r`` or ``chroot`` need root (both call chroot(2)) and are marked ``root``.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from nvc.host.ldcache import (
    ARCH_I386,
    ARCH_X8664,
    FLAG_ELF,
    FLAG_ELF_LIBC6,
    CacheEntry,
    LdCache,
    LdCacheError,
    parse_cache,
    writer,
)
from nvc.host.ldcache.writer import (
    LibraryAddition,
    SearchDirectory,
    dl_cache_libcmp,
    ldconfig_search_dirs,
    load_cache_image,
    merge_cache_bytes,
    merge_libraries,
    serialize_cache,
    serialize_image,
    soname_links,
    sort_entries,
)

LDCONFIG = shutil.which("ldconfig") or next(
    (p for p in ("/usr/sbin/ldconfig", "/sbin/ldconfig") if os.access(p, os.X_OK)), None
)
GCC = shutil.which("gcc")
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"
LIBDIR = Path("/usr/lib/x86_64-linux-gnu")
X86_64 = os.uname().machine == "x86_64"
X8664 = FLAG_ELF_LIBC6 | ARCH_X8664
EXT = 1 << 62
ENV = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
#: Host libraries copied into the test roots (those present are used; libc and libm are always there).
HOST_LIBS = ("libc.so.6", "libm.so.6", "libz.so.1", "libzstd.so.1", "liblzma.so.5", "libgcc_s.so.1", "libbz2.so.1.0")

needs_tools = pytest.mark.skipif(
    LDCONFIG is None or GCC is None or not X86_64 or not (LIBDIR / "libc.so.6").exists(),
    reason="needs glibc's ldconfig, gcc and a Debian x86_64 host library directory",
)


# --- helpers -----------------------------------------------------------------------------------------------------


def ldconfig(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    assert LDCONFIG is not None
    return subprocess.run([LDCONFIG, *map(str, args)], capture_output=True, env=ENV, timeout=60, check=True)


def ldconfig_print(path: Path) -> bytes:
    """``ldconfig -p -C path`` with the path in the header line replaced, so two files' outputs compare."""
    out = ldconfig("-p", "-C", path).stdout
    return out.replace(f"`{path}'".encode(), b"`CACHE'")


def assert_same_bytes(ours: bytes, theirs: bytes) -> None:
    if ours != theirs:
        first = next(
            (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs))
        )
        pytest.fail(f"bytes differ: ours {len(ours)} bytes, ldconfig's {len(theirs)}, first difference at {first}")


def copy_file(source: Path, dest: Path) -> None:
    """Hard link when possible (the driver libraries are large), else copy. Never modified afterwards."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


def compile_lib(out: Path, soname: str | None, value: int = 1, extra: tuple[str, ...] = ()) -> Path:
    """A real shared library ``out`` with DT_SONAME ``soname`` whose ``foo()`` returns ``value``."""
    assert GCC is not None
    out.parent.mkdir(parents=True, exist_ok=True)
    source = out.parent / f".{out.name}.c"
    source.write_text(f"int foo(void) {{ return {value}; }}\n")
    args = [GCC, "-shared", "-fPIC", "-o", str(out), str(source), *extra]
    if soname is not None:
        args.append(f"-Wl,-soname,{soname}")
    subprocess.run(args, check=True, capture_output=True, timeout=60)
    source.unlink()
    return out


def elf_soname(path: Path) -> str:
    """DT_SONAME of ``path``, or its file name when it has none (what ldconfig's implicit_soname uses)."""
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as handle:
        for section in ELFFile(handle).iter_sections():
            if isinstance(section, DynamicSection):
                for tag in section.iter_tags("DT_SONAME"):
                    return tag.soname
    return path.name


def symlinks(root: Path) -> dict[str, str]:
    """Every symlink under ``root``: path inside the root -> target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                out["/" + os.path.relpath(full, root)] = os.readlink(full)
    return out


def make_root(root: Path, *, conf: dict[str, str] | None = None) -> Path:
    """A merged-/usr Debian-like root: ``/lib -> usr/lib``, Debian's ld.so.conf and host libraries."""
    (root / "etc" / "ld.so.conf.d").mkdir(parents=True)
    (root / "usr" / "lib" / "x86_64-linux-gnu").mkdir(parents=True)
    (root / "usr" / "local" / "lib").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "etc" / "ld.so.conf").write_text("include /etc/ld.so.conf.d/*.conf\n\n")
    files = {
        "libc.conf": "# libc default configuration\n/usr/local/lib\n",
        "x86_64-linux-gnu.conf": "# Multiarch support\n/usr/local/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu\n"
        "/usr/lib/x86_64-linux-gnu\n",
    }
    files.update(conf or {})
    for name, text in files.items():
        (root / "etc" / "ld.so.conf.d" / name).write_text(text)
    dest = root / "usr" / "lib" / "x86_64-linux-gnu"
    for name in HOST_LIBS:
        source = LIBDIR / name
        if source.exists():
            real = source.resolve()
            copy_file(real, dest / real.name)
            if real.name != name:
                (dest / name).symlink_to(real.name)
    return root


# --- pure unit tests ---------------------------------------------------------------------------------------------


def test_string_table_is_glibcs_tail_merged_layout() -> None:
    table, offsets = writer._string_table([b"libz.so.1", b"/lib/libz.so.1", b"so.1", b"x", b"libz.so.1"])
    # Reversed strings in descending order: "x" first, then the path, then its suffixes stored inside it.
    assert table == b"x\0/lib/libz.so.1\0"
    assert offsets == {b"x": 0, b"/lib/libz.so.1": 2, b"libz.so.1": 7, b"so.1": 12}
    assert writer._string_table([]) == (b"", {})
    assert writer._string_table([b""]) == (b"\0", {b"": 0})


@pytest.mark.parametrize(
    ("left", "right", "sign"),
    [
        ("libfoo.so.10", "libfoo.so.9", 1),  # digit runs compare as numbers
        ("libfoo.so.1", "libfoo.so.1.0", -1),  # a prefix sorts first
        ("libfoo.so.01", "libfoo.so.1", 0),  # leading zeros vanish
        ("lib1", "liba", 1),  # a digit outranks any other byte
        ("libA", "liba", -1),
        ("libz.so", "libz.so", 0),
    ],
)
def test_libcmp(left: str, right: str, sign: int) -> None:
    assert dl_cache_libcmp(left, right) == sign
    assert dl_cache_libcmp(right, left) == -sign


def test_libcmp_high_bytes_follow_char_signedness() -> None:
    high = b"lib\xe9".decode("utf-8", "surrogateescape")
    # x86's char is signed: 0xe9 is negative, below the terminating NUL; unsigned-char machines put it above.
    assert dl_cache_libcmp(high, "lib") == (-1 if writer._CHAR_IS_SIGNED else 1)


def entry(key: str, value: str, flags: int = X8664, hwcap: int = 0, subdir: str | None = None) -> CacheEntry:
    return CacheEntry(flags, key, value, 0, hwcap, subdir)


def test_sort_entries_follows_glibc_compare() -> None:
    expected = [
        entry("libz.so.10", "/a/libz.so.10"),
        entry("libz.so.9", "/a/libz.so.9"),
        entry("libz.so.1", "/v2/libz.so.1.3", hwcap=EXT | 1, subdir="x86-64-v2"),  # hwcaps first, by name
        entry("libz.so.1", "/v3/libz.so.1.3", hwcap=EXT, subdir="x86-64-v3"),
        entry("libz.so.1", "/a/tls/haswell/libz.so.1", hwcap=(1 << 63) | (1 << 50)),  # more legacy bits first
        entry("libz.so.1", "/a/tls/libz.so.1", hwcap=1 << 63),
        entry("libz.so.1", "/a/libz.so.1"),
        entry("libz.so.1", "/b/libz.so.1"),  # equal: insertion (directory scan) order is kept
        entry("libz.so.1", "/a/libz.so.1", flags=FLAG_ELF_LIBC6 | ARCH_I386),  # lower flags later
        entry("libz.so.1", "/a/elf/libz.so.1", flags=FLAG_ELF),
        entry("libz.so", "/a/libz.so"),
    ]
    shuffled = expected[:]
    for seed in range(20):
        random.Random(seed).shuffle(shuffled)
        # Keep the two equal entries in their original relative order, as ldconfig's insertion does.
        a, b = expected[6], expected[7]
        if shuffled.index(a) > shuffled.index(b):
            i, j = shuffled.index(a), shuffled.index(b)
            shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
        assert sort_entries(shuffled) == expected


def test_serialize_round_trips_through_the_reader() -> None:
    entries = [
        entry("libz.so.1", "/v3/libz.so.1.3", hwcap=EXT | (2 << 32) | 5, subdir="x86-64-v3"),
        entry("libz.so.1", "/usr/lib/libz.so.1"),
        entry("libweird\udcff.so", "/p/\udcfe/x"),
        entry("libold.so", "/p/libold.so", flags=FLAG_ELF_LIBC6 | ARCH_I386),
    ]
    for layout in writer.LAYOUTS:
        for generator in (None, "gen", ""):
            data = serialize_cache(entries, layout, generator, extra_strings=["orphan"])
            cache = parse_cache(data)
            assert cache.layout == layout
            assert [(e.key, e.value, e.flags) for e in cache.entries] == [(e.key, e.value, e.flags) for e in entries]
            if layout == "new":
                assert cache.generator == generator
                assert cache.hwcaps_subdirs == ("x86-64-v3",)
                # The index is renumbered to the array; the ISA level bits are kept.
                assert cache.entries[0].hwcap == EXT | (2 << 32) and cache.entries[0].hwcaps_subdir == "x86-64-v3"
            image = load_cache_image(data)
            assert serialize_image(image) == data
            assert "orphan" in image.extra_strings


def test_empty_cache_without_generator_is_a_bare_header() -> None:
    data = serialize_cache([], generator=None)
    assert data == b"glibc-ld.so.cache1.1" + bytes(8) + bytes([2 if os.sys.byteorder == "little" else 3]) + bytes(19)
    assert parse_cache(data).entries == ()


def test_compat_pads_old_table_to_even_count() -> None:
    data = serialize_cache([entry("liba.so", "/a")], "compat", "g")
    cache = parse_cache(data)
    assert len(cache.old_entries) == 2 and cache.old_entries[0] == cache.old_entries[1]
    assert len(parse_cache(serialize_cache([entry("liba.so", "/a")], "old")).old_entries) == 1


@pytest.mark.parametrize(
    ("entries", "kwargs"),
    [
        ([], {"layout": "newest"}),
        ([CacheEntry(1 << 31, "k", "v", 0, 0)], {}),
        ([CacheEntry(3, "k", "v", -1, 0)], {}),
        ([CacheEntry(3, "k", "v", 0, 1 << 64)], {}),
        ([CacheEntry(3, "k\0", "v", 0, 0)], {}),
        ([], {"extra_strings": ["a\0b"]}),
    ],
)
def test_serialize_rejects_what_cannot_be_written(entries: list[CacheEntry], kwargs: dict) -> None:
    with pytest.raises(ValueError):
        serialize_cache(entries, **kwargs)


@pytest.mark.parametrize("layout", writer.LAYOUTS)
def test_damaged_caches_load_and_rewrite_safely(layout: str) -> None:
    """Damaged caches: LdCacheError (from the reader) or an image that rewrites to a cache with the same table.

    Never another exception (IndexError, struct.error, ...), and quickly. Seeded, so failures reproduce.
    """
    entries = [
        entry("libz.so.1", "/l/glibc-hwcaps/x86-64-v3/libz.so.1.3", hwcap=EXT, subdir="x86-64-v3"),
        entry("libz.so.1", "/l/libz.so.1"),
        entry("libc.so.6", "/l/libc.so.6"),
    ]
    if layout == "new":  # legacy hwcap entries exist only in the new table
        entries.insert(1, entry("libz.so.1", "/l/tls/libz.so.1", hwcap=1 << 63))
    base = serialize_cache(entries, layout, "generator", extra_strings=["x86-64-v4"])
    rng = random.Random(0xCAC4E)
    start = time.perf_counter()
    loaded = 0
    for attempt in range(1500):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.choice((0, 0xFF, rng.randrange(256)))
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data))]
        try:
            image = load_cache_image(bytes(data))
        except LdCacheError:
            continue
        loaded += 1
        again = parse_cache(serialize_image(image))
        assert [(e.flags, e.key, e.value) for e in again.entries] == [
            (e.flags, e.key, e.value) for e in image.cache.entries
        ], f"attempt {attempt}"
    assert loaded > 100
    assert time.perf_counter() - start < 10


def test_merge_pure_replaces_inserts_and_ranks_directories() -> None:
    base = LdCache(
        "new",
        (
            entry("libz.so.1", "/lib/x86_64-linux-gnu/libz.so.1"),
            entry("libcuda.so.1", "/lib/x86_64-linux-gnu/libcuda.so.1", flags=FLAG_ELF_LIBC6 | ARCH_I386),
            entry("libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6"),
        ),
        generator="gen",
    )
    dirs = (
        SearchDirectory("/usr/local/lib", "/usr/local/lib"),
        SearchDirectory("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"),
    )
    additions = [
        LibraryAddition("libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.535.1"),
        LibraryAddition("libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.535.10"),  # newer name wins
        LibraryAddition("libz.so.1", "/usr/local/lib/libz.so.1.3"),  # scanned before /lib/x86_64-linux-gnu
        LibraryAddition("libz.so.1", "/usr/lib/x86_64-linux-gnu/glibc-hwcaps/x86-64-v3/libz.so.1.3", isa_level=2),
    ]
    merged = merge_libraries(base, additions, directories=dirs)
    assert [(e.key, e.value, e.flags, e.hwcap, e.hwcaps_subdir) for e in merged.entries] == [
        ("libz.so.1", "/lib/x86_64-linux-gnu/glibc-hwcaps/x86-64-v3/libz.so.1.3", X8664, EXT | (2 << 32), "x86-64-v3"),
        ("libz.so.1", "/usr/local/lib/libz.so.1", X8664, 0, None),
        ("libz.so.1", "/lib/x86_64-linux-gnu/libz.so.1", X8664, 0, None),
        # The 32-bit entry in that directory had the same SONAME: ldconfig keeps one per directory.
        ("libcuda.so.1", "/lib/x86_64-linux-gnu/libcuda.so.1", X8664, 0, None),
        ("libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6", X8664, 0, None),
    ]
    assert merged.hwcaps_subdirs == ("x86-64-v3",) and merged.generator == "gen"
    # Without directory information the library's own directory is used and new entries go after their equals.
    plain = merge_libraries(base, additions[2:3])
    assert [e.value for e in plain.entries][:2] == ["/lib/x86_64-linux-gnu/libz.so.1", "/usr/local/lib/libz.so.1"]
    assert soname_links(additions) == [
        ("/usr/lib/x86_64-linux-gnu/libcuda.so.1", "libcuda.so.535.10"),
        ("/usr/local/lib/libz.so.1", "libz.so.1.3"),
    ]
    with pytest.raises(ValueError):
        merge_libraries(base, [LibraryAddition("libx.so", "relative/libx.so")])
    with pytest.raises(ValueError):
        merge_libraries(base, [LibraryAddition("a/b", "/l/libx.so")])


def test_merge_into_cache_from_older_glibc() -> None:
    """A compat cache without extension area (what glibc < 2.33's ldconfig wrote, strings not tail-merged):
    the merge keeps its layout, writes no generator, and only the string table's packing differs."""
    from tests.test_ldcache import Lib, build_cache

    old_style = build_cache(
        [Lib(b"libz.so.1", b"/usr/lib64/libz.so.1"), Lib(b"libc.so.6", b"/usr/lib64/libc.so.6")],
        layout="compat",
        generator=None,
    )
    additions = [LibraryAddition("libcuda.so.1", "/usr/lib64/libcuda.so.535.309.01")]
    merged = parse_cache(merge_cache_bytes(old_style, additions))
    assert merged.layout == "compat" and merged.generator is None
    assert [(e.key, e.value) for e in merged.entries] == [
        ("libz.so.1", "/usr/lib64/libz.so.1"),
        ("libcuda.so.1", "/usr/lib64/libcuda.so.1"),
        ("libc.so.6", "/usr/lib64/libc.so.6"),
    ]
    assert merged.old_entries == merged.entries + merged.entries[-1:]  # padded to an even count


def synthetic_cache(count: int) -> bytes:
    libs = [
        entry(f"lib{name}.so.{major}", f"/usr/lib/x86_64-linux-gnu/lib{name}.so.{major}")
        for name, major in ((f"pkg{i:03d}-{'x' * (i % 7)}", i % 13) for i in range(count))
    ]
    return serialize_cache(sort_entries(libs), "new", "ldconfig (Debian GLIBC 2.36-9) stable release version 2.36")


def best_of(fn: Callable[[], object], repeat: int = 15) -> tuple[float, float]:
    """(best, median) wall time of ``fn`` in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def test_speed_500_entries(capsys: pytest.CaptureFixture[str]) -> None:
    data = synthetic_cache(500)
    image = load_cache_image(data)
    additions = [
        LibraryAddition(f"libnvidia-{i}.so.1", f"/usr/lib/x86_64-linux-gnu/libnvidia-{i}.so.535.309.01")
        for i in range(40)
    ]
    assert serialize_image(image) == data
    ser = best_of(lambda: serialize_image(image))
    merge = best_of(lambda: merge_libraries(image.cache, additions))
    whole = best_of(lambda: merge_cache_bytes(data, additions))
    with capsys.disabled():
        print(
            f"\n[ldcache writer, 500 entries] serialize {ser[0] * 1e3:.2f} ms, merge 40 libs {merge[0] * 1e3:.2f} ms,"
            f" parse+merge+serialize {whole[0] * 1e3:.2f} ms (best of 15; medians {ser[1] * 1e3:.2f}/"
            f"{merge[1] * 1e3:.2f}/{whole[1] * 1e3:.2f} ms)"
        )
    # Generous bounds (shared CI machines); typical values are a few milliseconds.
    assert ser[0] < 0.05 and merge[0] < 0.05 and whole[0] < 0.1


# --- real caches: byte-identical rewrites -------------------------------------------------------------------------


def assert_rewrites_identically(path: Path) -> LdCache:
    data = path.read_bytes()
    image = load_cache_image(data)
    assert_same_bytes(serialize_image(image), data)
    assert sort_entries(image.cache.entries) == list(image.cache.entries)
    return image.cache


@needs_tools
@pytest.mark.skipif(not os.path.isfile("/etc/ld.so.cache"), reason="host has no /etc/ld.so.cache")
def test_host_cache_rewrites_byte_identical() -> None:
    cache = assert_rewrites_identically(Path("/etc/ld.so.cache"))
    assert len(cache.entries) > 10


@pytest.fixture(scope="module")
def hwcaps_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Host libraries plus copies in glibc-hwcaps/x86-64-v{2,3}, an empty x86-64-v4, and a legacy ``tls`` dir."""
    root = make_root(tmp_path_factory.mktemp("hwcaps-root"))
    libdir = root / "usr" / "lib" / "x86_64-linux-gnu"
    hwcaps = libdir / "glibc-hwcaps"
    (hwcaps / "x86-64-v4").mkdir(parents=True)
    for sub, names in (("x86-64-v3", HOST_LIBS[2:5]), ("x86-64-v2", HOST_LIBS[2:3])):
        for name in names:
            if (LIBDIR / name).exists():
                copy_file((LIBDIR / name).resolve(), hwcaps / sub / (LIBDIR / name).resolve().name)
    compile_lib(hwcaps / "x86-64-v3" / "libisa.so.1.0", "libisa.so.1", extra=("-Wl,-z,x86-64-v3",))
    compile_lib(libdir / "libisa.so.1.0", "libisa.so.1")
    return root


@needs_tools
@pytest.mark.root
@pytest.mark.parametrize("layout", ["new", "compat", "old"])
def test_ldconfig_root_caches_rewrite_byte_identical(hwcaps_root: Path, layout: str) -> None:
    ldconfig("-r", hwcaps_root, "-X", "-c", layout, "-C", f"/etc/ld.so.cache.{layout}")
    cache = assert_rewrites_identically(hwcaps_root / "etc" / f"ld.so.cache.{layout}")
    image = load_cache_image((hwcaps_root / "etc" / f"ld.so.cache.{layout}").read_bytes())
    assert "x86-64-v4" in image.extra_strings  # the empty subdirectory's name, interned by ldconfig
    if layout != "old":
        subdirs = {e.hwcaps_subdir for e in image.cache.entries if e.hwcaps_subdir}
        assert subdirs == {"x86-64-v2", "x86-64-v3"}
        isa = [e.hwcap for e in image.cache.entries if e.key == "libisa.so.1" and e.hwcaps_subdir]
        assert len(isa) == 1 and isa[0] >> 32 == (EXT >> 32) | 2  # ISA level 2 from the x86 property note
    assert len(cache.entries) >= 8


@needs_tools
@pytest.mark.root
def test_legacy_hwcap_subdirectory_rewrites_byte_identical(tmp_path: Path) -> None:
    """Legacy ``tls``/platform subdirectories (hwcap masks). glibc 2.36 crashes writing these as old/compat."""
    root = make_root(tmp_path / "root")
    libdir = root / "usr" / "lib" / "x86_64-linux-gnu"
    for sub in ("tls", "haswell"):
        copy_file((LIBDIR / "libz.so.1").resolve(), libdir / sub / (LIBDIR / "libz.so.1").resolve().name)
    ldconfig("-r", root, "-X")
    cache = assert_rewrites_identically(root / "etc" / "ld.so.cache")
    assert any(e.hwcap and e.hwcaps_subdir is None for e in cache.entries)


FIXTURE_CACHES = ("new", "old", "compat", "hwcaps", "arm64")


@pytest.mark.parametrize("name", FIXTURE_CACHES)
def test_driver_fixture_caches_rewrite_byte_identical(fixture_set, name: str) -> None:
    """The NVIDIA 535 fixture caches (new/old/compat, glibc-hwcaps, and arm64 from Debian's arm64 ldconfig)."""
    cache = assert_rewrites_identically(fixture_set.caches[name])
    assert any(e.key.startswith("libcuda.so") for e in cache.entries)


# --- ordering against the real ldconfig ---------------------------------------------------------------------------

PLACEHOLDER = "libPLACEHOLDERsonameXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX.so"


def ordering_names() -> list[bytes]:
    """SONAMEs stressing _dl_cache_libcmp: digit runs of different lengths, letters vs digits, high bytes."""
    rng = random.Random(2036)
    names = {
        b"libz.so.1",
        b"libz.so.10",
        b"libz.so.9",
        b"libz.so",
        b"libz.so.1.2",
        b"libz9.so",
        b"libzz.so",
        b"libA.so",
        b"liba.so",
        b"lib_.so",
        b"lib-.so",
        b"lib.so",
        b"lib0.so",
        b"lib00001.so.2",
        b"lib123456789.so",
        b"lib\xc3\xa9.so",
        b"lib\xff.so",
        b"lib\x7f.so",
        b"libx.so.1a",
        b"libx.so.1.a",
        b"libx.so.a1",
    }
    alphabet = b"az.09_-\xe9"
    while len(names) < 80:
        names.add(b"lib" + bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 10))) + b".so")
    # Distinct strings that compare equal (lib01 vs lib1) would be ordered by directory order: keep one of each.
    unique: dict[tuple[int, ...], bytes] = {}
    for name in sorted(names):
        unique.setdefault(writer.libcmp_key(name), name)
    return [n for n in unique.values() if b"/" not in n and len(n) <= len(PLACEHOLDER)]


@needs_tools
@pytest.mark.root
def test_entry_order_matches_ldconfig(tmp_path: Path) -> None:
    """One compiled library, its SONAME patched in place to many names; ldconfig's order must be ours."""
    template = compile_lib(tmp_path / "template.so", PLACEHOLDER).read_bytes()
    assert template.count(PLACEHOLDER.encode()) == 1
    root = tmp_path / "root"
    libdir = root / "usr" / "lib" / "x86_64-linux-gnu"
    libdir.mkdir(parents=True)
    (root / "etc").mkdir()
    names = ordering_names()
    for index, name in enumerate(names):
        patched = template.replace(PLACEHOLDER.encode(), name.ljust(len(PLACEHOLDER), b"\0"))
        (libdir / f"libt{index}.so").write_bytes(patched)
    ldconfig("-r", root, "-X")
    cache = parse_cache((root / "etc" / "ld.so.cache").read_bytes())
    assert sorted(e.key for e in cache.entries) == sorted(n.decode("utf-8", "surrogateescape") for n in names)
    shuffled = list(cache.entries)
    random.Random(1).shuffle(shuffled)
    assert sort_entries(shuffled) == list(cache.entries)


# --- merging = what the real ldconfig writes ------------------------------------------------------------------------

NVIDIA_DIR = "usr/lib/x86_64-linux-gnu/nvidia/current"
NVIDIA_LIBS = (
    "libcuda.so.535.309.01",
    "libnvidia-ml.so.535.309.01",
    "libnvidia-ptxjitcompiler.so.535.309.01",
    "libnvidia-api.so.1",
    "libnvidia-vulkan-producer.so.535.309.01",
    "libGLX_nvidia.so.535.309.01",
    "libEGL_nvidia.so.535.309.01",
    "libnvidia-allocator.so.535.309.01",
)
#: SONAMEs of those libraries in Debian's 535 packages, used to compile look-alikes when the fixtures are absent.
NVIDIA_SONAMES = {
    "libnvidia-api.so.1": "libnvidia-api.so.1",
    "libnvidia-vulkan-producer.so.535.309.01": None,
    "libGLX_nvidia.so.535.309.01": "libGLX_nvidia.so.0",
    "libEGL_nvidia.so.535.309.01": "libEGL_nvidia.so.0",
}


def nvidia_libraries(dest: Path) -> list[Path]:
    """The driver libraries into ``dest``: the real 535.309.01 files when the fixtures exist, else look-alikes."""
    source = None
    try:
        from fixtures.driver_roots import cache_dir

        candidate = cache_dir() / "roots" / "dpkg" / NVIDIA_DIR
        if all((candidate / name).is_file() for name in NVIDIA_LIBS):
            source = candidate
    except ModuleNotFoundError:
        pass
    out = []
    for name in NVIDIA_LIBS:
        if source is not None:
            copy_file(source / name, dest / name)
        else:
            soname = NVIDIA_SONAMES.get(name, name.split(".so.")[0] + ".so.1")
            compile_lib(dest / name, soname)
        out.append(dest / name)
    return out


def nvidia_i386_libraries() -> list[Path]:
    """32-bit driver libraries from the multiarch fixture root (gcc here cannot build -m32), or none."""
    try:
        from fixtures.driver_roots import cache_dir
    except ModuleNotFoundError:
        return []
    source = cache_dir() / "roots" / "multiarch" / "usr" / "lib" / "i386-linux-gnu" / "nvidia" / "current"
    names = ("libcuda.so.535.309.01", "libnvidia-ml.so.535.309.01", "libGLX_nvidia.so.535.309.01")
    return [source / name for name in names if (source / name).is_file()]


def elf_class(path: Path) -> int:
    return {1: 32, 2: 64}[path.read_bytes()[4]]


@dataclass
class MergeCase:
    root: Path
    additions: list[LibraryAddition]
    links_before: dict[str, str]


@pytest.fixture(scope="module")
def built_libs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Libraries compiled once for the merge and loader tests."""
    out = tmp_path_factory.mktemp("built")
    compile_lib(out / "libfoo.so.1.2.0", "libfoo.so.1", value=1)
    compile_lib(out / "libfoo.so.1.2.3", "libfoo.so.1", value=2)
    compile_lib(out / "v3" / "libfoo.so.1.2.3", "libfoo.so.1", value=3, extra=("-march=x86-64-v3",))
    compile_lib(out / "libbar.so.2.0.1", "libbar.so.2", value=4)
    compile_lib(out / "libz.so.1.3", "libz.so.1", value=5)
    compile_lib(out / "libzstd.so.1.5.9", "libzstd.so.1", value=6)
    compile_lib(out / "isa" / "libbar.so.2.0.1", "libbar.so.2", value=7, extra=("-Wl,-z,x86-64-v3",))
    return out


def build_merge_case(tmp_path: Path, built: Path, layout: str) -> MergeCase:
    """A root with a cache by ``ldconfig -r``, then libraries put in as a container runtime would inject them."""
    i386_conf = "/usr/local/lib/i386-linux-gnu\n/lib/i386-linux-gnu\n/usr/lib/i386-linux-gnu\n"
    root = make_root(tmp_path / "root", conf={"vendor.conf": "/opt/vendor/lib/\n", "i386-linux-gnu.conf": i386_conf})
    (root / "usr" / "lib" / "i386-linux-gnu").mkdir()
    libdir = root / "usr" / "lib" / "x86_64-linux-gnu"
    (libdir / "glibc-hwcaps" / "x86-64-v4").mkdir(parents=True)  # empty: its name is interned anyway
    copy_file((LIBDIR / "libz.so.1").resolve(), libdir / "glibc-hwcaps" / "x86-64-v3" / "libz.so.1.2.13")
    (root / "opt" / "vendor" / "lib").mkdir(parents=True)
    ldconfig("-r", root, "-c", layout)
    links_before = symlinks(root)

    placed: list[tuple[Path, str]] = []  # (file in root, its directory as the runtime names it)

    def put(source: Path, directory: str, name: str | None = None) -> None:
        dest = root / directory.lstrip("/") / (name or source.name)
        copy_file(source, dest)
        placed.append((dest, directory))

    put(built / "libfoo.so.1.2.0", "/opt/vendor/lib")
    put(built / "libfoo.so.1.2.3", "/opt/vendor/lib")
    put(built / "v3" / "libfoo.so.1.2.3", "/opt/vendor/lib/glibc-hwcaps/x86-64-v3")
    put(built / "libbar.so.2.0.1", "/usr/local/lib")
    put(built / "isa" / "libbar.so.2.0.1", "/usr/lib/x86_64-linux-gnu/glibc-hwcaps/x86-64-v4")
    put(built / "libz.so.1.3", "/usr/local/lib")  # same SONAME as the base libz, in an earlier directory
    put(built / "libzstd.so.1.5.9", "/usr/lib/x86_64-linux-gnu")  # a newer file for an existing SONAME
    staging = tmp_path / "nvidia"
    for lib in nvidia_libraries(staging):
        put(lib, "/usr/lib/x86_64-linux-gnu")
    for lib in nvidia_i386_libraries():  # compat32: same SONAMEs, (libc6) flags
        put(lib, "/usr/lib/i386-linux-gnu")

    additions = []
    for path, directory in placed:
        isa = 2 if path.parent.name == "x86-64-v4" else 0  # the -z x86-64-v3 note, as ldconfig reads it
        flags = FLAG_ELF_LIBC6 | (ARCH_I386 if elf_class(path) == 32 else ARCH_X8664)
        additions.append(LibraryAddition(elf_soname(path), f"{directory}/{path.name}", flags, isa))
    return MergeCase(root, additions, links_before)


@needs_tools
@pytest.mark.root
@pytest.mark.parametrize("layout", ["new", "compat", "old"])
def test_merge_equals_real_ldconfig(tmp_path: Path, built_libs: Path, layout: str) -> None:
    case = build_merge_case(tmp_path, built_libs, layout)
    base = (case.root / "etc" / "ld.so.cache").read_bytes()
    directories = ldconfig_search_dirs(case.root)
    assert [d.name for d in directories] == [  # ld.so.conf.d/*.conf in C order: i386, libc, vendor, x86_64
        "/lib/i386-linux-gnu",
        "/usr/local/lib",
        "/opt/vendor/lib",
        "/lib/x86_64-linux-gnu",  # /usr/lib/x86_64-linux-gnu is the same directory: ldconfig keeps this name
        "/lib",
    ]
    ours = merge_cache_bytes(base, case.additions, directories=directories)
    (case.root / "etc" / "ld.so.cache.ours").write_bytes(ours)

    ldconfig("-r", case.root, "-c", layout)  # the real thing, rescanning the whole root
    theirs_path = case.root / "etc" / "ld.so.cache"
    assert ldconfig_print(case.root / "etc" / "ld.so.cache.ours") == ldconfig_print(theirs_path)
    assert_same_bytes(ours, theirs_path.read_bytes())

    # The SONAME links ldconfig made (new or changed) are exactly the ones soname_links predicts.
    after = symlinks(case.root)
    made = {path: target for path, target in after.items() if case.links_before.get(path) != target}
    predicted = dict(soname_links(case.additions))
    assert made == predicted
    assert predicted["/opt/vendor/lib/libfoo.so.1"] == "libfoo.so.1.2.3"
    assert predicted["/usr/lib/x86_64-linux-gnu/libzstd.so.1"] == "libzstd.so.1.5.9"
    assert predicted["/usr/lib/x86_64-linux-gnu/libcuda.so.1"] == "libcuda.so.535.309.01"
    if nvidia_i386_libraries():
        entries = parse_cache(ours).entries
        assert {(e.value, e.flags) for e in entries if e.key == "libcuda.so.1"} == {
            ("/lib/x86_64-linux-gnu/libcuda.so.1", X8664),
            ("/lib/i386-linux-gnu/libcuda.so.1", FLAG_ELF_LIBC6 | ARCH_I386),
        }


def test_merge_into_host_cache_keeps_entries_and_order() -> None:
    """Merging into the host's real cache keeps every old entry and adds the new ones where sort_entries would."""
    if not os.path.isfile("/etc/ld.so.cache"):
        pytest.skip("host has no /etc/ld.so.cache")
    image = load_cache_image(Path("/etc/ld.so.cache").read_bytes())
    additions = [LibraryAddition("libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.535.309.01")]
    merged = merge_libraries(image.cache, additions)
    present = any(
        e.key == "libcuda.so.1" and e.value.startswith("/usr/lib/x86_64-linux-gnu/") for e in image.cache.entries
    )
    assert len(merged.entries) == len(image.cache.entries) + (0 if present else 1)
    assert sort_entries(merged.entries) == list(merged.entries)
    data = serialize_cache(merged.entries, merged.layout, merged.generator, extra_strings=image.extra_strings)
    assert parse_cache(data).entries == merged.entries


# --- the dynamic loader uses our cache -------------------------------------------------------------------------------


def loader_supports(level: str) -> bool:
    result = subprocess.run(["/lib64/ld-linux-x86-64.so.2", "--help"], capture_output=True, text=True, check=False)
    return f"{level} (supported" in result.stdout


@needs_tools
@pytest.mark.root
def test_dynamic_loader_finds_injected_library_through_our_cache(tmp_path: Path, built_libs: Path) -> None:
    """chroot + the real ld.so: /prog needs libfoo.so.1, which only our cache knows (a directory outside the
    loader's defaults, no LD_LIBRARY_PATH); the glibc-hwcaps copy wins where the CPU supports x86-64-v3."""
    root = make_root(tmp_path / "root", conf={"vendor.conf": "/opt/vendor/lib\n"})
    (root / "lib64").mkdir()
    copy_file(Path("/lib64/ld-linux-x86-64.so.2").resolve(), root / "lib64" / "ld-linux-x86-64.so.2")
    (root / "opt" / "vendor" / "lib").mkdir(parents=True)
    ldconfig("-r", root, "-X")
    base = (root / "etc" / "ld.so.cache").read_bytes()

    program = tmp_path / "prog.c"
    program.write_text('#include <stdio.h>\nint foo(void);\nint main(void) { printf("foo=%d\\n", foo()); return 0; }\n')
    assert GCC is not None
    subprocess.run(
        [GCC, "-o", str(root / "prog"), str(program), str(built_libs / "libfoo.so.1.2.3")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    env = {"PATH": "/", "LC_ALL": "C"}

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([CHROOT, str(root), "/prog"], capture_output=True, text=True, env=env, timeout=30)

    copy_file(built_libs / "libfoo.so.1.2.3", root / "opt" / "vendor" / "lib" / "libfoo.so.1.2.3")
    failed = run()  # control: the base cache does not know libfoo.so.1
    assert failed.returncode != 0 and "libfoo.so.1" in failed.stderr

    additions = [LibraryAddition("libfoo.so.1", "/opt/vendor/lib/libfoo.so.1.2.3")]
    # The cache names /opt/vendor/lib/libfoo.so.1: the SONAME link must exist, as ldconfig would make it.
    for link, target in soname_links(additions):
        (root / link.lstrip("/")).symlink_to(target)
    (root / "etc" / "ld.so.cache").write_bytes(merge_cache_bytes(base, additions))
    ok = run()
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "foo=2\n"

    hwcaps = root / "opt" / "vendor" / "lib" / "glibc-hwcaps" / "x86-64-v3"
    copy_file(built_libs / "v3" / "libfoo.so.1.2.3", hwcaps / "libfoo.so.1.2.3")
    additions.append(LibraryAddition("libfoo.so.1", "/opt/vendor/lib/glibc-hwcaps/x86-64-v3/libfoo.so.1.2.3"))
    (root / "etc" / "ld.so.cache").write_bytes(merge_cache_bytes(base, additions))
    ok = run()
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == ("foo=3\n" if loader_supports("x86-64-v3") else "foo=2\n")


# --- ldconfig's directory list ---------------------------------------------------------------------------------------


def test_search_dirs_follow_conf_order_and_dedup(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for d in ("usr/lib/x86_64-linux-gnu", "opt/a", "opt/b", "usr/local/lib", "etc/ld.so.conf.d"):
        (root / d).mkdir(parents=True)
    (root / "lib").symlink_to("/usr/lib")  # absolute: must resolve inside the root, not on the host
    (root / "opt" / "alias").symlink_to("a")
    (root / "etc" / "ld.so.conf").write_text(
        "# comment\n  /opt/b/ # trailing\ninclude ld.so.conf.d/*.conf /etc/missing/*.conf\nhwcap 1 x\n"
    )
    (root / "etc" / "ld.so.conf.d" / "20-b.conf").write_text("/opt/alias=libc6\n/opt/a\n/does/not/exist\n")
    (root / "etc" / "ld.so.conf.d" / "10-a.conf").write_text("/usr/local/lib\n")
    (root / "etc" / "ld.so.conf.d" / ".hidden.conf").write_text("/opt/hidden\n")
    dirs = ldconfig_search_dirs(root, system_dirs=("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib"))
    assert dirs == (
        SearchDirectory("/opt/b", "/opt/b"),
        SearchDirectory("/usr/local/lib", "/usr/local/lib"),
        SearchDirectory("/opt/alias", "/opt/a"),
        SearchDirectory("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"),
        SearchDirectory("/lib", "/usr/lib"),
    )


@needs_tools
@pytest.mark.root
def test_search_dirs_match_ldconfig_verbose(tmp_path: Path, built_libs: Path) -> None:
    """The directories (and names) ``ldconfig -v`` reports scanning are ours, in the same order."""
    root = make_root(tmp_path / "root", conf={"vendor.conf": "/opt/vendor/lib\n/usr/lib/x86_64-linux-gnu\n"})
    (root / "opt" / "vendor" / "lib").mkdir(parents=True)
    out = ldconfig("-r", root, "-v", "-X", "-N").stdout.decode()
    scanned = [line.split(":", 1)[0] for line in out.splitlines() if line and not line.startswith("\t")]
    assert scanned == [d.name for d in ldconfig_search_dirs(root)]
