"""Every nvc module's compiled code in one indexed file, read at container start instead of one ``.pyc`` each.

The hook and ``nvidia-container-cli configure`` import ~45 of our modules on every container start. Through the
normal path finder each costs a directory scan entry, two ``stat`` calls, an ``open``/``read``/``close`` of its
``.pyc`` and importlib's per-module bookkeeping. ``nvc/__pycache__/bundle.<cache_tag>.marshal`` holds the code
objects of all of them behind one index: the launchers (``scripts/launchers/*``) call :func:`install` before they
import the hot-path module, which puts a meta-path finder first that serves each module with one ``stat`` of its
source and one ``pread``.

Correctness never depends on the bundle:

- each entry is validated against its source file (size and ``st_mtime_ns``, as a ``.pyc`` is by mtime); a stale,
  unreadable or missing entry falls back to the normal import of that module, and a module added after the build
  is simply not in the index;
- the whole bundle is ignored (normal imports) when it is a symlink, not a regular file, not owned by root (or by
  the user running us), group- or world-writable, damaged, for another interpreter's byte-code, or when the
  interpreter runs with ``-O`` (the bundle holds unoptimised code): its code runs as root.

Nothing writes it at container start. ``python -m nvc.bytecode_bundle`` builds it (scripts/setup.sh, the Debian
package's postinst after byte-compiling, bench/bench_hook.py); it walks the package tree, so the module list is
never written down anywhere.

Format: ``MAGIC`` (with the interpreter's importlib magic number), the index length (4 bytes, little-endian), the
index (``marshal``: module name -> (path relative to the package directory, source size, source mtime_ns, offset,
length)), then each module's marshalled code object.
"""

import _frozen_importlib
import _frozen_importlib_external as _bootstrap_external
import _imp
import marshal
import posix
import sys

# No ``from __future__ import annotations``: on the hook's no-GPU path nothing else imports __future__ (0.1 ms).
TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs more than this whole module
if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec
    from types import CodeType, ModuleType

FORMAT = b"nvc-bytecode-bundle-1\n"
MAGIC = FORMAT + _bootstrap_external.MAGIC_NUMBER
_HEADER = len(MAGIC) + 4
_FIRST_READ = 1 << 14  # header and index in one pread for any index this size or smaller
_PACKAGE = (__spec__.name if __spec__ else __name__).rpartition(".")[0]  # "nvc", also under ``python -m``


def bundle_path(package_dir: str) -> str | None:
    """Where the bundle of the package in ``package_dir`` lives for this interpreter (None: no byte-code caching)."""
    tag = sys.implementation.cache_tag
    return None if tag is None else f"{package_dir}/__pycache__/bundle.{tag}.marshal"


def _package_dir() -> str:
    return __file__.rpartition("/")[0]


_ModuleSpec = _frozen_importlib.ModuleSpec
_CODE_TYPE = type(_package_dir.__code__)  # types.CodeType without importing types; compile() would cost 0.5 ms


class _BundleLoader(_bootstrap_external.SourceFileLoader):
    """A source-file loader whose first ``get_code`` returns the bundle's code object (a reload reads the source)."""

    def __init__(self, fullname: str, path: str, code: "CodeType") -> None:
        super().__init__(fullname, path)
        self._code: CodeType | None = code

    def get_code(self, fullname: str) -> "CodeType":
        code, self._code = self._code, None
        return super().get_code(fullname) if code is None else code


class BundleFinder:
    """The meta-path finder serving the package's modules from an open bundle."""

    def __init__(self, fd: int, package_dir: str, index: dict[str, tuple]) -> None:
        self._fd = fd
        self._package_dir = package_dir + "/"
        self._index = index
        self._cache_tag = sys.implementation.cache_tag
        self.served: list[str] = []  # modules loaded from the bundle, in order (tests and benchmarks read it)

    def find_spec(self, fullname: str, path: object = None, target: "ModuleType | None" = None) -> "ModuleSpec | None":
        entry = self._index.get(fullname)
        if entry is None:
            return None
        try:
            relpath, size, mtime_ns, offset, length = entry
            origin = self._package_dir + relpath
            st = posix.stat(origin)
            if st.st_size != size or st.st_mtime_ns != mtime_ns:
                return None  # edited since the build: the normal import compiles or reads its .pyc
            data = posix.pread(self._fd, length, offset)
            code = marshal.loads(data) if len(data) == length else None
        except (OSError, ValueError, TypeError, EOFError):
            return None
        if type(code) is not _CODE_TYPE:
            return None
        _imp._fix_co_filename(code, origin)  # as a .pyc's code: the file names the source where it is now
        self.served.append(fullname)
        # What spec_from_file_location would build, without its generic work (~10 us a module).
        directory, _, filename = origin.rpartition("/")
        is_package = filename == "__init__.py"
        spec = _ModuleSpec(fullname, _BundleLoader(fullname, origin, code), origin=origin, is_package=is_package)
        spec.has_location = True
        spec.cached = f"{directory}/__pycache__/{filename[:-3]}.{self._cache_tag}.pyc"
        if is_package:
            spec.submodule_search_locations = [directory]
        return spec

    def invalidate_caches(self) -> None:
        """Nothing cached beyond the validated index (importlib.invalidate_caches calls this)."""


def _trusted(st: posix.stat_result) -> bool:
    """A regular file only root (or we) can have written: code from it runs with our privileges."""
    return (st.st_mode & 0o170000 == 0o100000 and st.st_uid in (0, posix.geteuid())
            and not st.st_mode & 0o022)  # fmt: skip


def read_index(fd: int) -> dict[str, tuple] | None:
    """The bundle's index, when the open file ``fd`` is a trusted, intact bundle for this interpreter."""
    try:
        st = posix.fstat(fd)
        if not _trusted(st):
            return None
        head = posix.pread(fd, _FIRST_READ, 0)
        if head[: len(MAGIC)] != MAGIC or len(head) < _HEADER:
            return None
        length = int.from_bytes(head[len(MAGIC) : _HEADER], "little")
        end = _HEADER + length
        raw = head[_HEADER:end] if end <= len(head) else posix.pread(fd, length, _HEADER)
        index = marshal.loads(raw) if len(raw) == length else None
    except (OSError, ValueError, TypeError, EOFError):
        return None
    if type(index) is not dict:
        return None
    for name, entry in index.items():  # every entry well-formed and inside the file, or the bundle is damaged
        if not (type(name) is str and type(entry) is tuple and len(entry) == 5 and type(entry[0]) is str
                and type(entry[3]) is int and type(entry[4]) is int and end <= entry[3]
                and entry[3] + entry[4] <= st.st_size):  # fmt: skip
            return None
    return index


def install(package_dir: str | None = None) -> BundleFinder | None:
    """Serve the package's modules from its bundle from now on; None (and normal imports) when there is no usable
    bundle. Never raises for a bad bundle and never writes anything."""
    for finder in sys.meta_path:
        if type(finder) is BundleFinder:
            return finder
    if sys.flags.optimize:
        return None  # -O/-OO import their own optimised .pyc; the bundle holds unoptimised code
    package_dir = package_dir or _package_dir()
    path = bundle_path(package_dir)
    if path is None:
        return None
    try:
        fd = posix.open(path, posix.O_RDONLY | posix.O_NOFOLLOW | posix.O_CLOEXEC)
    except OSError:
        return None
    index = read_index(fd)
    if index is None:
        posix.close(fd)
        return None
    finder = BundleFinder(fd, package_dir, index)
    sys.meta_path.insert(0, finder)
    return finder


# --- building (setup, postinst, benchmarks): not on any hot path -------------------------------------------------


def _modules(package_dir: str) -> list[tuple[str, str]]:
    """(module name, path relative to package_dir) of every Python module of the package tree, found by walking it:
    regular packages only (a directory with ``__init__.py``), and no ``.py`` that an extension module beside it
    shadows in a normal import."""
    import os
    from importlib.machinery import EXTENSION_SUFFIXES

    found = []

    def walk(directory: str, prefix: str, relprefix: str) -> None:
        names = sorted(os.listdir(directory))
        present = set(names)
        for name in names:
            path = os.path.join(directory, name)
            if name.endswith(".py") and os.path.isfile(path):
                stem = name[:-3]
                if not stem.isidentifier() or any(stem + suffix in present for suffix in EXTENSION_SUFFIXES):
                    continue
                module = prefix if stem == "__init__" else f"{prefix}.{stem}"
                found.append((module, relprefix + name))
            elif (name.isidentifier() and os.path.isdir(path) and not os.path.islink(path)
                  and os.path.isfile(os.path.join(path, "__init__.py"))):  # fmt: skip
                walk(path, f"{prefix}.{name}", f"{relprefix}{name}/")

    walk(package_dir, _PACKAGE, "")
    return found


def _current(path: str, package_dir: str, modules: list[tuple[str, str]]) -> bool:
    """True when the bundle at ``path`` is intact and holds exactly these modules at their sources' present state."""
    import os

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        index = read_index(fd)
    finally:
        os.close(fd)
    if index is None or sorted(index) != sorted(name for name, _ in modules):
        return False
    for name, relpath in modules:
        try:
            st = os.stat(os.path.join(package_dir, relpath))
        except OSError:
            return False
        if index[name][:3] != (relpath, st.st_size, st.st_mtime_ns):
            return False
    return True


def build(package_dir: str | None = None, force: bool = False) -> tuple[str, int, bool]:
    """Write the bundle of the package in ``package_dir`` (default: this one) atomically, unless it is current;
    returns (path, module count, whether it was written)."""
    import os

    package_dir = os.path.abspath(package_dir or _package_dir())
    path = bundle_path(package_dir)
    if path is None:
        raise OSError("this interpreter does not cache byte-code (sys.implementation.cache_tag is None)")
    modules = _modules(package_dir)
    if not force and _current(path, package_dir, modules):
        return path, len(modules), False
    index: dict[str, tuple] = {}
    blobs: list[bytes] = []
    for name, relpath in modules:
        source_path = os.path.join(package_dir, relpath)
        with open(source_path, "rb") as f:
            before = os.fstat(f.fileno())
            source = f.read()
        code = compile(source, source_path, "exec", dont_inherit=True, optimize=0)
        blob = marshal.dumps(code)
        index[name] = (relpath, before.st_size, before.st_mtime_ns, 0, len(blob))
        blobs.append(blob)
    # Offsets depend on the index's length, which depends on the offsets' sizes: lay out until it is stable.
    offsets_base = 0
    while True:
        offset = _HEADER + offsets_base
        for (name, entry), blob in zip(list(index.items()), blobs, strict=True):
            index[name] = (*entry[:3], offset, len(blob))
            offset += len(blob)
        raw = marshal.dumps(index)
        if len(raw) == offsets_base:
            break
        offsets_base = len(raw)
    from nvc.atomic_write import replace_file

    os.makedirs(os.path.dirname(path), exist_ok=True)
    replace_file(path, MAGIC + len(raw).to_bytes(4, "little") + raw + b"".join(blobs), 0o644, fsync=True)
    return path, len(modules), True


def main(argv: list[str] | None = None) -> int:
    """``python -m nvc.bytecode_bundle [--force] [PACKAGE_DIR]``: build the bundle (a no-op when it is current)."""
    args = list(sys.argv[1:] if argv is None else argv)
    force = "--force" in args
    rest = [a for a in args if a != "--force"]
    if len(rest) > 1 or any(a.startswith("-") for a in rest):
        sys.stderr.write("usage: python -m nvc.bytecode_bundle [--force] [PACKAGE_DIR]\n")
        return 2
    try:
        path, count, written = build(rest[0] if rest else None, force=force)
    except (OSError, SyntaxError, ValueError) as exc:
        sys.stderr.write(f"nvc: bytecode bundle error: {exc}\n")
        return 1
    sys.stdout.write(f"{'wrote' if written else 'current'}: {path} ({count} modules)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
