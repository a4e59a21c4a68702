"""Constants of glibc's ld.so.cache format and the flag -> text tables ``ldconfig -p`` prints.

Everything here mirrors glibc (``elf/dl-cache.h``, ``sysdeps/generic/ldconfig.h``, ``elf/cache.c``) as shipped in
glibc 2.36, the version our byte-identical tests run against. The text tables follow what that ldconfig binary
actually prints, which is not always what the headers suggest: for example the LoongArch classes exist in the
headers but 2.36's ``print_entry`` has no case for them, so they print as a decimal number (``,4352``).

Only constants and tiny pure functions live here, so ``import nvc.host.ldcache`` stays cheap.
"""

from __future__ import annotations

import os

# --- Strings --------------------------------------------------------------------------------------------------------

#: Cache strings are raw bytes (paths). We decode them with UTF-8 + surrogateescape, the codec ``os.fsdecode`` uses
#: on Linux, so any byte sequence round-trips: ``text.encode(STRING_ENCODING, STRING_ERRORS)`` gives back exactly
#: the bytes ldconfig would print.
STRING_ENCODING = "utf-8"
STRING_ERRORS = "surrogateescape"

# --- Magic strings -------------------------------------------------------------------------------------------------

#: The libc5-era ("old") format: 11 magic bytes, one pad byte, ``uint32 nlibs``, then 12-byte entries.
OLD_MAGIC = b"ld.so-1.7.0"
OLD_HEADER_SIZE = 16
OLD_ENTRY_SIZE = 12

#: The glibc 2.2+ ("new") format: magic + version, 48-byte header, then 24-byte entries.
NEW_MAGIC = b"glibc-ld.so.cache"
NEW_VERSION = b"1.1"
NEW_MAGIC_VERSION = NEW_MAGIC + NEW_VERSION
NEW_HEADER_SIZE = 48
NEW_ENTRY_SIZE = 24

#: In a "compat" file the new cache starts at the first 8-aligned offset after the old entry table
#: (``ALIGN_CACHE`` uses the alignment of ``struct cache_file_new``, 8 on every 64-bit target).
NEW_CACHE_ALIGN = 8

# Values of the endianness byte (``cache_file_new.flags & 3``).
ENDIAN_UNSET = 0
ENDIAN_INVALID = 1
ENDIAN_LITTLE = 2
ENDIAN_BIG = 3
ENDIAN_MASK = 3

# --- Extension area ------------------------------------------------------------------------------------------------

EXTENSION_MAGIC = 0xEAA42174
EXTENSION_HEADER_SIZE = 8  # uint32 magic, uint32 count
EXTENSION_SECTION_SIZE = 16  # uint32 tag, flags, offset, size
EXTENSION_TAG_GENERATOR = 0
EXTENSION_TAG_GLIBC_HWCAPS = 1

#: Bit 62 of an entry's ``hwcap`` marks a glibc-hwcaps subdirectory entry; its low 32 bits index the tag-1 array.
DL_CACHE_HWCAP_EXTENSION = 1 << 62
#: Bits 32..41 may carry an ISA level and are ignored when testing for the extension bit.
DL_CACHE_HWCAP_ISA_LEVEL_MASK = (1 << 10) - 1

# --- Entry flags (sysdeps/generic/ldconfig.h) ---------------------------------------------------------------------

FLAG_TYPE_MASK = 0x00FF
FLAG_LIBC4 = 0x0000
FLAG_ELF = 0x0001
FLAG_ELF_LIBC5 = 0x0002
FLAG_ELF_LIBC6 = 0x0003

#: glibc calls this FLAG_REQUIRED_MASK: the ABI class of the library (second byte of ``flags``).
FLAG_ARCH_MASK = 0xFF00
FLAG_REQUIRED_MASK = FLAG_ARCH_MASK

ARCH_I386 = 0x0000  # also "32-bit default" for every other architecture
ARCH_SPARC64 = 0x0100
ARCH_IA64 = 0x0200
ARCH_X8664 = 0x0300
ARCH_S390X = 0x0400
ARCH_PPC64 = 0x0500
ARCH_MIPS64_N32 = 0x0600
ARCH_MIPS64_N64 = 0x0700
ARCH_X32 = 0x0800
ARCH_ARMHF = 0x0900
ARCH_AARCH64 = 0x0A00
ARCH_ARMSF = 0x0B00
ARCH_MIPS32_NAN2008 = 0x0C00
ARCH_MIPS64_N32_NAN2008 = 0x0D00
ARCH_MIPS64_N64_NAN2008 = 0x0E00
ARCH_RISCV_SOFT = 0x0F00
ARCH_RISCV_DOUBLE = 0x1000
ARCH_LARCH_SOFT = 0x1100
ARCH_LARCH_DOUBLE = 0x1200

#: Text ``ldconfig -p`` prints for ``flags & FLAG_TYPE_MASK``; any other value prints as "unknown".
TYPE_TEXT: dict[int, str] = {
    FLAG_LIBC4: "libc4",
    FLAG_ELF: "ELF",
    FLAG_ELF_LIBC5: "libc5",
    FLAG_ELF_LIBC6: "libc6",
}
UNKNOWN_TYPE_TEXT = "unknown"

#: Suffix ``ldconfig -p`` (glibc 2.36) prints for ``flags & FLAG_ARCH_MASK``. Class 0 prints nothing; a class not
#: listed here (including LoongArch, which 2.36's printer does not know) prints as ``,<decimal value>``.
ARCH_TEXT: dict[int, str] = {
    ARCH_I386: "",
    ARCH_SPARC64: ",64bit",
    ARCH_IA64: ",IA-64",
    ARCH_X8664: ",x86-64",
    ARCH_S390X: ",64bit",
    ARCH_PPC64: ",64bit",
    ARCH_MIPS64_N32: ",N32",
    ARCH_MIPS64_N64: ",64bit",
    ARCH_X32: ",x32",
    ARCH_ARMHF: ",hard-float",
    ARCH_AARCH64: ",AArch64",
    ARCH_ARMSF: ",soft-float",
    ARCH_MIPS32_NAN2008: ",nan2008",
    ARCH_MIPS64_N32_NAN2008: ",N32,nan2008",
    ARCH_MIPS64_N64_NAN2008: ",64bit,nan2008",
    ARCH_RISCV_SOFT: ",soft-float",
    ARCH_RISCV_DOUBLE: ",double-float",
}

#: Which ABI classes NVIDIA's tool treats as the host's native and 32-bit compat libraries, by ``uname -m``.
#: libnvidia-container only knows x86_64, aarch64 and ppc64le; the rest follow glibc's default class per machine.
_HOST_CLASSES: dict[str, tuple[int, int | None]] = {
    "x86_64": (ARCH_X8664, ARCH_I386),
    "amd64": (ARCH_X8664, ARCH_I386),
    "aarch64": (ARCH_AARCH64, ARCH_ARMHF),
    "arm64": (ARCH_AARCH64, ARCH_ARMHF),
    "ppc64le": (ARCH_PPC64, None),
    "ppc64": (ARCH_PPC64, None),
    "s390x": (ARCH_S390X, None),
    "riscv64": (ARCH_RISCV_DOUBLE, None),
    "loongarch64": (ARCH_LARCH_DOUBLE, None),
}


def type_text(flags: int) -> str:
    """What ``ldconfig -p`` prints for the library type in ``flags`` ("libc6", "ELF", ..., or "unknown")."""
    return TYPE_TEXT.get(flags & FLAG_TYPE_MASK, UNKNOWN_TYPE_TEXT)


def arch_text(flags: int) -> str:
    """What ``ldconfig -p`` prints after the type for the ABI class in ``flags`` (e.g. ",x86-64", "" for i386)."""
    arch = flags & FLAG_ARCH_MASK
    text = ARCH_TEXT.get(arch)
    return f",{arch}" if text is None else text


def is_hwcaps_extension(hwcap: int) -> bool:
    """True when an entry's ``hwcap`` says "glibc-hwcaps subdirectory", as glibc's ``dl_cache_hwcap_extension``.

    Only bit 62 may be set in the upper half, apart from the ISA-level bits; anything else is a legacy hwcap mask.
    """
    return ((hwcap >> 32) & ~DL_CACHE_HWCAP_ISA_LEVEL_MASK) == (DL_CACHE_HWCAP_EXTENSION >> 32)


def host_arch_classes(machine: str | None = None) -> tuple[int, int | None]:
    """(native 64-bit class, 32-bit compat class or None) for ``machine`` (default: this host's ``uname -m``).

    Driver discovery keeps only cache entries of these classes, as libnvidia-container does; the 32-bit class
    feeds the ``compat32`` library list. Raises ValueError for a machine NVIDIA ships no driver for.
    """
    if machine is None:
        machine = os.uname().machine
    try:
        return _HOST_CLASSES[machine.lower()]
    except KeyError:
        raise ValueError(f"unsupported architecture {machine!r} for ld.so.cache lookups") from None
