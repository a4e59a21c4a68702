"""``nvidia-cdi-hook``: the ONE createContainer hook a spec of ours names, doing every step in this process.

A CDI runtime (podman, containerd, CRI-O, docker) makes the spec's device nodes and bind mounts itself; what needs
the container's root is left to hooks. NVIDIA's spec runs four ``nvidia-cdi-hook`` processes per container (two
``create-symlinks``, ``enable-cuda-compat``, ``update-ldcache`` exec'ing ldconfig in the container). Ours runs one:

``nvidia-cdi-hook configure-container --host-driver-version V --folder DIR... --library PATH::SONAME::FLAGS...
--link TARGET::LINK...`` reads the OCI state on stdin (then ``<bundle>/config.json`` for the root), and

1. picks CUDA forward compat: when the image's ``/usr/local/cuda/compat`` holds a ``libcuda.so.X...`` of a newer
   major than the host driver, that directory goes first and its libraries into the cache (what NVIDIA's
   ``enable-cuda-compat`` + ldconfig achieve);
2. computes the container's ld.so.cache: the image's cache with the injected libraries merged as glibc's ldconfig
   would write it (:mod:`nvc.apply.ldcache_update`; the SONAMEs were read once, by ``cdi generate``) — no ldconfig
   exec, and so also right for an image that has no ldconfig of its own;
3. creates the plan's links (``libcuda.so -> libcuda.so.1``...) and the SONAME links ldconfig would make, each
   directory resolved once for all its links, then writes the cache atomically (temp file + rename in the image's
   ``/etc``) -- unless the image's cache already is that one (a restarted container: nothing is rewritten).

Every path is resolved inside the container root (:mod:`nvc.apply.container_fs`'s user-space walk, the semantics of
``openat2(RESOLVE_IN_ROOT)``: see :func:`_open_root`), so an image whose ``/etc`` or ``/usr/lib64`` is a symlink to
a host path gets the file inside its own root, never on the host. All or nothing: any failure (a read-only root,
a file where a link's directory should be) removes the links made so far and leaves the old cache; the start
fails with one line ``nvidia-cdi-hook: <stage> error: <message>``.

NVIDIA's subcommands are accepted too, so a spec written by ``nvidia-ctk cdi generate`` can name this hook:
``create-symlinks --link A::B``, ``update-ldcache --folder DIR`` (scans DIR in the container for libraries),
``enable-cuda-compat --host-driver-version V`` (writes ``/etc/ld.so.conf.d/00-compat-nvc.conf`` naming the compat
directory, which a later ``update-ldcache`` reads — NVIDIA's mechanism). ``--container-spec FILE`` reads the
OCI spec from FILE instead of the bundle; ``--ldconfig-path`` is accepted and unused (nothing is exec'd).

A per-container hot path: module-level imports are the lean ones the legacy hook uses (no json, re, typing,
click, pyelftools, no FFI; ``tests/test_hotpath_imports.py`` holds it to that), and the program exits without the
interpreter's teardown.
"""

from __future__ import annotations

import os
import stat
import sys

from nvc.errors import NvcError

PROG = "nvidia-cdi-hook"
SUBCOMMANDS = ("configure-container", "create-symlinks", "update-ldcache", "enable-cuda-compat")
CUDA_COMPAT_DIR = "/usr/local/cuda/compat"
COMPAT_CONF = "/etc/ld.so.conf.d/00-compat-nvc.conf"
USAGE = (f"Usage: {PROG} [--debug] COMMAND [--container-spec FILE] OPTIONS\n"
         f"  configure-container --host-driver-version V --folder DIR --library PATH::SONAME::FLAGS "
         "--link TARGET::LINK\n"
         "  create-symlinks --link TARGET::LINK\n  update-ldcache --folder DIR\n"
         "  enable-cuda-compat --host-driver-version V\n")
_MULTI = ("link", "folder", "library")
_SINGLE = ("host-driver-version", "container-spec", "ldconfig-path")
_GLOBAL_FLAGS = ("debug", "d", "quiet", "q")


class HookUsage(Exception):
    pass


def parse_args(argv: list[str]) -> tuple[str, dict[str, list[str]]]:
    """(subcommand, {flag: values}) from urfave/cli-style arguments (``--flag V``, ``--flag=V``, ``-flag V``)."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        name = argv[i].lstrip("-").partition("=")[0]
        if name in ("h", "help"):
            raise HookUsage("")
        if name not in _GLOBAL_FLAGS:
            raise HookUsage(f"flag provided but not defined: {argv[i]}")
        i += 1
    if i >= len(argv):
        raise HookUsage("no command given")
    command = argv[i]
    if command not in SUBCOMMANDS:
        raise HookUsage(f"unknown command {command!r}")
    flags: dict[str, list[str]] = {}
    i += 1
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or arg == "-":
            raise HookUsage(f"unexpected argument {arg!r}")
        name, eq, value = arg.lstrip("-").partition("=")
        if name not in _MULTI and name not in _SINGLE:
            raise HookUsage(f"flag provided but not defined: -{name}")
        if not eq:
            i += 1
            if i >= len(argv):
                raise HookUsage(f"flag needs an argument: -{name}")
            value = argv[i]
        flags.setdefault(name, []).append(value)
        i += 1
    return command, flags


def _pair(value: str, flag: str) -> tuple[str, str]:
    left, sep, right = value.partition("::")
    if not sep or not left or not right:
        raise NvcError("input", f"invalid --{flag} {value!r}: expected A::B")
    return left, right


def _link_pairs(values: list[str]) -> list[tuple[str, str]]:
    """``--link TARGET::LINK`` → (link path in the container, symlink value), as NVIDIA's create-symlinks reads it."""
    pairs = []
    for value in values:
        target, link = _pair(value, "link")
        if not link.startswith("/"):
            raise NvcError("input", f"invalid --link {value!r}: the link must be an absolute container path")
        pairs.append((link, target))
    return pairs


def _libraries(values: list[str]):
    from nvc.host.ldcache.writer import LibraryAddition

    additions = []
    for value in values:
        parts = value.split("::")
        if len(parts) != 3 or not parts[0].startswith("/") or not parts[1]:
            raise NvcError("input", f"invalid --library {value!r}: expected PATH::SONAME::FLAGS")
        try:
            flags = int(parts[2], 0)
        except ValueError:
            raise NvcError("input", f"invalid --library {value!r}: flags must be a number") from None
        additions.append(LibraryAddition(soname=parts[1], path=parts[0], flags=flags))
    return additions


def _driver_major(version: str | None) -> int | None:
    if not version:
        return None
    head = version.split(".", 1)[0]
    if not head.isdigit():
        raise NvcError("input", f"invalid --host-driver-version {version!r}")
    return int(head)


# --- reading the container root -----------------------------------------------------------------------------------


def _rootfs(flags: dict[str, list[str]]) -> str:
    from nvc.commands.hook import container_rootfs, load_spec, read_state

    spec_file = flags.get("container-spec", [None])[-1]
    if spec_file:
        bundle = os.path.dirname(os.path.abspath(spec_file))
        if os.path.basename(spec_file) != "config.json":
            raise NvcError("input", f"--container-spec must name a bundle's config.json: {spec_file}")
        return container_rootfs({}, load_spec(bundle), bundle)
    state = read_state(sys.stdin.buffer)
    bundle = state.get("bundle")
    if not isinstance(bundle, str) or not bundle:
        raise NvcError("input", "container state has no bundle")
    return container_rootfs(state, load_spec(bundle), bundle)


def _library_in_root(root, inner: str):
    """The cache entry ldconfig would make for the container file ``inner`` (read through a root-resolved fd)."""
    from nvc.apply.ldcache_update import library_addition

    try:
        fd = root.resolve_fd(inner, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        addition = library_addition(f"/proc/self/fd/{fd}", inner)
    finally:
        os.close(fd)
    return addition


def _list_dir(root, inner: str) -> list[str]:
    try:
        fd = root.resolve_fd(inner, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return []
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


def _scan_folder(root, folder: str, known: set[str]):
    """Libraries ldconfig would list from ``folder`` (regular ``lib*.so*`` files), except those already known."""
    additions = []
    for name in _list_dir(root, folder):
        if not name.startswith("lib") or ".so" not in name:
            continue
        inner = f"{folder.rstrip('/')}/{name}"
        if inner in known:
            continue
        st = root.lstat(inner)
        if st is None or not stat.S_ISREG(st.st_mode):
            continue
        addition = _library_in_root(root, inner)
        if addition is not None:
            additions.append(addition)
    return additions


def compat_dir(root, driver_major: int | None) -> str | None:
    """The image's CUDA forward-compat directory when it ships a driver newer than the host's (``libcuda.so.X.Y``
    with X > the host driver's major); None otherwise."""
    if driver_major is None:
        return None
    for name in _list_dir(root, CUDA_COMPAT_DIR):
        prefix, sep, version = name.partition("libcuda.so.")
        head = version.split(".", 1)[0]
        if sep and not prefix and head.isdigit() and int(head) > driver_major:
            return CUDA_COMPAT_DIR
    return None


def cuda_compat(root, driver_major: int | None) -> tuple[str | None, list]:
    """(:func:`compat_dir`, its libraries as cache entries); (None, []) when the image has no newer compat driver."""
    directory = compat_dir(root, driver_major)
    if directory is None:
        return None, []
    return directory, _scan_folder(root, directory, set())


def _compat_conf_dirs(root) -> list[str]:
    """The directories our ``enable-cuda-compat`` listed in the image's ``/etc/ld.so.conf.d``, if it ran."""
    try:
        fd = root.resolve_fd(COMPAT_CONF, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return []
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        text = os.read(fd, 4096).decode("utf-8", "replace")
    finally:
        os.close(fd)
    return [line.strip() for line in text.splitlines() if line.strip().startswith("/")]


# --- doing it -----------------------------------------------------------------------------------------------------


def _os_message(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{(exc.strerror or str(exc)).lower()}"


def _new_cache(root, additions, first_dirs) -> bytes | None:
    """The merged cache to write; None when the image's cache already is exactly that (a restarted container)."""
    from nvc.apply.ldcache_update import _read_container_cache, merge_container_cache

    try:
        existing = _read_container_cache(root)
    except OSError as exc:
        raise NvcError("ldcache", f"cannot read the container's ld.so.cache: {_os_message(exc)}") from None
    merged = merge_container_cache(existing, root.path, additions, first_dirs)
    if merged is None:  # not a cache we can read: a fresh one (ld.so still searches its default dirs after it)
        merged = merge_container_cache(None, root.path, additions, first_dirs)
    return None if merged == existing else merged


def _links_by_directory(links: list[tuple[str, str]]) -> dict[str, list[tuple[str, str, str]]]:
    """``{parent directory: [(name, value, link path)]}``, the last value given for a link winning: each
    directory is resolved once for all its links (a driver puts dozens in one)."""
    grouped: dict[str, list[tuple[str, str, str]]] = {}
    for link, target in dict(links).items():
        parts = [c for c in link.split("/") if c not in ("", ".")]
        name = parts.pop() if parts else ""
        grouped.setdefault("/" + "/".join(parts), []).append((name, target, link))
    return grouped


def _make_links(root, links: list[tuple[str, str]], undo) -> None:
    """Create every link (ldconfig's rule where the name exists: a stale link is replaced, a file left alone)."""
    for directory, entries in _links_by_directory(links).items():
        try:
            dir_fd = root.make_dirs(directory, undo=undo)
        except OSError as exc:
            raise NvcError("mount", f"symlink creation failed: {_os_message(exc)}") from None
        try:
            for name, target, link in entries:
                try:  # a fresh container has none of them: one symlinkat per link
                    root.ldconfig_symlink_at(dir_fd, name, target, link, undo=undo)
                except OSError as exc:  # its filename is the link's host path
                    raise NvcError("mount", f"symlink creation failed: {_os_message(exc)}") from None
        finally:
            os.close(dir_fd)


def apply(root, *, links: list[tuple[str, str]], additions: list, first_dirs: list[str], write_cache: bool,
          compat_conf: str | None = None) -> None:
    """Make ``links`` and the SONAME links of ``additions``, then write the merged cache (unless the image's is
    that already); all or nothing."""
    from nvc.apply.container_fs import Undo

    payload = None
    if write_cache:
        from nvc.host.ldcache.writer import soname_links

        payload = _new_cache(root, additions, first_dirs)
        links = [*links, *((link, target) for link, target in soname_links(additions))]
    undo = Undo()
    try:
        _make_links(root, links, undo)
        try:
            if compat_conf is not None:
                _write_in_root(root, COMPAT_CONF, compat_conf.encode(), undo)
            if payload is not None:
                _write_in_root(root, "/etc/ld.so.cache", payload, undo)
        except OSError as exc:
            raise NvcError("ldcache", f"cache update failed: {_os_message(exc)}") from None
    except BaseException:
        undo.rollback()
        raise
    undo.commit()


def _write_in_root(root, inner: str, data: bytes, undo) -> None:
    from nvc.atomic_write import replace_file

    directory, _, name = inner.rpartition("/")
    dir_fd = root.make_dirs(directory or "/", undo=undo)
    try:
        replace_file(name, data, 0o644, dir_fd=dir_fd)
    except OSError as exc:
        if not exc.filename or exc.filename.startswith("."):
            exc.filename = root.host_path(inner)
        raise
    finally:
        os.close(dir_fd)


def _open_root(rootfs: str):
    """The container root, resolved in user space (:mod:`nvc.apply.container_fs`'s walk: one ``O_NOFOLLOW`` component at
    a time, symlinks re-rooted, ``..`` clamped) rather than by ``openat2``: the same answers for this hook's few paths
    without loading the FFI for one system call. What openat2 adds -- the kernel's check against a rename racing
    the walk -- guards against a process running in the root, and at ``createContainer`` none does yet: the
    runtime's own init waits for the hooks before it execs anything of the image."""
    from nvc.apply.container_fs import open_root

    try:
        return open_root(rootfs, use_openat2=False)
    except OSError as exc:
        raise NvcError("container", f"cannot open the container root: {_os_message(exc)}") from None


def run(argv: list[str]) -> int:
    command, flags = parse_args(argv)
    links = _link_pairs(flags.get("link", []))
    folders = flags.get("folder", [])
    major = _driver_major(flags.get("host-driver-version", [None])[-1])
    additions = _libraries(flags.get("library", []))
    with _open_root(_rootfs(flags)) as root:  # one root for the whole run
        if command == "create-symlinks":
            apply(root, links=links, additions=[], first_dirs=[], write_cache=False)
            return 0
        if command == "enable-cuda-compat":  # the directory only: its libraries are update-ldcache's to scan
            directory = compat_dir(root, major)
            if directory is not None:
                apply(root, links=[], additions=[], first_dirs=[], write_cache=False, compat_conf=f"{directory}\n")
            return 0
        compat, compat_libs = cuda_compat(root, major)
        if command == "update-ldcache":
            conf_dirs = _compat_conf_dirs(root)  # left by our enable-cuda-compat earlier in the same start
            folders = [*conf_dirs, *(f for f in folders if f not in conf_dirs)]
            known = {a.path for a in additions}
            for folder in folders:
                scanned = _scan_folder(root, folder, known)
                known.update(a.path for a in scanned)
                additions += scanned
        first = ([compat] if compat else []) + [f for f in folders if f != compat]
        additions = [*compat_libs, *additions]
        apply(root, links=links, additions=additions, first_dirs=first, write_cache=bool(additions))
    return 0


def main(argv: list[str] | None = None) -> int:
    from nvc.errors import run_reporting_errors

    if argv is None:  # run as the hook program (nvc/oneshot.py)
        from nvc import oneshot

        oneshot.begin()
    args = sys.argv[1:] if argv is None else argv
    try:
        parse_args(args)
    except HookUsage as exc:
        message = str(exc)
        sys.stderr.write((f"{PROG}: input error: {message}\n" if message else "") + USAGE)
        return 0 if not message else 1
    code = run_reporting_errors(PROG, lambda: run(args), os_error_stage="container")
    # Run as the hook program: leave without the interpreter's teardown (2-3 ms of every container start) when
    # nothing needs it: files are written with raw fds and renamed, the undo log is committed or rolled back.
    return oneshot.end(code) if argv is None else code


if __name__ == "__main__":
    sys.exit(main())
