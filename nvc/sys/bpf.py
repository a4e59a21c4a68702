"""The bpf(2) system call (cffi, ABI mode) and the eBPF instruction encoding, knowing nothing about NVIDIA.

On cgroup v2 the only way to change which device nodes a cgroup may open is a ``BPF_PROG_TYPE_CGROUP_DEVICE``
program, so this module offers just what that needs: load a program, attach / detach / replace it on a cgroup,
list what is attached, and read an attached program's instructions back. Device-rule semantics (what to emit)
live in :mod:`nvc.apply.cgroups`.

Why cffi + ``syscall()`` and no library: glibc has no ``bpf()`` wrapper, and libbpf is a C dependency we would have
to find on every host. The ``struct nvc_bpf_*`` declarations live with the rest in ``nvc.sys._cdef`` and come from
the one pre-built FFI of :mod:`nvc.sys._ffi`, loaded on the first call (nothing happens at import time).

Errors are ``OSError`` with the kernel's errno (``EPERM`` without CAP_SYS_ADMIN/CAP_BPF, ``EINVAL`` for a kernel
that lacks a feature, ``EACCES`` when the verifier rejects a program: then the verifier log is in the message).
"""

from __future__ import annotations

import _struct as struct  # struct.py only re-exports _struct: one module fewer to import per start
import errno as _errno
import os
import sys

from nvc.record import record

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the OCI hook milliseconds at start-up
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any

# --- bpf(2) commands, program/attach types and flags (include/uapi/linux/bpf.h) -----------------------------------
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_QUERY = 16

BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6  # enum bpf_attach_type

BPF_F_ALLOW_OVERRIDE = 1 << 0
BPF_F_ALLOW_MULTI = 1 << 1
BPF_F_REPLACE = 1 << 2
BPF_F_QUERY_EFFECTIVE = 1 << 0

_COMMAND_NAMES = {
    BPF_PROG_LOAD: "BPF_PROG_LOAD",
    BPF_PROG_ATTACH: "BPF_PROG_ATTACH",
    BPF_PROG_DETACH: "BPF_PROG_DETACH",
    BPF_PROG_GET_FD_BY_ID: "BPF_PROG_GET_FD_BY_ID",
    BPF_OBJ_GET_INFO_BY_FD: "BPF_OBJ_GET_INFO_BY_FD",
    BPF_PROG_QUERY: "BPF_PROG_QUERY",
}

# --- instruction encoding (Documentation/bpf/standardization/instruction-set.rst) ----------------------------------
# class (low 3 bits of the opcode)
BPF_LD, BPF_LDX, BPF_ST, BPF_STX, BPF_ALU, BPF_JMP, BPF_JMP32, BPF_ALU64 = range(8)
# load/store size and mode
BPF_W, BPF_H, BPF_B, BPF_DW = 0x00, 0x08, 0x10, 0x18
BPF_IMM, BPF_MEM = 0x00, 0x60
# source operand: 32-bit immediate or source register
BPF_K, BPF_X = 0x00, 0x08
# ALU operations
BPF_ADD, BPF_SUB, BPF_MUL, BPF_DIV, BPF_OR, BPF_AND, BPF_LSH, BPF_RSH = 0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70
BPF_NEG, BPF_MOD, BPF_XOR, BPF_MOV, BPF_ARSH, BPF_END = 0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0
# jump operations
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET, BPF_JNE = 0x00, 0x10, 0x20, 0x30, 0x40, 0x50
BPF_JSGT, BPF_JSGE, BPF_CALL, BPF_EXIT = 0x60, 0x70, 0x80, 0x90
BPF_JLT, BPF_JLE, BPF_JSLT, BPF_JSLE = 0xA0, 0xB0, 0xC0, 0xD0

R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)

INSN_SIZE = 8
_INSN = struct.Struct("=BBhi")  # code, regs (dst:4, src:4 — order by host endianness), off, imm
_LITTLE = sys.byteorder == "little"

_ALU_NAMES = {
    BPF_ADD: "+=", BPF_SUB: "-=", BPF_MUL: "*=", BPF_DIV: "/=", BPF_OR: "|=", BPF_AND: "&=", BPF_LSH: "<<=",
    BPF_RSH: ">>=", BPF_MOD: "%=", BPF_XOR: "^=", BPF_MOV: "=", BPF_ARSH: "s>>=",
}  # fmt: skip
_JMP_NAMES = {
    BPF_JEQ: "==", BPF_JGT: ">", BPF_JGE: ">=", BPF_JSET: "&", BPF_JNE: "!=", BPF_JSGT: "s>", BPF_JSGE: "s>=",
    BPF_JLT: "<", BPF_JLE: "<=", BPF_JSLT: "s<", BPF_JSLE: "s<=",
}  # fmt: skip
_SIZE_NAMES = {BPF_W: "u32", BPF_H: "u16", BPF_B: "u8", BPF_DW: "u64"}


@record(frozen=True)
class Insn:
    """One 8-byte eBPF instruction (``struct bpf_insn``). ``str()`` gives the kernel verifier's notation."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    @property
    def cls(self) -> int:
        return self.code & 0x07

    @property
    def op(self) -> int:
        return self.code & 0xF0

    def encode(self) -> bytes:
        regs = (self.src << 4 | self.dst) if _LITTLE else (self.dst << 4 | self.src)
        return _INSN.pack(self.code, regs, self.off, self.imm)

    def __str__(self) -> str:
        return disassemble_one(self)


def encode(insns: Iterable[Insn]) -> bytes:
    """The program text the kernel takes (an array of ``struct bpf_insn``)."""
    return b"".join(i.encode() for i in insns)


def decode(text: bytes) -> list[Insn]:
    """Split program text (e.g. an attached program's ``xlated_prog_insns``) back into instructions."""
    if len(text) % INSN_SIZE:
        raise ValueError(f"BPF program text is {len(text)} bytes, not a multiple of {INSN_SIZE}")
    out = []
    for code, regs, off, imm in _INSN.iter_unpack(text):
        dst, src = (regs & 0x0F, regs >> 4) if _LITTLE else (regs >> 4, regs & 0x0F)
        out.append(Insn(code, dst, src, off, imm))
    return out


# Builders for the handful of instructions a device filter needs (names follow the kernel's filter.h macros).
def ldx_mem(size: int, dst: int, src: int, off: int) -> Insn:
    """``dst = *(size *)(src + off)``"""
    return Insn(BPF_LDX | size | BPF_MEM, dst, src, off, 0)


def alu32_imm(op: int, dst: int, imm: int) -> Insn:
    """``w_dst op= imm`` (32-bit: the upper half of dst is zeroed)."""
    return Insn(BPF_ALU | op | BPF_K, dst, 0, 0, imm)


def alu64_imm(op: int, dst: int, imm: int) -> Insn:
    return Insn(BPF_ALU64 | op | BPF_K, dst, 0, 0, imm)


def mov32_imm(dst: int, imm: int) -> Insn:
    return alu32_imm(BPF_MOV, dst, imm)


def jmp_imm(op: int, dst: int, imm: int, off: int) -> Insn:
    """``if dst op imm goto pc + 1 + off`` (64-bit compare; ``imm`` is sign-extended)."""
    return Insn(BPF_JMP | op | BPF_K, dst, 0, off, imm)


def jmp_reg(op: int, dst: int, src: int, off: int) -> Insn:
    return Insn(BPF_JMP | op | BPF_X, dst, src, off, 0)


def ja(off: int) -> Insn:
    return Insn(BPF_JMP | BPF_JA, 0, 0, off, 0)


def exit_insn() -> Insn:
    return Insn(BPF_JMP | BPF_EXIT)


def is_call(insn: Insn) -> bool:
    """Helper, kfunc, bpf-to-bpf and tail calls: their immediates are rewritten by the verifier, so a program that
    contains one cannot be reloaded from its translated text."""
    return insn.cls in (BPF_JMP, BPF_JMP32) and insn.op == BPF_CALL


def is_ld_imm64(insn: Insn) -> bool:
    """The two-slot 64-bit immediate load (its second slot has code 0)."""
    return insn.code == (BPF_LD | BPF_DW | BPF_IMM)


def disassemble_one(insn: Insn) -> str:
    """Verifier-style text for one instruction; unknown encodings are shown raw rather than guessed at."""
    cls, op = insn.cls, insn.op
    d, s = f"r{insn.dst}", f"r{insn.src}"
    if cls in (BPF_ALU, BPF_ALU64) and op in _ALU_NAMES:
        prefix = "w" if cls == BPF_ALU else "r"
        rhs = f"{prefix}{insn.src}" if insn.code & BPF_X else str(insn.imm)
        return f"{prefix}{insn.dst} {_ALU_NAMES[op]} {rhs}"
    if cls == BPF_LDX and insn.code & 0xE0 == BPF_MEM:
        return f"{d} = *({_SIZE_NAMES[insn.code & 0x18]} *)({s} {insn.off:+d})"
    if cls in (BPF_JMP, BPF_JMP32):
        if op == BPF_EXIT:
            return "exit"
        if op == BPF_JA:
            return f"goto pc{insn.off:+d}"
        if op == BPF_CALL:
            return f"call {insn.imm}"
        if op in _JMP_NAMES:
            prefix = "w" if cls == BPF_JMP32 else "r"
            rhs = f"{prefix}{insn.src}" if insn.code & BPF_X else str(insn.imm)
            return f"if {prefix}{insn.dst} {_JMP_NAMES[op]} {rhs} goto pc{insn.off:+d}"
    if is_ld_imm64(insn):
        return f"{d} = {insn.imm} ll (src {insn.src})"
    return f"(code {insn.code:#04x} dst r{insn.dst} src r{insn.src} off {insn.off} imm {insn.imm})"


def disassemble(insns: Sequence[Insn]) -> list[str]:
    """``"  N: text"`` lines, as ``bpftool prog dump xlated`` would show them."""
    return [f"{n:3d}: {disassemble_one(i)}" for n, i in enumerate(insns)]


# --- the system call ------------------------------------------------------------------------------------------------

# bpf(2) predates the unified syscall table, so its number differs per architecture (asm/unistd*.h).
_SYS_BPF = {
    "x86_64": 321, "amd64": 321, "i386": 357, "i686": 357, "aarch64": 280, "arm64": 280, "riscv64": 280,
    "armv7l": 386, "ppc64le": 361, "ppc64": 361, "s390x": 351,
}  # fmt: skip


def _libc() -> tuple[Any, Any]:
    """``(ffi, lib)``: the FFI shared with the rest of ``nvc.sys`` (declarations in ``nvc.sys._cdef``)."""
    from nvc.sys._ffi import libc

    return libc()


def _sys_bpf_number() -> int:
    machine = os.uname().machine.lower()
    try:
        return _SYS_BPF[machine]
    except KeyError:
        raise OSError(_errno.ENOSYS, f"bpf: unsupported architecture {machine}") from None


def _bpf(cmd: int, attr: Any, detail: str = "") -> int:
    """``syscall(SYS_bpf, cmd, attr, sizeof *attr)``; raises ``OSError`` naming the command on failure."""
    ffi, lib = _libc()
    ffi.errno = 0
    ret = int(
        lib.syscall(
            ffi.cast("long", _sys_bpf_number()),
            ffi.cast("long", cmd),
            attr,
            ffi.cast("long", ffi.sizeof(attr[0])),
        )
    )
    if ret < 0:
        err = ffi.errno
        name = _COMMAND_NAMES.get(cmd, str(cmd))
        raise OSError(err, f"bpf({name}) failed: {os.strerror(err)}{detail}")
    return ret


def prog_load(
    prog_type: int,
    insns: Sequence[Insn],
    *,
    license: str = "GPL",
    name: str = "",
    expected_attach_type: int = 0,
    log_size: int = 1 << 20,
) -> int:
    """Load a program; return its fd (the caller closes it). On rejection the verifier log is in the error.

    The first attempt runs without a log (cheap); only a failure is retried with ``log_level=1`` so the message says
    *why*. RLIMIT_MEMLOCK is raised once on EPERM, as kernels before 5.11 charge BPF memory to it.
    """
    ffi, _ = _libc()
    text = encode(insns)
    buf = ffi.from_buffer(text)
    lic = ffi.new("char[]", license.encode())
    attr = ffi.new("struct nvc_bpf_prog_load_attr *")
    attr.prog_type = prog_type
    attr.insn_cnt = len(text) // INSN_SIZE
    attr.insns = int(ffi.cast("uintptr_t", buf))
    attr.license = int(ffi.cast("uintptr_t", lic))
    attr.expected_attach_type = expected_attach_type
    encoded_name = name.encode()[:15]
    ffi.memmove(attr.prog_name, encoded_name, len(encoded_name))
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        if exc.errno == _errno.EPERM and _raise_memlock():
            try:
                return _bpf(BPF_PROG_LOAD, attr)
            except OSError as again:
                exc = again
        log = ffi.new("char[]", log_size)
        attr.log_level = 1
        attr.log_size = log_size
        attr.log_buf = int(ffi.cast("uintptr_t", log))
        try:
            return _bpf(BPF_PROG_LOAD, attr)  # a load that only failed for lack of memory may pass now
        except OSError as logged:
            text_log = ffi.string(log).decode(errors="replace").strip()
            detail = f": verifier log: {text_log}" if text_log else ""
            raise OSError(logged.errno, f"{logged.strerror}{detail}") from None


def _raise_memlock() -> bool:
    """Lift RLIMIT_MEMLOCK for this process (pre-5.11 kernels charge programs to it); True if it changed."""
    import resource

    try:
        soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        if soft == resource.RLIM_INFINITY:
            return False
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (OSError, ValueError):
        return False
    return True


def prog_attach(target_fd: int, prog_fd: int, attach_type: int, flags: int = 0, replace_fd: int = 0) -> None:
    """Attach ``prog_fd`` to the object (cgroup directory fd) ``target_fd``.

    With ``BPF_F_ALLOW_MULTI | BPF_F_REPLACE`` the program takes the place of ``replace_fd``'s program atomically;
    without ALLOW_MULTI, attaching with the cgroup's current flags replaces its single program.
    """
    attr = _new("struct nvc_bpf_attach_attr *")
    attr.target_fd = target_fd
    attr.attach_bpf_fd = prog_fd
    attr.attach_type = attach_type
    attr.attach_flags = flags
    attr.replace_bpf_fd = replace_fd
    _bpf(BPF_PROG_ATTACH, attr)


def prog_detach(target_fd: int, prog_fd: int, attach_type: int) -> None:
    attr = _new("struct nvc_bpf_attach_attr *")
    attr.target_fd = target_fd
    attr.attach_bpf_fd = prog_fd
    attr.attach_type = attach_type
    _bpf(BPF_PROG_DETACH, attr)


@record(frozen=True)
class ProgQuery:
    """What BPF_PROG_QUERY says about one attach point: the flags it was attached with and the program ids."""

    attach_flags: int
    prog_ids: tuple[int, ...]


def prog_query(target_fd: int, attach_type: int, *, effective: bool = False) -> ProgQuery:
    """Programs attached to ``target_fd`` (``effective``: also those inherited from ancestors that run here).

    The count is asked first, then the ids; a program attached in between gives ENOSPC with the new count, so the
    query is repeated a few times rather than trusting a fixed-size array.
    """
    ffi, _ = _libc()
    count = 0
    for _ in range(8):
        ids = ffi.new("uint32_t[]", max(count, 1))
        attr = ffi.new("struct nvc_bpf_query_attr *")
        attr.target_fd = target_fd
        attr.attach_type = attach_type
        attr.query_flags = BPF_F_QUERY_EFFECTIVE if effective else 0
        attr.prog_cnt = count
        attr.prog_ids = int(ffi.cast("uintptr_t", ids)) if count else 0
        try:
            _bpf(BPF_PROG_QUERY, attr)
        except OSError as exc:
            if exc.errno == _errno.ENOSPC:
                count = int(attr.prog_cnt)
                continue
            raise
        if int(attr.prog_cnt) > count:  # the sizing call (or a race): ask again with room for all of them
            count = int(attr.prog_cnt)
            continue
        return ProgQuery(int(attr.attach_flags), tuple(int(ids[i]) for i in range(int(attr.prog_cnt))))
    raise OSError(_errno.EAGAIN, "bpf(BPF_PROG_QUERY): the attached programs kept changing")


def prog_get_fd_by_id(prog_id: int) -> int:
    """An fd for an already loaded program (it stays loaded while the fd is open, even once detached)."""
    attr = _new("struct nvc_bpf_get_id_attr *")
    attr.id = prog_id
    return _bpf(BPF_PROG_GET_FD_BY_ID, attr, f" (program id {prog_id})")


@record(frozen=True)
class ProgInfo:
    """The parts of ``struct bpf_prog_info`` we use; ``insns`` is the verifier-translated text."""

    type: int
    id: int
    tag: bytes
    name: str
    insns: tuple[Insn, ...]


def prog_info(prog_fd: int) -> ProgInfo:
    """Read a program's type, id, name and translated instructions (two calls: sizes first, then the text)."""
    ffi, _ = _libc()
    info = ffi.new("struct nvc_bpf_prog_info *")
    attr = ffi.new("struct nvc_bpf_info_attr *")
    attr.bpf_fd = prog_fd
    attr.info_len = ffi.sizeof(info[0])
    attr.info = int(ffi.cast("uintptr_t", info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    length = int(info.xlated_prog_len)
    if not length:  # every loaded program has instructions: 0 means the kernel withholds them (no CAP_BPF)
        raise OSError(_errno.EPERM, "bpf(BPF_OBJ_GET_INFO_BY_FD): the kernel withheld the program text")
    buf = ffi.new("uint8_t[]", length)
    info2 = ffi.new("struct nvc_bpf_prog_info *")
    info2.xlated_prog_len = length
    info2.xlated_prog_insns = int(ffi.cast("uintptr_t", buf))
    attr.info_len = ffi.sizeof(info2[0])
    attr.info = int(ffi.cast("uintptr_t", info2))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    text = bytes(ffi.buffer(buf, min(length, int(info2.xlated_prog_len))))
    return ProgInfo(
        type=int(info.type),
        id=int(info.id),
        tag=bytes(ffi.buffer(info.tag)),
        name=ffi.string(info.name).decode(errors="replace"),
        insns=tuple(decode(text)),
    )


def _new(ctype: str) -> Any:
    ffi, _ = _libc()
    return ffi.new(ctype)
