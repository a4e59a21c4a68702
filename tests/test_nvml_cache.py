"""nvc.host.nvml.cache: NVML is asked once, then not again while the driver, its library and the GPUs are unchanged.

Every test gets its own cache directory ($NVC_CACHE_DIR) and call log ($NVML_STUB_CALL_LOG: one line per
nvmlInit the stub sees), so "NVML ran" and "NVML did not run" are facts read from the stub, not guesses.
The fake GPU host is shared by the module; an autouse fixture puts its /proc/driver/nvidia back after each test.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.gpu_host import make_gpu_host
from fixtures.nvml_stub import CALL_LOG_ENV, CONFIG_ENV, read_call_log, write_config
from nvc.driver_info import DriverInfo
from nvc.errors import NvcError
from nvc.host.inventory import query_nvml
from nvc.host.nvml import cache as nvml_cache
from nvc.host.nvml.cache import cached_query
from nvc.rootpath import DriverRoot

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the NVML stub"),
]

REPO = Path(__file__).resolve().parent.parent
PROC = "proc/driver/nvidia"


@pytest.fixture(scope="module")
def gpu_host(tmp_path_factory):
    host = make_gpu_host(tmp_path_factory.mktemp("cachehost"))
    pristine = host.root.parent / "pristine-proc"
    shutil.copytree(host.root / PROC, pristine)
    return host, pristine


@pytest.fixture
def host(gpu_host, tmp_path, monkeypatch):
    """The fake GPU host, a fresh cache directory and call log for this test; /proc is restored afterwards."""
    fake, pristine = gpu_host
    monkeypatch.setenv(CONFIG_ENV, fake.env[CONFIG_ENV])
    monkeypatch.setenv(CALL_LOG_ENV, str(tmp_path / "calls.log"))
    monkeypatch.setenv("NVC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("NVC_NO_CACHE", raising=False)
    yield fake
    shutil.rmtree(fake.root / PROC)
    shutil.copytree(pristine, fake.root / PROC)


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


def inits(tmp_path: Path) -> int:
    return sum(1 for entry in read_call_log(tmp_path / "calls.log") if entry["call"].startswith("nvmlInit"))


def ask(host) -> DriverInfo:
    return query_nvml(DriverRoot(str(host.root)))


def entries(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.iterdir() if p.name.endswith(".json")) if cache_dir.is_dir() else []


def nvml_library(host) -> Path:
    (lib,) = [p for p in host.root.rglob("libnvidia-ml.so.*.*") if not p.is_symlink()]
    return lib


# ------------------------------------------------------------------------------------------------ hits


def test_second_query_runs_no_nvml(host, tmp_path, cache_dir):
    first = ask(host)
    assert inits(tmp_path) == 1
    log_lines = (tmp_path / "calls.log").read_text().splitlines()
    second = ask(host)
    assert (tmp_path / "calls.log").read_text().splitlines() == log_lines  # not one new line: no load, no init
    assert second == first
    assert [g.uuid for g in second.gpus] == [str(g["uuid"]) for g in host.gpus]
    assert second.gpus[0].mig_devices and second.gpus[0].mig_enabled


def test_cache_file_format_and_permissions(host, cache_dir):
    info = ask(host)
    st = os.stat(cache_dir)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == 0
    (entry,) = entries(cache_dir)
    st = os.stat(entry)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    assert not [p for p in cache_dir.iterdir() if p.name.endswith(".tmp")]
    data = json.loads(entry.read_text())
    assert data["format"] == 1
    key = data["key"]
    assert key["driver_root"] == str(host.root) and key["driver_version"] == "535.309.01"
    assert key["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    lib = os.stat(nvml_library(host))
    assert key["library_id"] == [lib.st_dev, lib.st_ino, lib.st_size, lib.st_mtime_ns]
    assert set(data["gpus"]) == {"0000:3b:00.0", "0001:af:00.0"}
    assert DriverInfo.from_dict(data["info"]) == info


# ------------------------------------------------------------------------------------------------ invalidation


def assert_requeries(host, tmp_path, change) -> None:
    """NVML runs once, not again; after ``change()`` it runs again, then the new answer is cached."""
    ask(host)
    ask(host)
    assert inits(tmp_path) == 1
    change()
    ask(host)
    assert inits(tmp_path) == 2
    ask(host)
    assert inits(tmp_path) == 2


def test_changed_driver_version_requeries(host, tmp_path):
    version = host.root / PROC / "version"
    assert_requeries(host, tmp_path, lambda: version.write_text(version.read_text().replace("309.01", "309.02")))


def test_changed_information_file_requeries(host, tmp_path):
    info = host.root / PROC / "gpus/0001:af:00.0/information"
    assert_requeries(host, tmp_path, lambda: info.write_text(info.read_text() + "GPU Excluded: No\n"))


def test_new_mig_instance_requeries(host, tmp_path):
    gi = host.root / PROC / "capabilities/gpu3/mig/gi2"
    assert_requeries(host, tmp_path, lambda: gi.mkdir())


def test_replaced_library_requeries(host, tmp_path):
    lib = nvml_library(host)

    def replace() -> None:
        shutil.copy2(lib, lib.with_name(".new"))
        os.replace(lib.with_name(".new"), lib)  # same bytes, same mtime: only the inode tells

    assert_requeries(host, tmp_path, replace)


def test_touched_library_requeries(host, tmp_path):
    lib = nvml_library(host)
    assert_requeries(host, tmp_path, lambda: os.utime(lib, ns=(lib.stat().st_atime_ns, lib.stat().st_mtime_ns + 1)))


def test_new_boot_requeries(host, tmp_path, monkeypatch):
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("3acfe4b7-0000-4aea-99d6-8c18f61422d8\n")
    assert_requeries(host, tmp_path, lambda: monkeypatch.setattr(nvml_cache, "BOOT_ID_PATH", str(boot_id)))


def test_other_user_is_another_key(host, tmp_path):
    ask(host)
    query_nvml(DriverRoot(str(host.root)), user=(65534, 65534))
    query_nvml(DriverRoot(str(host.root)), user=(65534, 65534))
    ask(host)
    assert inits(tmp_path) == 2


def test_removed_gpu_dir_requeries(host, tmp_path, cache_dir):
    ask(host)
    shutil.rmtree(host.root / PROC / "gpus/0001:af:00.0")
    ask(host)
    ask(host)
    # NVML still reports both GPUs, /proc one: such an answer would never validate, so it is not stored.
    assert inits(tmp_path) == 3
    assert len(entries(cache_dir)) == 1


def test_added_gpu_dir_requeries(host, tmp_path):
    ask(host)
    extra = host.root / PROC / "gpus/0002:01:00.0"
    extra.mkdir()
    (extra / "information").write_text("Model: \t\t NVIDIA H100\nDevice Minor: \t 5\n")
    ask(host)
    ask(host)
    assert inits(tmp_path) == 3


def test_no_kernel_module_is_never_cached(host, tmp_path, cache_dir):
    (host.root / PROC / "version").unlink()
    first = ask(host)
    assert ask(host) == first
    assert inits(tmp_path) == 2
    assert entries(cache_dir) == []


def test_nvml_errors_are_not_cached(host, tmp_path, monkeypatch, cache_dir):
    conf = write_config(tmp_path / "failing.conf", gpus=host.gpus, init_error=9)
    monkeypatch.setenv(CONFIG_ENV, str(conf))
    for _ in range(2):
        with pytest.raises(NvcError) as err:
            ask(host)
        assert err.value.stage == "initialization" and "driver not loaded" in str(err.value)
    assert inits(tmp_path) == 2
    assert entries(cache_dir) == []


def test_query_errors_propagate(host):
    def broken() -> DriverInfo:
        raise NvcError("initialization", "driver rpc error: timed out")

    with pytest.raises(NvcError, match="timed out"):
        cached_query(str(nvml_library(host)), DriverRoot(str(host.root)), broken)


# ------------------------------------------------------------------------------------------------ hostile store


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"{",
        b"[]",
        b"\xff\xfe",
        b'{"format": 1}',
        b'{"format": 1, "key": 5, "gpus": [], "info": null}',
    ],
)
def test_corrupt_cache_file_is_replaced(host, tmp_path, cache_dir, garbage):
    first = ask(host)
    (entry,) = entries(cache_dir)
    entry.write_bytes(garbage)
    assert ask(host) == first
    assert inits(tmp_path) == 2
    assert json.loads(entry.read_bytes())["format"] == 1  # rewritten
    ask(host)
    assert inits(tmp_path) == 2


def test_tampered_answer_with_the_right_key_is_refused(host, tmp_path, cache_dir):
    """An entry whose GPUs disagree with /proc (here: one GPU dropped from the answer) is not believed."""
    first = ask(host)
    (entry,) = entries(cache_dir)
    data = json.loads(entry.read_text())
    data["info"]["gpus"] = data["info"]["gpus"][:1]
    entry.write_text(json.dumps(data))
    assert ask(host) == first
    assert inits(tmp_path) == 2


def test_group_readable_entry_is_refused(host, tmp_path, cache_dir):
    ask(host)
    (entry,) = entries(cache_dir)
    entry.chmod(0o644)
    ask(host)
    assert inits(tmp_path) == 2
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600


def test_symlinked_cache_file_is_not_followed(host, tmp_path, cache_dir):
    first = ask(host)
    (entry,) = entries(cache_dir)
    # A valid entry, but reached through a symlink: not read. And nothing is written through the link.
    elsewhere = tmp_path / "elsewhere.json"
    shutil.copy2(entry, elsewhere)
    before = elsewhere.read_bytes()
    entry.unlink()
    entry.symlink_to(elsewhere)
    assert ask(host) == first
    assert inits(tmp_path) == 2
    assert elsewhere.read_bytes() == before
    assert not entry.is_symlink() and entry.is_file()  # the link itself was replaced by a real entry


def test_symlink_to_a_victim_is_left_alone(host, tmp_path, cache_dir):
    ask(host)
    (entry,) = entries(cache_dir)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    entry.unlink()
    entry.symlink_to(victim)
    ask(host)
    assert victim.read_text() == "precious\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert inits(tmp_path) == 2


@pytest.mark.parametrize("problem", ["world-writable", "group-writable", "not-ours", "symlink", "a-file"])
def test_unsafe_cache_dir_is_not_used(host, tmp_path, monkeypatch, problem):
    real = tmp_path / "real-cache"
    real.mkdir(mode=0o700)
    target = real
    if problem == "world-writable":
        real.chmod(0o777)
    elif problem == "group-writable":
        real.chmod(0o770)
    elif problem == "not-ours":
        os.chown(real, 65534, 65534)
    elif problem == "symlink":
        target = tmp_path / "link-cache"
        target.symlink_to(real)
    else:
        target = tmp_path / "file-cache"
        target.write_text("")
    monkeypatch.setenv("NVC_CACHE_DIR", str(target))
    first = ask(host)
    assert ask(host) == first
    assert inits(tmp_path) == 2
    assert list(real.iterdir()) == []


def test_missing_parent_and_relative_dir_still_answer(host, tmp_path, monkeypatch):
    monkeypatch.setenv("NVC_CACHE_DIR", str(tmp_path / "no/such/parent"))
    first = ask(host)
    monkeypatch.setenv("NVC_CACHE_DIR", "relative-cache")
    assert ask(host) == first
    assert inits(tmp_path) == 2
    assert not Path("relative-cache").exists()


def test_no_cache_env(host, tmp_path, monkeypatch, cache_dir):
    monkeypatch.setenv("NVC_NO_CACHE", "1")
    ask(host)
    ask(host)
    assert inits(tmp_path) == 2
    assert not cache_dir.exists()
    monkeypatch.setenv("NVC_NO_CACHE", "0")
    ask(host)
    ask(host)
    assert inits(tmp_path) == 3


def test_directory_is_bounded_and_foreign_files_kept(host, cache_dir):
    cache_dir.mkdir(mode=0o700)
    old = time.time() - 3600
    for i in range(nvml_cache.MAX_ENTRIES + 10):
        path = cache_dir / f"{i:064x}.json"
        path.write_text("{}")
        os.utime(path, (old + i, old + i))
    stale_tmp = cache_dir / f".{0:064x}.json.1.deadbeef.tmp"
    stale_tmp.write_text("")
    os.utime(stale_tmp, (old, old))
    (cache_dir / "README").write_text("not ours\n")
    ask(host)
    names = {p.name for p in cache_dir.iterdir()}
    assert len([n for n in names if n.endswith(".json")]) == nvml_cache.MAX_ENTRIES
    assert f"{0:064x}.json" not in names and f"{nvml_cache.MAX_ENTRIES + 9:064x}.json" in names  # oldest went
    assert "README" in names and stale_tmp.name not in names


def test_import_is_cheap():
    """Importing the cache adds one small nvc module, the cache directory's rules (nvc.host.nvml itself loads no driver
    code; /proc parsing and root paths load where they are used)."""
    code = (
        "import sys, nvc.host.nvml; before = set(sys.modules); import nvc.host.nvml.cache; "
        "print(*sorted(set(sys.modules) - before))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["nvc.host.nvml.cache", "nvc.private_files"]


# ------------------------------------------------------------------------------------------------ end to end


def _run_cli(env: dict[str, str], *args: str, prog: str = "nvc") -> tuple[subprocess.CompletedProcess, float]:
    code = f"import sys; sys.argv[0] = {prog!r}; from nvc.commands.cli_main import main; sys.exit(main())"
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                         check=False, timeout=60)
    return res, time.perf_counter() - start


def test_container_start_is_fast_once_cached(tmp_path, capsys):
    """A slow driver (nvmlInit takes 300 ms): the first `configure --dry-run` (a container start's path) pays it,
    the next ones don't."""
    host = make_gpu_host(tmp_path / "slowhost", init_sleep_ms=300)
    rootfs = tmp_path / "rootfs"
    for d in ("etc", "usr/lib64", "dev", "proc", "tmp"):
        (rootfs / d).mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NVML_STUB", "NVC_"))}
    env.update(host.env, NVC_CACHE_DIR=str(tmp_path / "cache"), NVML_STUB_CALL_LOG=str(tmp_path / "calls.log"))
    times, outputs = [], []
    for _ in range(3):
        res, seconds = _run_cli(env, "--root", str(host.root), "configure", "--dry-run", "--device=all",
                                "--utility", str(rootfs))
        assert res.returncode == 0, res.stderr
        times.append(seconds)
        outputs.append(res.stdout)
    with capsys.disabled():
        print(f"\n`nvc --root R configure --dry-run` with a 300 ms nvmlInit: first {times[0] * 1000:.0f} ms, "
              f"cached {times[1] * 1000:.0f} ms, {times[2] * 1000:.0f} ms")
    assert outputs[0] == outputs[1] == outputs[2]
    assert "/dev/nvidia0" in outputs[0]
    assert inits(tmp_path) == 1
    assert times[0] >= 0.3
    assert times[1] < 0.25 or times[2] < 0.25  # one retry: interpreter start-up alone is ~100 ms here


def test_info_and_list_always_ask_the_driver(tmp_path, monkeypatch):
    """`info` and `list` diagnose a host: with a warm cache and a driver whose nvmlInit now fails (Driver Not
    Loaded), `info` fails as NVIDIA's tool does and `list` warns, while a container start keeps the cached answer."""
    host = make_gpu_host(tmp_path / "host")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NVML_STUB", "NVC_"))}
    env.update(host.env, NVC_CACHE_DIR=str(tmp_path / "cache"), NVML_STUB_CALL_LOG=str(tmp_path / "calls.log"))
    good, _ = _run_cli(env, "--root", str(host.root), "info", prog="nvidia-container-cli")
    assert good.returncode == 0, good.stderr
    for name in (CALL_LOG_ENV, CONFIG_ENV, "NVC_CACHE_DIR"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.delenv("NVC_NO_CACHE", raising=False)
    warm = query_nvml(DriverRoot(str(host.root)))  # what a container start does: it fills the cache
    assert list((tmp_path / "cache").glob("*.json")), "the cache was not written"
    assert inits(tmp_path) == 2  # info asked NVML, so did the first cached query (info wrote nothing)
    env[CONFIG_ENV] = str(write_config(tmp_path / "failing.conf", gpus=host.gpus, init_error=9))
    res, _ = _run_cli(env, "--root", str(host.root), "info", prog="nvidia-container-cli")
    assert (res.returncode, res.stdout) == (1, "")
    assert res.stderr == "nvidia-container-cli: initialization error: nvml error: driver not loaded\n"
    listed, _ = _run_cli(env, "--root", str(host.root), "list", "--binaries")
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr.startswith("nvc: warning: initialization error: nvml error: driver not loaded; ")
    assert "/dev/nvidia0" not in listed.stdout  # no GPU nodes from a stale answer
    assert inits(tmp_path) == 4
    monkeypatch.setenv(CONFIG_ENV, env[CONFIG_ENV])
    assert query_nvml(DriverRoot(str(host.root))) == warm  # the container-start path still answers from the cache
    assert inits(tmp_path) == 4
