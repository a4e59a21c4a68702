"""A plan as OCI spec edits: mounts, devices, cgroup rules and env from the plan, merged into a runc spec
idempotently, and the container's ld.so.cache merged from the image's own, read back by the real ldconfig."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fixtures.driver_roots import DRIVER_VERSION
from nvc.components import Capability
from nvc.emit.oci_edits import (
    LDCACHE_PATH,
    SpecEdits,
    apply_edits,
    bind_mount,
    edits_document,
    edits_for_plan,
    format_edits_json,
    ldcache_for_container,
    library_additions,
    spec_edits,
)
from nvc.host.ldcache import ARCH_X8664, FLAG_ELF_LIBC6, LibraryAddition
from nvc.plan.planner import Bind, CgroupAllow, Plan, Symlink, Tmpfs, UpdateLdCache

V = DRIVER_VERSION
LDCONFIG = "/sbin/ldconfig"
X86 = FLAG_ELF_LIBC6 | ARCH_X8664
RO = ["rbind", "rprivate", "ro", "nosuid", "nodev"]


def runc_spec() -> dict:
    """What ``runc spec`` writes (trimmed), plus a user mount, an existing device rule and the request env."""
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm",
                    "NVIDIA_VISIBLE_DEVICES=0", "HOME=/root"],
            "cwd": "/",
            "capabilities": {"bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]},
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "rw"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "mount"}],
            "maskedPaths": ["/proc/kcore"],
        },
    }


# --- pure: a hand-made plan -------------------------------------------------------------------------------------


def hand_plan() -> Plan:
    lib = "/drv/usr/lib/x86_64-linux-gnu"
    return Plan(rootfs="/rootfs", operations=(
        Tmpfs("/proc/driver/nvidia", 0o555, (("params", "/drv/proc/driver/nvidia/params"),)),
        Tmpfs("/etc/nvidia/nvidia-application-profiles-rc.d", 0o555, (), capability="graphics"),
        Bind("binary", "/drv/usr/bin/nvidia-smi", "/usr/bin/nvidia-smi"),
        Bind("library", f"{lib}/libcuda.so.{V}", f"/usr/lib64/libcuda.so.{V}"),
        Bind("library", f"{lib}/libnvidia-ml.so.{V}", f"/usr/lib64/libnvidia-ml.so.{V}"),
        Bind("library", f"{lib}/libnvidia-tls.so.{V}", f"/usr/lib64/libnvidia-tls.so.{V}"),
        Symlink("/usr/lib64/libcuda.so", "libcuda.so.1"),
        Symlink("/usr/lib64/libfoo.so", "libnothere.so.1"),
        Symlink("/usr/lib64/libchain.so", "libcuda.so"),
        Bind("compat", "/usr/local/cuda/compat/libcuda.so.999.1", "/usr/lib64/libcuda.so.999.1",
             source_in_rootfs=True),
        Bind("firmware", f"/drv/lib/firmware/nvidia/{V}/gsp_ga10x.bin", f"/lib/firmware/nvidia/{V}/gsp_ga10x.bin",
             noexec=True),
        Bind("ipc", "/drv/run/nvidia-persistenced/socket", "/run/nvidia-persistenced/socket", readonly=False,
             noexec=True),
        Bind("ipc", "/drv/tmp/nvidia-mps", "/tmp/nvidia-mps", readonly=False, noexec=True, directory=True),
        Bind("device", "/drv/dev/nvidiactl", "/dev/nvidiactl", nodev=False, noexec=True, device=(195, 255)),
        CgroupAllow("c", 195, 255),
        Bind("device", "/drv/dev/nvidia0", "/dev/nvidia0", nodev=False, noexec=True, device=(195, 0)),
        CgroupAllow("c", 195, 0),
        CgroupAllow("c", 195, 0),
        Bind("proc-gpu", "/drv/proc/driver/nvidia/gpus/0000:3b:00.0", "/proc/driver/nvidia/gpus/0000:3b:00.0",
             directory=True, noexec=True),
        UpdateLdCache("@/sbin/ldconfig", ("/usr/lib64",)),
    ))


HAND_ADDITIONS = [
    LibraryAddition("libcuda.so.1", f"/usr/lib64/libcuda.so.{V}", X86),
    LibraryAddition("libnvidia-ml.so.1", f"/usr/lib64/libnvidia-ml.so.{V}", X86),
    LibraryAddition(f"libnvidia-tls.so.{V}", f"/usr/lib64/libnvidia-tls.so.{V}", X86),  # soname = file name
]


def test_edits_from_a_hand_made_plan():
    edits = spec_edits(hand_plan(), b"cache bytes", ldcache_source="/bundle/nvc-ld.so.cache",
                       additions=HAND_ADDITIONS)
    lib = "/drv/usr/lib/x86_64-linux-gnu"
    assert [(m["destination"], m["source"], m["options"]) for m in edits.mounts] == [
        ("/etc/nvidia/nvidia-application-profiles-rc.d", "tmpfs", ["nosuid", "nodev", "noexec", "mode=555"]),
        ("/usr/bin/nvidia-smi", "/drv/usr/bin/nvidia-smi", RO),
        (f"/usr/lib64/libcuda.so.{V}", f"{lib}/libcuda.so.{V}", RO),
        (f"/usr/lib64/libnvidia-ml.so.{V}", f"{lib}/libnvidia-ml.so.{V}", RO),
        (f"/usr/lib64/libnvidia-tls.so.{V}", f"{lib}/libnvidia-tls.so.{V}", RO),
        (f"/lib/firmware/nvidia/{V}/gsp_ga10x.bin", f"/drv/lib/firmware/nvidia/{V}/gsp_ga10x.bin", [*RO, "noexec"]),
        ("/run/nvidia-persistenced/socket", "/drv/run/nvidia-persistenced/socket",
         ["rbind", "rprivate", "nosuid", "nodev", "noexec"]),
        ("/tmp/nvidia-mps", "/drv/tmp/nvidia-mps", ["rbind", "rprivate", "nosuid", "nodev", "noexec"]),
        # the SONAME links ldconfig would have made, as binds of the same files
        ("/usr/lib64/libcuda.so.1", f"{lib}/libcuda.so.{V}", RO),
        ("/usr/lib64/libnvidia-ml.so.1", f"{lib}/libnvidia-ml.so.{V}", RO),
        # symlinks: the file they finally name (libcuda.so -> libcuda.so.1 -> the libcuda file; a chain too)
        ("/usr/lib64/libcuda.so", f"{lib}/libcuda.so.{V}", RO),
        ("/usr/lib64/libchain.so", f"{lib}/libcuda.so.{V}", RO),
        (LDCACHE_PATH, "/bundle/nvc-ld.so.cache", RO),
    ]
    assert all(m["type"] == ("tmpfs" if m["source"] == "tmpfs" else "bind") for m in edits.mounts)
    assert edits.devices == (
        {"path": "/dev/nvidiactl", "type": "c", "major": 195, "minor": 255, "fileMode": 0o666, "uid": 0, "gid": 0},
        {"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0, "fileMode": 0o666, "uid": 0, "gid": 0},
    )
    assert edits.device_rules == (
        {"allow": True, "type": "c", "major": 195, "minor": 255, "access": "rw"},
        {"allow": True, "type": "c", "major": 195, "minor": 0, "access": "rw"},  # the duplicate rule once
    )
    assert edits.env == ("NVIDIA_VISIBLE_DEVICES=void",)
    assert edits.ldcache == b"cache bytes" and edits.ldcache_source == "/bundle/nvc-ld.so.cache"
    notes = "\n".join(edits.notes)
    for skipped in ("tmpfs /proc/driver/nvidia", "/usr/lib64/libcuda.so.999.1", "/proc/driver/nvidia/gpus/",
                    "symlink /usr/lib64/libfoo.so"):
        assert skipped in notes


def test_no_cache_no_cache_mount_and_a_cache_needs_its_file():
    edits = spec_edits(hand_plan(), None, additions=HAND_ADDITIONS)
    assert LDCACHE_PATH not in [m["destination"] for m in edits.mounts]
    assert edits.ldcache is None and edits.ldcache_source is None
    with pytest.raises(ValueError):
        spec_edits(hand_plan(), b"x", additions=HAND_ADDITIONS)


def test_apply_merges_and_keeps_everything_else_in_order():
    spec = runc_spec()
    spec["mounts"].append({"destination": "/usr/bin/nvidia-smi", "type": "bind", "source": "/old", "options": []})
    spec["linux"]["resources"]["devices"].append({"allow": True, "type": "c", "major": 195, "minor": 0,
                                                  "access": "rw"})
    spec["linux"]["devices"] = [{"path": "/dev/nvidia0", "type": "c", "major": 1, "minor": 1}]
    spec["process"]["env"].append("NVIDIA_VISIBLE_DEVICES=all")  # a later duplicate: it would win
    before = copy.deepcopy(spec)
    edits = spec_edits(hand_plan(), b"c", ldcache_source="/b/nvc-ld.so.cache", additions=HAND_ADDITIONS)
    out = apply_edits(spec, edits)

    assert spec == before  # pure: the input is untouched
    assert list(out) == list(spec)  # top-level key order
    assert {k: v for k, v in out.items() if k not in ("mounts", "linux", "process")} == \
        {k: v for k, v in spec.items() if k not in ("mounts", "linux", "process")}
    # existing mounts first, in order; ours after them (replacing the old nvidia-smi mount)
    assert out["mounts"][:3] == spec["mounts"][:3]
    assert out["mounts"][3:] == list(edits.mounts)
    assert [d["path"] for d in out["linux"]["devices"]] == ["/dev/nvidiactl", "/dev/nvidia0"]
    assert out["linux"]["devices"][1]["major"] == 195
    assert out["linux"]["resources"]["devices"] == [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 195, "minor": 0, "access": "rw"},
        {"allow": True, "type": "c", "major": 195, "minor": 255, "access": "rw"},
    ]
    assert out["linux"]["namespaces"] == spec["linux"]["namespaces"]
    assert out["process"]["env"] == [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm",
        "NVIDIA_VISIBLE_DEVICES=void", "HOME=/root", "NVIDIA_VISIBLE_DEVICES=void",
    ]
    assert {k: v for k, v in out["process"].items() if k != "env"} == \
        {k: v for k, v in spec["process"].items() if k != "env"}
    # idempotent: twice is once
    assert apply_edits(out, edits) == out


def test_apply_to_a_bare_spec_creates_the_sections():
    edits = spec_edits(hand_plan(), None, additions=HAND_ADDITIONS)
    out = apply_edits({"ociVersion": "1.0.2"}, edits)
    assert out["process"]["env"] == ["NVIDIA_VISIBLE_DEVICES=void"]
    assert len(out["linux"]["devices"]) == 2 and len(out["linux"]["resources"]["devices"]) == 2
    assert apply_edits(out, edits) == out


def test_json_document_is_ready_to_merge():
    edits = spec_edits(hand_plan(), None, additions=HAND_ADDITIONS)
    doc = json.loads(format_edits_json(edits))
    assert set(doc) == {"mounts", "linux", "process"}
    assert doc == json.loads(json.dumps(edits_document(edits)))
    assert doc["linux"]["devices"][0]["fileMode"] == 438
    assert doc["linux"]["resources"]["devices"][0]["allow"] is True
    assert doc["process"] == {"env": ["NVIDIA_VISIBLE_DEVICES=void"]}
    assert apply_edits({}, SpecEdits(mounts=tuple(doc["mounts"]))) ["mounts"] == doc["mounts"]


def test_bind_mount_options():
    assert bind_mount("/a", "/b") == {"destination": "/a", "type": "bind", "source": "/b", "options": RO}
    assert bind_mount("/a", "/b", readonly=False, noexec=True)["options"] == \
        ["rbind", "rprivate", "nosuid", "nodev", "noexec"]


# --- the fake GPU host's plan ---------------------------------------------------------------------------------


def make_plan(host, rootfs: Path, monkeypatch, devices=("0",), caps=(Capability.COMPUTE, Capability.UTILITY),
              **request) -> Plan:
    """The planner's real output for the fake host (its NVML stub answers through the child's environment)."""
    from nvc.plan.build import build_plan
    from nvc.request.configure_request import ConfigureRequest
    from nvc.request.options import GlobalOptions

    monkeypatch.setenv("NVML_STUB_CONFIG", host.env["NVML_STUB_CONFIG"])
    req = ConfigureRequest(rootfs=str(rootfs), devices=tuple(devices), capabilities=frozenset(caps),
                           ldconfig="@/sbin/ldconfig", **request)
    return build_plan(GlobalOptions(root=str(host.root)), req)


@pytest.fixture
def small_rootfs(tmp_path) -> Path:
    """A non-Debian image (lib64 layout) whose cache the real ldconfig wrote."""
    root = tmp_path / "rootfs"
    for d in ("etc", "usr/lib64", "usr/bin", "dev", "proc"):
        (root / d).mkdir(parents=True)
    (root / "etc/ld.so.conf").write_text("/usr/lib64\n")
    libc = Path("/lib/x86_64-linux-gnu/libc.so.6").resolve()
    shutil.copy2(libc, root / "usr/lib64/libc.so.6")
    subprocess.run([LDCONFIG, "-r", str(root)], check=True, capture_output=True)
    return root


def ldconfig_p(cache: Path | str) -> list[str]:
    out = subprocess.run([LDCONFIG, "-p", "-C", str(cache)], capture_output=True, text=True, check=True).stdout
    return out.splitlines()


@pytest.mark.root
def test_edits_of_the_fake_hosts_plan(host, small_rootfs, monkeypatch, tmp_path):
    plan = make_plan(host, small_rootfs, monkeypatch, devices=("1",))
    edits = edits_for_plan(plan, str(tmp_path / "nvc-ld.so.cache"))
    by_dest = {m["destination"]: m for m in edits.mounts}
    lib = "/usr/lib64"
    for name in (f"libnvidia-ml.so.{V}", "libnvidia-ml.so.1", f"libcuda.so.{V}", "libcuda.so.1", "libcuda.so",
                 f"libnvidia-ptxjitcompiler.so.{V}", "libnvidia-ptxjitcompiler.so.1"):
        assert f"{lib}/{name}" in by_dest, name
    assert by_dest[f"{lib}/libcuda.so"]["source"] == by_dest[f"{lib}/libcuda.so.{V}"]["source"]
    assert os.path.realpath(by_dest[f"{lib}/libcuda.so.1"]["source"]).endswith(f"libcuda.so.{V}")
    assert by_dest["/usr/bin/nvidia-smi"]["options"] == RO
    assert by_dest[LDCACHE_PATH]["source"] == str(tmp_path / "nvc-ld.so.cache")
    assert not any(d.startswith("/proc") for d in by_dest)
    assert not any("GLX" in d or "libnvidia-encode" in d for d in by_dest)  # graphics/video not asked for
    # GPU 1 is minor 0; compute brings the UVM nodes
    assert [(d["path"], d["major"], d["minor"]) for d in edits.devices] == [
        ("/dev/nvidiactl", 195, 255), ("/dev/nvidia-uvm", 510, 0), ("/dev/nvidia-uvm-tools", 510, 1),
        ("/dev/nvidia0", 195, 0)]
    assert [(r["major"], r["minor"]) for r in edits.device_rules] == [(195, 255), (510, 0), (510, 1), (195, 0)]
    spec = runc_spec()
    out = apply_edits(spec, edits)
    assert apply_edits(out, edits) == out
    assert out["mounts"][: len(spec["mounts"])] == spec["mounts"]
    assert "NVIDIA_VISIBLE_DEVICES=void" in out["process"]["env"]
    assert "NVIDIA_VISIBLE_DEVICES=0" not in out["process"]["env"]


@pytest.mark.root
def test_no_cgroups_and_no_devbind(host, small_rootfs, monkeypatch):
    plan = make_plan(host, small_rootfs, monkeypatch, no_cgroups=True, no_devbind=True)
    edits = spec_edits(plan, None)
    assert edits.devices == () and edits.device_rules == ()


# --- the container's ld.so.cache ------------------------------------------------------------------------------


@pytest.mark.root
def test_merged_cache_read_back_by_real_ldconfig(host, small_rootfs, monkeypatch, tmp_path):
    before = ldconfig_p(small_rootfs / "etc/ld.so.cache")
    plan = make_plan(host, small_rootfs, monkeypatch)
    cache = ldcache_for_container(str(small_rootfs), library_additions(plan), first_dirs=("/usr/lib64",))
    assert cache is not None
    (tmp_path / "c").write_bytes(cache)
    listing = ldconfig_p(tmp_path / "c")
    assert "\tlibnvidia-ml.so.1 (libc6,x86-64) => /usr/lib64/libnvidia-ml.so.1" in listing
    assert "\tlibcuda.so.1 (libc6,x86-64) => /usr/lib64/libcuda.so.1" in listing
    assert set(before[1:]) <= set(listing)  # the image's libc is still there
    assert ldcache_for_container(str(small_rootfs), []) is None  # nothing to add: keep the image's cache


@pytest.mark.root
def test_merged_cache_equals_what_ldconfig_writes(host, small_rootfs, monkeypatch, tmp_path):
    """NVIDIA runs ``ldconfig DIR`` in the container after mounting; we write the same cache without it."""
    plan = make_plan(host, small_rootfs, monkeypatch, devices=("all",), caps=tuple(Capability))
    additions = library_additions(plan)
    ours = ldcache_for_container(str(small_rootfs), additions, first_dirs=("/usr/lib64",))
    real_root = tmp_path / "real"
    shutil.copytree(small_rootfs, real_root, symlinks=True)
    for op in plan.of_type(Bind):
        if op.kind == "library":
            shutil.copy2(op.source, real_root / op.target.lstrip("/"))
    subprocess.run([LDCONFIG, "-r", str(real_root), "/usr/lib64"], check=True, capture_output=True)
    real = (real_root / "etc/ld.so.cache").read_bytes()
    (tmp_path / "ours").write_bytes(ours)
    assert ldconfig_p(tmp_path / "ours")[1:] == ldconfig_p(real_root / "etc/ld.so.cache")[1:]
    assert ours == real


@pytest.mark.root
@pytest.mark.parametrize("which", ["busybox", "debian"])
def test_image_cache_entries_are_kept(host, monkeypatch, tmp_path, which):
    rootfs_mod = pytest.importorskip("fixtures.rootfs")
    try:
        source = rootfs_mod.busybox_rootfs() if which == "busybox" else rootfs_mod.debian_rootfs()
    except Exception as exc:
        pytest.skip(f"{which} rootfs unavailable: {exc}")
    rootfs = rootfs_mod.copy_rootfs(source, tmp_path / "rootfs")
    before = ldconfig_p(rootfs / "etc/ld.so.cache")
    plan = make_plan(host, rootfs, monkeypatch)
    libdir = "/usr/lib64" if which == "busybox" else "/usr/lib/x86_64-linux-gnu"
    edits = edits_for_plan(plan, str(tmp_path / "nvc-ld.so.cache"))
    (tmp_path / "nvc-ld.so.cache").write_bytes(edits.ldcache)
    after = ldconfig_p(tmp_path / "nvc-ld.so.cache")
    # Entries are kept; on merged-/usr a directory NVIDIA passes to ldconfig first (/usr/lib/<triplet>) gives the
    # existing entries of that directory its spelling, as a real ldconfig run does (see test_ldcache_update).
    def spelled(lines):
        return {line.replace("=> /usr/lib/x86_64-linux-gnu/", "=> /lib/x86_64-linux-gnu/") for line in lines}

    assert spelled(before[1:]) <= spelled(after)
    assert f"\tlibnvidia-ml.so.1 (libc6,x86-64) => {libdir}/libnvidia-ml.so.1" in after
    assert f"{libdir}/libnvidia-ml.so.1" in [m["destination"] for m in edits.mounts]
    assert after[-1] == before[-1]  # "Cache generated by: ..." kept


@pytest.mark.root
@pytest.mark.parametrize("damage", ["missing", "corrupt", "symlink-out", "fifo"])
def test_unusable_image_cache_gives_a_fresh_one(host, small_rootfs, monkeypatch, tmp_path, damage):
    plan = make_plan(host, small_rootfs, monkeypatch)
    additions = library_additions(plan)
    cache_file = small_rootfs / "etc/ld.so.cache"
    host_cache = tmp_path / "host.cache"
    shutil.copy2(cache_file, host_cache)  # a valid cache outside the root, with libc in it
    cache_file.unlink()
    if damage == "corrupt":
        cache_file.write_bytes(b"glibc-ld.so.cache1.1" + b"\xff" * 40)
    elif damage == "symlink-out":
        cache_file.symlink_to(host_cache)  # absolute: inside the root this names a missing file
    elif damage == "fifo":
        os.mkfifo(cache_file)
    cache = ldcache_for_container(str(small_rootfs), additions)
    (tmp_path / "c").write_bytes(cache)
    listing = ldconfig_p(tmp_path / "c")
    assert listing[0] == f"{len(additions)} libs found in cache `{tmp_path / 'c'}'"
    assert "\tlibnvidia-ml.so.1 (libc6,x86-64) => /usr/lib64/libnvidia-ml.so.1" in listing
    assert not any("libc.so.6" in line for line in listing)


@pytest.mark.root
def test_oci_edits_command(host, small_rootfs, monkeypatch, tmp_path):
    from nvc.emit.oci_edits import oci_edits_command
    from nvc.request.configure_request import ConfigureRequest
    from nvc.request.options import GlobalOptions

    monkeypatch.setenv("NVML_STUB_CONFIG", host.env["NVML_STUB_CONFIG"])
    request = ConfigureRequest(rootfs=str(small_rootfs), devices=("0",), capabilities=frozenset({Capability.UTILITY}))
    out, notes = oci_edits_command(GlobalOptions(root=str(host.root)), request, str(tmp_path / "cache"))
    doc = json.loads(out)
    assert {"destination": LDCACHE_PATH, "type": "bind", "source": str(tmp_path / "cache"), "options": RO} \
        in doc["mounts"]
    assert "\tlibnvidia-ml.so.1 (libc6,x86-64) => /usr/lib64/libnvidia-ml.so.1" in ldconfig_p(tmp_path / "cache")
    assert any("tmpfs /proc/driver/nvidia" in note for note in notes)
    out, _ = oci_edits_command(GlobalOptions(root=str(host.root)), request)
    assert LDCACHE_PATH not in [m["destination"] for m in json.loads(out)["mounts"]]
