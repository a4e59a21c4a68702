"""`nvc configure` for real: a process held in a private mount namespace stands for the container; the fake GPU
host (real device nodes, real driver files, stub NVML) stands for the machine. Every case checks the host's mount
table is unchanged and that failures leave the container as they found it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.driver_roots import DRIVER_VERSION

pytestmark = pytest.mark.root
V = DRIVER_VERSION


@pytest.fixture
def rootfs(tmp_path):
    """A small non-Debian image: lib64 layout, an ld.so.conf, nothing of NVIDIA's."""
    root = tmp_path / "rootfs"
    for d in ("etc", "usr/lib64", "usr/bin", "dev", "proc", "tmp", "sbin"):
        (root / d).mkdir(parents=True)
    (root / "etc/ld.so.conf").write_text("/usr/lib64\n")
    return root


@pytest.fixture
def container():
    """A process in its own private mount namespace: the 'container' configure enters."""
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "600"])
    try:
        for _ in range(200):  # wait until unshare has exec'd sleep in the new namespace
            if os.readlink(f"/proc/{proc.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt"):
                break
            subprocess.run(["sleep", "0.01"], check=True)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def mountinfo(pid: int | str = "self") -> list[str]:
    with open(f"/proc/{pid}/mountinfo") as f:
        return [" ".join(line.split()[3:5]) for line in f]


def in_container(pid: int, path: Path) -> Path:
    """The container's view of a host path (through its mount namespace)."""
    return Path(f"/proc/{pid}/root{path}")


def configure(host, *args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **host.env, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "nvc", "--root", str(host.root), "configure", *args],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


def test_configure_injects_driver_devices_and_proc(host, rootfs, container):
    before_host = mountinfo()
    res = configure(host, f"--pid={container}", "--device=1", "--compute", "--utility", "--no-cgroups",
                    str(rootfs))
    assert res.returncode == 0, res.stderr
    assert mountinfo() == before_host
    view = in_container(container, rootfs)
    libs = sorted(os.listdir(view / "usr/lib64"))
    assert f"libcuda.so.{V}" in libs and f"libnvidia-ml.so.{V}" in libs and "libcuda.so" in libs
    assert not any("GLX" in name or "encode" in name for name in libs)  # graphics/video not requested
    assert os.readlink(view / "usr/lib64/libcuda.so") == "libcuda.so.1"
    smi = host.root / "usr/lib/nvidia/current/nvidia-smi"
    assert (view / "usr/bin/nvidia-smi").stat().st_size == smi.stat().st_size
    # GPU 1 has minor 0: only /dev/nvidia0 and its /proc dir; the control nodes that compute needs.
    devices = sorted(os.listdir(view / "dev"))
    assert devices == ["nvidia-uvm", "nvidia-uvm-tools", "nvidia0", "nvidiactl"]
    assert os.major((view / "dev/nvidia0").stat().st_rdev) == 195
    assert os.listdir(view / "proc/driver/nvidia/gpus") == ["0001:af:00.0"]
    assert "ModifyDeviceFiles: 0" in (view / "proc/driver/nvidia/params").read_text()
    assert (view / f"lib/firmware/nvidia/{V}/gsp_ga10x.bin").exists()
    # The image itself (outside the namespace) only got the placeholders, no driver content.
    assert (rootfs / f"usr/lib64/libcuda.so.{V}").stat().st_size == 0
    # Mount options: libraries read-only, nosuid, nodev.
    table = Path(f"/proc/{container}/mountinfo").read_text().splitlines()
    line = next(line for line in table if line.split()[4].endswith(f"libcuda.so.{V}"))
    assert {"ro", "nosuid", "nodev"} <= set(line.split()[5].split(","))


def test_configure_twice_does_not_stack_mounts(host, rootfs, container):
    args = (f"--pid={container}", "--device=all", "--compute", "--utility", "--video", "--no-cgroups", str(rootfs))
    assert configure(host, *args).returncode == 0
    first = mountinfo(container)
    res = configure(host, *args)
    assert res.returncode == 0, res.stderr
    assert mountinfo(container) == first


def test_failure_undoes_everything(host, rootfs, container):
    # usr/bin is a file: the binaries cannot be placed, after the /proc tmpfs was already mounted.
    shutil.rmtree(rootfs / "usr/bin")
    (rootfs / "usr/bin").write_text("not a directory")
    before_tree = sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*"))
    before = mountinfo(container)
    res = configure(host, f"--pid={container}", "--device=0", "--utility", "--no-cgroups", str(rootfs))
    assert res.returncode == 1
    assert res.stderr.startswith("nvc: mount error: ") and res.stderr.count("\n") == 1, res.stderr
    assert mountinfo(container) == before
    assert sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*")) == before_tree


def test_existing_file_in_image_is_mounted_over_with_a_warning(host, rootfs, container):
    (rootfs / f"usr/lib64/libcuda.so.{V}").write_text("stale copy shipped in the image")
    res = configure(host, f"--pid={container}", "--compute", "--no-cgroups", str(rootfs))
    assert res.returncode == 0, res.stderr
    assert f"/usr/lib64/libcuda.so.{V} exists in the container image" in res.stdout + res.stderr
    view = in_container(container, rootfs)
    assert (view / f"usr/lib64/libcuda.so.{V}").read_bytes()[:4] == b"\x7fELF"


def test_hostile_symlinks_stay_inside_the_rootfs(host, rootfs, container, tmp_path):
    victim = tmp_path / "host-victim"
    victim.mkdir()
    shutil.rmtree(rootfs / "usr/lib64")
    (rootfs / "usr/lib64").symlink_to(victim)  # absolute: re-rooted inside the rootfs
    shutil.rmtree(rootfs / "usr/bin")
    (rootfs / "usr/bin").symlink_to("../../../../../../../../usr/bin")
    (rootfs / "proc").rmdir()
    (rootfs / "proc").symlink_to("/proc")
    (rootfs / "dev").rmdir()
    (rootfs / "dev").symlink_to("/dev")
    host_dev = sorted(os.listdir("/dev"))
    before_host = mountinfo()
    res = configure(host, f"--pid={container}", "--device=0", "--compute", "--utility", "--no-cgroups",
                    str(rootfs))
    # Whatever the outcome, nothing was created or mounted outside the rootfs.
    assert os.listdir(victim) == []
    assert sorted(os.listdir("/dev")) == host_dev
    assert mountinfo() == before_host
    assert not Path("/usr/bin/nvidia-smi").exists() or Path("/usr/bin/nvidia-smi").resolve().is_relative_to("/usr")
    if res.returncode == 0:
        view = in_container(container, rootfs)
        assert (view / str(victim).lstrip("/") / f"libcuda.so.{V}").exists()
    else:
        assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_ldconfig_from_the_host_updates_the_container_cache(host, rootfs, container):
    res = configure(host, f"--pid={container}", "--compute", "--utility", "--ldconfig=@/sbin/ldconfig",
                    "--no-cgroups", str(rootfs))
    assert res.returncode == 0, res.stderr
    view = in_container(container, rootfs)
    listing = subprocess.run(["/sbin/ldconfig", "-p", "-C", str(view / "etc/ld.so.cache")], capture_output=True,
                             text=True, check=True).stdout
    assert "libnvidia-ml.so.1 (libc6,x86-64) => /usr/lib64/libnvidia-ml.so.1" in listing
    assert "libcuda.so.1 (libc6,x86-64) => /usr/lib64/libcuda.so.1" in listing
    assert os.readlink(view / "usr/lib64/libcuda.so.1") == f"libcuda.so.{V}"


def test_image_without_ldconfig_is_skipped(host, rootfs, container):
    res = subprocess.run([sys.executable, "-m", "nvc", "--root", str(host.root), "--debug", "/dev/stderr",
                          "configure", f"--pid={container}", "--utility", "--no-cgroups", str(rootfs)],
                         capture_output=True, text=True, env=dict(os.environ, **host.env), check=False)
    assert res.returncode == 0, res.stderr
    assert "no ldconfig in the container" in res.stderr


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("--device=7",), "nvc: device error: 7: unknown device\n"),
        (("--require=cuda>=13.0",), "nvc: requirement error: unsatisfied condition: cuda>=13.0, please update your "
                                   "driver to a newer version, or use an earlier cuda container\n"),
        (("--require=brand=quadro", "--device=0"), "nvc: requirement error: unsatisfied condition: brand=quadro\n"),
    ],
)
def test_request_errors_change_nothing(host, rootfs, container, args, error):
    before = mountinfo(container)
    res = configure(host, f"--pid={container}", "--utility", "--no-cgroups", *args, str(rootfs))
    assert (res.returncode, res.stderr) == (1, error)
    assert mountinfo(container) == before


@pytest.mark.parametrize("rootfs_arg", ["relative/path", "/", ""])
def test_invalid_rootfs(host, rootfs_arg):
    res = configure(host, "--utility", rootfs_arg)
    assert (res.returncode, res.stderr) == (1, "nvc: input error: invalid rootfs directory\n")


def test_device_cgroup_v1_rules(host, rootfs, container):
    cgroup = Path(f"/sys/fs/cgroup/devices/nvc-test-{container}")
    cgroup.mkdir()
    try:
        (cgroup / "devices.deny").write_text("a")
        (cgroup / "devices.allow").write_text("c 1:3 rwm")
        (cgroup / "cgroup.procs").write_text(str(container))
        res = configure(host, f"--pid={container}", "--device=1", "--utility", str(rootfs))
        assert res.returncode == 0, res.stderr
        rules = (cgroup / "devices.list").read_text().splitlines()
        assert "c 195:0 rw" in rules and "c 195:255 rw" in rules
        assert "c 195:3 rw" not in rules  # GPU 0 (minor 3) was not selected
    finally:
        Path("/sys/fs/cgroup/devices/cgroup.procs").write_text(str(container))
        cgroup.rmdir()


def test_dry_run_prints_the_plan_and_changes_nothing(host, rootfs):
    res = configure(host, "--dry-run", "--device=0", "--compute", str(rootfs))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "tmpfs /proc/driver/nvidia mode=555 files=params,version,registry"
    assert "cgroup allow c 195:3 rw" in lines and lines[-1] == "ldcache default /usr/lib64"
    assert os.listdir(rootfs / "usr/lib64") == []


@pytest.mark.parametrize(
    ("mode", "expect_bind", "expect_dir"),
    [("mount", True, False), ("ldconfig", False, True), ("disabled", False, False)],
)
def test_cuda_compat_modes(host, rootfs, mode, expect_bind, expect_dir):
    compat = rootfs / "usr/local/cuda/compat"
    compat.mkdir(parents=True)
    shutil.copy(host.root / f"usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.{V}", compat / "libcuda.so.550.54.15")
    (compat / "libcuda.so.1").symlink_to("libcuda.so.550.54.15")  # links are not candidates
    res = configure(host, "--dry-run", "--compute", f"--cuda-compat-mode={mode}", str(rootfs))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    binds = [line for line in lines if line.startswith("bind compat ")]
    assert binds == (["bind compat rootfs:/usr/local/cuda/compat/libcuda.so.550.54.15 -> "
                      "/usr/lib64/libcuda.so.550.54.15 (ro,nosuid,nodev)"] if expect_bind else [])
    assert lines[-1] == ("ldcache default /usr/local/cuda/compat /usr/lib64" if expect_dir
                         else "ldcache default /usr/lib64")


def test_cuda_compat_library_is_mounted_from_inside_the_image(host, rootfs, container):
    compat = rootfs / "usr/local/cuda/compat"
    compat.mkdir(parents=True)
    (compat / "libcuda.so.550.54.15").write_bytes(b"\x7fELF compat build")
    res = configure(host, f"--pid={container}", "--compute", "--no-cgroups", str(rootfs))
    assert res.returncode == 0, res.stderr
    view = in_container(container, rootfs)
    assert (view / "usr/lib64/libcuda.so.550.54.15").read_bytes() == b"\x7fELF compat build"


def test_not_root_is_a_permission_error(host, rootfs, monkeypatch):
    from nvc.commands.configure import configure_container
    from nvc.errors import NvcError
    from nvc.request.configure_request import ConfigureRequest
    from nvc.request.options import GlobalOptions

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(NvcError) as err:
        configure_container(GlobalOptions(root=str(host.root)), ConfigureRequest(rootfs=str(rootfs)))
    assert err.value.stage == "permission"


def test_hostile_firmware_and_binary_links(host, rootfs, container, tmp_path):
    victim = tmp_path / "host-firmware"
    victim.mkdir()
    (rootfs / "lib/firmware/nvidia").mkdir(parents=True)
    (rootfs / f"lib/firmware/nvidia/{V}").symlink_to(victim)  # absolute link to a host directory
    before_host = mountinfo()
    res = configure(host, f"--pid={container}", "--utility", "--no-cgroups", str(rootfs))
    assert res.returncode == 0, res.stderr
    assert os.listdir(victim) == [] and mountinfo() == before_host
    # The link was followed inside the rootfs: the firmware landed under ROOTFS/<victim path>.
    inside = in_container(container, rootfs) / str(victim).lstrip("/")
    assert sorted(os.listdir(inside)) == ["gsp_ga10x.bin", "gsp_tu10x.bin"]

    # A symlink at a file target is refused, never followed; one line, and the new mounts are rolled back.
    (rootfs / "usr/bin/nvidia-cuda-mps-control").symlink_to("/usr/bin/host-tool-that-must-not-be-covered")
    before = mountinfo(container)
    res = configure(host, f"--pid={container}", "--utility", "--compute", "--no-cgroups", str(rootfs))
    assert res.returncode == 1, res.stdout
    assert res.stderr.startswith("nvc: mount error: ") and res.stderr.count("\n") == 1
    assert mountinfo(container) == before and mountinfo() == before_host
    assert not Path("/usr/bin/host-tool-that-must-not-be-covered").exists()


def test_read_only_rootfs_fails_cleanly(host, rootfs, container):
    # The image is mounted read-only inside the container's namespace, as runc does for readonly roots.
    subprocess.run(["nsenter", f"--target={container}", "--mount", "--", "mount", "--bind", str(rootfs), str(rootfs)],
                   check=True)
    subprocess.run(["nsenter", f"--target={container}", "--mount", "--", "mount", "-o", "remount,bind,ro",
                    str(rootfs)], check=True)
    before = mountinfo(container)
    res = configure(host, f"--pid={container}", "--utility", "--no-cgroups", str(rootfs))
    assert res.returncode == 1
    assert res.stderr.startswith("nvc: mount error: ") and "read-only file system" in res.stderr
    assert mountinfo(container) == before
    assert not any(str(rootfs) in line for line in mountinfo())  # the host never saw any of it


def test_nothing_is_imported_inside_the_container_namespace(container):
    """Inside the container's mount namespace a module found by path could be the container's file: imports are
    refused there, and work again once we are back."""
    code = (
        "import sys\n"
        "from nvc.apply.executor import MountNamespace, NoImportsHere\n"
        f"with MountNamespace({container}):\n"
        "    try:\n"
        "        import colorsys\n"
        "    except NoImportsHere as exc:\n"
        "        print('refused', exc.name)\n"
        "import colorsys\n"
        "print('after', colorsys.__name__, MountNamespace.__name__ not in [type(f).__name__ for f in sys.meta_path])\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == ["refused colorsys", "after colorsys True"]


def test_ld_so_conf_needing_more_code_falls_back_to_ldconfig(host, rootfs, container, tmp_path):
    """An include pattern our cache writer would need glob for (loaded only on demand, and nothing is imported
    inside the container's namespace) makes configure run ldconfig instead — and the result is the same."""
    (rootfs / "etc/ld.so.conf").write_text("include /etc/ld.so.conf.d/[a-z]*.conf\n")
    (rootfs / "etc/ld.so.conf.d").mkdir()
    (rootfs / "etc/ld.so.conf.d/lib64.conf").write_text("/usr/lib64\n")
    log = tmp_path / "debug.log"
    env = dict(os.environ, **host.env)
    warm = configure(host, "--dry-run", "--compute", "--utility", str(rootfs))  # fills the inventory cache: a
    assert warm.returncode == 0, warm.stderr  # cold one runs discovery, which loads glob on the host side
    res = subprocess.run([sys.executable, "-m", "nvc", "--root", str(host.root), f"--debug={log}", "configure",
                          f"--pid={container}", "--compute", "--utility", "--ldconfig=@/sbin/ldconfig",
                          "--no-cgroups", str(rootfs)], capture_output=True, text=True, env=env, timeout=120,
                         check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr
    text = log.read_text()
    assert "falling back to ldconfig" in text and "executed ldconfig" in text, text
    view = in_container(container, rootfs)
    listing = subprocess.run(["/sbin/ldconfig", "-p", "-C", str(view / "etc/ld.so.cache")], capture_output=True,
                             text=True, check=True).stdout
    assert "libcuda.so.1 (libc6,x86-64) => /usr/lib64/libcuda.so.1" in listing
