"""Find the driver's files inside a driver root, the way libnvidia-container does.

Everything is looked up INSIDE ``driver_root`` (``/`` on a normal host, e.g. ``/run/nvidia/driver`` for a driver
container): the ld.so.cache is read from the root, every cache entry and every symlink is resolved inside it
(:mod:`nvc.rootpath`), and the in-root path is what is reported; the host path is derived only to read files.
"""

from __future__ import annotations

import os
import stat

from nvc import components as comp
from nvc.components import Capability
from nvc.errors import NvcError
from nvc.record import record
from nvc.rootpath import DriverRoot, RootPathError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

NVML_SONAME = "libnvidia-ml.so.1"


@record(frozen=True)
class DriverFile:
    """One driver file: ``path`` inside the driver root, the name it was looked up by, its capability."""

    kind: str  # "library" | "library32" | "binary" | "ipc" | "firmware"
    name: str
    path: str
    host_path: str
    capability: Capability | None


@record(frozen=True)
class DriverFiles:
    """Every driver file the root holds, tagged by capability; callers filter by what a container asks for."""

    driver_root: str
    driver_version: str
    libraries: tuple[DriverFile, ...]
    libraries32: tuple[DriverFile, ...]
    binaries: tuple[DriverFile, ...]
    ipcs: tuple[DriverFile, ...]
    firmwares: tuple[DriverFile, ...]


def load_ldcache(driver_root: DriverRoot, ldcache: str):
    """Read the driver root's ld.so.cache (``ldcache`` is a path inside the root)."""
    from nvc.host.ldcache import LdCacheError, read_cache

    try:
        cache_host = driver_root.locate(ldcache)
    except RootPathError as exc:
        raise NvcError("detection", f"{ldcache}: {exc.strerror.lower()}") from None
    try:
        return read_cache(cache_host)
    except LdCacheError as exc:
        raise NvcError("detection", str(exc)) from None


def _arch_entries(cache, arch_class: int):
    from nvc.host.ldcache import FLAG_ARCH_MASK, FLAG_ELF

    for entry in cache.entries:
        if entry.flags & FLAG_ELF and (entry.flags & FLAG_ARCH_MASK) == arch_class:
            yield entry


def _resolve(root: DriverRoot, path: str) -> str | None:
    try:
        return root.resolve(path)
    except RootPathError:
        return None


def find_nvml_library(cache, root: DriverRoot, arch_class: int) -> str:
    """In-root real path of the root's ``libnvidia-ml.so.1`` (last matching cache entry, resolved in the root)."""
    found: str | None = None
    for entry in _arch_entries(cache, arch_class):
        if entry.key == NVML_SONAME:
            inner = _resolve(root, entry.value)
            if inner is not None and os.path.isfile(root.host_path(inner)):
                found = inner
    if found is None:
        raise NvcError(
            "initialization",
            f"load library failed: {NVML_SONAME}: cannot open shared object file: no such file or directory",
        )
    return found


def version_from_library_name(path: str) -> str | None:
    """``libnvidia-ml.so.535.309.01`` → ``535.309.01``: the version a driver build stamps on its file names."""
    base = os.path.basename(path)
    _, sep, suffix = base.partition(".so.")
    if not sep or suffix.count(".") < 1 or not all(p.isdigit() for p in suffix.split(".")):
        return None
    return suffix


def _accept_library(name: str, candidate_host: str, previous: str | None, version: str, arch_class: int) -> bool:
    """NVIDIA's selection rule for one cache candidate, plus a refusal of files of the wrong ELF class."""
    from nvc.host.elf import depends_on, has_linux_abi, matches_cache_class, read_identity

    if not os.path.basename(candidate_host).endswith(version):
        return False
    if not matches_cache_class(read_identity(candidate_host), arch_class):
        return False
    if previous is None:
        return True
    if name == comp.TLS_LIBRARY:
        return has_linux_abi(candidate_host, comp.TLS_ABI)
    if name in comp.GRAPHICS_COMPAT_LIBRARIES:
        return any(depends_on(candidate_host, dep) for dep in comp.GL_CORE_DEPENDENCIES)
    return True


def find_libraries(
    cache, root: DriverRoot, arch_class: int, version: str, kind: str = "library"
) -> tuple[DriverFile, ...]:
    """Libraries of every capability, one per looked-up name, in NVIDIA's lookup order.

    A cache entry belongs to the first name its key (soname) starts with; the entry's path is resolved inside the
    root and accepted only if the real file name ends with the driver version; later acceptable entries replace
    earlier ones (``ldconfig`` writes the preferred entry last for equal keys).
    """
    names: list[tuple[str, Capability]] = [
        (name, cap) for cap, names in comp.LIBRARIES_BY_CAPABILITY for name in names
    ]
    chosen: dict[str, str] = {}
    for entry in _arch_entries(cache, arch_class):
        for name, _cap in names:
            if not entry.key.startswith(name):
                continue
            inner = _resolve(root, entry.value)
            previous = chosen.get(name)
            if inner is not None and inner != previous:
                candidate_host = root.host_path(inner)
                previous_host = root.host_path(previous) if previous else None
                if _accept_library(name, candidate_host, previous_host, version, arch_class):
                    chosen[name] = inner
            break
    return tuple(
        DriverFile(kind, name, chosen[name], root.host_path(chosen[name]), cap)
        for name, cap in names
        if name in chosen
    )


def cache_lookup_paths(cache, arch_classes: tuple[int, int | None]) -> set[str]:
    """In-root paths (unresolved) of the cache entries discovery looks at: the sonames' symlinks."""
    names = (*(name for _cap, names in comp.LIBRARIES_BY_CAPABILITY for name in names), NVML_SONAME)
    paths: set[str] = set()
    for arch_class in arch_classes:
        if arch_class is None:
            continue
        for entry in _arch_entries(cache, arch_class):
            if entry.key.startswith(names):
                paths.add(entry.value)
    return paths


def find_binaries(root: DriverRoot, search_path: str | None = None) -> tuple[DriverFile, ...]:
    """Binaries: the first ``$PATH`` directory (inside the root) holding an executable of that name."""
    dirs = [d for d in (search_path or comp.DEFAULT_PATH).split(":") if d.startswith("/")]
    found: list[DriverFile] = []
    for cap, names in comp.BINARIES_BY_CAPABILITY:
        for name in names:
            for directory in dirs:
                inner = _resolve(root, f"{directory}/{name}")
                if inner is None:
                    continue
                full = root.host_path(inner)
                try:
                    st = os.stat(full)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
                    found.append(DriverFile("binary", name, inner, full, cap))
                    break
    return tuple(found)


def find_ipcs(root: DriverRoot, mps_pipe_directory: str | None = None) -> tuple[DriverFile, ...]:
    """IPC endpoints present in the root: persistenced and fabricmanager sockets (utility), MPS pipes (compute)."""
    wanted = (
        ("nvidia-persistenced", comp.PERSISTENCED_SOCKET, Capability.UTILITY),
        ("nv-fabricmanager", comp.FABRICMANAGER_SOCKET, Capability.UTILITY),
        ("nvidia-mps", mps_pipe_directory or comp.DEFAULT_MPS_PIPE_DIRECTORY, Capability.COMPUTE),
    )
    found: list[DriverFile] = []
    for name, path, cap in wanted:
        inner = _resolve(root, path)
        if inner is not None and root.exists(inner):
            found.append(DriverFile("ipc", name, inner, root.host_path(inner), cap))
    return tuple(found)


def find_firmwares(root: DriverRoot, version: str) -> tuple[DriverFile, ...]:
    """GSP firmware of this driver version; reported under the unresolved directory name, as NVIDIA does."""
    directory = comp.FIRMWARE_DIR_TEMPLATE.format(version=version)
    inner_dir = _resolve(root, directory)
    if inner_dir is None:
        return ()
    import glob  # discovery runs on an inventory-cache miss only; glob (+fnmatch, re) stays off the hit path

    found: list[DriverFile] = []
    for full in sorted(glob.glob(os.path.join(root.host_path(inner_dir), comp.FIRMWARE_GLOB))):
        name = os.path.basename(full)
        inner = _resolve(root, f"{inner_dir}/{name}")
        if inner is None or not os.path.isfile(root.host_path(inner)):
            continue
        found.append(DriverFile("firmware", name, f"{directory}/{name}", root.host_path(inner), None))
    return tuple(found)


def discover_files(
    driver_root: DriverRoot,
    cache,
    version: str,
    arch_classes: tuple[int, int | None],
    environ: dict[str, str] | None = None,
) -> DriverFiles:
    """All driver files of ``version`` in the root. ``environ`` supplies PATH and CUDA_MPS_PIPE_DIRECTORY."""
    env = os.environ if environ is None else environ
    arch64, arch32 = arch_classes
    return DriverFiles(
        driver_root=driver_root.path,
        driver_version=version,
        libraries=find_libraries(cache, driver_root, arch64, version),
        libraries32=(
            find_libraries(cache, driver_root, arch32, version, kind="library32") if arch32 is not None else ()
        ),
        binaries=find_binaries(driver_root, env.get("PATH")),
        ipcs=find_ipcs(driver_root, env.get("CUDA_MPS_PIPE_DIRECTORY")),
        firmwares=find_firmwares(driver_root, version),
    )


def filter_by_capabilities(files: Iterable[DriverFile], caps: Sequence[Capability]) -> tuple[DriverFile, ...]:
    """Keep the files a container with ``caps`` gets (firmware has no capability and is always kept)."""
    wanted = set(caps)
    return tuple(f for f in files if f.capability is None or f.capability in wanted)
