"""The hook's hot-path caches: the parsed config.toml (nvc.request.runtime_config), stored with nvc.host.nvml.cache's
helpers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nvc.errors import NvcError
from nvc.host.nvml import cache as store
from nvc.request import runtime_config as rc

CONFIG = """
disable-require = true
supported-driver-capabilities = "compute,utility"
[nvidia-container-cli]
root = "/run/nvidia/driver"
environment = ["A=1"]
no-cgroups = true
ldconfig = "@/sbin/ldconfig"
[nvidia-container-runtime]
runtimes = ["crun"]
"""


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    rc.forget_parsed_configs()  # each test starts as a new process would
    path = tmp_path / "cache"
    path.mkdir(mode=0o700)
    monkeypatch.setenv(store.CACHE_DIR_ENV, str(path))
    monkeypatch.delenv(store.NO_CACHE_ENV, raising=False)
    return path


@pytest.fixture
def parses(monkeypatch):
    """Count real parses of config.toml (a cache hit makes none)."""
    calls = []
    real = rc._parse_raw

    def counting(text, source):
        calls.append(source)
        return real(text, source)

    monkeypatch.setattr(rc, "_parse_raw", counting)
    return calls


def no_real(_path: str) -> bool:
    return False


def entries(cache_dir) -> list[str]:
    return sorted(name for name in os.listdir(cache_dir) if name.endswith(".json"))


def write_config(path, text=CONFIG):
    path.write_text(text)
    return str(path)


def test_hit_returns_the_same_config_without_parsing(tmp_path, cache_dir, parses):
    path = write_config(tmp_path / "config.toml")
    first = rc.load_config(path, {}, path_exists=no_real)
    assert parses == [path]
    [name] = entries(cache_dir)
    assert os.stat(cache_dir / name).st_mode & 0o777 == 0o600
    second = rc.load_config(path, {}, path_exists=no_real)
    assert parses == [path]
    assert second == first == rc.parse_config(CONFIG, path, path_exists=no_real)
    assert second.source == path and second.cli.environment == ("A=1",) and second.runtime.runtimes == ("crun",)


def test_ldconfig_normalisation_is_redone_on_a_hit(tmp_path, cache_dir, parses):
    path = write_config(tmp_path / "config.toml")
    assert rc.load_config(path, {}, path_exists=no_real).cli.ldconfig == "@/sbin/ldconfig"
    assert rc.load_config(path, {}, path_exists=lambda p: True).cli.ldconfig == "@/sbin/ldconfig.real"
    assert len(parses) == 1


def test_content_change_invalidates(tmp_path, cache_dir, parses):
    path = write_config(tmp_path / "config.toml")
    rc.load_config(path, {}, path_exists=no_real)
    st = os.stat(path)
    write_config(tmp_path / "config.toml", CONFIG.replace("disable-require = true", "disable-require = false"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: size (and ctime) still differ
    assert not rc.load_config(path, {}, path_exists=no_real).disable_require
    assert len(parses) == 2


def test_same_size_new_mtime_invalidates(tmp_path, cache_dir, parses):
    path = write_config(tmp_path / "config.toml")
    rc.load_config(path, {}, path_exists=no_real)
    text = CONFIG.replace('root = "/run/nvidia/driver"', 'root = "/run/nvidia/drivex"')
    write_config(tmp_path / "config.toml", text)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert rc.load_config(path, {}, path_exists=no_real).cli.root == "/run/nvidia/drivex"
    assert len(parses) == 2


def test_new_inode_invalidates(tmp_path, cache_dir, parses):
    path = write_config(tmp_path / "config.toml")
    rc.load_config(path, {}, path_exists=no_real)
    st = os.stat(path)
    other = tmp_path / "new.toml"
    write_config(other, CONFIG.replace("/run/nvidia/driver", "/run/nvidia/drivex"))
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(other, path)
    assert rc.load_config(path, {}, path_exists=no_real).cli.root == "/run/nvidia/drivex"
    assert len(parses) == 2


def test_key_is_per_path(tmp_path, cache_dir, parses):
    a = write_config(tmp_path / "a.toml")
    b = write_config(tmp_path / "b.toml")
    assert rc.load_config(a, {}, path_exists=no_real).source == a
    assert rc.load_config(b, {}, path_exists=no_real).source == b
    assert len(parses) == 2 and len(entries(cache_dir)) == 2


def test_errors_are_never_cached(tmp_path, cache_dir):
    path = write_config(tmp_path / "config.toml", "[nvidia-container-cli]\nno-cgroups = 3\n")
    for _ in range(2):
        with pytest.raises(NvcError, match="expected a boolean"):
            rc.load_config(path, {}, path_exists=no_real)
    assert entries(cache_dir) == []


def test_no_cache_env(tmp_path, cache_dir, parses, monkeypatch):
    monkeypatch.setenv(store.NO_CACHE_ENV, "1")
    path = write_config(tmp_path / "config.toml")
    rc.load_config(path, {}, path_exists=no_real)
    rc.load_config(path, {}, path_exists=no_real)
    assert len(parses) == 2 and entries(cache_dir) == []


@pytest.mark.parametrize("damage", ["corrupt", "mode", "symlink", "fields"])
def test_unsafe_or_bad_entries_are_ignored(tmp_path, cache_dir, parses, damage):
    path = write_config(tmp_path / "config.toml")
    expected = rc.load_config(path, {}, path_exists=no_real)
    [name] = entries(cache_dir)
    entry = cache_dir / name
    if damage == "corrupt":
        entry.write_bytes(b"{not json")
    elif damage == "mode":
        entry.chmod(0o644)
    elif damage == "symlink":
        target = tmp_path / "elsewhere.json"
        os.rename(entry, target)
        os.symlink(target, entry)
    else:
        data = entry.read_text().replace('"disable_require": true', '"disable_require": "yes"')
        entry.write_text(data)
    rc.forget_parsed_configs()  # a new process: only the file cache to go by
    assert rc.load_config(path, {}, path_exists=no_real) == expected
    assert len(parses) == 2


def test_a_forged_entry_is_refused_unless_ours(tmp_path, cache_dir, parses):
    """An entry of another owner (or group/world-writable directory) is never used."""
    path = write_config(tmp_path / "config.toml")
    rc.load_config(path, {}, path_exists=no_real)
    [name] = entries(cache_dir)
    if os.geteuid() == 0:
        os.chown(cache_dir / name, 65534, 65534)
        rc.forget_parsed_configs()  # new processes from here on
        rc.load_config(path, {}, path_exists=no_real)
        assert len(parses) == 2
    cache_dir.chmod(0o770)
    rc.forget_parsed_configs()
    rc.load_config(path, {}, path_exists=no_real)
    assert len(parses) == (3 if os.geteuid() == 0 else 2)


def test_symlinked_cache_dir_is_refused(tmp_path, monkeypatch, parses):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    monkeypatch.setenv(store.CACHE_DIR_ENV, str(link))
    monkeypatch.delenv(store.NO_CACHE_ENV, raising=False)
    rc.forget_parsed_configs()
    path = write_config(tmp_path / "config.toml")
    rc.load_config(path, {}, path_exists=no_real)
    rc.forget_parsed_configs()  # a second process
    rc.load_config(path, {}, path_exists=no_real)
    assert len(parses) == 2 and os.listdir(real) == []


def test_a_process_keeps_what_it_parsed_while_the_file_is_the_same(tmp_path, cache_dir, parses, monkeypatch):
    """The hook helper's children inherit its parsed config (nvc/commands/hook_helper.py): neither the file
    cache nor the file is read again while the file's identity holds; a changed file is parsed again."""
    from nvc import private_files

    expected = rc.parse_config(CONFIG, "", path_exists=lambda p: True)
    path = write_config(tmp_path / "config.toml")
    first = rc.load_config(path, {}, path_exists=no_real)

    def no_file_cache(*_args):
        raise AssertionError("the file cache was read")

    with monkeypatch.context() as patched:
        patched.setattr(private_files, "read_json_entry", no_file_cache)
        again = rc.load_config(path, {}, path_exists=lambda p: True)  # normalised again: ldconfig.real now
    assert again == rc.replace(expected, source=path) and again != first
    assert len(parses) == 2  # the expected value's and the first load's
    write_config(tmp_path / "config.toml", CONFIG.replace("no-cgroups = true", "no-cgroups = false"))
    assert rc.load_config(path, {}, path_exists=no_real).cli.no_cgroups is False
    assert len(parses) == 3


def test_the_memo_stays_small(tmp_path, cache_dir):
    for i in range(3 * rc._MEMO_SIZE):
        rc.load_config(write_config(tmp_path / f"{i}.toml"), {}, path_exists=no_real)
    assert 0 < len(rc._MEMO) <= rc._MEMO_SIZE


def test_round_trip_of_every_field():
    config = rc.parse_config(CONFIG, "x.toml", path_exists=no_real)
    assert rc.config_from_dict(rc.config_to_dict(config)) == config
    assert rc.config_from_dict(rc.config_to_dict(rc.RuntimeConfig())) == rc.RuntimeConfig()
    with pytest.raises(ValueError):
        rc.config_from_dict({**rc.config_to_dict(config), "extra": 1})


def test_hit_path_imports_no_toml_nor_hashlib(tmp_path, cache_dir):
    path = write_config(tmp_path / "config.toml")
    rc.load_config(path, {}, path_exists=no_real)
    code = (
        "import sys; from nvc.request.runtime_config import load_config; "
        f"load_config({path!r}, {{}}); "
        "bad = [m for m in ('tomllib', 'hashlib', 're', 'pathlib', 'subprocess') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {os.getcwd()!r}); {code}"],
                         capture_output=True, text=True, check=True, env={**os.environ})
    bad = set(out.stdout.strip().split(",")) - {""}
    assert "tomllib" not in bad and "hashlib" not in bad
