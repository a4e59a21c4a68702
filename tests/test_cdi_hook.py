"""``nvidia-cdi-hook``: our one createContainer hook, run as a runtime runs it (OCI state on stdin, the bundle's
config.json naming the root) on real images: the busybox root (glibc, static ldconfig) and its hostile variants.

The spec's mounts are what a CDI runtime makes before the hook; here the driver files are copied to the same
container paths instead, so the hook sees the same files without a runtime. The hook's arguments come from a spec
``nvc cdi generate`` wrote for the fake GPU host: generator and hook are tested together.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.rootfs import busybox_rootfs, copy_rootfs, safe_rmtree
from nvc.host.ldcache import read_cache

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def spec(host, tools) -> dict:
    bindir, env = tools
    res = subprocess.run([str(bindir / "nvidia-cdi-hook"), "--help"], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and "configure-container" in res.stderr
    res = subprocess.run([sys.executable, "-m", "nvc", "cdi", "generate", "--driver-root", str(host.root),
                          "--hook-path", str(bindir / "nvidia-cdi-hook"), "--format", "json"],
                         env={**os.environ, **env}, cwd=REPO, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def hook_args(spec: dict) -> list[str]:
    return spec["containerEdits"]["hooks"][0]["args"]


def image(tmp_path: Path, spec: dict, *, with_libs: bool = True) -> tuple[Path, Path]:
    """(bundle, rootfs): a busybox root with the spec's files at their container paths, and a bundle for it."""
    bundle = tmp_path / "bundle"
    rootfs = copy_rootfs(busybox_rootfs(), bundle / "rootfs")
    if with_libs:
        for mount in spec["containerEdits"]["mounts"]:
            if mount["type"] == "bind" and mount["containerPath"].startswith("/usr/lib64/"):
                target = rootfs / mount["containerPath"].lstrip("/")
                shutil.copy2(mount["hostPath"], target)
    (bundle / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "root": {"path": "rootfs"}}))
    return bundle, rootfs


def run_hook(tools, bundle: Path, args: list[str], *, wrap: list[str] | None = None) -> subprocess.CompletedProcess:
    bindir, _ = tools
    state = json.dumps({"ociVersion": "1.0.2", "id": "c1", "status": "creating", "pid": 1, "bundle": str(bundle)})
    argv = [*(wrap or []), str(bindir / "nvidia-cdi-hook"), *args[1:]]
    return subprocess.run(argv, input=state, capture_output=True, text=True, timeout=120, check=False,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})  # a runtime's hook env: nothing of ours


def ldconfig_p(rootfs: Path) -> str:
    """The image's own (static, glibc) ldconfig printing the cache we wrote."""
    res = subprocess.run(["chroot", str(rootfs), "/sbin/ldconfig", "-p"], capture_output=True, text=True,
                         check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_configure_container_links_and_cache(tmp_path, spec, tools):
    bundle, rootfs = image(tmp_path, spec)
    before = ldconfig_p(rootfs)
    res = run_hook(tools, bundle, hook_args(spec))
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    lib64 = rootfs / "usr/lib64"
    assert os.readlink(lib64 / "libcuda.so.1") == "libcuda.so.535.309.01"
    assert os.readlink(lib64 / "libcuda.so") == "libcuda.so.1"
    assert os.readlink(lib64 / "libnvidia-ml.so.1") == "libnvidia-ml.so.535.309.01"
    assert os.readlink(lib64 / "libGLX_indirect.so.0") == "libGLX_nvidia.so.535.309.01"
    printed = ldconfig_p(rootfs)
    assert "\tlibcuda.so.1 (libc6,x86-64) => /usr/lib64/libcuda.so.1\n" in printed
    assert "\tlibnvidia-ml.so.1 (libc6,x86-64) => /usr/lib64/libnvidia-ml.so.1\n" in printed
    for line in before.splitlines()[1:]:
        assert line in printed  # the image's own libraries stay
    assert stat.S_IMODE((rootfs / "etc/ld.so.cache").stat().st_mode) == 0o644
    # The loader resolves a driver library's dependency (libnvidia-encode needs libnvcuvid.so.1) by the cache.
    found = subprocess.run(["chroot", str(rootfs), "/lib64/ld-linux-x86-64.so.2", "--list",
                            "/usr/lib64/libnvidia-encode.so.1"], capture_output=True, text=True, check=False)
    assert "libnvcuvid.so.1 => /usr/lib64/libnvcuvid.so.1" in found.stdout, found.stdout + found.stderr
    # Running it again (a restarted container) changes nothing and does not fail.
    cache = (rootfs / "etc/ld.so.cache").read_bytes()
    assert run_hook(tools, bundle, hook_args(spec)).returncode == 0
    assert (rootfs / "etc/ld.so.cache").read_bytes() == cache
    safe_rmtree(bundle)


def test_a_restart_rewrites_nothing(tmp_path, spec, tools):
    """A restarted container already has the links and the merged cache: the second run changes no file (the
    cache keeps its inode, so no rename happened), and it still succeeds."""
    bundle, rootfs = image(tmp_path, spec)
    assert run_hook(tools, bundle, hook_args(spec)).returncode == 0
    cache = rootfs / "etc/ld.so.cache"
    before = cache.stat()
    links = {p.name: os.readlink(p) for p in (rootfs / "usr/lib64").iterdir() if p.is_symlink()}
    res = run_hook(tools, bundle, hook_args(spec))
    assert res.returncode == 0, res.stderr
    after = cache.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert {p.name: os.readlink(p) for p in (rootfs / "usr/lib64").iterdir() if p.is_symlink()} == links
    safe_rmtree(bundle)


def test_stale_links_are_replaced_and_the_images_files_kept(tmp_path, spec, tools):
    """ldconfig's rule where a link's name exists: a link to something else is replaced, a file is left alone."""
    bundle, rootfs = image(tmp_path, spec)
    lib64 = rootfs / "usr/lib64"
    (lib64 / "libcuda.so.1").symlink_to("libcuda.so.470.01")  # stale: an older driver's
    (lib64 / "libnvidia-ml.so.1").write_bytes(b"the image's own\n")
    res = run_hook(tools, bundle, hook_args(spec))
    assert res.returncode == 0, res.stderr
    assert os.readlink(lib64 / "libcuda.so.1") == "libcuda.so.535.309.01"
    assert (lib64 / "libnvidia-ml.so.1").read_bytes() == b"the image's own\n"
    assert os.readlink(lib64 / "libcuda.so") == "libcuda.so.1"
    safe_rmtree(bundle)


def test_image_without_ldconfig_still_gets_the_cache(tmp_path, spec, tools):
    """No ldconfig is exec'd, so an image without one (distroless-style) gets a correct cache all the same."""
    bundle, rootfs = image(tmp_path, spec)
    (rootfs / "sbin/ldconfig").unlink()
    (rootfs / "etc/ld.so.cache").unlink()
    res = run_hook(tools, bundle, hook_args(spec))
    assert res.returncode == 0, res.stderr
    cache = read_cache(rootfs / "etc/ld.so.cache")
    values = {entry.key: entry.value for entry in cache.entries}
    assert values["libcuda.so.1"] == "/usr/lib64/libcuda.so.1"
    safe_rmtree(bundle)


def test_hostile_symlinks_stay_inside_the_root(tmp_path, spec, tools):
    """/etc and /usr/lib64 of the image point at host paths: everything lands inside the root, the host's
    directories are untouched."""
    host_etc = tmp_path / "host-etc"
    host_lib = tmp_path / "host-lib"
    host_etc.mkdir()
    host_lib.mkdir()
    (host_etc / "ld.so.cache").write_bytes(b"host cache")
    bundle, rootfs = image(tmp_path, spec, with_libs=False)
    shutil.rmtree(rootfs / "etc")
    (rootfs / "etc").symlink_to(host_etc)  # absolute: re-rooted, i.e. ROOTFS/<tmp_path>/host-etc
    safe_rmtree(rootfs / "usr/lib64")
    (rootfs / "usr/lib64").symlink_to("../../../../../../../../" + str(host_lib).lstrip("/"))  # ".." clamps at /
    res = run_hook(tools, bundle, hook_args(spec))
    assert res.returncode == 0, res.stderr
    assert (host_etc / "ld.so.cache").read_bytes() == b"host cache"
    assert list(host_lib.iterdir()) == []
    inside = rootfs / str(host_etc).lstrip("/") / "ld.so.cache"
    assert inside.is_file()
    assert os.readlink(rootfs / str(host_lib).lstrip("/") / "libcuda.so.1") == "libcuda.so.535.309.01"
    safe_rmtree(bundle)


def _read_only(path: Path) -> list[str]:
    """A prefix running the hook in a private mount namespace where ``path`` is a read-only bind of itself."""
    script = f'mount --bind "{path}" "{path}" && mount -o remount,bind,ro "{path}" && exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"]


def test_read_only_etc_fails_in_one_line_and_undoes_the_links(tmp_path, spec, tools):
    bundle, rootfs = image(tmp_path, spec)
    cache = (rootfs / "etc/ld.so.cache").read_bytes()
    links_before = sorted(p.name for p in (rootfs / "usr/lib64").iterdir())
    res = run_hook(tools, bundle, hook_args(spec), wrap=_read_only(rootfs / "etc"))
    assert res.returncode == 1
    assert res.stderr.startswith("nvidia-cdi-hook: ldcache error: cache update failed: ")
    assert res.stderr.rstrip("\n").endswith("read-only file system") and res.stderr.count("\n") == 1
    assert sorted(p.name for p in (rootfs / "usr/lib64").iterdir()) == links_before  # links made were removed
    assert (rootfs / "etc/ld.so.cache").read_bytes() == cache
    assert not [p for p in (rootfs / "etc").iterdir() if p.name.endswith(".tmp")]
    safe_rmtree(bundle)


def test_read_only_root_fails_at_the_first_link(tmp_path, spec, tools):
    bundle, rootfs = image(tmp_path, spec)
    res = run_hook(tools, bundle, hook_args(spec), wrap=_read_only(rootfs))
    assert res.returncode == 1
    assert res.stderr.startswith("nvidia-cdi-hook: mount error: symlink creation failed: ")
    assert res.stderr.rstrip("\n").endswith("read-only file system") and res.stderr.count("\n") == 1
    assert not (rootfs / "usr/lib64/libcuda.so.1").exists()
    safe_rmtree(bundle)


def test_nvidia_subcommands_as_a_drop_in(tmp_path, spec, tools):
    """What an nvidia-ctk spec runs: create-symlinks, enable-cuda-compat, update-ldcache (scanning the folder)."""
    bundle, rootfs = image(tmp_path, spec)
    compat = rootfs / "usr/local/cuda/compat"
    compat.mkdir(parents=True)
    shutil.copy2(rootfs / "usr/lib64/libcuda.so.535.309.01", compat / "libcuda.so.545.23.06")
    res = run_hook(tools, bundle, ["nvidia-cdi-hook", "create-symlinks", "--link",
                                   "libcuda.so.1::/usr/lib64/libcuda.so", "--link=libnvidia-ml.so.1::/usr/lib64/x.so"])
    assert res.returncode == 0, res.stderr
    assert os.readlink(rootfs / "usr/lib64/libcuda.so") == "libcuda.so.1"
    assert os.readlink(rootfs / "usr/lib64/x.so") == "libnvidia-ml.so.1"
    res = run_hook(tools, bundle, ["nvidia-cdi-hook", "enable-cuda-compat", "--host-driver-version=535.309.01"])
    assert res.returncode == 0, res.stderr
    assert (rootfs / "etc/ld.so.conf.d/00-compat-nvc.conf").read_text() == "/usr/local/cuda/compat\n"
    res = run_hook(tools, bundle, ["nvidia-cdi-hook", "update-ldcache", "--folder", "/usr/lib64",
                                   "--ldconfig-path", "/sbin/ldconfig"])
    assert res.returncode == 0, res.stderr
    printed = ldconfig_p(rootfs)
    entries = printed.splitlines()[1:]
    assert len(entries) == len(set(entries))  # the image's own libraries, scanned again, are not listed twice
    assert "\tlibc.so.6 (libc6,x86-64) => /usr/lib64/libc.so.6" in entries
    lines = [line.strip() for line in printed.splitlines() if line.strip().startswith("libcuda.so.1 ")]
    # The forward-compat driver first (newer major than the host's 535), then the host's.
    assert lines == ["libcuda.so.1 (libc6,x86-64) => /usr/local/cuda/compat/libcuda.so.1",
                     "libcuda.so.1 (libc6,x86-64) => /usr/lib64/libcuda.so.1"]
    assert os.readlink(compat / "libcuda.so.1") == "libcuda.so.545.23.06"
    safe_rmtree(bundle)


def test_compat_older_than_the_host_driver_is_not_used(tmp_path, spec, tools):
    bundle, rootfs = image(tmp_path, spec)
    compat = rootfs / "usr/local/cuda/compat"
    compat.mkdir(parents=True)
    shutil.copy2(rootfs / "usr/lib64/libcuda.so.535.309.01", compat / "libcuda.so.525.60.13")
    assert run_hook(tools, bundle, hook_args(spec)).returncode == 0
    printed = ldconfig_p(rootfs)
    assert "/usr/local/cuda/compat" not in printed
    assert not (rootfs / "etc/ld.so.conf.d/00-compat-nvc.conf").exists()
    # ...and a newer one is picked by configure-container itself.
    shutil.copy2(rootfs / "usr/lib64/libcuda.so.535.309.01", compat / "libcuda.so.550.54.15")
    assert run_hook(tools, bundle, hook_args(spec)).returncode == 0
    first = next(line for line in ldconfig_p(rootfs).splitlines() if "libcuda.so.1 " in line)
    assert first.strip() == "libcuda.so.1 (libc6,x86-64) => /usr/local/cuda/compat/libcuda.so.1"
    safe_rmtree(bundle)


def test_corrupt_image_cache_is_replaced_by_a_fresh_one(tmp_path, spec, tools):
    bundle, rootfs = image(tmp_path, spec)
    (rootfs / "etc/ld.so.cache").write_bytes(b"not a cache")
    assert run_hook(tools, bundle, hook_args(spec)).returncode == 0
    assert "libcuda.so.1 (libc6,x86-64) => /usr/lib64/libcuda.so.1" in ldconfig_p(rootfs)
    safe_rmtree(bundle)


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["frobnicate"], None, "nvidia-cdi-hook: input error: unknown command 'frobnicate'\n"),
        (["create-symlinks", "--link", "nolink"], None,
         "nvidia-cdi-hook: input error: invalid --link 'nolink': expected A::B\n"),
        (["create-symlinks", "--link", "a::relative"], None,
         "nvidia-cdi-hook: input error: invalid --link 'a::relative': the link must be an absolute container path\n"),
        (["configure-container", "--library", "/usr/lib64/x::x.so.1"], None,
         "nvidia-cdi-hook: input error: invalid --library '/usr/lib64/x::x.so.1': expected PATH::SONAME::FLAGS\n"),
        (["update-ldcache", "--bogus", "x"], None,
         "nvidia-cdi-hook: input error: flag provided but not defined: -bogus\n"),
        (["update-ldcache"], "{not json", "nvidia-cdi-hook: input error: failed to decode container state: "),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(tools, tmp_path, args, stdin, message):
    bindir, _ = tools
    res = subprocess.run([str(bindir / "nvidia-cdi-hook"), *args], input=stdin or "{}", capture_output=True, text=True,
                         timeout=60, check=False)  # fmt: skip
    assert res.returncode == 1
    assert res.stderr.startswith(message)
    assert "Traceback" not in res.stderr


def test_enable_cuda_compat_names_the_directory_without_reading_its_libraries(tmp_path, monkeypatch):
    """NVIDIA's layout: enable-cuda-compat only writes the conf file naming the directory; the libraries in it are
    read by the update-ldcache that follows, not twice."""
    from nvc.commands import cdi_hook as hook

    rootfs = tmp_path / "bundle/rootfs"
    (rootfs / "usr/local/cuda/compat").mkdir(parents=True)
    (rootfs / "usr/local/cuda/compat/libcuda.so.545.23.06").write_bytes(b"\x7fELF")
    (tmp_path / "bundle/config.json").write_text(json.dumps({"ociVersion": "1.0.2", "root": {"path": "rootfs"}}))

    def no_scan(*args):
        raise AssertionError("enable-cuda-compat read the compat libraries")

    monkeypatch.setattr(hook, "_scan_folder", no_scan)
    assert hook.run(["enable-cuda-compat", "--host-driver-version", "535.309.01",
                     "--container-spec", str(tmp_path / "bundle/config.json")]) == 0
    assert (rootfs / "etc/ld.so.conf.d/00-compat-nvc.conf").read_text() == "/usr/local/cuda/compat\n"
