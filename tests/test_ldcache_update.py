"""configure writes the container's ld.so.cache itself; the result must equal what glibc's ldconfig produces
when run in the container the way NVIDIA runs it (checked with the real ldconfig on busybox and Debian images)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.rootfs import busybox_rootfs, copy_rootfs, debian_rootfs, safe_rmtree

pytestmark = pytest.mark.root


@pytest.fixture
def container():
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "600"])
    while os.readlink(f"/proc/{proc.pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
        subprocess.run(["sleep", "0.01"], check=True)
    yield proc.pid
    proc.kill()
    proc.wait()


def configure(host, pid: int, rootfs: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, **host.env)
    return subprocess.run([sys.executable, "-m", "nvc", "--root", str(host.root), "--debug", "/dev/stderr",
                           "configure", f"--pid={pid}", "--device=0", "--compute", "--utility", "--video",
                           "--graphics", "--compat32", "--ldconfig=@/sbin/ldconfig", "--no-cgroups", *extra,
                           str(rootfs)], capture_output=True, text=True, env=env, check=False, timeout=120)


def printed(pid: int, rootfs: Path) -> str:
    cache = f"/proc/{pid}/root{rootfs}/etc/ld.so.cache"
    return subprocess.run(["/sbin/ldconfig", "-p", "-C", cache], capture_output=True, text=True, check=True,
                          env={"LC_ALL": "C"}).stdout


def links(pid: int, rootfs: Path, libdir: str) -> dict[str, str]:
    view = Path(f"/proc/{pid}/root{rootfs}{libdir}")
    return {p.name: os.readlink(p) for p in view.iterdir() if p.is_symlink()}


@pytest.mark.parametrize(("image", "libdir"), [("busybox", "/usr/lib64"), ("debian", "/usr/lib/x86_64-linux-gnu")])
def test_written_cache_equals_real_ldconfig(tmp_path, host, image, libdir):
    base = busybox_rootfs() if image == "busybox" else debian_rootfs()
    ours, theirs = copy_rootfs(base, tmp_path / "ours"), copy_rootfs(base, tmp_path / "theirs")
    holders = [subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "600"]) for _ in range(2)]
    try:
        for holder in holders:
            while os.readlink(f"/proc/{holder.pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
                subprocess.run(["sleep", "0.01"], check=True)
        res = configure(host, holders[0].pid, ours)
        assert res.returncode == 0, res.stderr
        assert "wrote /etc/ld.so.cache in the container" in res.stderr
        res = configure(host, holders[1].pid, theirs, "--exec-ldconfig")
        assert res.returncode == 0, res.stderr
        assert "executed ldconfig" in res.stderr
        ours_text, theirs_text = printed(holders[0].pid, ours), printed(holders[1].pid, theirs)
        assert "libnvidia-ml.so.1 (libc6,x86-64)" in ours_text
        assert ours_text.splitlines()[1:] == theirs_text.splitlines()[1:]  # line 1 names the file
        assert links(holders[0].pid, ours, libdir) == links(holders[1].pid, theirs, libdir)
        # The real dynamic loader resolves the injected library through our cache, inside the container.
        probe = subprocess.run(["nsenter", f"--target={holders[0].pid}", "--mount", "--", "chroot", str(ours),
                                "/usr/bin/nvidia-smi"], capture_output=True, text=True, check=False,
                               env={"NVML_STUB_CONFIG": "/nonexistent", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        assert "error while loading shared libraries" not in probe.stderr
        assert probe.returncode != 127, probe.stderr
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
        safe_rmtree(ours)
        safe_rmtree(theirs)


def test_missing_cache_is_created(tmp_path, host, container):
    rootfs = copy_rootfs(busybox_rootfs(), tmp_path / "rootfs")
    (rootfs / "etc/ld.so.cache").unlink()
    res = configure(host, container, rootfs)
    assert res.returncode == 0, res.stderr
    assert "libcuda.so.1 (libc6,x86-64) => /usr/lib64/libcuda.so.1" in printed(container, rootfs)


def test_corrupt_cache_falls_back_to_ldconfig(tmp_path, host, container):
    rootfs = copy_rootfs(busybox_rootfs(), tmp_path / "rootfs")
    (rootfs / "etc/ld.so.cache").write_bytes(b"glibc-ld.so.cache1.1" + b"\xff" * 100)
    res = configure(host, container, rootfs)
    assert res.returncode == 0, res.stderr
    assert "falling back to ldconfig" in res.stderr and "executed ldconfig" in res.stderr
    assert "libcuda.so.1 (libc6,x86-64)" in printed(container, rootfs)


def test_cache_symlinked_to_the_host_is_replaced_not_followed(tmp_path, host, container):
    rootfs = copy_rootfs(busybox_rootfs(), tmp_path / "rootfs")
    (rootfs / "etc/ld.so.cache").unlink()
    (rootfs / "etc/ld.so.cache").symlink_to("/etc/ld.so.cache")
    host_cache = hashlib.sha256(Path("/etc/ld.so.cache").read_bytes()).hexdigest()
    res = configure(host, container, rootfs)
    assert res.returncode == 0, res.stderr
    assert hashlib.sha256(Path("/etc/ld.so.cache").read_bytes()).hexdigest() == host_cache
    view = Path(f"/proc/{container}/root{rootfs}/etc/ld.so.cache")
    assert not view.is_symlink() and "libcuda.so.1" in printed(container, rootfs)


def test_soname_links_follow_ldconfigs_rule(tmp_path, host, container):
    """Where a SONAME link's name exists, ldconfig's rule: a link to something else is replaced, a file is left."""
    rootfs = copy_rootfs(busybox_rootfs(), tmp_path / "rootfs")
    lib64 = rootfs / "usr/lib64"
    lib64.mkdir(parents=True, exist_ok=True)
    (lib64 / "libcuda.so.1").symlink_to("libcuda.so.470.01")  # an older driver's link: stale
    (lib64 / "libnvidia-ml.so.1").write_text("the image's own file")
    res = configure(host, container, rootfs)
    assert res.returncode == 0, res.stderr
    view = Path(f"/proc/{container}/root{rootfs}/usr/lib64")
    assert os.readlink(view / "libcuda.so.1").startswith("libcuda.so.535.")
    assert not (view / "libnvidia-ml.so.1").is_symlink()
    assert (view / "libnvidia-ml.so.1").read_text() == "the image's own file"
    assert "/usr/lib64/libnvidia-ml.so.1 is not a symlink in the container: left as is" in res.stderr
