"""Process-attribute calls (prctl) for children we confine before exec."""

from __future__ import annotations

from nvc.sys._ffi import libc, raise_errno

PR_SET_NO_NEW_PRIVS = 38


def set_no_new_privs() -> None:
    """No setuid/file-capability gains across exec for this process and its children."""
    _ffi, lib = libc()
    if lib.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise_errno("prctl")


MADV_POPULATE_WRITE = 23  # Linux 5.14
#: A writable mapping larger than this is a reservation (a thread stack, an allocator's arena), not the state a
#: forked child goes on to write: populating it would only cost memory.
_MAX_MAPPING = 64 << 20
#: And no more than this in all (the helper's spares: ~9 MiB): a process that grew would otherwise copy it all.
_MAX_TOTAL = 32 << 20
_CHUNK = 1 << 20


def private_writable_mappings(maps: str = "/proc/self/maps") -> list[tuple[int, int]]:
    """(start, end) of this process's private writable mappings: its heaps, the interpreter's arenas, the
    libraries' data, the stack."""
    ranges = []
    with open(maps, encoding="ascii", errors="replace") as f:
        for line in f:
            fields = line.split(None, 2)
            if len(fields) > 1 and fields[1] == "rw-p":
                start, _, end = fields[0].partition("-")
                low, high = int(start, 16), int(end, 16)
                if 0 < high - low <= _MAX_MAPPING:
                    ranges.append((low, high))
    return ranges


def populate_writable(ranges: list[tuple[int, int]], stop=None) -> int:
    """Make these pages this process's own now (``madvise(MADV_POPULATE_WRITE)``, contents unchanged), rather than
    on the first write to each: a forked child shares its parent's pages copy-on-write, and a Python child writes
    to most pages it touches (reference counts), each write to a shared page costing a fault and a copy (2-3 µs
    a page on a VM). ``stop()``, asked before each megabyte, ends it early, as does reaching 32 MiB. Returns the
    bytes populated; 0 on a kernel without the advice (before 5.14)."""
    ffi, lib = libc()
    done = 0
    for low, high in ranges:
        for address in range(low, high, _CHUNK):
            if done >= _MAX_TOTAL or (stop is not None and stop()):
                return done
            length = min(_CHUNK, high - address)
            if lib.madvise(ffi.cast("void *", address), length, MADV_POPULATE_WRITE) != 0:
                if ffi.errno == 22 and not done:  # EINVAL: no such advice here
                    return 0
                break  # this mapping cannot be populated (gone, special): the next one
            done += length
    return done
