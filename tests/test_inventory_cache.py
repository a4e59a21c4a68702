"""The driver-root inventory cache (nvc.host.inventory_cache): hits skip the ld.so.cache, every change is noticed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from nvc.host import inventory
from nvc.host.inventory import build_inventory
from nvc.host.nvml.cache import CACHE_DIR_ENV, NO_CACHE_ENV
from nvc.rootpath import DriverRoot


@pytest.fixture(scope="module")
def gpu_host(tmp_path_factory):
    from fixtures.gpu_host import make_gpu_host

    if os.geteuid() != 0:
        pytest.skip("needs root (mknod)")
    return make_gpu_host(tmp_path_factory.mktemp("invcache"))


@pytest.fixture
def host(gpu_host, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(NO_CACHE_ENV, raising=False)
    for name, value in gpu_host.env.items():
        monkeypatch.setenv(name, value)
    return gpu_host


@pytest.fixture
def reads(monkeypatch):
    """Count ld.so.cache reads (a hit makes none)."""
    calls = []
    real = inventory.load_ldcache

    def counting(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(inventory, "load_ldcache", counting)
    return calls


def root(host) -> DriverRoot:
    return DriverRoot(str(host.root))


def entries(tmp_path) -> list[str]:
    cache = tmp_path / "cache"
    return sorted(n for n in os.listdir(cache) if n.endswith(".json")) if cache.is_dir() else []


def test_hit_reads_no_ldcache_and_gives_the_same_files(host, reads, tmp_path):
    first = build_inventory(root(host))
    assert len(reads) == 1
    second = build_inventory(root(host))
    assert len(reads) == 1
    assert second == first
    for name in entries(tmp_path):
        st = os.stat(tmp_path / "cache" / name)
        assert st.st_mode & 0o777 == 0o600 and st.st_uid == os.geteuid()


def test_hit_imports_no_ldcache_module(host, tmp_path):
    build_inventory(root(host))
    code = (
        "import sys; from nvc.host.inventory import build_inventory; from nvc.rootpath import DriverRoot; "
        "build_inventory(DriverRoot(sys.argv[1])); "
        "bad = [m for m in ('nvc.host.ldcache', 'nvc.host.elf') if m in sys.modules]; sys.exit(f'imported {bad}' if "
            "bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code, str(host.root)], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert res.returncode == 0, res.stderr


def test_ldcache_rewritten_is_a_miss(host, reads):
    build_inventory(root(host))
    ldcache = host.root / "etc/ld.so.cache"
    st = os.stat(ldcache)
    os.utime(ldcache, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    build_inventory(root(host))
    assert len(reads) == 2


def test_library_replaced_is_a_miss(host, reads):
    first = build_inventory(root(host))
    lib = first.files.libraries[0].host_path
    st = os.stat(lib)
    os.utime(lib, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert build_inventory(root(host)) == first
    assert len(reads) == 2


def test_symlink_repointed_is_a_miss(host, reads):
    build_inventory(root(host))
    alternatives = host.root / "etc/alternatives"
    link = next(p for p in alternatives.iterdir() if p.is_symlink())
    target = os.readlink(link)
    link.unlink()
    link.symlink_to(target)  # same target, but the directory changed: must be re-checked
    build_inventory(root(host))
    assert len(reads) == 2
    build_inventory(root(host))
    assert len(reads) == 2


def test_new_binary_earlier_in_path_is_found(host, reads, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/local/bin:/usr/bin")
    first = build_inventory(root(host))
    smi = next(f for f in first.files.binaries if f.name == "nvidia-smi")
    assert not smi.path.startswith("/usr/local/")
    local = host.root / "usr/local/bin"
    local.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copy2(smi.host_path, local / "nvidia-smi")
        second = build_inventory(root(host))
        assert len(reads) == 2
        assert next(f for f in second.files.binaries if f.name == "nvidia-smi").path == "/usr/local/bin/nvidia-smi"
    finally:
        shutil.rmtree(local)


def test_environment_is_part_of_the_key(host, reads, tmp_path):
    build_inventory(root(host), environ={"PATH": "/usr/bin"})
    build_inventory(root(host), environ={"PATH": "/usr/bin:/bin"})
    build_inventory(root(host), environ={"PATH": "/usr/bin", "CUDA_MPS_PIPE_DIRECTORY": "/tmp/mps"})
    assert len(reads) == 3
    build_inventory(root(host), environ={"PATH": "/usr/bin:/bin"})
    assert len(reads) == 3


def test_other_driver_version_is_a_miss(host, tmp_path):
    from nvc.host.inventory_cache import InventoryCache

    first = build_inventory(root(host))
    with InventoryCache.open(root(host), "/etc/ld.so.cache") as store:
        assert store.files(first.driver_version) == first.files
        assert store.files("999.1.2") is None


def test_ipc_endpoints_are_looked_up_every_time(host, reads):
    env = {"PATH": "/usr/bin", "CUDA_MPS_PIPE_DIRECTORY": "/tmp/test-mps-pipes"}
    first = build_inventory(root(host), environ=env)
    assert not any(f.name == "nvidia-mps" for f in first.files.ipcs)
    pipes = host.root / "tmp/test-mps-pipes"
    pipes.mkdir(parents=True)
    try:
        second = build_inventory(root(host), environ=env)
        assert len(reads) == 1
        assert any(f.name == "nvidia-mps" for f in second.files.ipcs)
    finally:
        shutil.rmtree(pipes)
    assert build_inventory(root(host), environ=env) == first


def test_no_cache_env(host, reads, tmp_path, monkeypatch):
    monkeypatch.setenv(NO_CACHE_ENV, "1")
    build_inventory(root(host))
    build_inventory(root(host))
    assert len(reads) == 2


def test_unsafe_directory_is_not_used(host, reads, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    os.chmod(cache, 0o777)
    first = build_inventory(root(host))
    assert build_inventory(root(host)) == first
    assert len(reads) == 2
    assert entries(tmp_path) == []


@pytest.mark.parametrize("how", ["symlink", "mode", "garbage"])
def test_unsafe_or_corrupt_entry_is_ignored(host, reads, tmp_path, how):
    first = build_inventory(root(host))
    cache = tmp_path / "cache"
    names = set(entries(tmp_path))
    for name in names:
        path = cache / name
        if how == "symlink":
            real = tmp_path / f"elsewhere-{name}"
            shutil.copy(path, real)
            path.unlink()
            path.symlink_to(real)
        elif how == "mode":
            os.chmod(path, 0o644)
        else:
            path.write_text('{"format": 1, "key": {}, "check_files": [[1]]}')
    assert build_inventory(root(host)) == first
    assert len(reads) == 2
