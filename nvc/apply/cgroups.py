"""Give a running container's cgroup access to device nodes: cgroup v1 ``devices.allow`` or a cgroup v2 eBPF program.

Bind-mounting ``/dev/nvidia0`` into a container is not enough: the runtime already restricted which device numbers
the container's cgroup may open, so every GPU node also needs a device-cgroup rule (``c 195:N rw``).

* **v1** (a ``devices`` line in ``/proc/PID/cgroup``): append one rule per ``write()`` to the container's
  ``devices.allow`` — the kernel parses exactly one rule per write.
* **v2** (only ``0::``): access is decided by ``BPF_PROG_TYPE_CGROUP_DEVICE`` programs, and *every* effective program
  must return 1, so attaching an extra "allow" program can only take access away. Like NVIDIA (and as runc/crun
  emit their filters), we read each program attached to the container's cgroup back from the kernel, prepend
  checks that return 1 for our rules, load the result and put it in the old program's place. The old program's
  jumps are relative, so they stay valid behind our prefix, and every device it allowed or denied stays so.
  A cgroup with no device program allows every device: we leave it alone (attaching our rules alone would turn
  it into deny-by-default).

Both paths write host paths: call :func:`detect_cgroup` and :func:`allow_devices` from the host mount namespace.
"""

from __future__ import annotations

import errno
import os

from nvc.errors import NvcError
from nvc.record import field, record
from nvc.sys.mount import unescape_mountinfo

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the OCI hook milliseconds at start-up
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from nvc.sys import bpf  # imported where used: a cgroup v1 host never loads the eBPF code

# struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; } (include/uapi/linux/bpf.h)
BPF_DEVCG_DEV_BLOCK = 1
BPF_DEVCG_DEV_CHAR = 2
BPF_DEVCG_ACC_MKNOD = 1
BPF_DEVCG_ACC_READ = 2
BPF_DEVCG_ACC_WRITE = 4
_ACCESS_BITS = {"m": BPF_DEVCG_ACC_MKNOD, "r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE}
_ALL_ACCESS = BPF_DEVCG_ACC_MKNOD | BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE
_TYPE_CODES = {"c": BPF_DEVCG_DEV_CHAR, "b": BPF_DEVCG_DEV_BLOCK}

# Registers the prefix loads the context into; r1 (the context pointer) is never written, because the program
# we prepend to starts by reading it.
def _context_registers() -> tuple[int, int, int, int]:
    """(type, access, major, minor) registers: r2..r5."""
    from nvc.sys import bpf

    return bpf.R2, bpf.R3, bpf.R4, bpf.R5

_MAX_MAJOR = (1 << 12) - 1  # Linux dev_t: 12-bit major, 20-bit minor; also keeps every immediate positive
_MAX_MINOR = (1 << 20) - 1

PROGRAM_NAME = "nvc_devices"
PROGRAM_LICENSE = "Apache-2.0"  # our programs call no helpers, so GPL-only ones do not matter


def _rule_number(text: str) -> bool:
    """``\\*|\\d+`` (a str pattern's \\d: any Unicode decimal digit, which int() also reads)."""
    return text == "*" or text.isdecimal()


@record(frozen=True)
class DeviceRule:
    """One device-cgroup rule, as in ``devices.allow``: ``c 195:0 rw``; ``None`` major/minor means ``*``."""

    type: str  # "c" | "b" | "a" (both)
    major: int | None
    minor: int | None
    access: str = "rw"  # a subset of "rwm"; NVIDIA grants "rw" (no mknod)

    def __post_init__(self) -> None:
        if self.type not in ("c", "b", "a"):
            raise ValueError(f"device rule type must be c, b or a, not {self.type!r}")
        for name, value, limit in (("major", self.major, _MAX_MAJOR), ("minor", self.minor, _MAX_MINOR)):
            if value is not None and not 0 <= value <= limit:
                raise ValueError(f"device {name} {value} out of range 0..{limit}")
        if not self.access or set(self.access) - set("rwm") or len(set(self.access)) != len(self.access):
            raise ValueError(f"device access must be a non-empty subset of 'rwm', not {self.access!r}")

    @classmethod
    def parse(cls, text: str) -> DeviceRule:
        r"""``"c 195:* rw"`` / ``"a"`` (the ``devices.list`` syntax) to a rule.

        Accepts exactly what ``re.fullmatch(r"\s*([abc])(?:\s+(\*|\d+):(\*|\d+)(?:\s+([rwm]+))?)?\s*", text)``
        does (``\s``/``\d`` as re reads them in a str pattern: str.isspace / str.isdecimal), without importing re
        on the hook path.
        """
        words = text.split()  # splits and strips on str.isspace, the set re's \s matches
        if not 1 <= len(words) <= 3 or words[0] not in ("a", "b", "c"):
            raise ValueError(f"invalid device rule {text!r}")
        major = minor = None
        access = "rwm"
        if len(words) > 1:
            major_text, colon, minor_text = words[1].partition(":")
            if not colon or not _rule_number(major_text) or not _rule_number(minor_text):
                raise ValueError(f"invalid device rule {text!r}")
            major = None if major_text == "*" else int(major_text)
            minor = None if minor_text == "*" else int(minor_text)
            if len(words) > 2:
                access = words[2]
                if access.strip("rwm"):
                    raise ValueError(f"invalid device rule {text!r}")
        return cls(words[0], major, minor, access)

    @property
    def access_mask(self) -> int:
        mask = 0
        for ch in self.access:
            mask |= _ACCESS_BITS[ch]
        return mask

    @property
    def is_wildcard(self) -> bool:
        """Matches every device with every access: the whole device cgroup opened."""
        return self.type == "a" and self.major is None and self.minor is None and self.access_mask == _ALL_ACCESS

    def __str__(self) -> str:
        major = "*" if self.major is None else str(self.major)
        minor = "*" if self.minor is None else str(self.minor)
        return f"{self.type} {major}:{minor} {self.access}"

    def v1_lines(self) -> tuple[str, ...]:
        """What to write to ``devices.allow``, one line per write.

        The v1 parser treats any line starting with ``a`` as "all devices, all access" and ignores the rest, so an
        ``a`` rule narrower than that is written as one ``c`` and one ``b`` rule.
        """
        if self.is_wildcard:
            return ("a",)
        if self.type == "a":
            return (str(DeviceRule("c", self.major, self.minor, self.access)),
                    str(DeviceRule("b", self.major, self.minor, self.access)))  # fmt: skip
        return (str(self),)

    def covers(self, other: DeviceRule) -> bool:
        """True if every access ``other`` allows is also allowed by this rule."""
        return (
            (self.type == "a" or self.type == other.type)
            and (self.major is None or self.major == other.major)
            and (self.minor is None or self.minor == other.minor)
            and other.access_mask & ~self.access_mask == 0
        )


@record(frozen=True)
class CgroupTarget:
    """The container's device cgroup: its version and its directory as seen from the host."""

    version: int  # 1 | 2
    path: str


# --- finding the cgroup ---------------------------------------------------------------------------------------------


@record(frozen=True)
class CgroupLine:
    """One line of ``/proc/PID/cgroup``: ``hierarchy-id:controllers:path`` (controllers empty for cgroup v2)."""

    hierarchy_id: int
    controllers: tuple[str, ...]
    path: str


@record(frozen=True)
class MountInfo:
    """The fields of a ``/proc/PID/mountinfo`` line we need (octal escapes such as ``\\040`` decoded)."""

    mount_id: int
    root: str  # the directory of the filesystem that is mounted here (for cgroups: the cgroup mounted)
    mount_point: str
    fstype: str
    source: str
    super_options: tuple[str, ...]


def parse_proc_cgroup(text: str) -> list[CgroupLine]:
    """Parse ``/proc/PID/cgroup``; the path may itself contain ``:``, so split at most twice."""
    lines = []
    for raw in text.splitlines():
        if not raw.strip():
            continue
        parts = raw.split(":", 2)
        if len(parts) != 3 or not parts[0].isdigit():
            raise ValueError(f"malformed cgroup entry: {raw!r}")
        controllers = tuple(c for c in parts[1].split(",") if c)
        lines.append(CgroupLine(int(parts[0]), controllers, parts[2]))
    return lines


def parse_mountinfo(text: str) -> list[MountInfo]:
    """Parse ``/proc/PID/mountinfo`` (proc(5)): the optional fields end at a lone ``-``."""
    mounts = []
    for raw in text.splitlines():
        if not raw.strip():
            continue
        fields = raw.split(" ")
        try:
            sep = fields.index("-", 6)
            mounts.append(
                MountInfo(
                    mount_id=int(fields[0]),
                    root=unescape_mountinfo(fields[3]),
                    mount_point=unescape_mountinfo(fields[4]),
                    fstype=fields[sep + 1],
                    source=unescape_mountinfo(fields[sep + 2]),
                    super_options=tuple(fields[sep + 3].split(",")) if len(fields) > sep + 3 else (),
                )
            )
        except (ValueError, IndexError):
            raise ValueError(f"malformed mountinfo entry: {raw!r}") from None
    return mounts


def _under(path: str, root: str) -> str | None:
    """``path`` relative to ``root`` ("" for root itself), or None when it is not inside it."""
    if root == "/":
        return path.lstrip("/")
    root = root.rstrip("/")
    if path == root:
        return ""
    if path.startswith(root + "/"):
        return path[len(root) + 1 :]
    return None


def resolve_cgroup_target(cgroup_text: str, mountinfo_text: str) -> CgroupTarget:
    """Combine the container's ``/proc/PID/cgroup`` with the host's mountinfo into the cgroup directory.

    A ``devices`` controller line means v1 (even on a hybrid host that also mounts cgroup2: the kernel checks the
    v1 controller, and the runtime put its rules there); only ``0::`` means v2. The line's path is relative to
    the cgroup namespace of whoever reads it — the host, here — and the mount's ``root`` field says which part
    of the hierarchy the mount shows, so that prefix is cut off before joining with the mount point.
    """
    try:
        lines = parse_proc_cgroup(cgroup_text)
        mounts = parse_mountinfo(mountinfo_text)
    except ValueError as exc:
        raise NvcError("container", str(exc)) from None

    devices = next((ln for ln in lines if "devices" in ln.controllers), None)
    if devices is not None:
        version, cg_path = 1, devices.path
        candidates = [m for m in mounts if m.fstype == "cgroup" and "devices" in m.super_options]
        what = "cgroup subsystem devices"
    else:
        unified = next((ln for ln in lines if ln.hierarchy_id == 0 and not ln.controllers), None)
        if unified is None:
            raise NvcError("container", "cgroup subsystem devices not found")
        version, cg_path = 2, unified.path
        candidates = [m for m in mounts if m.fstype == "cgroup2"]
        what = "cgroup2 filesystem"
    cg_path = cg_path.removesuffix(" (deleted)")
    if cg_path.startswith("/.."):
        raise NvcError("container", f"the container's cgroup {cg_path} is outside this process's cgroup namespace")
    if not candidates:
        raise NvcError("container", f"{what} not found in mountinfo")
    for mount in candidates:
        if mount.root.startswith("/.."):
            continue
        rel = _under(cg_path, mount.root)
        if rel is not None:
            return CgroupTarget(version, os.path.join(mount.mount_point, rel) if rel else mount.mount_point)
    roots = ", ".join(f"{m.mount_point} (root {m.root})" for m in candidates)
    raise NvcError("container", f"cgroup {cg_path} is not visible under any {what} mount: {roots}")


def detect_cgroup(pid: int, proc_root: str = "/proc", mountinfo_path: str | None = None) -> CgroupTarget:
    """Find the device cgroup of the container process ``pid``.

    The cgroup comes from the *container's* ``/proc/PID/cgroup``; the mount point from *our* (the host's)
    mountinfo by default, because that is the namespace we write from: the container's own mountinfo names
    mount points inside its namespace (or none at all, without a ``/sys/fs/cgroup`` mount), which mean nothing
    here. NVIDIA does the same (its runtime hook's parent's mountinfo, the container pid's cgroup file).
    """
    cgroup_file = os.path.join(proc_root, str(pid), "cgroup")
    mountinfo_file = mountinfo_path or os.path.join(proc_root, "self", "mountinfo")
    texts = []
    for path in (cgroup_file, mountinfo_file):
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                texts.append(f.read())
        except OSError as exc:
            raise NvcError("container", f"failed to read {path}: {exc.strerror}") from None
    return resolve_cgroup_target(texts[0], texts[1])


# --- the eBPF device filter -----------------------------------------------------------------------------------------


def _prologue() -> list[bpf.Insn]:
    """Load the context into r2..r5: type (low 16 bits of access_type), access (high 16 bits), major, minor.

    Full 32-bit loads plus shifts/masks rather than a 16-bit narrow load: endianness-independent, and accepted by
    every kernel that has device programs.
    """
    from nvc.sys import bpf

    r_type, r_access, r_major, r_minor = _context_registers()
    return [
        bpf.ldx_mem(bpf.BPF_W, r_type, bpf.R1, 0),
        bpf.alu32_imm(bpf.BPF_AND, r_type, 0xFFFF),
        bpf.ldx_mem(bpf.BPF_W, r_access, bpf.R1, 0),
        bpf.alu32_imm(bpf.BPF_RSH, r_access, 16),
        bpf.ldx_mem(bpf.BPF_W, r_major, bpf.R1, 4),
        bpf.ldx_mem(bpf.BPF_W, r_minor, bpf.R1, 8),
    ]


def _rule_block(rule: DeviceRule) -> list[bpf.Insn]:
    """``if (matches rule) return 1;`` — each failed check jumps to the first instruction after the block.

    The access check is one ``jset``: any requested bit outside the rule's access skips the block, so a rule
    granting ``rw`` does not grant ``mknod``. A ``rwm`` rule skips the check (as runc does).
    """
    from nvc.sys import bpf

    r_type, r_access, r_major, r_minor = _context_registers()
    checks: list[tuple[int, int, int]] = []  # (jump op, register, immediate)
    if rule.type != "a":
        checks.append((bpf.BPF_JNE, r_type, _TYPE_CODES[rule.type]))
    if rule.access_mask != _ALL_ACCESS:
        checks.append((bpf.BPF_JSET, r_access, 0xFFFF & ~rule.access_mask))
    if rule.major is not None:
        checks.append((bpf.BPF_JNE, r_major, rule.major))
    if rule.minor is not None:
        checks.append((bpf.BPF_JNE, r_minor, rule.minor))
    length = len(checks) + 2
    block = [bpf.jmp_imm(op, reg, imm, length - (i + 1)) for i, (op, reg, imm) in enumerate(checks)]
    block += [bpf.mov32_imm(bpf.R0, 1), bpf.exit_insn()]
    return block


def allow_rules_prefix(rules: Sequence[DeviceRule]) -> tuple[list[bpf.Insn], bool]:
    """The instructions that return 1 for any of ``rules`` and otherwise fall through past their end.

    Returns ``(insns, complete)``: ``complete`` is True when a rule allows everything, so nothing after the prefix
    could run (the verifier rejects unreachable code, so nothing may be appended then).
    """

    insns = _prologue()
    for rule in rules:
        insns += _rule_block(rule)
        if rule.is_wildcard:
            return insns, True
    return insns, False


def device_filter_program(rules: Sequence[DeviceRule]) -> list[bpf.Insn]:
    """A complete deny-by-default program allowing only ``rules`` (what a runtime attaches to a container)."""
    from nvc.sys import bpf

    insns, complete = allow_rules_prefix(rules)
    if not complete:
        insns += [bpf.mov32_imm(bpf.R0, 0), bpf.exit_insn()]
    return insns


def check_relocatable(insns: Sequence[bpf.Insn]) -> None:
    """Refuse programs that cannot be reloaded from their verifier-translated text.

    The kernel rewrites call immediates (helpers, kfuncs, subprograms) into addresses, and map references into
    map ids; such programs cannot be loaded again as dumped. Runtimes' device filters (runc, crun, systemd) use
    neither, so this only guards against a program we would silently break.
    """
    from nvc.sys import bpf

    for n, insn in enumerate(insns):
        if bpf.is_call(insn):
            raise ValueError(f"instruction {n} is a call ({insn}); a program with calls cannot be extended")
        if bpf.is_ld_imm64(insn) and insn.src != 0:
            raise ValueError(f"instruction {n} references a map or function ({insn}); it cannot be extended")


def prepend_allow_rules(rules: Sequence[DeviceRule], old: Sequence[bpf.Insn]) -> list[bpf.Insn]:
    """``old`` with checks allowing ``rules`` in front: every other device gets exactly ``old``'s verdict."""

    check_relocatable(old)
    insns, complete = allow_rules_prefix(rules)
    return insns if complete else insns + list(old)


# --- applying rules -------------------------------------------------------------------------------------------------


@record
class DeviceAccessChange:
    """What :func:`allow_devices` did, and how to take it back.

    ``applied`` is False when nothing had to change (``note`` says why). :meth:`undo` restores the previous
    policy (used when a later configure step fails); :meth:`release` just closes the program fds kept for undo.
    Both are idempotent.
    """

    target: CgroupTarget
    rules: tuple[DeviceRule, ...]
    applied: bool
    note: str = ""
    _undo: Callable[[], None] | None = field(default=None, repr=False)
    _release: Callable[[], None] | None = field(default=None, repr=False)

    def undo(self) -> None:
        undo, self._undo = self._undo, None
        try:
            if undo is not None:
                undo()
        except OSError as exc:
            raise NvcError("mount", f"failed to restore device rules: {_os_message(exc)}") from None
        finally:
            self.release()

    def release(self) -> None:
        release, self._release = self._release, None
        self._undo = None
        if release is not None:
            release()


def allow_devices(target: CgroupTarget, rules: Sequence[DeviceRule]) -> DeviceAccessChange:
    """Let the cgroup ``target`` access the devices in ``rules``; errors are ``mount`` stage, as in NVIDIA's CLI
    (``mount error: failed to add device rules: ...``), since they happen while the devices are being mounted."""
    rules = tuple(rules)
    if not rules:
        return DeviceAccessChange(target, rules, applied=False, note="no device rules")
    if target.version == 1:
        return _allow_v1(target, rules)
    if target.version == 2:
        return _allow_v2(target, rules)
    raise ValueError(f"unknown cgroup version {target.version}")


def _fail(message: str) -> NvcError:
    return NvcError("mount", f"failed to add device rules: {message}")


def _os_message(exc: OSError) -> str:
    """``path: reason`` without Python's ``[Errno N]`` prefix (our own OSErrors carry the whole text in strerror)."""
    return f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc.strerror or exc)


def _read_v1_list(cgroup_dir: str) -> list[DeviceRule] | None:
    """The cgroup's ``devices.list``, or None when it cannot be read or parsed."""
    try:
        with open(os.path.join(cgroup_dir, "devices.list"), encoding="utf-8") as f:  # ASCII (no codec import)
            return [DeviceRule.parse(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return None


def _write_v1(path: str, lines: Sequence[str]) -> None:
    """One ``write()`` per rule: the v1 parser reads exactly one rule from each write."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        for line in lines:
            try:
                os.write(fd, line.encode())
            except OSError as exc:
                raise OSError(exc.errno, f"{path}: {line}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _allow_v1(target: CgroupTarget, rules: tuple[DeviceRule, ...]) -> DeviceAccessChange:
    """Append the rules to ``devices.allow``; undo denies again only what was not allowed before.

    ``devices.list`` of a default-allow cgroup reads ``a *:* rwm`` whatever it denies, so such a cgroup is taken
    as allowing everything: undo then writes nothing, and never denies something the container had.
    """
    before = _read_v1_list(target.path)
    written: list[str] = []
    allow_file = os.path.join(target.path, "devices.allow")
    try:
        for rule in rules:
            new = before is not None and not any(old.covers(rule) for old in before)
            for line in rule.v1_lines():
                _write_v1(allow_file, [line])
                if new:
                    written.append(line)
    except OSError as exc:
        if written:
            try:
                _write_v1(os.path.join(target.path, "devices.deny"), written)
            except OSError:  # report the first failure; the cgroup was refusing writes anyway
                pass
        raise _fail(_os_message(exc)) from None

    def undo() -> None:
        if written:
            _write_v1(os.path.join(target.path, "devices.deny"), written)

    note = "" if before is not None else "devices.list unreadable: undo will not deny the rules again"
    return DeviceAccessChange(target, rules, applied=True, note=note, _undo=undo)


@record
class _Swap:
    """One attached program replaced by its extended copy; fds kept so either can be attached again."""

    old_fd: int
    new_fd: int
    old_id: int


def _replace(dir_fd: int, attach_flags: int, current_fd: int, new_fd: int) -> None:
    """Put ``new_fd`` in the place of the attached ``current_fd``.

    Multi-program cgroups: ``BPF_F_REPLACE`` swaps atomically (Linux 5.6+); on older kernels (EINVAL) the new
    program is attached *before* the old one is detached, so the container is never less restricted than asked.
    Single-program cgroups (flags 0 / ALLOW_OVERRIDE): attaching with the same flags replaces the program.
    """
    from nvc.sys import bpf

    if attach_flags & bpf.BPF_F_ALLOW_MULTI:
        try:
            bpf.prog_attach(
                dir_fd, new_fd, bpf.BPF_CGROUP_DEVICE, bpf.BPF_F_ALLOW_MULTI | bpf.BPF_F_REPLACE, current_fd
            )
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            bpf.prog_attach(dir_fd, new_fd, bpf.BPF_CGROUP_DEVICE, bpf.BPF_F_ALLOW_MULTI)
            bpf.prog_detach(dir_fd, current_fd, bpf.BPF_CGROUP_DEVICE)
    else:
        bpf.prog_attach(dir_fd, new_fd, bpf.BPF_CGROUP_DEVICE, attach_flags)


def _allow_v2(target: CgroupTarget, rules: tuple[DeviceRule, ...]) -> DeviceAccessChange:
    from nvc.sys import bpf

    try:
        dir_fd = os.open(target.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _fail(f"unable to open the cgroup path {target.path}: {exc.strerror}") from None
    swaps: list[_Swap] = []
    attached: list[_Swap] = []
    fds: list[int] = [dir_fd]

    def release() -> None:
        while fds:
            os.close(fds.pop())

    try:
        try:
            query = bpf.prog_query(dir_fd, bpf.BPF_CGROUP_DEVICE)
        except OSError as exc:
            raise _fail(
                f"unable to find any existing device filters attached to the cgroup: {_os_message(exc)}"
            ) from None
        if not query.prog_ids:
            try:
                inherited = bpf.prog_query(dir_fd, bpf.BPF_CGROUP_DEVICE, effective=True).prog_ids
            except OSError:
                inherited = ()
            note = f"no device program attached to {target.path}: the cgroup itself restricts no device"
            if inherited:
                note += f" (programs {list(inherited)} of ancestor cgroups apply and are not the container's)"
            release()
            return DeviceAccessChange(target, rules, applied=False, note=note)

        # Build and load every replacement before touching the cgroup: a rejected program changes nothing.
        for prog_id in query.prog_ids:
            try:
                old_fd = bpf.prog_get_fd_by_id(prog_id)
            except OSError as exc:
                raise _fail(f"unable to open device filter program {prog_id}: {_os_message(exc)}") from None
            fds.append(old_fd)
            try:
                info = bpf.prog_info(old_fd)
                if info.type != bpf.BPF_PROG_TYPE_CGROUP_DEVICE:
                    raise ValueError(f"program type {info.type} is not a cgroup device program")
                insns = prepend_allow_rules(rules, info.insns)
                new_fd = bpf.prog_load(
                    bpf.BPF_PROG_TYPE_CGROUP_DEVICE,
                    insns,
                    license=PROGRAM_LICENSE,
                    name=PROGRAM_NAME,
                    expected_attach_type=bpf.BPF_CGROUP_DEVICE,
                )
            except OSError as exc:
                raise _fail(f"unable to extend device filter program {prog_id}: {_os_message(exc)}") from None
            except ValueError as exc:
                raise _fail(f"unable to extend device filter program {prog_id}: {exc}") from None
            fds.append(new_fd)
            swaps.append(_Swap(old_fd, new_fd, prog_id))

        for swap in swaps:
            try:
                _replace(dir_fd, query.attach_flags, swap.old_fd, swap.new_fd)
            except OSError as exc:
                raise _fail(
                    f"unable to attach new device filters program (replacing {swap.old_id}): {_os_message(exc)}"
                ) from None
            attached.append(swap)
    except BaseException:
        for swap in reversed(attached):
            try:
                _replace(dir_fd, query.attach_flags, swap.new_fd, swap.old_fd)
            except OSError:  # keep the first error
                pass
        release()
        raise

    def undo() -> None:
        for swap in reversed(attached):
            _replace(dir_fd, query.attach_flags, swap.new_fd, swap.old_fd)

    return DeviceAccessChange(
        target,
        rules,
        applied=True,
        note=f"replaced device programs {list(query.prog_ids)} with copies allowing the rules",
        _undo=undo,
        _release=release,
    )
