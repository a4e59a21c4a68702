"""docker end to end: Debian's docker.io 20.10, run as root with everything private (fixtures/docker_lab.py), starts
containers from an image made by ``docker import`` of a Debian rootfs, and our tools give them the Debian 535 driver
of the fake GPU host — through both docker GPU paths of the seeds' nvidia-docker2 stack:

* ``docker run --gpus device=1``: dockerd adds the prestart hook ``nvidia-container-runtime-hook`` found in its
  PATH (ours: the daemon's PATH holds our launchers);
* ``docker run --runtime=nvidia -e NVIDIA_VISIBLE_DEVICES=1``: daemon.json's ``runtimes`` names our
  ``nvidia-container-runtime``, which adds our hook and execs runc.

The proof inside is the same as for runc (tests/test_e2e_runtimes.py): the selected GPU's node opens to ENXIO (there,
allowed, no driver), the unselected one is absent, ``ldconfig -p`` lists libcuda and libnvidia-ml (the image's own
ldconfig cache, updated by us), and the real nvidia-smi runs and fails as on a host without a kernel driver.
A container that asks for no GPU gets nothing. One dockerd serves the module.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator

import pytest

from fixtures.docker_lab import DockerLab
from fixtures.rootfs import apt_install
from tests.test_e2e_runtimes import PROBE, assert_gpu_container, container_rootfs

pytestmark = [pytest.mark.root, pytest.mark.slow]
IMAGE = "nvc-debian:gpu-probe"  # Debian: its own ldconfig, so `ldconfig -p` shows what was injected
SMALL_IMAGE = "nvc-busybox:gpu-probe"  # busybox where the point needs no ldconfig (vfs copies 6 MB, not 130)
DOCKER_PROBE = PROBE.replace("; echo env=", "; ldconfig -p | grep 'libcuda.so.1 '; echo env=")
STUB = ["-e", "NVML_STUB_CONFIG=/etc/nvml-stub.conf"]  # the container's view of NVML: Driver Not Loaded


@pytest.fixture(scope="module")
def docker(tmp_path_factory, tools) -> Iterator[DockerLab]:
    try:
        apt_install(["docker.io"])
    except Exception as exc:  # no mirror, dpkg broken: nothing here can be tested
        pytest.skip(f"docker.io cannot be installed here: {exc}")
    if not (shutil.which("dockerd", path="/usr/sbin") and shutil.which("docker", path="/usr/bin")):
        pytest.skip("docker.io installed no /usr/sbin/dockerd or /usr/bin/docker")
    bindir, env = tools
    with DockerLab(env, runtimes={"nvidia": str(bindir / "nvidia-container-runtime")}) as lab:
        rootfs = container_rootfs(tmp_path_factory.mktemp("docker-image") / "rootfs", debian=True)
        lab.import_rootfs(rootfs, IMAGE)
        lab.import_rootfs(container_rootfs(tmp_path_factory.mktemp("docker-small") / "rootfs"), SMALL_IMAGE)
        yield lab


def assert_docker_gpu_container(out: str) -> None:
    assert_gpu_container(out)
    assert "libcuda.so.1 (libc6,x86-64) => " in out, out
    assert "nvidia0 nvidiactl" in out.splitlines()[-1]


def test_docker_gpus_flag_runs_our_hook_from_the_daemons_path(docker):
    res = docker.run(IMAGE, ["sh", "-c", DOCKER_PROBE], ["--gpus", "device=1", *STUB])
    assert res.returncode == 0, res.stderr + docker.log_tail()
    assert_docker_gpu_container(res.stdout)


def test_docker_nvidia_runtime_from_daemon_json(docker):
    config = json.loads(docker.config.read_text())  # written by `nvc setup docker --runtime runc`'s code
    assert config["runtimes"]["nvidia"]["path"].endswith("/nvidia-container-runtime")
    res = docker.run(IMAGE, ["sh", "-c", DOCKER_PROBE],
                     ["--runtime=nvidia", "-e", "NVIDIA_VISIBLE_DEVICES=1", *STUB])
    assert res.returncode == 0, res.stderr + docker.log_tail()
    assert_docker_gpu_container(res.stdout)


@pytest.mark.parametrize(("image", "args"), [(SMALL_IMAGE, []), (IMAGE, ["--runtime=nvidia"])],
                         ids=["runc", "nvidia-runtime"])
def test_docker_container_without_a_gpu_request_gets_nothing(docker, image, args):
    res = docker.run(image, ["sh", "-c", DOCKER_PROBE], [*args, *STUB])
    assert res.returncode == 0, res.stderr
    assert "smi=127" in res.stdout  # no nvidia-smi at all
    assert "libnvidia-ml" not in res.stdout and "libcuda" not in res.stdout
    assert "nvidia" not in res.stdout.splitlines()[-1]  # no node in /dev


def test_docker_hook_failure_fails_the_run_with_one_line(docker):
    res = docker.run(SMALL_IMAGE, ["true"], ["--gpus", "device=7"])
    assert res.returncode != 0
    assert "nvidia-container-runtime-hook: device error: 7: unknown device" in res.stderr
    assert "Traceback" not in res.stderr


def test_docker_lab_state_is_private(docker):
    """The daemon's state, sockets and runtime state live under the lab's base, nowhere else."""
    assert docker.socket.is_socket()
    assert (docker.base / "data" / "vfs").is_dir() and (docker.base / "exec").is_dir()
    assert not os.path.exists("/var/lib/docker/vfs")
