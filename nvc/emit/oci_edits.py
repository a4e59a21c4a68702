"""A plan as OCI runtime-spec edits: the injection path that works with any runtime, hooks or not.

Why: a prestart hook needs a runtime that runs it in a namespace where its mounts reach the container. runc and
crun do; gVisor's runsc does not (its sandbox never sees a mount a hook makes on the host, and runsc only honours
NVIDIA's hook name when built with nvproxy). What every runtime honours is the spec itself: ``mounts``,
``linux.devices`` and ``linux.resources.devices``. So the same :class:`~nvc.plan.planner.Plan` that ``configure``
applies by mounting is here written as spec entries, the way NVIDIA's CDI mode edits a spec:

* file binds (binaries, libraries, firmware, IPC sockets) → ``mounts`` bind entries with the op's flags;
* device binds → ``linux.devices`` (the runtime creates the node), ``CgroupAllow`` → ``linux.resources.devices``;
* symlinks cannot be mounts: each becomes a bind of the file the link finally names, at the link's path;
* no ldconfig runs in the container, so every library is also mounted at its SONAME (the links ldconfig would
  make), and a merged ld.so.cache (the image's own cache plus the injected libraries, written by us to a host
  file) is bind-mounted read-only over ``/etc/ld.so.cache``;
* ``NVIDIA_VISIBLE_DEVICES=void`` in ``process.env`` so that no NVIDIA hook acts on the container a second time.

Not expressible, skipped with a note: the ``/proc/driver/nvidia`` tmpfs and per-GPU ``/proc`` binds (runc refuses
mounts under ``/proc``: "cannot be mounted because it is inside /proc"; runsc synthesises ``/proc/driver/nvidia``),
MIG capability files (under ``/proc`` too; the ``/dev/nvidia-caps`` nodes are still given) and CUDA compat binds
(their source is a file inside the image, which a spec mount would resolve on the host). A read-only
``/etc/ld.so.cache`` mount also means an ``ldconfig`` run inside the container cannot replace the cache.

:func:`spec_edits` and :func:`apply_edits` are pure; :func:`library_additions` reads ELF headers of the driver
files and :func:`ldcache_for_container` reads the image's cache, both read-only.
"""

from __future__ import annotations

import copy
import json
import os
import posixpath
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nvc.plan.planner import Bind, CgroupAllow, Plan, Symlink, Tmpfs, UpdateLdCache
from nvc.request.container_layout import CUDA_COMPAT_DIR
from nvc.rootpath import RootPathError, host_path, resolve_in_root

if TYPE_CHECKING:
    from nvc.host.ldcache.writer import LibraryAddition
    from nvc.request.configure_request import ConfigureRequest
    from nvc.request.options import GlobalOptions

LDCACHE_PATH = "/etc/ld.so.cache"
#: Where the shim writes the merged cache: next to config.json, removed with the bundle.
LDCACHE_FILE_NAME = "nvc-ld.so.cache"
ENV_VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"
VOID_ENV = f"{ENV_VISIBLE_DEVICES}=void"
DEVICE_FILE_MODE = 0o666
_PROC = "/proc"
_MAX_LINK_HOPS = 40
_LIBRARY_KINDS = ("library", "library32")
#: Bind kinds that have no spec form, and why (reported in SpecEdits.notes).
_SKIPPED_BINDS = {
    "compat": "CUDA compat library (source inside the image)",
    "proc-gpu": "/proc bind (runc refuses mounts under /proc)",
    "mig-cap": "MIG capability file under /proc (runc refuses mounts under /proc)",
}

SonameReader = Callable[[str], "tuple[str | None, int | None]"]


@dataclass(frozen=True)
class SpecEdits:
    """What a container gets, in spec terms; merged into a config.json by :func:`apply_edits`.

    ``ldcache``: the bytes of the container's ld.so.cache, which the caller writes to ``ldcache_source`` (the
    host file the ``/etc/ld.so.cache`` mount in ``mounts`` names) before the container starts; None when the
    image's own cache is kept. ``notes``: what the plan asked for that a spec cannot say.
    """

    mounts: tuple[dict[str, Any], ...] = ()
    devices: tuple[dict[str, Any], ...] = ()
    device_rules: tuple[dict[str, Any], ...] = ()
    env: tuple[str, ...] = (VOID_ENV,)
    ldcache: bytes | None = None
    ldcache_source: str | None = None
    notes: tuple[str, ...] = ()


# --- building the edits ---------------------------------------------------------------------------------------


def bind_mount(destination: str, source: str, *, readonly: bool = True, nosuid: bool = True, nodev: bool = True,
               noexec: bool = False) -> dict[str, Any]:
    """A spec bind mount as NVIDIA's CDI specs write them (``rbind``/``rprivate`` first, then the flags)."""
    options = ["rbind", "rprivate"]
    options += [name for name, on in (("ro", readonly), ("nosuid", nosuid), ("nodev", nodev), ("noexec", noexec))
                if on]
    return {"destination": destination, "type": "bind", "source": source, "options": options}


def _op_mount(op: Bind, destination: str | None = None) -> dict[str, Any]:
    return bind_mount(destination or op.target, op.source, readonly=op.readonly, nosuid=op.nosuid, nodev=op.nodev,
                      noexec=op.noexec)


def _under_proc(path: str) -> bool:
    return path == _PROC or path.startswith(_PROC + "/")


def _tmpfs_mount(op: Tmpfs) -> dict[str, Any]:
    options = ["nosuid", "nodev"] + (["noexec"] if op.noexec else []) + [f"mode={op.mode:o}"]
    return {"destination": op.target, "type": "tmpfs", "source": "tmpfs", "options": options}


def soname_and_flags(path: str) -> tuple[str | None, int | None]:
    """(DT_SONAME, ld.so.cache flags) of a library file; (None, None) when ldconfig would not list it."""
    from nvc.apply.ldcache_update import library_addition

    addition = library_addition(path, path)
    return (addition.soname, addition.flags) if addition is not None else (None, None)


def library_additions(plan: Plan, read: SonameReader = soname_and_flags) -> list[LibraryAddition]:
    """The libraries the plan injects, as :class:`nvc.host.ldcache.LibraryAddition` (container path, SONAME, flags).

    A library without DT_SONAME is listed under its file name, as ldconfig does; a file that is not ELF (or of
    an ABI class ldconfig would not list) is left out of the cache but still mounted.
    """
    from nvc.host.ldcache import LibraryAddition

    additions = []
    for op in plan.of_type(Bind):
        if op.kind not in _LIBRARY_KINDS or op.source_in_rootfs:
            continue
        soname, flags = read(op.source)
        if flags is None:
            continue
        additions.append(LibraryAddition(soname or posixpath.basename(op.target), op.target, flags))
    return additions


def compat_additions(plan: Plan, read: SonameReader = soname_and_flags) -> list[LibraryAddition]:
    """CUDA forward-compat libraries of the image, when the plan's ldcache update lists the compat directory
    (``cuda-compat-mode=ldconfig`` with a newer compat driver): ldconfig would put them first in the cache.

    Only files whose SONAME link already exists in the image count (we cannot create links in the image).
    """
    from nvc.host.ldcache import LibraryAddition

    if not any(CUDA_COMPAT_DIR in op.directories for op in plan.of_type(UpdateLdCache)):
        return []
    rootfs = plan.rootfs
    try:
        directory = resolve_in_root(rootfs, CUDA_COMPAT_DIR)
        names = sorted(os.listdir(host_path(rootfs, directory)))
    except OSError:
        return []
    additions = []
    for name in names:
        if not (name.startswith("lib") and ".so." in name):
            continue
        file_host = host_path(rootfs, f"{directory}/{name}")
        try:
            if not stat.S_ISREG(os.lstat(file_host).st_mode):
                continue
        except OSError:
            continue
        soname, flags = read(file_host)
        if not soname or flags is None or not os.path.lexists(host_path(rootfs, f"{directory}/{soname}")):
            continue
        additions.append(LibraryAddition(soname, f"{CUDA_COMPAT_DIR}/{name}", flags))
    return additions


def spec_edits(
    plan: Plan,
    rootfs_cache: bytes | None,
    *,
    ldcache_source: str | None = None,
    additions: Sequence[LibraryAddition] | None = None,
) -> SpecEdits:
    """The spec edits giving a container what ``plan`` says.

    ``rootfs_cache``: the ld.so.cache the container should see (from :func:`ldcache_for_container`), or None to
    keep the image's; when given, ``ldcache_source`` names the host file it will be written to. ``additions``:
    the plan's libraries with their SONAMEs (:func:`library_additions`, read when not given) — they decide the
    extra SONAME mounts.
    """
    from nvc.host.ldcache import soname_links

    if rootfs_cache is not None and not ldcache_source:
        raise ValueError("spec_edits: a container ld.so.cache needs ldcache_source (the host file to mount)")
    if additions is None:
        additions = library_additions(plan)
    mounts: list[dict[str, Any]] = []
    devices: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    notes: list[str] = []
    files: dict[str, str] = {}  # container path -> host source, for resolving symlinks
    links: dict[str, str] = {}  # container path -> symlink value

    def add_mount(mount: dict[str, Any]) -> None:
        if any(m["destination"] == mount["destination"] for m in mounts):
            return  # the plan's first word on a path wins, as in configure (a second bind is skipped)
        mounts.append(mount)

    library_ops: list[Bind] = []
    for op in plan.operations:
        if isinstance(op, Tmpfs):
            if _under_proc(op.target):
                notes.append(f"skipped tmpfs {op.target}: runc refuses mounts under /proc "
                             "(runsc synthesises /proc/driver/nvidia itself)")
            elif op.target == "/dev":
                notes.append("skipped tmpfs /dev: the spec's own /dev serves the devices of linux.devices")
            elif op.files:
                notes.append(f"skipped tmpfs {op.target}: a spec tmpfs cannot be pre-filled")
            else:
                add_mount(_tmpfs_mount(op))
        elif isinstance(op, Bind):
            if op.kind in _SKIPPED_BINDS or op.source_in_rootfs or _under_proc(op.target):
                reason = _SKIPPED_BINDS.get(op.kind, "source inside the image or target under /proc")
                notes.append(f"skipped bind {op.target}: {reason}")
                continue
            if op.device is not None:
                major, minor = op.device
                if not any(d["path"] == op.target for d in devices):
                    devices.append({"path": op.target, "type": "c", "major": major, "minor": minor,
                                    "fileMode": DEVICE_FILE_MODE, "uid": 0, "gid": 0})
                continue
            add_mount(_op_mount(op))
            if not op.directory:
                files.setdefault(op.target, op.source)
            if op.kind in _LIBRARY_KINDS:
                library_ops.append(op)
        elif isinstance(op, Symlink):
            links.setdefault(op.target, op.value)
        elif isinstance(op, CgroupAllow):
            rule = {"allow": True, "type": op.device_type, "major": op.major, "minor": op.minor,
                    "access": op.access}
            if rule not in rules:
                rules.append(rule)

    # The SONAME links ldconfig would create: the same file again at DIR/SONAME.
    by_target = {op.target: op for op in library_ops}
    for link, filename in soname_links(list(additions)):
        op = by_target.get(posixpath.join(posixpath.dirname(link), filename))
        if op is None or link in files:
            continue
        add_mount(_op_mount(op, link))
        files[link] = op.source

    # Symlinks: a bind of the file the link finally names (through other links and SONAME names).
    for link, value in links.items():
        source = _resolve_link(link, value, files, links)
        if source is None:
            notes.append(f"skipped symlink {link} -> {value}: its target is not a file the plan injects")
            continue
        add_mount(bind_mount(link, source))

    if rootfs_cache is not None:
        assert ldcache_source is not None
        add_mount(bind_mount(LDCACHE_PATH, ldcache_source))
    return SpecEdits(
        mounts=tuple(mounts),
        devices=tuple(devices),
        device_rules=tuple(rules),
        env=(VOID_ENV,),
        ldcache=rootfs_cache,
        ldcache_source=ldcache_source if rootfs_cache is not None else None,
        notes=tuple(notes),
    )


def _resolve_link(link: str, value: str, files: Mapping[str, str], links: Mapping[str, str]) -> str | None:
    """The host source of the injected file ``link`` finally points to, or None."""
    path = link
    for _ in range(_MAX_LINK_HOPS):
        path = posixpath.normpath(value if value.startswith("/") else posixpath.join(posixpath.dirname(path), value))
        if path in files:
            return files[path]
        if path not in links:
            return None
        value = links[path]
    return None


# --- the container's ld.so.cache --------------------------------------------------------------------------------


def _read_image_cache(rootfs: str) -> bytes | None:
    """The image's ``/etc/ld.so.cache``, resolved inside the rootfs; None when missing or not a regular file.

    Opened with O_NOFOLLOW|O_NONBLOCK after resolving inside the root, so neither a symlink planted in the image
    nor a FIFO can point us at (or hang us on) a host file.
    """
    from nvc.host.ldcache import MAX_CACHE_SIZE

    try:
        inner = resolve_in_root(rootfs, LDCACHE_PATH)
        fd = os.open(host_path(rootfs, inner), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except (OSError, RootPathError):
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_CACHE_SIZE:
            return None
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(MAX_CACHE_SIZE + 1)
    except OSError:
        return None
    finally:
        os.close(fd)


def ldcache_for_container(
    rootfs: str, additions: Sequence[LibraryAddition], *, first_dirs: Sequence[str] = ()
) -> bytes | None:
    """The container's ld.so.cache after injecting ``additions``: the image's cache with them merged in (its
    layout and generator kept), or a fresh cache of just them when the image has none or a corrupt one.
    None when there is nothing to add. ``first_dirs``: the directories NVIDIA passes to ldconfig (the plan's
    :class:`~nvc.plan.planner.UpdateLdCache` directories), scanned before the image's own.
    """
    from nvc.apply.ldcache_update import merge_container_cache

    if not additions:
        return None
    merged = merge_container_cache(_read_image_cache(rootfs), rootfs, additions, first_dirs)
    if merged is None:  # corrupt: start over, as ldconfig would rewrite it
        merged = merge_container_cache(None, rootfs, additions, first_dirs)
    return merged


def edits_for_plan(plan: Plan, ldcache_source: str | None) -> SpecEdits:
    """Everything for ``plan``: SONAMEs read, the merged cache computed (when ``ldcache_source`` is given: the
    host file the caller writes ``edits.ldcache`` to), the edits built. Nothing is written."""
    additions = library_additions(plan)
    cache = None
    if ldcache_source:
        first = [d for op in plan.of_type(UpdateLdCache) for d in op.directories]
        cache = ldcache_for_container(plan.rootfs, [*compat_additions(plan), *additions], first_dirs=first)
    return spec_edits(plan, cache, ldcache_source=ldcache_source, additions=additions)


def write_file_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` by temp file + rename in the same directory: a reader never sees half a file."""
    from nvc.atomic_write import replace_file

    replace_file(os.path.abspath(path), data, mode, fsync=True)


# --- merging into a spec ----------------------------------------------------------------------------------------


def apply_edits(spec: Mapping[str, Any], edits: SpecEdits) -> dict[str, Any]:
    """``spec`` with ``edits`` merged, as a new dict (the input is not modified).

    CDI's merge rules, which make applying twice the same as once: a mount replaces any mount with the same
    destination and goes after the existing ones (later mounts cover earlier ones, so ours must come after e.g.
    a user's mount of a whole library directory); a device replaces one with the same path; a cgroup rule is
    added unless the same rule is there; every ``NVIDIA_VISIBLE_DEVICES`` entry becomes ``void`` (one is
    appended when there is none). Every other key and the order of untouched entries stay as they were.
    """
    out = copy.deepcopy(dict(spec))
    if edits.mounts:
        ours = {m["destination"] for m in edits.mounts}
        kept = [m for m in out.get("mounts") or [] if not (isinstance(m, Mapping) and m.get("destination") in ours)]
        out["mounts"] = kept + [copy.deepcopy(m) for m in edits.mounts]
    if edits.devices or edits.device_rules:
        linux = out.setdefault("linux", {})
        if edits.devices:
            paths = {d["path"] for d in edits.devices}
            kept = [d for d in linux.get("devices") or [] if not (isinstance(d, Mapping) and d.get("path") in paths)]
            linux["devices"] = kept + [dict(d) for d in edits.devices]
        if edits.device_rules:
            resources = linux.setdefault("resources", {})
            existing = list(resources.get("devices") or [])
            existing += [dict(r) for r in edits.device_rules if r not in existing]
            resources["devices"] = existing
    if edits.env:
        process = out.setdefault("process", {})
        env = list(process.get("env") or [])
        for entry in edits.env:
            name = entry.split("=", 1)[0] + "="
            replaced = False
            for index, current in enumerate(env):
                if isinstance(current, str) and current.startswith(name):
                    env[index] = entry
                    replaced = True
            if not replaced:
                env.append(entry)
        process["env"] = env
    return out


def edits_document(edits: SpecEdits) -> dict[str, Any]:
    """The edits as a spec fragment: ``{"mounts", "linux": {"devices", "resources": {"devices"}}, "process":
    {"env"}}``, ready to merge into a config.json (with :func:`apply_edits` semantics)."""
    return {
        "mounts": [dict(m) for m in edits.mounts],
        "linux": {"devices": [dict(d) for d in edits.devices],
                  "resources": {"devices": [dict(r) for r in edits.device_rules]}},
        "process": {"env": list(edits.env)},
    }


def format_edits_json(edits: SpecEdits) -> str:
    """``nvc oci-edits`` output: the :func:`edits_document`, indented, with a final newline."""
    return json.dumps(edits_document(edits), indent=2) + "\n"


def oci_edits_command(
    opts: GlobalOptions, request: ConfigureRequest, ldcache_out: str | None = None
) -> tuple[str, tuple[str, ...]]:
    """``nvc oci-edits``: plan ``request`` (a :class:`~nvc.request.configure_request.ConfigureRequest` for the image's
    rootfs, no pid), write the merged ld.so.cache to ``ldcache_out`` when given (it is then mounted over
    ``/etc/ld.so.cache``), and return (the JSON document to print, the notes and plan warnings for stderr)."""
    from nvc.plan.build import build_plan

    plan = build_plan(opts, request)
    source = os.path.abspath(ldcache_out) if ldcache_out else None
    edits = edits_for_plan(plan, source)
    if edits.ldcache is not None and source is not None:
        write_file_atomic(source, edits.ldcache, 0o644)
    return format_edits_json(edits), (*plan.warnings, *edits.notes)
