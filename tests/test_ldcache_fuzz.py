"""Robustness of nvc.host.ldcache.parse_cache on damaged caches, plus a differential check against the real ldconfig.

Property 1 (every case): parse_cache returns an LdCache or raises LdCacheError, never anything else, quickly, and
format_cache works on whatever it returned.
Property 2 (a sample of the damaged caches we accept): the real ``ldconfig -p`` prints them too, byte-identical to
format_cache. We are deliberately stricter than glibc (it reads strings and tables past the end of the file), so the
converse does not hold and is not tested.

Seeded, so failures reproduce; the seed and the damaged offset are in every assertion message.
"""

from __future__ import annotations

import os
import random
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from nvc.host.ldcache import LdCache, LdCacheError, format_cache, parse_cache
from tests.test_ldcache import (
    ARM64,
    HWCAP_NAMES,
    HWCAPS_EXT,
    LDCONFIG,
    LEGACY_HWCAPS,
    build_cache,
    host_root_caches,  # noqa: F401  (session fixture shared with test_ldcache, used through getfixturevalue)
    ldconfig_print,
)

SEED = 0x1DC4C4E
#: Generous per-parse bound: the host cache parses in ~1 ms; a hang or quadratic blow-up shows up as seconds.
PER_PARSE_LIMIT_S = 0.5
HOST_CACHE = "/etc/ld.so.cache"


@pytest.fixture(scope="module")
def corpus(request: pytest.FixtureRequest) -> dict[str, bytes]:
    """Small real caches (every layout, with glibc-hwcaps), a hand-built one with every feature, and the host's.

    Without ldconfig only the hand-built cache (and the host's, if any) remain; the other cases skip.
    """
    try:
        real: dict[str, Path] = request.getfixturevalue("host_root_caches")
    except pytest.skip.Exception:
        real = {}
    caches = {f"ldconfig-{fmt}": path.read_bytes() for fmt, path in real.items()}
    caches["handmade-compat"] = build_cache(
        HWCAPS_EXT + ARM64 + LEGACY_HWCAPS, layout="compat", hwcaps=HWCAP_NAMES, extra_sections=((7, b"x"),)
    )
    if os.path.isfile(HOST_CACHE):
        caches["host"] = Path(HOST_CACHE).read_bytes()
    return caches


SMALL = ["ldconfig-new", "ldconfig-old", "ldconfig-compat", "handmade-compat"]


def check(data: bytes, context: str) -> LdCache | None:
    """Property 1 for one input; returns the parsed cache or None when it was (correctly) refused."""
    start = time.perf_counter()
    try:
        cache = parse_cache(data)
    except LdCacheError as exc:
        assert str(exc) and "\n" not in str(exc), context
        cache = None
    elapsed = time.perf_counter() - start
    assert elapsed < PER_PARSE_LIMIT_S, f"{context}: parse took {elapsed:.3f}s"
    if cache is not None:
        format_cache(cache, "fuzz")
    return cache


def truncation_points(size: int) -> Iterator[int]:
    """Every offset for small files; for a big one every offset of the first 4 KiB (header, first entries), the
    last 256 bytes (extension area), and a stride in between."""
    if size <= 8192:
        yield from range(size)
        return
    yield from range(4096)
    yield from range(4096, size - 256, 7)
    yield from range(size - 256, size)


@pytest.mark.parametrize("name", [*SMALL, "host"])
def test_truncated_everywhere(corpus: dict[str, bytes], name: str) -> None:
    if name not in corpus:
        pytest.skip(f"no {name} cache")
    data = corpus[name]
    assert check(data, f"{name} intact") is not None
    cases = 0
    for cut in truncation_points(len(data)):
        check(data[:cut], f"{name} truncated at {cut}")
        cases += 1
    assert cases >= min(len(data), 4096)


def mutations(data: bytes, rng: random.Random, count: int) -> Iterator[tuple[str, bytes]]:
    """Random damage: single bit flips, random bytes, and 1-4 bytes overwritten at once."""
    for _ in range(count):
        buf = bytearray(data)
        kind = rng.randrange(3)
        if kind == 0:
            pos = rng.randrange(len(buf))
            buf[pos] ^= 1 << rng.randrange(8)
            label = f"bit flip at {pos}"
        elif kind == 1:
            pos = rng.randrange(len(buf))
            buf[pos] = rng.randrange(256)
            label = f"byte at {pos}"
        else:
            positions = [rng.randrange(len(buf)) for _ in range(rng.randint(1, 4))]
            for pos in positions:
                buf[pos] = rng.randrange(256)
            label = f"bytes at {positions}"
        yield label, bytes(buf)


@pytest.mark.parametrize("name", [*SMALL, "host"])
def test_random_byte_damage(corpus: dict[str, bytes], name: str) -> None:
    if name not in corpus:
        pytest.skip(f"no {name} cache")
    rng = random.Random(SEED ^ zlib.crc32(name.encode()))
    count = 400 if name == "host" else 1500
    for label, damaged in mutations(corpus[name], rng, count):
        check(damaged, f"{name} seed={SEED:#x}: {label}")


EVIL_U32 = (0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFFF)


def evil_values(size: int) -> tuple[int, ...]:
    return (size - 1, size, size + 1, size + 4096, *EVIL_U32)


def offset_overwrites(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Every 4-aligned 32-bit field set to values at or past the end of the file (counts, offsets, sizes, indexes),
    and every 8-aligned 64-bit field given the glibc-hwcaps marker with an index past any array."""
    size = len(data)
    for offset in range(0, size - 3, 4):
        for value in evil_values(size):
            buf = bytearray(data)
            struct.pack_into("<I", buf, offset, value & 0xFFFFFFFF)
            yield f"u32 at {offset} = {value:#x}", bytes(buf)
    for offset in range(0, size - 7, 8):
        buf = bytearray(data)
        struct.pack_into("<Q", buf, offset, (1 << 62) | 0xFFFFFFFF)
        yield f"u64 at {offset} = hwcaps index 0xffffffff", bytes(buf)


@pytest.mark.parametrize("name", SMALL)
def test_offsets_past_end(corpus: dict[str, bytes], name: str) -> None:
    if name not in corpus:
        pytest.skip(f"no {name} cache")
    cases = 0
    for label, damaged in offset_overwrites(corpus[name]):
        check(damaged, f"{name}: {label}")
        cases += 1
    assert cases > 1000


def test_declared_sizes_do_not_drive_allocation() -> None:
    """A tiny file claiming 4 G entries / sections must be refused at once, not allocated or looped over."""
    small = build_cache(ARM64)
    for data, offset in ((small, 20), (build_cache(ARM64, layout="old"), 12)):
        damaged = bytearray(data)
        struct.pack_into("<I", damaged, offset, 0xFFFFFFFF)
        start = time.perf_counter()
        with pytest.raises(LdCacheError, match="past end of file"):
            parse_cache(bytes(damaged))
        assert time.perf_counter() - start < 0.05
    ext = struct.unpack_from("<I", small, 32)[0]
    damaged = bytearray(small)
    struct.pack_into("<I", damaged, ext + 4, 0xFFFFFFFF)
    with pytest.raises(LdCacheError, match="sections"):
        parse_cache(bytes(damaged))


def accepted_damage(corpus: dict[str, bytes]) -> Iterable[tuple[str, bytes]]:
    """Damaged small caches that parse_cache accepts, deduplicated, in a fixed order."""
    seen: set[bytes] = set()
    rng = random.Random(SEED)
    for name in SMALL:
        if name not in corpus:
            continue
        data = corpus[name]
        candidates = list(mutations(data, rng, 400)) + list(offset_overwrites(data))[::7]
        for label, damaged in candidates:
            if damaged in seen or damaged == data:
                continue
            try:
                parse_cache(damaged)
            except LdCacheError:
                continue
            seen.add(damaged)
            yield f"{name}: {label}", damaged


@pytest.mark.skipif(LDCONFIG is None, reason="glibc ldconfig not installed")
def test_accepted_damage_prints_like_ldconfig(corpus: dict[str, bytes], tmp_path: Path) -> None:
    """Whatever damaged cache we accept, the real ldconfig prints exactly as we do."""
    accepted = list(accepted_damage(corpus))
    sample = random.Random(SEED).sample(accepted, min(len(accepted), 400))
    assert len(sample) >= 200
    path = tmp_path / "damaged.cache"
    for label, damaged in sample:
        path.write_bytes(damaged)
        result = ldconfig_print(path)
        assert result.returncode == 0, f"{label}: we accept, ldconfig fails: {result.stderr!r}"
        mine = format_cache(parse_cache(damaged), str(path)).encode("utf-8", "surrogateescape")
        assert mine == result.stdout, f"{label}: output differs"


def test_overlapping_strings_cost_linear_time() -> None:
    """Thousands of entries pointing at different offsets of one long string: refused after linear work, where
    decoding every string would cost entries x length (tens of GB here)."""
    count, length = 40_000, 1 << 20
    table = 48 + 24 * count
    header = b"glibc-ld.so.cache1.1" + struct.pack("<IIB3xI3I", count, length + 1, 2, 0, 0, 0, 0)
    rows = b"".join(struct.pack("<iIIIQ", 0x0303, table + 20 * i, table + 20 * i + 1, 0, 0) for i in range(count))
    data = header + rows + b"a" * length + b"\0"
    start = time.perf_counter()
    with pytest.raises(LdCacheError, match="overlapping strings"):
        parse_cache(data)
    assert time.perf_counter() - start < 1.0
