"""NVIDIA's library selection rules on small real roots (gcc-built libraries, caches by the real ldconfig)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from nvc.errors import NvcError
from nvc.host.discovery import find_binaries, find_firmwares, find_ipcs, find_libraries, load_ldcache
from nvc.host.ldcache import ARCH_X8664
from nvc.rootpath import DriverRoot

V = "535.309.01"
LIB = "usr/lib/x86_64-linux-gnu"
TLS_NOTE = (
    '__asm__(".section .note.ABI-tag,\\"a\\",@note\\n.p2align 2\\n.long 4\\n.long 16\\n.long 1\\n'
    '.asciz \\"GNU\\"\\n.long 0\\n.long 2\\n.long 3\\n.long 99\\n.text\\n");\n'
)


def build_lib(dest: Path, soname: str, source: str = "int nvc_test_symbol(void) { return 1; }\n") -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = dest.parent / f".{dest.name}.c"
    src.write_text(source)
    subprocess.run(["gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(dest), str(src)], check=True)
    src.unlink()
    return dest


def make_root(tmp_path: Path, dirs: list[str]) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/ld.so.conf").write_text("".join(f"/{d}\n" for d in dirs))
    return root


def run_ldconfig(root: Path) -> None:
    subprocess.run(["/sbin/ldconfig", "-r", str(root)], check=True)


def libraries(root: Path) -> dict[str, str]:
    cache = load_ldcache(DriverRoot(str(root)), "/etc/ld.so.cache")
    return {f.name: f.path for f in find_libraries(cache, DriverRoot(str(root)), ARCH_X8664, V)}


def test_only_files_named_with_the_driver_version_are_taken(tmp_path):
    root = make_root(tmp_path, [LIB])
    build_lib(root / LIB / f"libcuda.so.{V}", "libcuda.so.1")
    build_lib(root / LIB / "libnvidia-ml.so.470.1.2", "libnvidia-ml.so.1")
    build_lib(root / LIB / "libcudadebugger.so.1", "libcudadebugger.so.1")  # no version in the real name
    run_ldconfig(root)
    assert libraries(root) == {"libcuda.so": f"/{LIB}/libcuda.so.{V}"}


def test_last_acceptable_cache_entry_wins(tmp_path):
    first, second = f"{LIB}/a", f"{LIB}/b"
    root = make_root(tmp_path, [first, second])
    build_lib(root / first / f"libcuda.so.{V}", "libcuda.so.1")
    build_lib(root / second / f"libcuda.so.{V}", "libcuda.so.1")
    run_ldconfig(root)
    cache = load_ldcache(DriverRoot(str(root)), "/etc/ld.so.cache")
    order = [e.value for e in cache.entries if e.key == "libcuda.so.1"]
    assert len(order) == 2
    assert libraries(root)["libcuda.so"] == order[-1].replace("libcuda.so.1", f"libcuda.so.{V}")


def test_prefix_match_keeps_similar_names_apart(tmp_path):
    root = make_root(tmp_path, [LIB])
    build_lib(root / LIB / f"libnvidia-pkcs11-openssl3.so.{V}", f"libnvidia-pkcs11-openssl3.so.{V}")
    build_lib(root / LIB / f"libcudadebugger.so.{V}", "libcudadebugger.so.1")
    run_ldconfig(root)
    assert libraries(root) == {
        "libcudadebugger.so": f"/{LIB}/libcudadebugger.so.{V}",
        "libnvidia-pkcs11-openssl3.so": f"/{LIB}/libnvidia-pkcs11-openssl3.so.{V}",
    }


def test_wrong_elf_class_is_refused(tmp_path):
    root = make_root(tmp_path, [LIB])
    lib = build_lib(root / LIB / f"libcuda.so.{V}", "libcuda.so.1")
    run_ldconfig(root)
    data = bytearray(lib.read_bytes())
    data[4] = 1  # ELFCLASS32: now contradicts its (libc6,x86-64) cache entry
    lib.write_bytes(bytes(data))
    assert libraries(root) == {}


def test_symlink_to_a_host_path_is_resolved_inside_the_root(tmp_path):
    host_dir = tmp_path / "host-only"
    build_lib(host_dir / f"libcuda.so.{V}", "libcuda.so.1")
    root = make_root(tmp_path, [LIB])
    build_lib(root / LIB / f"libnvidia-ml.so.{V}", "libnvidia-ml.so.1")
    run_ldconfig(root)
    # Repoint the cached path at the host copy with an absolute link: inside the root it leads nowhere.
    link = root / LIB / "libnvidia-ml.so.1"
    link.unlink()
    link.symlink_to(host_dir / f"libcuda.so.{V}")
    assert libraries(root) == {}
    # Once the same absolute path exists inside the root, that in-root file is the one reported.
    build_lib(root / str(host_dir).lstrip("/") / f"libcuda.so.{V}", "libnvidia-ml.so.1")
    assert libraries(root) == {"libnvidia-ml.so": f"{host_dir}/libcuda.so.{V}"}


@pytest.mark.parametrize("abi_first", [True, False])
def test_tls_library_with_the_new_abi_note_is_preferred(tmp_path, abi_first):
    a, b = f"{LIB}/a", f"{LIB}/b"
    root = make_root(tmp_path, [a, b])
    with_abi, without_abi = (a, b) if abi_first else (b, a)
    build_lib(root / with_abi / f"libnvidia-tls.so.{V}", f"libnvidia-tls.so.{V}", TLS_NOTE + "int x;\n")
    build_lib(root / without_abi / f"libnvidia-tls.so.{V}", f"libnvidia-tls.so.{V}")
    run_ldconfig(root)
    assert libraries(root)["libnvidia-tls.so"] == f"/{with_abi}/libnvidia-tls.so.{V}"


def test_binaries_ipcs_firmware(tmp_path):
    root = tmp_path / "root"
    (root / "usr/lib/nvidia/current").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    smi = root / "usr/lib/nvidia/current/nvidia-smi"
    smi.write_bytes(b"\x7fELF")
    smi.chmod(0o755)
    (root / "usr/bin/nvidia-smi").symlink_to("/usr/lib/nvidia/current/nvidia-smi")
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "usr/local/bin/nvidia-debugdump").write_text("not executable")
    found = find_binaries(DriverRoot(str(root)), "/usr/local/bin:/usr/bin:relative/dir")
    assert [(b.name, b.path) for b in found] == [("nvidia-smi", "/usr/lib/nvidia/current/nvidia-smi")]

    (root / "run/nvidia-persistenced").mkdir(parents=True)
    (root / "run/nvidia-persistenced/socket").write_text("")
    (root / "var").mkdir()
    (root / "var/run").symlink_to("/run")
    (root / "mps").mkdir()
    ipcs = find_ipcs(DriverRoot(str(root)), "/mps")
    assert [(i.name, i.path) for i in ipcs] == [("nvidia-persistenced", "/run/nvidia-persistenced/socket"),
                                                ("nvidia-mps", "/mps")]

    fw = root / "usr/lib/firmware/nvidia" / V
    fw.mkdir(parents=True)
    for name in ("gsp_tu10x.bin", "gsp_ga10x.bin", "other.bin"):
        (fw / name).write_bytes(b"fw")
    (root / "lib").symlink_to("usr/lib")
    assert [f.path for f in find_firmwares(DriverRoot(str(root)), V)] == [
        f"/lib/firmware/nvidia/{V}/gsp_ga10x.bin", f"/lib/firmware/nvidia/{V}/gsp_tu10x.bin"]
    first = next(f.host_path for f in find_firmwares(DriverRoot(str(root)), V))
    assert first == f"{root}/usr/lib/firmware/nvidia/{V}/gsp_ga10x.bin"


def test_missing_or_symlinked_cache(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    with pytest.raises(NvcError) as err:
        load_ldcache(DriverRoot(str(root)), "/etc/ld.so.cache")
    assert err.value.stage == "detection"
    # A cache symlinked to the host's is read inside the root, not from the host.
    (root / "etc/ld.so.cache").symlink_to("/etc/ld.so.cache")
    with pytest.raises(NvcError):
        load_ldcache(DriverRoot(str(root)), "/etc/ld.so.cache")
    shutil.copy("/etc/ld.so.cache", root / "etc/host.cache")
    (root / "etc/ld.so.cache").unlink()
    (root / "etc/ld.so.cache").symlink_to("host.cache")
    assert load_ldcache(DriverRoot(str(root)), "/etc/ld.so.cache").entries
