"""podman (Debian's 4.3, runc) runs GPU containers from a spec ``nvc cdi generate`` wrote: ``--device
nvidia.com/gpu=1`` and ``=all``, podman applying the spec's nodes and mounts and running our ONE hook.

podman 4.3 has no ``--cdi-spec-dir`` and no ``cdi_spec_dirs`` setting: it reads /etc/cdi and /var/run/cdi only.
The host's /etc/cdi is never written: each podman call runs in a private mount namespace whose /etc is an overlay
(the host's /etc below, a per-call upper directory above holding ``cdi/nvidia.yaml``), gone with the namespace;
/var/lib likewise (podman 4.3 creates /var/lib/containers/cache for its blob-info cache whatever ``--root`` says).
Everything else of podman's state is private as in tests/test_podman.py (whose ``Podman`` lab this reuses).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.host_residue import HostResidue
from fixtures.rootfs import mounts_under, safe_rmtree
from fixtures.runtimes import oci_image_tar
from tests.test_e2e_runtimes import PROBE, assert_gpu_container, container_rootfs
from tests.test_podman import IMAGE, SYSTEM_PATHS, Podman, _ulimit_args, podman_version  # noqa: F401

pytestmark = [pytest.mark.root, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent
SMI_ON_PATH = ("; echo smi_path=$(command -v nvidia-smi); ldconfig -p | grep 'libcuda.so.1 '; "
               "echo devlink=$(readlink /usr/lib64/libcuda.so)")
# /var/lib too: podman 4.3 writes its blob-info cache to /var/lib/containers/cache whatever --root says.
_OVERLAY = ('for d in etc var/lib; do mkdir -p "$1/$d" "$2/$d" && '
            'mount -t overlay nvc-overlay -o "lowerdir=/$d,upperdir=$1/$d,workdir=$2/$d" "/$d" || exit 125; done; '
            'shift 2; exec "$@"')


class CdiPodman(Podman):
    """The private podman lab, each call seeing ``spec_dir``'s files as /etc/cdi (private overlay, see above)."""

    def __init__(self, base: Path, spec_dir: Path) -> None:
        super().__init__(base)
        self.spec_dir = spec_dir

    def __call__(self, *args: str, env: dict[str, str] | None = None,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
        call = self.base / "etc-overlay" / uuid.uuid4().hex[:8]
        upper, work = call / "upper", call / "work"
        work.mkdir(parents=True)
        shutil.copytree(self.spec_dir, upper / "etc/cdi")
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", _OVERLAY, "sh", str(upper), str(work),
                "podman", *self.global_args, *args]
        return subprocess.run(argv, env={**self.env, **(env or {})}, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout, check=False)

    def run_devices(self, *devices: str, cmd: str = PROBE) -> subprocess.CompletedProcess[str]:
        parent = f"nvc-cdi-podman-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.parents.append(parent)
        device_args = [arg for device in devices for arg in ("--device", device)]
        res = self("run", "--rm", "--network=none", f"--cgroup-parent=/{parent}", *_ulimit_args(),
                   "--env", "NVML_STUB_CONFIG=/etc/nvml-stub.conf", *device_args, IMAGE, "sh", "-c", cmd)
        left = self("ps", "-a", "-q")
        assert left.returncode == 0 and not left.stdout.strip(), f"podman ps -a: {left.stdout}{left.stderr}"
        return res


@pytest.fixture(scope="module")
def spec_dir(tmp_path_factory, host, tools) -> Path:
    """The spec generated for the fake host, naming our hook wrapper (what an installed nvc provides)."""
    bindir, env = tools
    spec_dir = tmp_path_factory.mktemp("cdi")
    res = subprocess.run([sys.executable, "-m", "nvc", "cdi", "generate", "--driver-root", str(env["NVC_DRIVER_ROOT"]),
                          "--hook-path", str(bindir / "nvidia-cdi-hook"), "--output", str(spec_dir / "nvidia.yaml")],
                         env={**os.environ, **env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                         timeout=120, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return spec_dir


@pytest.fixture(scope="module")
def podman(tmp_path_factory, spec_dir, podman_version) -> Iterator[CdiPodman]:  # noqa: F811
    mounts_before = set(mounts_under("/"))
    residue = HostResidue.take((*SYSTEM_PATHS, "/etc/cdi", "/var/run/cdi"))  # every new path below them, too
    work = tmp_path_factory.mktemp("podman")
    lab = CdiPodman(Path(tempfile.mkdtemp(prefix="nvc-cdi-", dir="/tmp")), spec_dir)
    try:
        tar = oci_image_tar(container_rootfs(work / "image"), work / "probe.tar", IMAGE)
        loaded = lab("load", "--input", str(tar))
        assert loaded.returncode == 0, loaded.stderr
        assert re.search(rf"Loaded image(\(s\))?: {re.escape(IMAGE)}$", loaded.stdout, re.M), loaded.stdout
        yield lab
    finally:
        problems = lab.close()
        safe_rmtree(work)
        problems += [f"new mount {m}" for m in set(mounts_under("/")) - mounts_before
                     if m.startswith((str(work), str(lab.base), "/etc"))]
        problems += residue.settle()
        assert not problems, "podman left behind:\n  " + "\n  ".join(problems)


def _dev_line(out: str) -> str:
    """The probe's ``ls /dev | grep nvidia`` line (the last line before our own additions)."""
    return next(line for line in out.splitlines() if line.startswith("nvidia") and "nvidiactl" in line)


def test_podman_cdi_one_gpu(podman):
    res = podman.run_devices("nvidia.com/gpu=1", cmd=PROBE + SMI_ON_PATH)
    assert res.returncode == 0, res.stderr
    assert_gpu_container(res.stdout)  # nvidia-smi ran, libnvidia-ml in the cache, /dev/nvidia0 only
    assert _dev_line(res.stdout).split() == ["nvidia-modeset", "nvidia-uvm", "nvidia-uvm-tools", "nvidia0",
                                             "nvidiactl"]
    assert "smi_path=/usr/bin/nvidia-smi" in res.stdout
    assert "libcuda.so.1 (libc6,x86-64) => /usr/lib64/libcuda.so.1" in res.stdout
    assert "devlink=libcuda.so.1" in res.stdout  # the plan's link, made by the hook


def test_podman_cdi_by_uuid_and_all(podman):
    res = podman.run_devices("nvidia.com/gpu=GPU-9b2e5d7a-3c4f-4e1a-b6d8-2f0c1e3a5b7d")
    assert res.returncode == 0, res.stderr
    assert_gpu_container(res.stdout)
    res = podman.run_devices("nvidia.com/gpu=all", cmd=PROBE + SMI_ON_PATH)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("No such device or address") == 2  # /dev/nvidia0 and /dev/nvidia3, both allowed
    assert _dev_line(res.stdout).split() == ["nvidia-caps", "nvidia-modeset", "nvidia-uvm", "nvidia-uvm-tools",
                                             "nvidia0", "nvidia3", "nvidiactl"]
    assert "libnvidia-ml.so.1 (libc6,x86-64) => /usr/lib64/libnvidia-ml.so.1" in res.stdout
    assert "smi_path=/usr/bin/nvidia-smi" in res.stdout


def test_podman_cdi_unknown_device_fails_the_run(podman):
    res = podman.run_devices("nvidia.com/gpu=7", cmd="true")
    assert res.returncode != 0
    assert "nvidia.com/gpu=7" in res.stderr and "unresolvable CDI devices" in res.stderr


def test_podman_43_refuses_a_cdi_0_6_spec(podman, podman_version, tmp_path, spec_dir):  # noqa: F811
    """Why ``--annotations`` is off by default: the nvc/driver-* annotations need cdiVersion 0.6.0, and podman
    4.3's CDI library knows versions up to 0.5.0 only."""
    if not podman_version.startswith("podman version 4.3."):
        pytest.skip(f"checked on podman 4.3 only, this is {podman_version}")
    annotated = tmp_path / "cdi"
    annotated.mkdir()
    text = (spec_dir / "nvidia.yaml").read_text()
    assert text.startswith("cdiVersion: 0.5.0\n")
    (annotated / "nvidia.yaml").write_text(
        text.replace("cdiVersion: 0.5.0\n", "cdiVersion: 0.6.0\n", 1).replace(
            "kind: nvidia.com/gpu\n", "kind: nvidia.com/gpu\nannotations:\n  nvc/driver-version: 535.309.01\n", 1))
    kept, podman.spec_dir = podman.spec_dir, annotated
    try:
        res = podman.run_devices("nvidia.com/gpu=1", cmd="true")
    finally:
        podman.spec_dir = kept
    assert res.returncode != 0
    assert "unresolvable CDI devices nvidia.com/gpu=1" in res.stderr
