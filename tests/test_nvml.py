"""nvc.host.nvml.query_driver against the real pynvml, with a stub libnvidia-ml (fake GPUs) and the real 535 one.

The stub (fixtures/nvml_stub.c) is configured per test through a file named in $NVML_STUB_CONFIG and logs every
nvmlInit with the caller's credentials and root inode to $NVML_STUB_CALL_LOG, so we can prove not only what was
answered but who asked and from where (chroot, nobody, no_new_privs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.nvml_stub import (
    CALL_LOG_ENV,
    CONFIG_ENV,
    LIB_DIR,
    NVML_FILE,
    compile_stub,
    make_stub_root,
    make_tiny_root,
    read_call_log,
    write_config,
)
from nvc.driver_info import DriverInfo, GpuInfo, MigDevice
from nvc.errors import NvcError
from nvc.host.nvml import BRAND_NAMES, format_cuda_version, query_driver

REPO = Path(__file__).resolve().parent.parent
HAVE_DRIVER_ROOTS = (REPO / "fixtures" / "driver_roots.py").exists()

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the NVML stub")

A100 = "NVIDIA A100-SXM4-40GB"


@pytest.fixture(scope="session")
def stub_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_stub(tmp_path_factory.mktemp("nvml-stub-build"))


@pytest.fixture(scope="session")
def tiny_root(stub_lib: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_root(tmp_path_factory.mktemp("nvml-tiny-root"), stub_lib)


@pytest.fixture
def nvml_lib(tiny_root: Path) -> str:
    """Host path of the tiny root's libnvidia-ml (the resolved real file, as the CLI passes it)."""
    return str(tiny_root / LIB_DIR / NVML_FILE)


@pytest.fixture
def call_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "calls.log"
    monkeypatch.setenv(CALL_LOG_ENV, str(path))
    return path


@pytest.fixture
def stub_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write a stub config for this test and point $NVML_STUB_CONFIG at it."""

    def configure(**kwargs) -> Path:
        path = write_config(tmp_path / "nvml-stub.conf", **kwargs)
        monkeypatch.setenv(CONFIG_ENV, str(path))
        return path

    return configure


def init_calls(log: Path) -> list[dict[str, str]]:
    return [entry for entry in read_call_log(log) if entry["call"].startswith("nvmlInit")]


def query_error(*args, **kwargs) -> NvcError:
    with pytest.raises(NvcError) as info:
        query_driver(*args, **kwargs)
    return info.value


# ------------------------------------------------------------------------------------------------ pure helpers


@pytest.mark.parametrize(
    ("raw", "text"), [(12020, "12.2"), (12040, "12.4"), (11080, "11.8"), (10010, "10.1"), (12000, "12.0")]
)
def test_cuda_version_format(raw: int, text: str) -> None:
    assert format_cuda_version(raw) == text


def test_import_is_cheap() -> None:
    code = "import sys, nvc.host.nvml; print('pynvml' in sys.modules, 'ctypes' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_stub_build_is_cached(stub_lib: Path) -> None:
    assert compile_stub(stub_lib.parent) == stub_lib


# ------------------------------------------------------------------------------------------------ answers


def test_default_stub_config(nvml_lib: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    info = query_driver(nvml_lib)
    assert info.driver_version == "535.309.01"
    assert info.cuda_version == "12.2"
    assert [(g.index, g.minor) for g in info.gpus] == [(0, 1), (1, 0)]


def test_multi_gpu_with_mig(nvml_lib: str, stub_config) -> None:
    stub_config(
        driver="550.54.15",
        cuda=12040,
        # Listed out of index order: the answer must follow NVML's index order, not the config's.
        gpus=[
            {
                "index": 2,
                "minor": 5,
                "name": "NVIDIA A10",
                "brand": "NVIDIA_VAPPS",
                "uuid": "GPU-cccc",
                "bus": "0001:af:1f.0",
                "cc": "8.6",
                "mig": 0,
            },
            {
                "index": 0,
                "minor": 2,
                "name": A100,
                "brand": "TESLA",
                "uuid": "GPU-aaaa",
                "bus": "0000:3b:00.0",
                "cc": "8.0",
                "mig": 1,
                "max_mig": 7,
            },
            {
                "index": 1,
                "minor": 0,
                "name": "NVIDIA GeForce RTX 4090",
                "brand": "GEFORCE_RTX",
                "uuid": "GPU-bbbb",
                "bus": "0000:0a:00.0",
                "cc": "8.9",
            },
        ],
        migs=[
            {"gpu": 0, "index": 2, "gi": 5, "ci": 1, "uuid": "MIG-2222"},
            {"gpu": 0, "index": 0, "gi": 1, "ci": 0, "uuid": "MIG-0000"},
        ],
    )
    info = query_driver(nvml_lib)
    assert info == DriverInfo(
        driver_version="550.54.15",
        cuda_version="12.4",
        gpus=(
            GpuInfo(
                index=0,
                minor=2,
                model=A100,
                brand="Tesla",
                uuid="GPU-aaaa",
                bus_id="00000000:3b:00.0",
                arch="8.0",
                mig_enabled=True,
                # slot order; the empty slot 1 is skipped
                mig_devices=(MigDevice(0, 1, 0, "MIG-0000"), MigDevice(2, 5, 1, "MIG-2222")),
            ),
            GpuInfo(
                index=1,
                minor=0,
                model="NVIDIA GeForce RTX 4090",
                brand="GeForceRTX",
                uuid="GPU-bbbb",
                bus_id="00000000:0a:00.0",
                arch="8.9",
            ),
            GpuInfo(
                index=2,
                minor=5,
                model="NVIDIA A10",
                brand="VApps",
                uuid="GPU-cccc",
                bus_id="00000001:af:1f.0",
                arch="8.6",
            ),
        ),
    )
    # Survives the trip through JSON the cache will make.
    assert DriverInfo.from_dict(info.to_dict()) == info


def test_mig_mode_enabled_without_instances(nvml_lib: str, stub_config) -> None:
    stub_config(gpus=[{"index": 0, "mig": 1}])
    gpu = query_driver(nvml_lib).gpus[0]
    assert gpu.mig_enabled is True
    assert gpu.mig_devices == ()


def test_brand_names(nvml_lib: str, stub_config) -> None:
    expected = {
        0: "Unknown",
        1: "Quadro",
        2: "Tesla",
        3: "NVS",
        4: "GRID",
        5: "GeForce",
        6: "TITAN",
        7: "VApps",
        8: "VPC",
        9: "VCS",
        10: "VWS",
        11: "CloudGaming",
        12: "QuadroRTX",
        13: "NvidiaRTX",
        14: "Nvidia",
        15: "GeForceRTX",
        16: "TitanRTX",
        17: "Unknown",
        18: "Unknown",
    }
    import pynvml

    # Our table is keyed by pynvml's own constants, not by numbers copied from elsewhere.
    assert BRAND_NAMES[pynvml.NVML_BRAND_NVIDIA_CLOUD_GAMING] == "CloudGaming"
    assert BRAND_NAMES[pynvml.NVML_BRAND_TITAN_RTX] == "TitanRTX"
    stub_config(gpus=[{"index": i, "brand": value} for i, value in enumerate(expected)])
    assert [g.brand for g in query_driver(nvml_lib).gpus] == list(expected.values())


def test_zero_gpus(nvml_lib: str, stub_config) -> None:
    stub_config(cuda=11080)
    info = query_driver(nvml_lib)
    assert (info.cuda_version, info.gpus) == ("11.8", ())


# ------------------------------------------------------------------------------------------------ errors


def test_driver_not_loaded(nvml_lib: str, stub_config) -> None:
    stub_config(init_error=9)
    err = query_error(nvml_lib)
    assert (err.stage, err.message) == ("initialization", "nvml error: driver not loaded")
    assert str(err) == "initialization error: nvml error: driver not loaded"


def test_other_init_error(nvml_lib: str, stub_config) -> None:
    stub_config(init_error=999)
    err = query_error(nvml_lib)
    assert (err.stage, err.message) == ("initialization", "nvml error: unknown error")


def test_error_after_init_is_detection(nvml_lib: str, stub_config) -> None:
    stub_config(gpus=[{"index": 0}], fail={"nvmlDeviceGetUUID": 15})
    err = query_error(nvml_lib)
    assert (err.stage, err.message) == ("detection", "nvml error: gpu is lost")


def test_missing_library(tmp_path: Path) -> None:
    err = query_error(str(tmp_path / NVML_FILE))
    assert err.stage == "initialization"
    assert err.message == (
        "load library failed: libnvidia-ml.so.1: cannot open shared object file: no such file or directory"
    )


def test_unloadable_library(tmp_path: Path) -> None:
    bogus = tmp_path / NVML_FILE
    bogus.write_bytes(b"\x7fELF not really a library" * 10)
    err = query_error(str(bogus))
    assert err.stage == "initialization"
    assert err.message.startswith("load library failed: libnvidia-ml.so.1: ")
    assert err.message == err.message.lower()


def test_crashing_driver(nvml_lib: str, stub_config) -> None:
    stub_config(extra_lines=["init_signal 11"])
    err = query_error(nvml_lib)
    assert err.stage == "initialization"
    assert err.message == "driver rpc error: helper process killed by signal 11 (SIGSEGV)"


def test_timeout_kills_and_reaps_helper(nvml_lib: str, stub_config, call_log: Path) -> None:
    stub_config(init_sleep_ms=20000)
    start = time.monotonic()
    err = query_error(nvml_lib, timeout=0.5)
    elapsed = time.monotonic() - start
    assert (err.stage, err.message) == ("initialization", "driver rpc error: timed out")
    assert 0.5 <= elapsed < 2.0
    [call] = init_calls(call_log)
    # Reaped, not a zombie: a zombie keeps its /proc entry until waited for.
    assert not os.path.exists(f"/proc/{call['pid']}")


def test_slow_init_within_timeout(nvml_lib: str, stub_config) -> None:
    stub_config(init_sleep_ms=300, gpus=[{"index": 0}])
    assert len(query_driver(nvml_lib, timeout=5).gpus) == 1


def test_helper_output_is_silenced(nvml_lib: str, stub_config, capfd: pytest.CaptureFixture[str]) -> None:
    stub_config(extra_lines=["init_print NVML SAYS HELLO"])
    query_driver(nvml_lib)
    out, err = capfd.readouterr()
    assert "HELLO" not in out + err


def test_no_fd_leak(nvml_lib: str, stub_config) -> None:
    stub_config(init_error=9)
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(3):
        query_error(nvml_lib)
    query_error(nvml_lib, timeout=5)
    assert set(os.listdir("/proc/self/fd")) == before


def test_answer_is_fast(nvml_lib: str, stub_config) -> None:
    stub_config(gpus=[{"index": 0, "mig": 1}], migs=[{"gpu": 0, "index": 0, "gi": 1, "ci": 0}])
    query_driver(nvml_lib)  # warm
    start = time.perf_counter()
    for _ in range(5):
        query_driver(nvml_lib)
    assert (time.perf_counter() - start) / 5 < 0.5


# ------------------------------------------------------------------------------------------------ confinement


@pytest.mark.root
def test_runs_as_nobody_with_no_new_privs(nvml_lib: str, stub_config, call_log: Path) -> None:
    stub_config(gpus=[{"index": 0}])
    query_driver(nvml_lib)
    [call] = init_calls(call_log)
    assert (call["uid"], call["euid"], call["gid"], call["egid"]) == ("65534",) * 4
    assert (call["ngroups"], call["nnp"]) == ("0", "1")
    # The helper is a child of ours, not us.
    assert call["pid"] != str(os.getpid())


@pytest.mark.root
def test_runs_as_given_user(nvml_lib: str, stub_config, call_log: Path) -> None:
    stub_config()
    query_driver(nvml_lib, user=(1234, 4321))
    [call] = init_calls(call_log)
    assert (call["uid"], call["euid"], call["gid"], call["egid"]) == ("1234", "1234", "4321", "4321")


@pytest.mark.root
def test_chroots_into_driver_root(tiny_root: Path, nvml_lib: str, stub_config, call_log: Path) -> None:
    # The config and log live outside the root: the stub opened both at dlopen time, before the chroot.
    stub_config(gpus=[{"index": 0, "minor": 7}])
    info = query_driver(nvml_lib, driver_root=str(tiny_root))
    assert info.gpus[0].minor == 7
    [call] = init_calls(call_log)
    st = os.stat(tiny_root)
    assert (call["root_dev"], call["root_ino"]) == (str(st.st_dev), str(st.st_ino))
    assert call["uid"] == "65534"


@pytest.mark.root
def test_no_chroot_for_host_root(nvml_lib: str, stub_config, call_log: Path) -> None:
    stub_config()
    query_driver(nvml_lib, driver_root="/")
    [call] = init_calls(call_log)
    st = os.stat("/")
    assert (call["root_dev"], call["root_ino"]) == (str(st.st_dev), str(st.st_ino))


def test_missing_driver_root(nvml_lib: str, tmp_path: Path) -> None:
    err = query_error(nvml_lib, driver_root=str(tmp_path / "nope"))
    assert err.stage == "initialization"
    assert "no such directory" in err.message


# ------------------------------------------------------------------------------------------------ real driver files

needs_driver_roots = pytest.mark.skipif(not HAVE_DRIVER_ROOTS, reason="fixtures/driver_roots.py not written yet")


def _real_nvml(root: Path) -> Path:
    """The real (non-symlink) libnvidia-ml.so.535.309.01 inside a fixture root."""
    found = [p for p in Path(root).rglob(NVML_FILE) if p.is_file() and not p.is_symlink()]
    assert found, f"no {NVML_FILE} under {root}"
    return found[0]


@pytest.fixture
def host_dev_guard():
    """Fail (and clean up) if anything created NVIDIA device nodes in the host's /dev."""
    nodes = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia-uvm", "/dev/nvidia-modeset")
    before = {n for n in nodes if os.path.lexists(n)}
    yield
    created = [n for n in nodes if os.path.lexists(n) and n not in before]
    for node in created:
        os.unlink(node)
    assert not created, f"NVML created {created} on the host"


@needs_driver_roots
@pytest.mark.root
@pytest.mark.parametrize("chroot", [False, True], ids=["host-root", "chroot"])
def test_real_nvml_535_driver_not_loaded(fixture_set, host_dev_guard, chroot: bool, monkeypatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    root = Path(fixture_set.dpkg_root)
    library = _real_nvml(root)
    root_dev_before = os.path.lexists(root / "dev" / "nvidiactl")
    start = time.monotonic()
    err = query_error(str(library), driver_root=str(root) if chroot else "/")
    assert time.monotonic() - start < 5
    assert (err.stage, err.message) == ("initialization", "nvml error: driver not loaded")
    assert os.path.lexists(root / "dev" / "nvidiactl") == root_dev_before


@needs_driver_roots
@pytest.mark.root
def test_stub_in_real_fixture_root(fixture_set, stub_lib: Path, tmp_path: Path, stub_config) -> None:
    base = Path(fixture_set.dpkg_root)
    real = _real_nvml(base)
    real_stat = real.stat()
    root = make_stub_root(base, tmp_path / "root", stub=stub_lib)
    stubbed = _real_nvml(root)
    assert stubbed.relative_to(root) == real.relative_to(base)
    assert stubbed.read_bytes() == stub_lib.read_bytes()
    # The shared fixture root is untouched (the stub replaced a hardlink, it did not write through it).
    assert real.stat().st_ino == real_stat.st_ino and real.stat().st_size == real_stat.st_size
    assert real.read_bytes() != stub_lib.read_bytes()
    listing = subprocess.run(
        ["ldconfig", "-p", "-C", str(root / "etc" / "ld.so.cache")], capture_output=True, text=True, check=True
    ).stdout
    assert "libnvidia-ml.so.1 " in listing
    stub_config(gpus=[{"index": 0, "minor": 4, "name": A100}])
    info = query_driver(str(stubbed), driver_root=str(root))
    assert (info.driver_version, info.gpus[0].minor, info.gpus[0].model) == ("535.309.01", 4, A100)


@needs_driver_roots
@pytest.mark.root
def test_real_nvml_as_root_would_create_nodes(fixture_set, tmp_path: Path, host_dev_guard, monkeypatch) -> None:
    """Why the helper drops privileges: as root, the real NVML mknods /dev/nvidiactl in its root's /dev."""
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    root = tmp_path / "root"
    lib_dir = root / LIB_DIR
    lib_dir.mkdir(parents=True)
    (root / "dev").mkdir()
    library = lib_dir / NVML_FILE
    shutil.copy2(_real_nvml(Path(fixture_set.dpkg_root)), library)

    err = query_error(str(library), driver_root=str(root))  # default: nobody
    assert err.message == "nvml error: driver not loaded"
    assert os.listdir(root / "dev") == []

    err = query_error(str(library), driver_root=str(root), user=(0, 0))  # explicitly root: confined by chroot only
    assert err.message == "nvml error: driver not loaded"
    assert "nvidiactl" in os.listdir(root / "dev")
