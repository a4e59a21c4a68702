"""Shared pytest fixtures: the real Debian driver roots and caches, built once and cached across runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fixture_set():
    """Driver roots and ld.so.cache files made from Debian's NVIDIA 535 packages by the real ldconfig."""
    from fixtures.driver_roots import ensure_all

    return ensure_all()


@pytest.fixture(autouse=True)
def fresh_config_memo():
    """Each test starts with no parsed config.toml in memory, as each hook process does (the memo only lives as
    long as one process: nvc.request.runtime_config)."""
    from nvc.request.runtime_config import forget_parsed_configs

    forget_parsed_configs()


@pytest.fixture(scope="session", autouse=True)
def private_nvml_cache(tmp_path_factory):
    """Keep the NVML answer cache of the whole run (and every nvc process it starts) out of /run/nvc."""
    from fixtures.host_residue import files_naming
    from nvc.host.nvml.cache import DEFAULT_CACHE_DIR

    path = tmp_path_factory.mktemp("nvml-cache")
    path.chmod(0o700)
    old = os.environ.get("NVC_CACHE_DIR")
    os.environ["NVC_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("NVC_CACHE_DIR", None)
    else:
        os.environ["NVC_CACHE_DIR"] = old
    # A hook or CLI started by a runtime whose environment lost NVC_CACHE_DIR writes to the host's cache instead:
    # a test writing on the host, and a next run's outcome depending on it. Entries keyed by our temporary driver
    # roots can only come from this run.
    leaked = files_naming(DEFAULT_CACHE_DIR, str(tmp_path_factory.getbasetemp()))
    for entry in leaked:
        os.unlink(entry)
    assert not leaked, f"this test run wrote to the host's cache {DEFAULT_CACHE_DIR}: {leaked}"


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """A fake GPU host (real Debian driver files, stub NVML, real device nodes) for this test module."""
    from fixtures.gpu_host import make_gpu_host

    if os.geteuid() != 0:
        pytest.skip("needs root (mknod)")
    return make_gpu_host(tmp_path_factory.mktemp("gpuhost"))


@pytest.fixture(scope="module")
def tools(tmp_path_factory, host):
    """Our console scripts as wrappers on a PATH, pointed at ``host``: (bin dir, the runtime's environment)."""
    from fixtures.tools import install_tools

    bindir = tmp_path_factory.mktemp("bin")
    return bindir, install_tools(bindir, host)
