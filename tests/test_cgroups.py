"""Device-cgroup access: cgroup discovery from /proc text, the eBPF device filter, and real enforcement as root.

The root tests prove enforcement the way the reference does: a process inside the cgroup opens a character
device 195:254 made with mknod. No driver owns major 195 here, so EPERM means the cgroup refused and ENXIO means
the cgroup let the open through to a driver that is not there.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

import pytest

from nvc.apply import cgroups
from nvc.apply.cgroups import CgroupTarget, DeviceRule
from nvc.errors import NvcError
from nvc.sys import bpf

# --- /proc text fixtures --------------------------------------------------------------------------------------------

HYBRID_CGROUP = """\
9:name=systemd:/docker/4f1c
8:pids:/docker/4f1c
7:blkio:/docker/4f1c
6:freezer:/docker/4f1c
5:devices:/docker/4f1c
4:memory:/docker/4f1c
3:cpuset:/docker/4f1c
2:cpu,cpuacct:/docker/4f1c
0::/docker/4f1c
"""

HOST_MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,devices
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
"""

PURE_V2_CGROUP = "0::/system.slice/docker-4f1c.scope\n"
PURE_V2_MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
"""


def test_hybrid_host_uses_v1_devices_controller():
    target = cgroups.resolve_cgroup_target(HYBRID_CGROUP, HOST_MOUNTINFO)
    assert target == CgroupTarget(1, "/sys/fs/cgroup/devices/docker/4f1c")


def test_pure_v2():
    target = cgroups.resolve_cgroup_target(PURE_V2_CGROUP, PURE_V2_MOUNTINFO)
    assert target == CgroupTarget(2, "/sys/fs/cgroup/system.slice/docker-4f1c.scope")


def test_v2_on_hybrid_unified_mount():
    target = cgroups.resolve_cgroup_target("1:name=systemd:/x\n0::/kubepods/pod1/c1\n", HOST_MOUNTINFO)
    assert target == CgroupTarget(2, "/sys/fs/cgroup/unified/kubepods/pod1/c1")


def test_root_cgroup_is_the_mount_point():
    assert cgroups.resolve_cgroup_target("5:devices:/\n", HOST_MOUNTINFO).path == "/sys/fs/cgroup/devices"


def test_no_devices_line_and_no_unified_line():
    with pytest.raises(NvcError) as exc:
        cgroups.resolve_cgroup_target("4:memory:/x\n2:cpu,cpuacct:/x\n", HOST_MOUNTINFO)
    assert exc.value.stage == "container"
    assert str(exc.value) == "container error: cgroup subsystem devices not found"


def test_devices_line_without_a_devices_mount():
    mountinfo = "\n".join(ln for ln in HOST_MOUNTINFO.splitlines() if "devices" not in ln)
    with pytest.raises(NvcError, match="cgroup subsystem devices not found in mountinfo"):
        cgroups.resolve_cgroup_target(HYBRID_CGROUP, mountinfo)


def test_mount_root_prefix_is_cut():
    # We run inside a container whose cgroup hierarchy is mounted from /docker/outer: the paths the kernel shows us
    # are from our cgroup namespace root, the mount shows the hierarchy from /docker/outer.
    mountinfo = "36 31 0:33 /docker/outer /sys/fs/cgroup/devices rw - cgroup cgroup rw,devices\n"
    target = cgroups.resolve_cgroup_target("5:devices:/docker/outer/inner\n", mountinfo)
    assert target == CgroupTarget(1, "/sys/fs/cgroup/devices/inner")
    with pytest.raises(NvcError, match="not visible under any"):
        cgroups.resolve_cgroup_target("5:devices:/docker/outerx/inner\n", mountinfo)


def test_cgroup_outside_our_namespace():
    with pytest.raises(NvcError, match="outside this process's cgroup namespace"):
        cgroups.resolve_cgroup_target("0::/../../elsewhere\n", PURE_V2_MOUNTINFO)


def test_mountinfo_escapes_and_colons_in_path():
    mountinfo = r"41 31 0:38 / /sys/fs/cgroup\040v2 rw - cgroup2 cgroup2 rw" + "\n"
    target = cgroups.resolve_cgroup_target("0::/a:b/c\n", mountinfo)
    assert target == CgroupTarget(2, "/sys/fs/cgroup v2/a:b/c")


def test_malformed_input_is_a_container_error():
    with pytest.raises(NvcError, match="malformed cgroup entry"):
        cgroups.resolve_cgroup_target("garbage\n", HOST_MOUNTINFO)
    with pytest.raises(NvcError, match="malformed mountinfo entry"):
        cgroups.resolve_cgroup_target(HYBRID_CGROUP, "1 2 3\n")


def test_detect_cgroup_reads_files(tmp_path):
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "cgroup").write_text(HYBRID_CGROUP)
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "mountinfo").write_text(HOST_MOUNTINFO)
    assert cgroups.detect_cgroup(4242, proc_root=str(tmp_path)).path == "/sys/fs/cgroup/devices/docker/4f1c"
    other = tmp_path / "mi"
    other.write_text(PURE_V2_MOUNTINFO.replace("/sys/fs/cgroup ", "/cg "))
    (tmp_path / "4242" / "cgroup").write_text(PURE_V2_CGROUP)
    target = cgroups.detect_cgroup(4242, proc_root=str(tmp_path), mountinfo_path=str(other))
    assert target == CgroupTarget(2, "/cg/system.slice/docker-4f1c.scope")
    with pytest.raises(NvcError, match="failed to read"):
        cgroups.detect_cgroup(99, proc_root=str(tmp_path))


# --- rules ----------------------------------------------------------------------------------------------------------


def test_rule_parse_and_format():
    assert DeviceRule.parse("c 195:0 rw") == DeviceRule("c", 195, 0, "rw")
    assert DeviceRule.parse("c 195:* rwm") == DeviceRule("c", 195, None, "rwm")
    assert DeviceRule.parse("a *:* rwm").is_wildcard
    assert DeviceRule.parse("a").is_wildcard
    assert str(DeviceRule("b", None, 3, "m")) == "b *:3 m"
    for bad in ("x 1:2 rw", "c 1:2 rx", "c 1 rw", ""):
        with pytest.raises(ValueError):
            DeviceRule.parse(bad)
    with pytest.raises(ValueError):
        DeviceRule("c", 4096, 0)
    with pytest.raises(ValueError):
        DeviceRule("c", 1, 0, "rr")


def test_rule_v1_lines():
    assert DeviceRule("c", 195, 0, "rw").v1_lines() == ("c 195:0 rw",)
    assert DeviceRule("a", None, None, "rwm").v1_lines() == ("a",)
    # "a 195:0 rw" would be read by the kernel as "a" (everything): split it.
    assert DeviceRule("a", 195, 0, "rw").v1_lines() == ("c 195:0 rw", "b 195:0 rw")


def test_rule_covers():
    assert DeviceRule("a", None, None, "rwm").covers(DeviceRule("c", 195, 0, "rw"))
    assert DeviceRule("c", 195, None, "rw").covers(DeviceRule("c", 195, 7, "r"))
    assert not DeviceRule("c", 195, None, "r").covers(DeviceRule("c", 195, 7, "rw"))
    assert not DeviceRule("b", 195, 0, "rwm").covers(DeviceRule("c", 195, 0, "rw"))


# --- bytecode -------------------------------------------------------------------------------------------------------

_MASK32 = 0xFFFFFFFF


def run_filter(insns: Sequence[bpf.Insn], dev_type: int, access: int, major: int, minor: int) -> int:
    """Interpret a device program on one request: just the instructions our filters and the test programs use."""
    ctx = struct.pack("=III", dev_type | access << 16, major, minor)
    regs = [0] * 11
    pc = 0
    for _ in range(10_000):
        insn = insns[pc]
        pc += 1
        cls, op = insn.code & 0x07, insn.code & 0xF0
        if insn.code == bpf.BPF_LDX | bpf.BPF_W | bpf.BPF_MEM:
            assert insn.src == bpf.R1, "only context loads"
            regs[insn.dst] = struct.unpack_from("=I", ctx, insn.off)[0]
        elif cls == bpf.BPF_ALU and not insn.code & bpf.BPF_X:
            imm = insn.imm & _MASK32
            value = {bpf.BPF_MOV: imm, bpf.BPF_AND: regs[insn.dst] & imm, bpf.BPF_RSH: regs[insn.dst] >> imm}[op]
            regs[insn.dst] = value & _MASK32
        elif cls == bpf.BPF_JMP and op == bpf.BPF_EXIT:
            return regs[bpf.R0]
        elif cls == bpf.BPF_JMP and op == bpf.BPF_JA:
            pc += insn.off
        elif cls == bpf.BPF_JMP and not insn.code & bpf.BPF_X:
            lhs, imm = regs[insn.dst], insn.imm
            taken = {bpf.BPF_JNE: lhs != imm, bpf.BPF_JEQ: lhs == imm, bpf.BPF_JSET: bool(lhs & imm)}[op]
            if taken:
                pc += insn.off
        else:
            raise AssertionError(f"unexpected instruction {insn}")
        assert 0 <= pc < len(insns), "jumped out of the program"
    raise AssertionError("no exit")


def _expected(rules: Sequence[DeviceRule], kind: str, access: int, major: int, minor: int) -> int:
    request = DeviceRule(kind, major, minor, "".join(ch for ch, bit in (("m", 1), ("r", 2), ("w", 4)) if access & bit))
    return int(any(rule.covers(request) for rule in rules))


RULE_SETS = [
    [DeviceRule("c", 195, 254, "rw")],
    [DeviceRule("c", 195, None, "rw")],  # wildcard minor
    [DeviceRule("c", None, 3, "r")],  # wildcard major
    [DeviceRule("a", 1, 3, "rwm")],  # type a: char and block
    [DeviceRule("b", 8, 0, "m"), DeviceRule("c", 195, 0, "rw"), DeviceRule("c", 195, 255, "rwm")],
    [DeviceRule("c", 1, 3, "rw"), DeviceRule("a", None, None, "rwm")],  # wildcard: everything after is unreachable
]


@pytest.mark.parametrize("rules", RULE_SETS, ids=lambda rs: ",".join(map(str, rs)))
def test_filter_semantics_match_rule_semantics(rules):
    program = cgroups.device_filter_program(rules)
    for (kind, code), access, major, minor in itertools.product(
        (("c", 2), ("b", 1)), range(1, 8), (1, 8, 195, 4095), (0, 3, 254, 255)
    ):
        assert run_filter(program, code, access, major, minor) == _expected(rules, kind, access, major, minor), (
            kind,
            access,
            major,
            minor,
        )


def test_exact_bytecode_for_one_rule():
    program = cgroups.device_filter_program([DeviceRule("c", 195, 254, "rw")])
    assert bpf.disassemble(program) == [
        "  0: r2 = *(u32 *)(r1 +0)",
        "  1: w2 &= 65535",
        "  2: r3 = *(u32 *)(r1 +0)",
        "  3: w3 >>= 16",
        "  4: r4 = *(u32 *)(r1 +4)",
        "  5: r5 = *(u32 *)(r1 +8)",
        "  6: if r2 != 2 goto pc+5",  # not a char device: next block
        "  7: if r3 & 65529 goto pc+4",  # asks for something beyond rw (mknod): next block
        "  8: if r4 != 195 goto pc+3",
        "  9: if r5 != 254 goto pc+2",
        " 10: w0 = 1",
        " 11: exit",
        " 12: w0 = 0",
        " 13: exit",
    ]


def test_wildcard_and_type_a_blocks_skip_checks():
    prefix, complete = cgroups.allow_rules_prefix([DeviceRule("a", None, 7, "rwm")])
    assert not complete
    assert [str(i) for i in prefix[6:]] == ["if r5 != 7 goto pc+2", "w0 = 1", "exit"]
    prefix, complete = cgroups.allow_rules_prefix([DeviceRule("a", None, None, "rwm"), DeviceRule("c", 1, 1)])
    assert complete
    assert [str(i) for i in prefix[6:]] == ["w0 = 1", "exit"]
    # the context pointer r1 is only ever read, so the program behind the prefix still finds it
    assert all(i.dst != bpf.R1 for i in prefix)


# A stand-in for a runtime's filter, written differently from ours on purpose: forward jumps inside it must still
# land on the right instructions once our prefix sits in front.
ONLY_DEV_NULL = [
    bpf.ldx_mem(bpf.BPF_W, bpf.R2, bpf.R1, 4),
    bpf.jmp_imm(bpf.BPF_JNE, bpf.R2, 1, 4),
    bpf.ldx_mem(bpf.BPF_W, bpf.R2, bpf.R1, 8),
    bpf.jmp_imm(bpf.BPF_JNE, bpf.R2, 3, 2),
    bpf.mov32_imm(bpf.R0, 1),
    bpf.exit_insn(),
    bpf.mov32_imm(bpf.R0, 0),
    bpf.exit_insn(),
]


def test_prepend_keeps_old_verdicts():
    rules = [DeviceRule("c", 195, 254, "rw")]
    program = cgroups.prepend_allow_rules(rules, ONLY_DEV_NULL)
    assert program[-len(ONLY_DEV_NULL) :] == ONLY_DEV_NULL
    for code, access, major, minor in itertools.product((1, 2), range(1, 8), (1, 195), (3, 5, 254)):
        old = run_filter(ONLY_DEV_NULL, code, access, major, minor)
        ours = _expected(rules, "c" if code == 2 else "b", access, major, minor)
        assert run_filter(program, code, access, major, minor) == (ours or old)


def test_programs_with_calls_or_map_references_are_refused():
    call = bpf.Insn(bpf.BPF_JMP | bpf.BPF_CALL, imm=14)
    with pytest.raises(ValueError, match="call"):
        cgroups.prepend_allow_rules([DeviceRule("c", 1, 3)], [call, *ONLY_DEV_NULL])
    map_ref = [bpf.Insn(bpf.BPF_LD | bpf.BPF_DW | bpf.BPF_IMM, bpf.R2, 1, 0, 7), bpf.Insn(0)]
    with pytest.raises(ValueError, match="map"):
        cgroups.prepend_allow_rules([DeviceRule("c", 1, 3)], [*map_ref, *ONLY_DEV_NULL])


def test_encode_decode_round_trip():
    program = cgroups.device_filter_program(RULE_SETS[4])
    text = bpf.encode(program)
    assert len(text) == 8 * len(program)
    assert bpf.decode(text) == program
    with pytest.raises(ValueError):
        bpf.decode(text[:-1])


def test_import_does_not_build_the_ffi():
    code = "import sys, nvc.apply.cgroups; assert 'cffi' not in sys.modules, 'cffi imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))


# --- real kernel ----------------------------------------------------------------------------------------------------

_PROBE = """
import errno, os, sys
for line in sys.stdin:
    try:
        os.close(os.open(line.strip(), os.O_RDWR))
        print("ok", flush=True)
    except OSError as e:
        print(errno.errorcode[e.errno], flush=True)
"""


class Prober:
    """A child process that opens paths on request and answers ``ok`` or the errno name: the cgroup's subject."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _PROBE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.pid = self.proc.pid

    def open(self, path: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(path + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def prober() -> Iterator[Prober]:
    p = Prober()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def nvidia_node(tmp_path) -> str:
    """A character node 195:254 (nvidia-modeset's numbers) with no driver behind it: ENXIO when the cgroup allows."""
    path = str(tmp_path / "nvidia-modeset")
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(195, 254))
    return path


def _rmdir(path: str) -> None:
    """Remove a cgroup directory; the kernel may take a moment to let go of a just-reaped member."""
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            time.sleep(0.02)
    os.rmdir(path)


@contextlib.contextmanager
def made_cgroup(parent: str, name: str) -> Iterator[str]:
    path = os.path.join(parent, name)
    os.mkdir(path)
    try:
        yield path
    finally:
        _rmdir(path)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


V1_DEVICES = "/sys/fs/cgroup/devices"


def _unified_mount() -> str | None:
    with open("/proc/self/mountinfo") as f:
        mounts = cgroups.parse_mountinfo(f.read())
    return next((m.mount_point for m in mounts if m.fstype == "cgroup2"), None)


needs_v1 = pytest.mark.skipif(not os.path.exists(f"{V1_DEVICES}/devices.allow"), reason="no cgroup v1 devices")
V2_MOUNT = _unified_mount()
needs_v2 = pytest.mark.skipif(V2_MOUNT is None, reason="no cgroup2 mount")


@pytest.mark.root
@needs_v1
def test_v1_allow_devices_enforced(prober, nvidia_node):
    with made_cgroup(V1_DEVICES, f"nvc-test-{os.getpid()}") as cg:
        try:
            _write(f"{cg}/devices.deny", "a")
            _write(f"{cg}/cgroup.procs", str(prober.pid))
            assert prober.open("/dev/null") == "EPERM"
            assert prober.open(nvidia_node) == "EPERM"

            target = cgroups.detect_cgroup(prober.pid)
            assert target == CgroupTarget(1, cg)
            change = cgroups.allow_devices(target, [DeviceRule("c", 1, 3, "rw"), DeviceRule("c", 195, 254, "rw")])
            assert change.applied
            assert prober.open("/dev/null") == "ok"
            assert prober.open(nvidia_node) == "ENXIO"  # the cgroup let it through; no driver answers
            assert prober.open("/dev/zero") == "EPERM"
            with open(f"{cg}/devices.list") as f:
                assert set(f.read().split("\n")) >= {"c 1:3 rw", "c 195:254 rw"}

            change.undo()
            assert prober.open(nvidia_node) == "EPERM"
            assert prober.open("/dev/null") == "EPERM"
        finally:
            prober.stop()


@pytest.mark.root
@needs_v1
def test_v1_rule_the_parent_forbids_is_a_mount_error():
    with made_cgroup(V1_DEVICES, f"nvc-test-parent-{os.getpid()}") as parent:
        _write(f"{parent}/devices.deny", "a")
        with made_cgroup(parent, "child") as child:
            with pytest.raises(NvcError) as exc:
                cgroups.allow_devices(CgroupTarget(1, child), [DeviceRule("c", 195, 254, "rw")])
            assert exc.value.stage == "mount"
            assert "failed to add device rules:" in str(exc.value)
            assert "c 195:254 rw: Operation not permitted" in str(exc.value)


def _attach_program(cg: str, insns: Sequence[bpf.Insn], flags: int) -> int:
    """Load and attach a device program the way a runtime would; return its id (the fd is closed again)."""
    dir_fd = os.open(cg, os.O_RDONLY | os.O_DIRECTORY)
    prog_fd = bpf.prog_load(bpf.BPF_PROG_TYPE_CGROUP_DEVICE, insns, name="runtime", expected_attach_type=6)
    try:
        bpf.prog_attach(dir_fd, prog_fd, bpf.BPF_CGROUP_DEVICE, flags)
        return bpf.prog_info(prog_fd).id
    finally:
        os.close(prog_fd)
        os.close(dir_fd)


def _attached(cg: str) -> tuple[int, tuple[int, ...]]:
    dir_fd = os.open(cg, os.O_RDONLY | os.O_DIRECTORY)
    try:
        q = bpf.prog_query(dir_fd, bpf.BPF_CGROUP_DEVICE)
        return q.attach_flags, q.prog_ids
    finally:
        os.close(dir_fd)


def _program_text(prog_id: int) -> tuple[bpf.Insn, ...]:
    fd = bpf.prog_get_fd_by_id(prog_id)
    try:
        return bpf.prog_info(fd).insns
    finally:
        os.close(fd)


@pytest.mark.root
@needs_v2
@pytest.mark.parametrize(
    "flags", [bpf.BPF_F_ALLOW_MULTI, 0, bpf.BPF_F_ALLOW_OVERRIDE], ids=["allow-multi", "exclusive", "override"]
)
def test_v2_allow_devices_keeps_existing_policy(prober, nvidia_node, flags):
    assert V2_MOUNT is not None
    with made_cgroup(V2_MOUNT, f"nvc-test-{os.getpid()}") as cg:
        try:
            old_id = _attach_program(cg, ONLY_DEV_NULL, flags)
            _write(f"{cg}/cgroup.procs", str(prober.pid))
            # Enforced although this host is hybrid: the kernel runs the cgroup2 programs *and* the v1 controller.
            assert prober.open("/dev/null") == "ok"
            assert prober.open(nvidia_node) == "EPERM"
            assert prober.open("/dev/zero") == "EPERM"

            rules = [DeviceRule("c", 195, 254, "rw")]
            change = cgroups.allow_devices(CgroupTarget(2, cg), rules)
            assert change.applied
            assert prober.open(nvidia_node) == "ENXIO"
            assert prober.open("/dev/null") == "ok"
            assert prober.open("/dev/zero") == "EPERM"  # neither the old program nor our rules allow it

            attach_flags, ids = _attached(cg)
            assert attach_flags == flags and len(ids) == 1 and ids[0] != old_id
            assert list(_program_text(ids[0])) == cgroups.prepend_allow_rules(rules, ONLY_DEV_NULL)

            change.undo()
            assert _attached(cg) == (flags, (old_id,))
            assert prober.open(nvidia_node) == "EPERM"
            assert prober.open("/dev/null") == "ok"
        finally:
            prober.stop()


@pytest.mark.root
@needs_v2
def test_v2_every_multi_program_is_extended(prober, nvidia_node):
    """With two programs attached both must allow: extending only one would change nothing."""
    assert V2_MOUNT is not None
    null_and_zero = cgroups.device_filter_program([DeviceRule("c", 1, 3, "rwm"), DeviceRule("c", 1, 5, "rwm")])
    with made_cgroup(V2_MOUNT, f"nvc-test-multi-{os.getpid()}") as cg:
        try:
            first = _attach_program(cg, ONLY_DEV_NULL, bpf.BPF_F_ALLOW_MULTI)
            second = _attach_program(cg, null_and_zero, bpf.BPF_F_ALLOW_MULTI)
            _write(f"{cg}/cgroup.procs", str(prober.pid))
            assert prober.open("/dev/zero") == "EPERM"  # the first program denies it
            change = cgroups.allow_devices(CgroupTarget(2, cg), [DeviceRule("c", 195, 254, "rw")])
            assert prober.open(nvidia_node) == "ENXIO"
            assert prober.open("/dev/null") == "ok"
            assert prober.open("/dev/zero") == "EPERM"
            _, ids = _attached(cg)
            assert len(ids) == 2 and not {first, second} & set(ids)
            change.undo()
            assert set(_attached(cg)[1]) == {first, second}
            assert prober.open(nvidia_node) == "EPERM"
        finally:
            prober.stop()


@pytest.mark.root
@needs_v2
def test_v2_without_a_program_changes_nothing(prober, nvidia_node):
    assert V2_MOUNT is not None
    with made_cgroup(V2_MOUNT, f"nvc-test-open-{os.getpid()}") as cg:
        try:
            _write(f"{cg}/cgroup.procs", str(prober.pid))
            change = cgroups.allow_devices(CgroupTarget(2, cg), [DeviceRule("c", 195, 254, "rw")])
            assert not change.applied
            assert "no device program attached" in change.note
            assert _attached(cg) == (0, ())
            # still everything allowed, and in particular not deny-by-default
            assert prober.open(nvidia_node) == "ENXIO"
            assert prober.open("/dev/zero") == "ok"
            change.undo()
        finally:
            prober.stop()


@pytest.mark.root
@needs_v2
def test_v2_detection_against_the_real_mountinfo():
    assert V2_MOUNT is not None
    with made_cgroup(V2_MOUNT, f"nvc-test-detect-{os.getpid()}") as cg, open("/proc/self/mountinfo") as f:
        name = os.path.basename(cg)
        target = cgroups.resolve_cgroup_target(f"0::/{name}\n", f.read())
        assert target == CgroupTarget(2, cg)
        assert os.path.isdir(target.path)


@pytest.mark.root
def test_v2_load_rejection_carries_the_verifier_log():
    bad = [bpf.exit_insn()]  # r0 never set
    with pytest.raises(OSError) as exc:
        bpf.prog_load(bpf.BPF_PROG_TYPE_CGROUP_DEVICE, bad, expected_attach_type=bpf.BPF_CGROUP_DEVICE)
    assert exc.value.errno == errno.EACCES
    assert "R0 !read_ok" in str(exc.value)


@pytest.mark.root
@needs_v2
def test_v2_program_with_a_helper_call_is_left_alone(prober, nvidia_node):
    """A program calling a helper cannot be rebuilt from its translated text: refuse, and change nothing."""
    assert V2_MOUNT is not None
    save_ctx = bpf.Insn(bpf.BPF_ALU64 | bpf.BPF_MOV | bpf.BPF_X, bpf.R6, bpf.R1)
    restore_ctx = bpf.Insn(bpf.BPF_ALU64 | bpf.BPF_MOV | bpf.BPF_X, bpf.R1, bpf.R6)
    get_uid = bpf.Insn(bpf.BPF_JMP | bpf.BPF_CALL, imm=15)  # bpf_get_current_uid_gid
    with made_cgroup(V2_MOUNT, f"nvc-test-call-{os.getpid()}") as cg:
        try:
            old_id = _attach_program(cg, [save_ctx, get_uid, restore_ctx, *ONLY_DEV_NULL], bpf.BPF_F_ALLOW_MULTI)
            _write(f"{cg}/cgroup.procs", str(prober.pid))
            with pytest.raises(NvcError) as exc:
                cgroups.allow_devices(CgroupTarget(2, cg), [DeviceRule("c", 195, 254, "rw")])
            assert exc.value.stage == "mount"
            assert f"unable to extend device filter program {old_id}" in str(exc.value)
            assert _attached(cg) == (bpf.BPF_F_ALLOW_MULTI, (old_id,))
            assert prober.open(nvidia_node) == "EPERM"
            assert prober.open("/dev/null") == "ok"
        finally:
            prober.stop()
