"""nvc.sys.process: the prctl and madvise calls, for real in forked children (no mocks: the kernel decides)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest

from nvc.sys.process import populate_writable, private_writable_mappings


def _in_child(body) -> str:
    """Run ``body()`` in a forked child and return its result as text (its exception's, prefixed "error:")."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            try:
                result = str(body())
            except BaseException as exc:  # reported to the test, not lost with the child
                result = f"error: {type(exc).__name__}: {exc}"
            os.write(write, result.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


def test_the_mappings_are_this_processs_private_writable_ones():
    ranges = private_writable_mappings()
    assert ranges and all(0 < low < high for low, high in ranges)
    data = bytearray(b"x" * (1 << 16))  # lives in one of them
    import ctypes

    address = ctypes.addressof((ctypes.c_char * len(data)).from_buffer(data))
    assert any(low <= address < high for low, high in ranges)


def test_populating_copies_the_shared_pages_before_they_are_written_and_changes_nothing():
    """A child that populates first takes (almost) no copy-on-write faults when it then writes to what it shares
    with its parent, and sees the same values: the pages are copied, not cleared."""
    import ctypes
    import mmap

    # A private anonymous mapping of its own (a large bytearray may come from the heap in a long-lived process).
    shared = mmap.mmap(-1, 4 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    shared.write(os.urandom(4 << 20))
    address = ctypes.addressof(ctypes.c_char.from_buffer(shared))
    mapping = (address, address + len(shared))
    if _in_child(lambda: populate_writable([mapping])) == "0":
        pytest.skip("no MADV_POPULATE_WRITE here (Linux < 5.14, or filtered)")
    digest = hash(bytes(shared))

    def write_all(populate: bool):
        def body():
            if populate:
                assert populate_writable([mapping]) >= len(shared)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for offset in range(0, len(shared), 4096):
                shared[offset] = shared[offset]  # a write to each page, value unchanged
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            return f"{faults} {hash(bytes(shared)) == digest}"
        return body

    plain = _in_child(write_all(False))
    populated = _in_child(write_all(True))
    assert not plain.startswith("error") and not populated.startswith("error"), (plain, populated)
    plain_faults, plain_same = plain.split()
    populated_faults, populated_same = populated.split()
    assert plain_same == populated_same == "True"
    assert int(plain_faults) > 900  # 1024 shared pages written
    assert int(populated_faults) < int(plain_faults) // 10


def test_populating_stops_at_its_total_limit(monkeypatch):
    from nvc.sys import process

    monkeypatch.setattr(process, "_MAX_TOTAL", 2 << 20)
    ranges = private_writable_mappings()
    if sum(high - low for low, high in ranges) <= 3 << 20:
        pytest.skip("this process maps too little")
    assert 0 < int(_in_child(lambda: populate_writable(ranges))) <= 3 << 20


def test_populating_stops_when_asked():
    assert _in_child(lambda: populate_writable(private_writable_mappings(), stop=lambda: True)) == "0"


def test_a_huge_reservation_is_left_alone(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("00400000-00452000 r-xp 00000000 08:02 173521 /usr/bin/x\n"
                    "7f0000000000-7f0000100000 rw-p 00000000 00:00 0\n"
                    "7f1000000000-7f1100000000 rw-p 00000000 00:00 0\n"
                    "7f2000000000-7f2000001000 rw-s 00000000 00:05 1 /dev/zero\n")
    assert private_writable_mappings(str(maps)) == [(0x7F0000000000, 0x7F0000100000)]


def test_the_module_stays_import_cheap():
    """The helper preloads it; the FFI is loaded on first use, not at import."""
    out = subprocess.run([sys.executable, "-c", "import sys, nvc.sys.process; print('_cffi_backend' in sys.modules)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
