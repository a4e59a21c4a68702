"""ELF facts about driver files: identity (class, machine) cheaply, notes and dependencies through pyelftools.

Two different costs on purpose. Every library candidate is checked against its ld.so.cache entry (a 32-bit file
listed as x86-64 is refused), so that check reads 20 header bytes with ``struct``. The rarer questions NVIDIA asks
— does ``libnvidia-tls`` carry the GNU ABI note for Linux 2.3.99, does a non-GLVND GL library depend on
``libnvidia-glcore`` — need sections and the dynamic table, and pay for importing pyelftools only when asked.
"""

from __future__ import annotations

import _struct as struct  # struct.py only re-exports _struct: one module fewer to import per start
import os

from nvc.record import record

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Callable

ELFCLASS32 = 1
ELFCLASS64 = 2
EM_386 = 3
EM_ARM = 40
EM_X86_64 = 62
EM_AARCH64 = 183
EM_PPC64 = 21

# ld.so.cache arch class (flags & 0xff00) -> (ELF class, e_machine) a file in that list must have.
_CACHE_CLASS_IDENTITY: dict[int, tuple[int, int]] = {
    0x0000: (ELFCLASS32, EM_386),
    0x0300: (ELFCLASS64, EM_X86_64),
    0x0500: (ELFCLASS64, EM_PPC64),
    0x0900: (ELFCLASS32, EM_ARM),
    0x0A00: (ELFCLASS64, EM_AARCH64),
}


@record(frozen=True)
class ElfIdentity:
    elf_class: int  # ELFCLASS32 / ELFCLASS64
    little_endian: bool
    machine: int  # e_machine


def read_identity(path: str) -> ElfIdentity | None:
    """Class, byte order and machine of an ELF file; None if it is not ELF or cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    return _identity_from(head)


def _identity_from(head: bytes) -> ElfIdentity | None:
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[4] not in (ELFCLASS32, ELFCLASS64) or head[5] not in (1, 2):
        return None
    little = head[5] == 1
    (machine,) = struct.unpack_from("<H" if little else ">H", head, 18)
    return ElfIdentity(elf_class=head[4], little_endian=little, machine=machine)


def read_identity_and_soname(path: str) -> tuple[ElfIdentity | None, str | None]:
    """:func:`read_identity` and :func:`read_soname` with one open and one read of the header, by ``pread``:
    the hot path asks both of every injected library (half its in-process ld.so.cache update went to these)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None, None
    try:
        head = os.pread(fd, 64, 0)
    except OSError:
        os.close(fd)
        return None, None
    try:
        return _identity_from(head[:20]), _soname_from(lambda size, offset: os.pread(fd, size, offset), head)
    finally:
        os.close(fd)


def matches_cache_class(identity: ElfIdentity | None, arch_class: int) -> bool:
    """Whether a file may stand in the ld.so.cache list of ``arch_class`` (unknown classes are not judged)."""
    if identity is None:
        return False
    expected = _CACHE_CLASS_IDENTITY.get(arch_class)
    if expected is None:
        return True
    return (identity.elf_class, identity.machine) == expected


@record(frozen=True)
class ElfDetails:
    soname: str | None
    needed: tuple[str, ...]
    abi_note: tuple[int, int, int, int] | None  # (os, major, minor, subminor) from NT_GNU_ABI_TAG


def read_details(path: str) -> ElfDetails | None:
    """SONAME, DT_NEEDED and the GNU ABI tag of an ELF file (None when it is not a readable ELF file)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            soname = None
            needed: list[str] = []
            abi: tuple[int, int, int, int] | None = None
            for section in elf.iter_sections():
                if isinstance(section, DynamicSection):
                    for tag in section.iter_tags():
                        if tag.entry.d_tag == "DT_SONAME":
                            soname = tag.soname
                        elif tag.entry.d_tag == "DT_NEEDED":
                            needed.append(tag.needed)
                elif section["sh_type"] == "SHT_NOTE":
                    for note in section.iter_notes():
                        if note["n_type"] == "NT_GNU_ABI_TAG" and note["n_name"] == "GNU":
                            desc = note["n_desc"]
                            abi = (_abi_os_code(desc["abi_os"]), desc["abi_major"], desc["abi_minor"],
                                   desc["abi_tiny"])
            return ElfDetails(soname=soname, needed=tuple(needed), abi_note=abi)
    except (OSError, ELFError, ValueError, KeyError, AttributeError, struct.error):
        return None


def _abi_os_code(value: object) -> int:
    # pyelftools describes the OS as "ELF_NOTE_OS_LINUX" etc.; NVIDIA compares against Linux = 0.
    names = {"ELF_NOTE_OS_LINUX": 0, "ELF_NOTE_OS_GNU": 1, "ELF_NOTE_OS_SOLARIS2": 2, "ELF_NOTE_OS_FREEBSD": 3}
    if isinstance(value, int):
        return value
    return names.get(str(value), -1)


def has_linux_abi(path: str, version: tuple[int, int, int]) -> bool:
    """True if the file's GNU ABI note says Linux with exactly ``version`` (NVIDIA's libnvidia-tls test)."""
    details = read_details(path)
    return details is not None and details.abi_note == (0, *version)


def depends_on(path: str, prefix: str) -> bool:
    """True if a DT_NEEDED entry of the file starts with ``prefix``."""
    details = read_details(path)
    return details is not None and any(dep.startswith(prefix) for dep in details.needed)


_PT_LOAD = 1
_PT_DYNAMIC = 2
_DT_NULL = 0
_DT_STRTAB = 5
_DT_SONAME = 14
_MAX_PHNUM = 512
_MAX_DYNAMIC = 1 << 20


def read_soname(path: str) -> str | None:
    """DT_SONAME of a shared library, read with ``struct`` from the program headers (no pyelftools).

    This runs for every injected library on the hot path (to name the links and cache entries ldconfig would
    make), so it reads only the ELF header, the program headers, the dynamic table and one string.
    """
    try:
        with open(path, "rb") as f:

            def read_at(size: int, offset: int) -> bytes:
                f.seek(offset)
                return f.read(size)

            return _soname_from(read_at, f.read(64))
    except OSError:
        return None


def _soname_from(read_at: Callable[[int, int], bytes], head: bytes) -> str | None:
    """DT_SONAME from the first 64 bytes of a file and ``read_at(size, offset)`` for the rest; None when absent or
    not ELF."""
    try:
        if len(head) < 52 or head[:4] != b"\x7fELF" or head[4] not in (ELFCLASS32, ELFCLASS64):
            return None
        end = "<" if head[5] == 1 else ">"
        is64 = head[4] == ELFCLASS64
        if is64:
            phoff, = struct.unpack_from(end + "Q", head, 0x20)
            phentsize, phnum = struct.unpack_from(end + "HH", head, 0x36)
            ph_fmt, ph_size, dyn_fmt = end + "IIQQQQQQ", 56, end + "qQ"
        else:
            phoff, = struct.unpack_from(end + "I", head, 0x1C)
            phentsize, phnum = struct.unpack_from(end + "HH", head, 0x2A)
            ph_fmt, ph_size, dyn_fmt = end + "IIIIIIII", 32, end + "iI"
        if phentsize < ph_size or phnum > _MAX_PHNUM:
            return None
        table = read_at(phentsize * phnum, phoff)
        loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
        dynamic: tuple[int, int] | None = None  # (offset, size)
        for i in range(phnum):
            if (i + 1) * phentsize > len(table):
                return None
            fields = struct.unpack_from(ph_fmt, table, i * phentsize)
            if is64:
                p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = fields[:6]
            else:
                p_type, p_offset, p_vaddr, _paddr, p_filesz = fields[:5]
            if p_type == _PT_LOAD:
                loads.append((p_vaddr, p_offset, p_filesz))
            elif p_type == _PT_DYNAMIC:
                dynamic = (p_offset, p_filesz)
        if dynamic is None or dynamic[1] > _MAX_DYNAMIC:
            return None
        dyn = read_at(dynamic[1], dynamic[0])
        strtab = soname = None
        step = struct.calcsize(dyn_fmt)
        for pos in range(0, len(dyn) - step + 1, step):
            tag, value = struct.unpack_from(dyn_fmt, dyn, pos)
            if tag == _DT_NULL:
                break
            if tag == _DT_STRTAB:
                strtab = value
            elif tag == _DT_SONAME:
                soname = value
        if strtab is None or soname is None:
            return None
        for vaddr, offset, filesz in loads:
            if vaddr <= strtab < vaddr + filesz:
                raw = read_at(256, offset + (strtab - vaddr) + soname).split(b"\0", 1)
                return raw[0].decode("utf-8", "surrogateescape") if len(raw) == 2 and raw[0] else None
        return None
    except (OSError, struct.error, ValueError, OverflowError):
        return None


def cache_arch_class(identity: ElfIdentity | None) -> int | None:
    """The ld.so.cache ABI class for a file's (ELF class, machine), None when we don't know it."""
    if identity is None:
        return None
    for arch, ident in _CACHE_CLASS_IDENTITY.items():
        if ident == (identity.elf_class, identity.machine):
            return arch
    return None
