"""Where driver files land inside a container: library directories by the image's layout.

NVIDIA's rule: an image with ``/etc/debian_version`` uses the multiarch directories; anything else gets
``/usr/lib64`` for 64-bit libraries and ``/usr/lib32`` (or ``/usr/lib`` when there is no lib32) for 32-bit ones.
"""

from __future__ import annotations

import os

from nvc.record import record
from nvc.rootpath import host_path, resolve_in_root

BINARY_DIR = "/usr/bin"

_MULTIARCH = {
    "x86_64": ("x86_64-linux-gnu", "i386-linux-gnu"),
    "aarch64": ("aarch64-linux-gnu", "arm-linux-gnueabihf"),
    "ppc64le": ("powerpc64le-linux-gnu", None),
}


def library_dirs(rootfs: str | None, machine: str | None = None) -> tuple[str, str | None]:
    """(64-bit library dir, 32-bit library dir or None) for a container rootfs (None: a generic non-Debian one)."""
    triplets = _MULTIARCH.get(machine or os.uname().machine, ("x86_64-linux-gnu", "i386-linux-gnu"))
    if rootfs is not None and os.path.exists(host_path(rootfs, resolve_in_root(rootfs, "/etc/debian_version"))):
        lib32 = f"/usr/lib/{triplets[1]}" if triplets[1] else None
        return f"/usr/lib/{triplets[0]}", lib32
    if triplets[1] is None:
        return "/usr/lib64", None
    if rootfs is not None:
        lib32_inner = resolve_in_root(rootfs, "/usr/lib32")
        if not os.path.isdir(host_path(rootfs, lib32_inner)):
            return "/usr/lib64", "/usr/lib"
    return "/usr/lib64", "/usr/lib32"


CUDA_COMPAT_DIR = "/usr/local/cuda/compat"


@record(frozen=True)
class ContainerLayout:
    """What the planner needs to know about an image: its library dirs and the CUDA forward-compat libraries it
    ships (in-rootfs paths of ``/usr/local/cuda/compat/lib*.so.*`` real files)."""

    libdir: str
    lib32dir: str | None
    cuda_compat_libs: tuple[str, ...] = ()


def inspect_rootfs(rootfs: str, machine: str | None = None) -> ContainerLayout:
    """Read (never write) the container image to decide its layout. Every path is resolved inside ``rootfs``."""
    libdir, lib32dir = library_dirs(rootfs, machine)
    compat_dir = resolve_in_root(rootfs, CUDA_COMPAT_DIR)
    compat: list[str] = []
    try:
        names = sorted(os.listdir(host_path(rootfs, compat_dir)))
    except OSError:
        names = []
    for name in names:
        if not (name.startswith("lib") and ".so." in name):
            continue
        inner = f"{compat_dir}/{name}"
        if os.path.isfile(host_path(rootfs, inner)) and not os.path.islink(host_path(rootfs, inner)):
            compat.append(inner)
    return ContainerLayout(libdir, lib32dir, tuple(compat))
