"""The real-driver fixtures are what the rest of the suite trusts, so check them with the real tools."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures import driver_roots
from fixtures.driver_roots import DRIVER_VERSION, FixtureSet, ldconfig_print, resolve_in_root

MULTIARCH = "usr/lib/x86_64-linux-gnu"
NV_CURRENT = f"/{MULTIARCH}/nvidia/current"


def _entries(text: str) -> list[tuple[str, str, str]]:
    """(soname, class annotation, path) for each line of ``ldconfig -p`` output."""
    out = []
    for line in text.splitlines():
        if " => " not in line:
            continue
        left, path = line.strip().split(" => ", 1)
        soname, _, annotation = left.partition(" (")
        out.append((soname, annotation.rstrip(")"), path))
    return out


def test_roots_hold_the_unpacked_driver(fixture_set: FixtureSet) -> None:
    for root in (fixture_set.dpkg_root, fixture_set.apt_root, fixture_set.multiarch_root):
        assert (root / MULTIARCH / f"nvidia/current/libnvidia-ml.so.{DRIVER_VERSION}").is_file()
        assert (root / f"lib/firmware/nvidia/{DRIVER_VERSION}/gsp_ga10x.bin").is_file()
        assert (root / "usr/lib/nvidia/current/nvidia-smi").is_file()
        assert (root / MULTIARCH / f"libnvidia-glcore.so.{DRIVER_VERSION}").is_file()
    assert os.readlink(fixture_set.dpkg_root / MULTIARCH / "nvidia/current/libcuda.so.1") == (
        f"libcuda.so.{DRIVER_VERSION}"
    )
    assert (fixture_set.multiarch_root / f"usr/lib/i386-linux-gnu/nvidia/current/libcuda.so.{DRIVER_VERSION}").is_file()


@pytest.mark.parametrize("name", driver_roots.CACHE_NAMES)
def test_caches_parse_and_point_into_their_root(fixture_set: FixtureSet, name: str) -> None:
    text = ldconfig_print(fixture_set.caches[name])
    entries = _entries(text)
    assert text.splitlines()[0] == f"{len(entries)} libs found in cache `{fixture_set.caches[name]}'"
    assert entries
    root = fixture_set.cache_root(name)
    for soname, _, path in entries:
        assert path.startswith("/"), path
        resolved = resolve_in_root(root, path)
        assert resolved.is_file(), (soname, path, resolved)
        assert resolved.is_relative_to(root)


def test_cache_formats(fixture_set: FixtureSet) -> None:
    new, old, compat = (fixture_set.caches[n].read_bytes() for n in ("new", "old", "compat"))
    assert new.startswith(b"glibc-ld.so.cache1.1")
    assert old.startswith(b"ld.so-1.7.0\0") and b"glibc-ld.so.cache" not in old
    assert compat.startswith(b"ld.so-1.7.0\0") and b"glibc-ld.so.cache1.1" in compat
    # Same libraries whatever the layout.
    listings = {n: sorted(_entries(ldconfig_print(fixture_set.caches[n]))) for n in ("new", "old", "compat")}
    assert listings["new"] == listings["old"] == listings["compat"]
    assert ("libnvidia-ml.so.1", "libc6,x86-64", f"{NV_CURRENT}/libnvidia-ml.so.1") in listings["new"]


def test_dpkg_root_cache_is_the_new_cache(fixture_set: FixtureSet) -> None:
    assert (fixture_set.dpkg_root / "etc/ld.so.cache").read_bytes() == fixture_set.caches["new"].read_bytes()
    conf = (fixture_set.dpkg_root / "etc/ld.so.conf").read_text()
    assert NV_CURRENT in conf.split()


@pytest.mark.parametrize(
    ("link", "alternative", "target", "final"),
    [
        (
            f"/{MULTIARCH}/libnvidia-ml.so.1",
            "nvidia--libnvidia-ml.so.1-x86_64-linux-gnu",
            f"{NV_CURRENT}/libnvidia-ml.so.1",
            f"{NV_CURRENT}/libnvidia-ml.so.{DRIVER_VERSION}",
        ),
        (
            f"/{MULTIARCH}/libcuda.so.1",
            "nvidia--libcuda.so.1-x86_64-linux-gnu",
            f"{NV_CURRENT}/libcuda.so.1",
            f"{NV_CURRENT}/libcuda.so.{DRIVER_VERSION}",
        ),
        (
            f"/{MULTIARCH}/libcuda.so",
            "nvidia--libcuda.so-x86_64-linux-gnu",
            f"{NV_CURRENT}/libcuda.so",
            f"{NV_CURRENT}/libcuda.so.{DRIVER_VERSION}",
        ),
        (
            f"/{MULTIARCH}/libGLX_nvidia.so.0",
            "nvidia--libGLX_nvidia.so.0-x86_64-linux-gnu",
            f"{NV_CURRENT}/libGLX_nvidia.so.0",
            f"{NV_CURRENT}/libGLX_nvidia.so.{DRIVER_VERSION}",
        ),
        (
            "/usr/bin/nvidia-smi",
            "nvidia--nvidia-smi",
            "/usr/lib/nvidia/current/nvidia-smi",
            "/usr/lib/nvidia/current/nvidia-smi",
        ),
        (
            "/usr/bin/nvidia-debugdump",
            "nvidia--nvidia-debugdump",
            "/usr/lib/nvidia/current/nvidia-debugdump",
            "/usr/lib/nvidia/current/nvidia-debugdump",
        ),
        (
            f"/{MULTIARCH}/libGLX_indirect.so.0",
            "glx--libGLX_indirect.so.0-x86_64-linux-gnu",
            f"/{MULTIARCH}/libGLX_nvidia.so.0",
            f"{NV_CURRENT}/libGLX_nvidia.so.{DRIVER_VERSION}",
        ),
    ],
)
def test_apt_root_has_absolute_alternatives_chains(
    fixture_set: FixtureSet, link: str, alternative: str, target: str, final: str
) -> None:
    root = fixture_set.apt_root
    assert os.readlink(root / link.lstrip("/")) == f"/etc/alternatives/{alternative}"
    assert os.readlink(root / "etc/alternatives" / alternative) == target
    resolved = resolve_in_root(root, link)
    assert resolved == root / final.lstrip("/")
    assert resolved.is_file()
    # Followed on the host, the absolute chain leaves the root: the reason a root must be resolved inside itself.
    assert not Path(os.path.realpath(root / link.lstrip("/"))).is_relative_to(root)


def test_apt_root_installed_system_details(fixture_set: FixtureSet) -> None:
    root = fixture_set.apt_root
    confs = [root / "etc/ld.so.conf", *sorted((root / "etc/ld.so.conf.d").glob("*.conf"))]
    assert all("nvidia" not in p.read_text() for p in confs)
    assert os.readlink(root / "lib") == "usr/lib"
    assert os.readlink(root / "var/run") == "/run"
    assert stat.S_ISSOCK(resolve_in_root(root, "/var/run/nvidia-persistenced/socket").lstat().st_mode)
    assert (root / "var/lib/dpkg/alternatives/nvidia").read_text().startswith("auto\n/usr/lib/nvidia/nvidia\n")
    entries = _entries(ldconfig_print(root / "etc/ld.so.cache"))
    assert ("libnvidia-ml.so.1", "libc6,x86-64", "/lib/x86_64-linux-gnu/libnvidia-ml.so.1") in entries
    assert all("/nvidia/current/" not in path for _, _, path in entries)


def test_multiarch_cache_has_both_classes(fixture_set: FixtureSet) -> None:
    entries = _entries(ldconfig_print(fixture_set.multiarch_root / "etc/ld.so.cache"))
    classes = {(soname, annotation) for soname, annotation, _ in entries}
    assert ("libcuda.so.1", "libc6,x86-64") in classes
    assert ("libcuda.so.1", "libc6") in classes
    for soname, annotation, path in entries:
        lib_dir = "/usr/lib/i386-linux-gnu/" if annotation == "libc6" else "/usr/lib/x86_64-linux-gnu/"
        assert path.startswith(lib_dir), (soname, annotation, path)


def test_hwcaps_cache_has_hwcap_annotations(fixture_set: FixtureSet) -> None:
    entries = _entries(ldconfig_print(fixture_set.caches["hwcaps"]))
    hwcaps = {(soname, annotation) for soname, annotation, _ in entries}
    for soname in ("libnvidia-ml.so.1", "libcuda.so.1"):
        assert (soname, "libc6,x86-64") in hwcaps
        assert (soname, 'libc6,x86-64, hwcap: "x86-64-v3"') in hwcaps
        assert (soname, 'libc6,x86-64, hwcap: "x86-64-v2"') in hwcaps


def test_arm64_cache_is_aarch64(fixture_set: FixtureSet) -> None:
    entries = _entries(ldconfig_print(fixture_set.caches["arm64"]))
    assert {annotation for _, annotation, _ in entries} == {"libc6,AArch64"}
    assert ("libcuda.so.1", "libc6,AArch64", "/usr/lib/aarch64-linux-gnu/nvidia/current/libcuda.so.1") in entries
    elf = resolve_in_root(fixture_set.cache_root("arm64"), entries[0][2]).read_bytes()[:20]
    assert elf[:4] == b"\x7fELF" and int.from_bytes(elf[18:20], "little") == 183  # EM_AARCH64


def test_warm_ensure_all_is_fast_and_stable(fixture_set: FixtureSet) -> None:
    start = time.monotonic()
    again = driver_roots.ensure_all()
    assert time.monotonic() - start < 1.0
    assert again == fixture_set


def test_cli_prints_the_paths(fixture_set: FixtureSet) -> None:
    env = {"PATH": os.environ["PATH"], driver_roots.CACHE_ENV: str(driver_roots.cache_dir())}
    proc = subprocess.run(
        [sys.executable, "-m", "fixtures.driver_roots"],
        cwd=Path(driver_roots.__file__).parent.parent,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"dpkg_root={fixture_set.dpkg_root}" in proc.stdout.splitlines()
    assert f"caches[hwcaps]={fixture_set.caches['hwcaps']}" in proc.stdout.splitlines()


@pytest.mark.root
@pytest.mark.slow
def test_fresh_build_leaves_host_ldconfig_alone(
    fixture_set: FixtureSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full build into an empty cache (packages reused, so no network) must not touch the host's cache."""
    cache = tmp_path / "cache"
    (cache / "debs").mkdir(parents=True)
    for deb in (driver_roots.cache_dir() / "debs").glob("*.deb"):
        (cache / "debs" / deb.name).symlink_to(deb)
    watched = [p for p in driver_roots.HOST_LDCONFIG_FILES if p.exists()]
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in watched}
    monkeypatch.setenv(driver_roots.CACHE_ENV, str(cache))
    try:
        built = driver_roots.ensure_all()
        assert built.dpkg_root == cache / "roots/dpkg"
        assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in watched} == before
        assert not list(cache.glob(".build-*"))
        stamp = (cache / "stamp.json").stat().st_mtime_ns
        assert driver_roots.ensure_all() == built
        assert (cache / "stamp.json").stat().st_mtime_ns == stamp
    finally:
        shutil.rmtree(cache, ignore_errors=True)
