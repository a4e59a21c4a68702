"""nvc.sys.process: the prctl and madvise calls, for real in forked children (no mocks: the kernel decides)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

from nvc.sys.process import populate_writable, private_writable_mappings


def _in_child(body) -> str:
    """Run ``body()`` in a forked child and return what it wrote (its result as text)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            os.write(write, str(body()).encode())
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
    shared = [bytearray(os.urandom(64)) for _ in range(20000)]  # ~2 MB of objects over many pages
    digest = hash(tuple(bytes(b) for b in shared))

    def write_all(populate: bool):
        def body():
            if populate:
                assert populate_writable(private_writable_mappings()) > len(shared) * 64
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for item in shared:
                item[0] ^= 0  # a write to each object's page, value unchanged
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            return f"{faults} {hash(tuple(bytes(b) for b in shared)) == digest}"
        return body

    plain_faults, plain_same = _in_child(write_all(False)).split()
    populated_faults, populated_same = _in_child(write_all(True)).split()
    assert plain_same == populated_same == "True"
    assert int(plain_faults) > 300  # ~2 MB of shared pages written
    assert int(populated_faults) < int(plain_faults) // 10


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
