"""gVisor's contract: runsc runs `nvidia-container-cli --load-kmods configure ... --pid=<gofer>` while its gofer
is held in a fresh mount namespace; the sandbox builds its GPU list from ROOTFS/dev. Emulated exactly here: a
process named runsc-gofer in its own mount namespace, runsc's argv, then a chroot into ROOTFS in that namespace."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from fixtures.rootfs import busybox_rootfs, copy_rootfs, safe_rmtree

pytestmark = pytest.mark.root


def named_process(name: str, new_mount_ns: bool) -> subprocess.Popen:
    """A held process whose argv[0] is ``name`` (runsc names its gofer and sandbox processes this way)."""
    prefix = ["unshare", "-m", "--propagation", "private"] if new_mount_ns else []
    proc = subprocess.Popen([*prefix, "bash", "-c", f"exec -a {name} sleep 600"])
    for _ in range(500):
        try:
            if Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[0] == name.encode():
                return proc
        except OSError:
            pass
        time.sleep(0.01)
    proc.kill()
    raise RuntimeError(f"{name} did not start")


def mountinfo(pid: int | str = "self") -> list[str]:
    return [" ".join(line.split()[3:5]) for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()]


def test_runsc_argv_in_the_gofer_namespace(tmp_path, host, tools):
    bindir, env = tools
    rootfs = copy_rootfs(busybox_rootfs(), tmp_path / "rootfs")
    (rootfs / "etc/nvml-stub.conf").write_text("driver 535.309.01\ninit_error 9\n")
    (rootfs / "proc/driver/nvidia").mkdir(parents=True, mode=0o555)  # runsc creates it before calling us
    before_host = mountinfo()
    gofer = named_process("runsc-gofer", new_mount_ns=True)
    try:
        argv = [str(bindir / "nvidia-container-cli"), "--load-kmods", "configure", "--ldconfig=@/sbin/ldconfig",
                "--no-cgroups", f"--pid={gofer.pid}", "--device=1", "--compute", "--utility", str(rootfs)]
        res = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=120)
        assert res.returncode == 0, res.stderr
        assert mountinfo() == before_host
        ns_mounts = mountinfo(gofer.pid)
        assert not any(f"{rootfs}/proc" in line for line in ns_mounts)  # nothing relies on ROOTFS/proc
        view = Path(f"/proc/{gofer.pid}/root{rootfs}")
        assert sorted(os.listdir(view / "dev")) == ["nvidia-uvm", "nvidia0", "nvidiactl"]  # nvproxy's device set
        node, host_node = (view / "dev/nvidia0").stat(), (host.root / "dev/nvidia0").stat()
        assert (node.st_dev, node.st_ino, node.st_rdev) == (host_node.st_dev, host_node.st_ino, host_node.st_rdev)
        smi = subprocess.run(["nsenter", f"--target={gofer.pid}", "--mount", "--", "chroot", str(rootfs),
                              "/bin/env", "-i", "NVML_STUB_CONFIG=/etc/nvml-stub.conf", "/usr/bin/nvidia-smi"],
                             capture_output=True, text=True, check=False, timeout=60)
        assert smi.returncode == 9, smi.stdout + smi.stderr
        assert "couldn't communicate with the NVIDIA driver" in smi.stdout
    finally:
        gofer.kill()
        gofer.wait()
    safe_rmtree(rootfs)


def test_capabilities_nvproxy_cannot_serve(tmp_path, host, tools):
    bindir, env = tools
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    res = subprocess.run([str(bindir / "nvidia-container-cli"), "configure", "--gvisor", "--dry-run", "--display",
                          "--compute", str(rootfs)], env=env, capture_output=True, text=True, check=False)
    assert res.returncode == 1
    assert res.stderr == ("nvidia-container-cli: input error: capabilities not supported by gVisor's nvproxy: display "
                          "(allowed: compute, graphics, utility, video)\n")


def test_version_first_line_is_what_runsc_parses(tools):
    bindir, env = tools
    res = subprocess.run([str(bindir / "nvidia-container-cli"), "--version"], env=env, capture_output=True,
                         text=True, check=True)
    first = res.stdout.splitlines()[0]
    assert first.startswith("cli-version: ") and first.count(".") == 2


def test_load_kmods_info_creates_missing_nodes(tmp_path, host, tools):
    bindir, env = tools
    root = tmp_path / "root"
    subprocess.run(["cp", "-a", str(host.root), str(root)], check=True)
    for node in (root / "dev").glob("nvidia*"):
        if node.is_char_device():
            node.unlink()
    (root / "proc/devices").write_text("Character devices:\n  1 mem\n195 nvidia-frontend\n510 nvidia-uvm\n\n"
                                       "Block devices:\n  8 sd\n")
    env = dict(env, NVC_DRIVER_ROOT=str(root))
    res = subprocess.run([str(bindir / "nvidia-container-cli"), "--load-kmods", "info"], env=env,
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    created = {p.name: (os.major(p.stat().st_rdev), os.minor(p.stat().st_rdev)) for p in (root / "dev").iterdir()
               if p.is_char_device()}
    assert created == {"nvidiactl": (195, 255), "nvidia-uvm": (510, 0), "nvidia-uvm-tools": (510, 1),
                       "nvidia3": (195, 3), "nvidia0": (195, 0)}


def test_hook_refuses_a_runsc_sandbox_with_instructions(tmp_path, tools):
    bindir, env = tools
    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "root": {"path": "rootfs"},
                                                    "process": {"env": ["NVIDIA_VISIBLE_DEVICES=0"]}}))
    sandbox = named_process("runsc-sandbox", new_mount_ns=False)
    try:
        res = subprocess.run([str(bindir / "nvidia-container-runtime-hook"), "prestart"], env=env, text=True,
                             input=json.dumps({"pid": sandbox.pid, "bundle": str(bundle), "status": "created"}),
                             capture_output=True, check=False)
    finally:
        sandbox.kill()
        sandbox.wait()
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "--nvproxy" in res.stderr and "nvidia-container-runtime-hook" in res.stderr


def test_gofer_already_reaped_is_one_line_not_a_hang(tmp_path, host, tools):
    bindir, env = tools
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    gofer = named_process("runsc-gofer", new_mount_ns=True)
    gofer.kill()
    gofer.wait()
    res = subprocess.run([str(bindir / "nvidia-container-cli"), "--load-kmods", "configure", "--no-cgroups",
                          f"--pid={gofer.pid}", "--device=0", "--compute", str(rootfs)], env=env,
                         capture_output=True, text=True, check=False, timeout=60)
    assert res.returncode == 1
    assert res.stderr == f"nvidia-container-cli: container error: process {gofer.pid} not found\n"


def test_gvisor_plan_puts_the_nodes_in_a_fresh_dev(tmp_path, host, tools):
    bindir, env = tools
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    res = subprocess.run([str(bindir / "nvidia-container-cli"), "configure", "--gvisor", "--dry-run", "--device=1",
                          "--compute", str(rootfs)], env=env, capture_output=True, text=True, check=True)
    lines = res.stdout.splitlines()
    devices = [i for i, line in enumerate(lines) if line.startswith("bind device")]
    assert lines.index("tmpfs /dev mode=755") < devices[0]
    assert [lines[i].split(" -> ")[1].split()[0] for i in devices] == ["/dev/nvidiactl", "/dev/nvidia-uvm",
                                                                          "/dev/nvidia0"]
