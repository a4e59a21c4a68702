"""The real-runtime lab works on this machine: each runtime runs a container and calls hooks as documented.

Why: the end-to-end tests of the hook and ``configure`` trust these runners and roots. If runc stopped
passing the state a hook expects, or a bind mount made from a hook (after ``nsenter`` into the container's
mount namespace, the method the real hook uses) stopped reaching the container, those tests would fail for
reasons that have nothing to do with our code. These tests pin the facts of
``/work/shared/reference/oci-hook.md`` on the installed runtimes, and that every run cleans up after itself.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from fixtures.rootfs import busybox_rootfs, copy_rootfs, debian_rootfs, mounts_under
from fixtures.runtimes import (
    PRIVILEGED_CAPABILITIES,
    Containerd,
    ensure_runtimes,
    leftovers,
    make_bundle,
    run_crun,
    run_runc,
    run_runsc,
    unique_id,
)

pytestmark = [pytest.mark.root]

# A hook that records the state on stdin and its cwd, and (given SOURCE TARGET) bind-mounts SOURCE onto TARGET
# inside the container's mount namespace: TARGET is a host path of the rootfs, mounted at its own path there.
HOOK_SH = """\
#!/bin/sh
# usage: hook STAGE OUTDIR [SOURCE TARGET]
set -eu
stage=$1 out=$2
cat > "$out/state.$stage.json"
pwd > "$out/cwd.$stage"
if [ $# -ge 4 ]; then
    pid=$(sed -n 's/.*"pid": *\\([0-9][0-9]*\\).*/\\1/p' "$out/state.$stage.json")
    nsenter --mount=/proc/$pid/ns/mnt -- mount --bind "$3" "$4"
fi
"""

# Stands in for NVIDIA's CLI under `ctr run --gpus`: records argv, cwd, stdin, environment and the bundle's
# config.json (its cwd is the task's bundle dir), then succeeds so the container runs.
FAKE_CLI_SH = """\
#!/bin/sh
out={out}
for a in "$@"; do printf '%s\\n' "$a"; done > "$out/argv"
pwd > "$out/cwd"
cat > "$out/stdin"
env > "$out/env"
cp config.json "$out/config.json"
"""


@pytest.fixture(scope="module")
def runtimes() -> dict[str, str]:
    """Install the runtimes if needed (apt); skip the module if that is impossible here."""
    try:
        return ensure_runtimes()
    except Exception as exc:  # no mirror, no apt: nothing here can run
        pytest.skip(f"runtimes unavailable: {exc}")


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    """A host directory the hooks and spec mounts bring into containers; its marker proves they did."""
    d = tmp_path / "payload"
    d.mkdir()
    (d / "marker").write_text("payload-marker\n")
    return d


@pytest.fixture
def hook(tmp_path: Path) -> Path:
    path = tmp_path / "hook.sh"
    path.write_text(HOOK_SH)
    path.chmod(0o755)
    return path


def _busybox_bundle(tmp_path: Path, args: list[str], **kwargs) -> Path:
    bundle = tmp_path / "bundle"
    rootfs = copy_rootfs(busybox_rootfs(), bundle / "rootfs")
    (rootfs / "srv").mkdir(exist_ok=True)
    return make_bundle(bundle, rootfs, args, **kwargs)


def _load_state(out: Path, stage: str) -> dict:
    return json.loads((out / f"state.{stage}.json").read_text())


# --------------------------------------------------------------------------------------------------------
# runc and crun: prestart and createRuntime hooks, a bind mount made from the hook


@pytest.mark.parametrize("runtime", ["runc", "crun"])
def test_hooks_get_state_and_their_mounts_reach_the_container(
    runtimes: dict[str, str], tmp_path: Path, hook: Path, payload: Path, runtime: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    bundle = tmp_path / "bundle"
    rootfs = bundle / "rootfs"
    hooks = {
        "prestart": [{"path": str(hook), "args": ["hook", "prestart", str(out), str(payload), f"{rootfs}/mnt"]}],
        "createRuntime": [
            {"path": str(hook), "args": ["hook", "createRuntime", str(out), str(payload), f"{rootfs}/srv"]}
        ],
    }
    _busybox_bundle(tmp_path, ["sh", "-c", "cat /mnt/marker /srv/marker; echo done"], hooks=hooks)
    cid = unique_id(runtime)
    proc = (run_runc if runtime == "runc" else run_crun)(bundle, cid)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "payload-marker\npayload-marker\ndone\n"
    for stage in ("prestart", "createRuntime"):
        state = _load_state(out, stage)
        assert state["id"] == cid
        assert state["bundle"] == str(bundle)
        assert isinstance(state["pid"], int) and state["pid"] > 1
        # runc and crun start hooks in the bundle directory
        assert (out / f"cwd.{stage}").read_text().strip() == str(bundle)
        if runtime == "runc":
            assert state["status"] == "creating"
            assert "root" not in state
        else:  # crun adds the rootfs as written in config.json and says "created" already
            assert state["status"] == "created"
            assert state["root"] == "rootfs"
    assert _load_state(out, "prestart")["pid"] == _load_state(out, "createRuntime")["pid"]
    # the hook's mounts lived in the container's namespace only, and the runner left nothing behind
    assert mounts_under(bundle) == []
    assert leftovers(cid, [bundle]) == []


def test_runc_failing_prestart_hook_fails_the_start(runtimes: dict[str, str], tmp_path: Path) -> None:
    """The real hook's errors must surface: runc reports the hook's exit status and output."""
    hooks = {"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", "echo hook-said-no >&2; exit 1"]}]}
    bundle = _busybox_bundle(tmp_path, ["echo", "never"], hooks=hooks)
    proc = run_runc(bundle)
    assert proc.returncode != 0
    assert "never" not in proc.stdout
    # runc 1.1.5 says "error running hook #0: ... exit status 1, stdout: , stderr: hook-said-no" (newer: "prestart")
    assert "error running" in proc.stderr and "hook #0" in proc.stderr and "hook-said-no" in proc.stderr


def test_runc_privileged_readonly_bundle(runtimes: dict[str, str], tmp_path: Path) -> None:
    """make_bundle's privileged capability set and read-only root reach the container."""
    bundle = _busybox_bundle(
        tmp_path,
        ["sh", "-c", "grep CapBnd /proc/self/status; touch /x 2>/dev/null && echo writable || echo readonly"],
        readonly=True,
        capabilities=PRIVILEGED_CAPABILITIES,
    )
    spec = json.loads((bundle / "config.json").read_text())
    assert "CAP_SYS_ADMIN" in spec["process"]["capabilities"]["bounding"]
    assert spec["root"] == {"path": "rootfs", "readonly": True}
    proc = run_runc(bundle)
    assert proc.returncode == 0, proc.stderr
    cap_bnd = int(proc.stdout.split()[1], 16)
    assert cap_bnd & (1 << 21)  # CAP_SYS_ADMIN
    assert proc.stdout.split()[-1] == "readonly"


@pytest.mark.parametrize("runtime", ["runc", "crun", "runsc"])
def test_timeout_kills_the_container_and_cleans_up(runtimes: dict[str, str], tmp_path: Path, runtime: str) -> None:
    """A hung container (or hook) must not outlive its test: the runner kills it and still deletes everything."""
    bundle = _busybox_bundle(tmp_path, ["sh", "-c", "echo started; sleep 300"])
    cid = unique_id(runtime)
    runner = {"runc": run_runc, "crun": run_crun, "runsc": run_runsc}[runtime]
    with pytest.raises(subprocess.TimeoutExpired) as raised:
        runner(bundle, cid, timeout=1)
    assert raised.value.stdout == "started\n"
    assert leftovers(cid, [bundle]) == []


# --------------------------------------------------------------------------------------------------------
# runsc: spec mounts are served, prestart hooks run (in the host namespace, cwd = the caller's)


def test_runsc_spec_bind_mount_and_prestart_hook(
    runtimes: dict[str, str], tmp_path: Path, hook: Path, payload: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    bundle = _busybox_bundle(
        tmp_path,
        ["sh", "-c", "cat /payload/marker; echo inside-gvisor"],
        mounts=[{"destination": "/payload", "type": "bind", "source": str(payload), "options": ["rbind", "ro"]}],
        hooks={"prestart": [{"path": str(hook), "args": ["hook", "prestart", str(out)]}]},
    )
    cid = unique_id("runsc")
    proc = run_runsc(bundle, cid)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "payload-marker\ninside-gvisor\n"
    state = _load_state(out, "prestart")
    assert state["id"] == cid and state["bundle"] == str(bundle) and state["status"] == "created"
    assert isinstance(state["pid"], int) and state["pid"] > 1  # the sandbox process
    assert (out / "cwd.prestart").read_text().strip() == os.getcwd()
    assert leftovers(cid, [bundle]) == []


# --------------------------------------------------------------------------------------------------------
# containerd + ctr


@pytest.fixture(scope="module")
def containerd(runtimes: dict[str, str]):
    with Containerd() as cd:
        yield cd
    assert not cd.base.exists()


def test_containerd_runs_busybox(containerd: Containerd) -> None:
    proc = containerd.run(containerd.image, unique_id("ctr"), ["echo", "hello from containerd"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hello from containerd\n"
    assert [m for m in containerd.new_mounts() if m.startswith(str(containerd.base))] == []


def test_ctr_run_gpus_calls_nvidia_container_cli(containerd: Containerd, tmp_path: Path) -> None:
    """``ctr run --gpus 0`` adds a prestart hook that runs the first nvidia-container-cli on ctr's PATH."""
    fake_bin, out = tmp_path / "bin", tmp_path / "out"
    fake_bin.mkdir()
    out.mkdir()
    cli = fake_bin / "nvidia-container-cli"
    cli.write_text(FAKE_CLI_SH.format(out=out))
    cli.chmod(0o755)
    cid = unique_id("gpu")
    env = {"PATH": f"{fake_bin}:/usr/sbin:/usr/bin:/sbin:/bin", "NVC_LAB_MARK": "from-ctr"}
    proc = containerd.run(containerd.image, cid, ["echo", "gpu container"], ["--gpus", "0"], env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "gpu container\n"

    task_dir = containerd.base / "state/io.containerd.runtime.v2.task" / containerd.namespace / cid
    argv = (out / "argv").read_text().splitlines()
    assert argv[:-2] == [
        "--load-kmods",
        "configure",
        "--device=0",
        "--compute",
        "--compat32",
        "--graphics",
        "--utility",
        "--video",
        "--display",
    ]
    assert argv[-2].startswith("--pid=") and int(argv[-2].removeprefix("--pid=")) > 1
    assert argv[-1] == f"{task_dir}/rootfs"
    assert (out / "cwd").read_text().strip() == str(task_dir)
    assert (out / "stdin").read_bytes() == b""
    assert "NVC_LAB_MARK=from-ctr" in (out / "env").read_text()  # the hook gets ctr's environment

    spec = json.loads((out / "config.json").read_text())
    [gpu_hook] = spec["hooks"]["prestart"]
    assert os.path.basename(gpu_hook["path"]) == "containerd"
    assert gpu_hook["args"][:4] == ["containerd", "oci-hook", "--", str(cli)]
    assert "--pid={{pid}}" in gpu_hook["args"] and gpu_hook["args"][-1] == "{{rootfs}}"
    assert not task_dir.exists()  # --rm


# --------------------------------------------------------------------------------------------------------
# Root filesystems


def test_busybox_rootfs_layout_and_glibc_in_runc(runtimes: dict[str, str], tmp_path: Path) -> None:
    """Non-Debian layout (no /etc/debian_version, libs in /usr/lib64) with a working loader and ldconfig."""
    src = busybox_rootfs()
    assert not (src / "etc/debian_version").exists()
    assert os.readlink(src / "lib64") == "usr/lib64"
    bundle = _busybox_bundle(
        tmp_path,
        ["sh", "-c", "/sbin/ldconfig && /sbin/ldconfig -p && /lib64/ld-linux-x86-64.so.2 --list /usr/lib64/librt.so.1"],
    )
    proc = run_runc(bundle)
    assert proc.returncode == 0, proc.stderr
    assert "libc.so.6 (libc6,x86-64) => /usr/lib64/libc.so.6" in proc.stdout
    assert "libc.so.6 => /usr/lib64/libc.so.6" in proc.stdout


def test_debian_rootfs_ldconfig_in_runc_does_not_touch_the_cache(runtimes: dict[str, str], tmp_path: Path) -> None:
    """ldconfig in a copy rewrites the copy's /etc/ld.so.cache, never the shared cached root's."""
    src = debian_rootfs()
    assert (src / "etc/debian_version").is_file()
    cached = src / "etc/ld.so.cache"
    before = (cached.stat().st_ino, cached.stat().st_mtime_ns, cached.read_bytes())
    bundle = tmp_path / "bundle"
    rootfs = copy_rootfs(src, bundle / "rootfs")
    make_bundle(bundle, rootfs, ["sh", "-c", "/sbin/ldconfig && /sbin/ldconfig -p && cat /etc/debian_version"])
    proc = run_runc(bundle)
    assert proc.returncode == 0, proc.stderr
    assert "libc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6" in proc.stdout
    assert (cached.stat().st_ino, cached.stat().st_mtime_ns, cached.read_bytes()) == before
    assert (rootfs / "etc/ld.so.cache").stat().st_mtime_ns != before[1]


def test_copy_rootfs_links_only_what_containers_do_not_write(tmp_path: Path) -> None:
    src = busybox_rootfs()
    dest = copy_rootfs(src, tmp_path / "copy")
    assert (dest / "bin/busybox").stat().st_ino == (src / "bin/busybox").stat().st_ino  # shared, never written
    for rel in ("etc/ld.so.cache", "etc/passwd"):
        assert (dest / rel).stat().st_ino != (src / rel).stat().st_ino
        assert (dest / rel).read_bytes() == (src / rel).read_bytes()
    assert os.readlink(dest / "bin/sh") == "busybox"
    assert stat.S_IMODE((dest / "tmp").stat().st_mode) == 0o1777
    full = copy_rootfs(src, tmp_path / "full", hardlink=False)
    assert (full / "bin/busybox").stat().st_ino != (src / "bin/busybox").stat().st_ino
    extra = copy_rootfs(src, tmp_path / "extra", copy=["usr/lib64"])
    assert (extra / "usr/lib64/libc.so.6").stat().st_ino != (src / "usr/lib64/libc.so.6").stat().st_ino


def test_leftovers_reports_a_mount(tmp_path: Path) -> None:
    """The cleanup check sees what a broken run would leave (a bind mount inside a bundle)."""
    source, target = tmp_path / "src", tmp_path / "bundle" / "rootfs"
    source.mkdir()
    target.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    try:
        assert leftovers(None, [tmp_path / "bundle"]) == [f"mount {target}"]
    finally:
        subprocess.run(["umount", str(target)], check=True)
    assert leftovers(None, [tmp_path / "bundle"]) == []
