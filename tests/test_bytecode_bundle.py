"""nvc/bytecode_bundle.py: the launchers' one-file store of nvc's compiled modules (issue 11).

Each test works on a copy of the nvc package in a temporary directory (the bundle lives in the package's own
__pycache__) and imports from it in a fresh ``python -I -S``, as the launchers run.
"""

from __future__ import annotations

import json
import marshal
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nvc
from nvc import bytecode_bundle

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def package(tmp_path) -> Path:
    """A copy of the nvc package (sources only) with a freshly built bundle."""
    dest = tmp_path / "site" / "nvc"
    shutil.copytree(REPO / "nvc", dest, ignore=shutil.ignore_patterns("__pycache__"))
    path, count, written = bytecode_bundle.build(str(dest))
    assert written and count > 40 and path == str(dest / f"__pycache__/bundle.{sys.implementation.cache_tag}.marshal")
    return dest


def _bundle_file(package: Path) -> Path:
    return Path(bytecode_bundle.bundle_path(str(package)))


def _import(package: Path, modules: list[str], flags: tuple[str, ...] = ()) -> dict:
    """Import ``modules`` from the copy the way a launcher does; what came from where."""
    code = (
        f"import sys, json; sys.path[:0] = [{str(package.parent)!r}]\n"
        "import nvc.bytecode_bundle as b\n"
        "finder = b.install()\n"
        f"for name in {modules!r}: __import__(name)\n"
        "print(json.dumps({'installed': finder is not None, 'served': finder.served if finder else [],\n"
        "    'files': {n: m.__file__ for n, m in sys.modules.items() if n.startswith('nvc')},\n"
        "    'cached': {n: getattr(m, '__cached__', None) for n, m in sys.modules.items() if n.startswith('nvc')},\n"
        "    'paths': {n: list(m.__path__) for n, m in sys.modules.items()\n"
        "              if n.startswith('nvc') and hasattr(m, '__path__')}}))\n"
    )  # fmt: skip
    res = subprocess.run([sys.executable, "-I", "-S", *flags, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_index_holds_every_module_of_the_package_tree():
    """The walk finds what pkgutil finds (an independent enumeration): no module list is written down anywhere."""
    expected = {"nvc"} | {info.name for info in pkgutil.walk_packages(nvc.__path__, "nvc.")}
    assert {name for name, _ in bytecode_bundle._modules(str(REPO / "nvc"))} == expected


def test_round_trip_serves_modules_as_a_normal_import_would(package):
    modules = ["nvc.commands.hook", "nvc.sys.mount", "nvc.host.ldcache.writer"]
    served = _import(package, modules)
    assert served["installed"]
    assert {"nvc.commands.hook", "nvc.sys", "nvc.sys.mount", "nvc.host.ldcache",
        "nvc.host.ldcache.writer"} <= set(served["served"])
    assert "nvc" not in served["served"] and "nvc.bytecode_bundle" not in served["served"]  # imported to install it
    # __file__, __cached__ and package __path__ are what the normal import gives
    _bundle_file(package).unlink()
    plain = _import(package, modules)
    assert not plain["installed"] and plain["served"] == []
    assert served["files"] == plain["files"] and served["cached"] == plain["cached"]
    assert served["paths"] == plain["paths"]


def test_build_is_a_no_op_when_current_and_rewrites_after_a_change(package):
    bundle = _bundle_file(package)
    before = bundle.stat()
    assert bytecode_bundle.build(str(package))[2] is False
    assert bundle.stat().st_ino == before.st_ino
    (package / "commands/hook.py").write_text((package / "commands/hook.py").read_text() + "\n# edited\n")
    assert bytecode_bundle.build(str(package))[2] is True
    assert bundle.stat().st_mode & 0o777 == 0o644
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".")]  # no temporary left


def test_stale_entry_falls_back_to_the_edited_source(package):
    hook = package / "commands/hook.py"
    hook.write_text(hook.read_text() + "\nEDITED_AFTER_BUILD = 1\n")
    code = (f"import sys; sys.path[:0] = [{str(package.parent)!r}]\nimport nvc.bytecode_bundle as b\n"
            "f = b.install()\nimport nvc.commands.hook\nprint(nvc.commands.hook.EDITED_AFTER_BUILD, "
                "'nvc.commands.hook' in f.served, "
            "'nvc.jsonfast' in f.served)")  # fmt: skip
    res = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=False)
    assert res.stdout.split() == ["1", "False", "True"], res.stderr


def test_a_module_added_after_the_build_imports_normally(package):
    (package / "added_later.py").write_text("VALUE = 42\n")
    served = _import(package, ["nvc.added_later", "nvc.commands.hook"])
    assert "nvc.added_later" not in served["served"] and "nvc.commands.hook" in served["served"]
    assert served["files"]["nvc.added_later"] == str(package / "added_later.py")


def test_a_module_removed_after_the_build_is_gone(package):
    (package / "commands/doctor_gvisor.py").unlink()
    code = (f"import sys; sys.path[:0] = [{str(package.parent)!r}]\nimport nvc.bytecode_bundle as b\nb.install()\n"
            "import nvc.commands.doctor_gvisor")  # fmt: skip
    res = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 1 and "ModuleNotFoundError: No module named 'nvc.commands.doctor_gvisor'" in res.stderr


def _assert_ignored(package: Path) -> None:
    result = _import(package, ["nvc.commands.hook"])
    assert not result["installed"] and result["served"] == []
    assert result["files"]["nvc.commands.hook"] == str(package / "commands/hook.py")  # the normal import still works


def test_a_symlinked_bundle_is_ignored(package, tmp_path):
    bundle = _bundle_file(package)
    elsewhere = tmp_path / "elsewhere.marshal"
    bundle.rename(elsewhere)
    bundle.symlink_to(elsewhere)
    _assert_ignored(package)


@pytest.mark.root
def test_a_bundle_not_owned_by_root_is_ignored(package):
    if os.geteuid() != 0:
        pytest.skip("needs root (chown)")
    os.chown(_bundle_file(package), 65534, 65534)
    _assert_ignored(package)


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_a_group_or_world_writable_bundle_is_ignored(package, mode):
    _bundle_file(package).chmod(mode)
    _assert_ignored(package)


def test_a_bundle_that_is_not_a_regular_file_is_ignored(package):
    bundle = _bundle_file(package)
    bundle.unlink()
    bundle.mkdir()
    _assert_ignored(package)


@pytest.mark.parametrize("damage", ["magic", "truncated-index", "offset-past-end", "index-not-a-dict", "empty"])
def test_a_damaged_bundle_is_ignored(package, damage):
    bundle = _bundle_file(package)
    data = bytearray(bundle.read_bytes())
    head = len(bytecode_bundle.MAGIC)
    length = int.from_bytes(data[head : head + 4], "little")
    if damage == "magic":
        data[0] ^= 0xFF
    elif damage == "truncated-index":
        data = data[: head + 4 + length // 2]
    elif damage == "offset-past-end":
        data = data[: len(data) - 1]  # the last module's code now ends past the file
    elif damage == "index-not-a-dict":
        raw = marshal.dumps(["nvc.commands.hook"])
        data = data[:head] + len(raw).to_bytes(4, "little") + raw
    else:
        data = bytearray()
    bundle.write_bytes(bytes(data))
    _assert_ignored(package)


def test_a_damaged_entry_falls_back_for_that_module(package):
    """Code bytes that do not unmarshal to a code object: the module imports normally, the others from the bundle."""
    bundle = _bundle_file(package)
    fd = os.open(bundle, os.O_RDONLY)
    try:
        index = bytecode_bundle.read_index(fd)
    finally:
        os.close(fd)
    _, _, _, offset, length = index["nvc.jsonfast"]
    data = bytearray(bundle.read_bytes())
    data[offset : offset + length] = marshal.dumps(("not", "code")).ljust(length, b"\0")
    bundle.write_bytes(bytes(data))
    served = _import(package, ["nvc.commands.hook", "nvc.jsonfast"])
    assert "nvc.jsonfast" not in served["served"] and "nvc.commands.hook" in served["served"]
    assert served["files"]["nvc.jsonfast"] == str(package / "jsonfast.py")


def test_optimised_interpreter_ignores_the_bundle(package):
    result = _import(package, ["nvc.commands.hook"], flags=("-O",))
    assert not result["installed"]


def test_build_command_reports_and_fails_in_one_line(package, tmp_path):
    res = subprocess.run([sys.executable, "-m", "nvc.bytecode_bundle", str(package)], capture_output=True,
                         text=True, cwd=REPO, check=False)  # fmt: skip
    assert res.returncode == 0 and res.stdout.startswith("current: "), res.stderr
    (package / "broken.py").write_text("def (:\n")
    res = subprocess.run([sys.executable, "-m", "nvc.bytecode_bundle", str(package)], capture_output=True,
                         text=True, cwd=REPO, check=False)  # fmt: skip
    assert res.returncode == 1
    assert res.stderr.startswith("nvc: bytecode bundle error: ") and len(res.stderr.splitlines()) == 1


@pytest.mark.root
def test_the_hook_launcher_loads_nvc_from_the_bundle(tmp_path, host, tools):
    """The installed hook launcher, run for real on a GPU container: every nvc module past the pre-filter's and the
    bundle's own comes from the bundle (the source tree's, which scripts/setup.sh builds)."""
    from tests.test_hotpath_imports import _bundle, _run_in_held_namespace

    assert bytecode_bundle.build(str(REPO / "nvc"))[1] > 40  # current already after setup.sh: then a no-op
    _, env = tools
    bundle = _bundle(tmp_path)
    launcher = REPO / "scripts/launchers/nvidia-container-runtime-hook"
    # The launcher's own text, run by this interpreter as `python -I -S launcher prestart` runs it, with a report
    # at exit (an atexit handler also keeps the hook from leaving through _exit).
    code = (
        f"import atexit, sys; sys.argv = [{str(launcher)!r}, 'prestart']\n"
        "def report():\n"
        "    finder = sys.meta_path[0]\n"
        "    served = getattr(finder, 'served', [])\n"
        "    mine = [m for m in sys.modules if m.startswith('nvc')]\n"
        "    sys.stderr.write('BUNDLE:' + json.dumps([type(finder).__name__, mine, served]) + '\\n')\n"
        "import json\n"
        "atexit.register(report)\n"
        f"exec(compile(open({str(launcher)!r}).read(), {str(launcher)!r}, 'exec'), {{'__name__': '__main__'}})\n"
    )
    res = _run_in_held_namespace(
        lambda _pid: [sys.executable, "-I", "-S", "-c", code],
        lambda pid: json.dumps({"pid": pid, "bundle": str(bundle)}), env, bundle,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert (bundle / "rootfs/etc/ld.so.cache").exists()  # the hook did configure the container
    line = next(line for line in res.stderr.splitlines() if line.startswith("BUNDLE:"))
    finder, loaded, served = json.loads(line.split(":", 1)[1])
    assert finder == "BundleFinder"
    assert len(loaded) > 30
    # The launcher installs the bundle after the pre-filter has run: every module imported after the bundle's own
    # (sys.modules keeps import order) came from it.
    after = loaded[loaded.index("nvc.bytecode_bundle") + 1 :]
    assert "nvc.commands.hook" in after and "nvc.apply.executor" in after
    assert sorted(after) == sorted(served)


@pytest.mark.root
def test_no_import_from_the_bundle_inside_the_container_namespace(tmp_path):
    """The executor's import barrier still comes first once the bundle is installed: inside the container's mount
    namespace even a module the bundle holds is refused (its source would be looked up in the container)."""
    from tests.test_hotpath_imports import _launcher_path, _run_in_held_namespace

    assert bytecode_bundle.build(str(REPO / "nvc"))[1] > 40
    code = (
        f"import sys; sys.path[:0] = {_launcher_path()!r}\n"
        "import nvc.bytecode_bundle as b\n"
        "finder = b.install()\n"
        "from nvc.apply.executor import MountNamespace, NoImportsHere\n"
        "with MountNamespace(int(sys.argv[1])):\n"
        "    try:\n"
        "        import nvc.commands.doctor_gvisor\n"
        "    except NoImportsHere:\n"
        "        print('refused', 'nvc.commands.doctor_gvisor' in finder._index)\n"
    )
    res = _run_in_held_namespace(lambda pid: [sys.executable, "-I", "-S", "-c", code, str(pid)], lambda _pid: "",
                                 {"PATH": os.environ["PATH"]}, tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["refused", "True"]
