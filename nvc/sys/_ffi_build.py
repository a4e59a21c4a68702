"""Generate ``nvc/sys/_nvc_cffi.py``: the FFI of ``nvc.sys`` in cffi's out-of-line ABI mode.

``set_source(..., None)`` means no C compiler and no extension module: cffi parses :data:`nvc.sys._cdef.CDEF` here,
once, and writes a pure-Python module whose ``ffi`` is built from pre-parsed type tables by ``_cffi_backend``. At
run time ``nvc.sys._ffi`` then needs neither ``cffi`` nor ``pycparser`` (~20-25 ms saved on every first kernel call).

The generated file is committed, because nvc also runs from a source checkout (``PYTHONPATH=. python -m nvc``) where
no install step would have produced it. It does not depend on the machine: in ABI mode struct layouts and the sizes
of ``long`` & co. are computed by ``_cffi_backend`` when the module loads. Regenerate it after editing ``_cdef.py``::

    python -m nvc.sys._ffi_build

``tests/test_sys_ffi.py`` checks that the committed file is what this script produces. The module-level
``ffibuilder`` also makes the script usable as ``cffi_modules=["nvc/sys/_ffi_build.py:ffibuilder"]``.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path

import cffi

try:
    from nvc.sys._cdef import CDEF
except ImportError:  # run as a plain file (setuptools' cffi_modules execs it outside the package)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from nvc.sys._cdef import CDEF

MODULE = "nvc.sys._nvc_cffi"
OUTPUT = Path(__file__).resolve().with_name("_nvc_cffi.py")

ffibuilder = cffi.FFI()
ffibuilder.set_source(MODULE, None)  # None: out-of-line *ABI* mode (pure Python, loaded with ffi.dlopen)
ffibuilder.cdef(CDEF)


def source() -> str:
    """The text of the generated module, as cffi writes it (through a scratch file: the documented API)."""
    with tempfile.TemporaryDirectory(prefix="nvc-cffi-") as tmp:
        scratch = Path(tmp, "_nvc_cffi.py")
        with contextlib.redirect_stdout(io.StringIO()):  # cffi prints "generating <scratch file>"
            ffibuilder.emit_python_code(str(scratch))
        return scratch.read_text(encoding="utf-8")


def generate(path: str | Path = OUTPUT) -> bool:
    """Write the generated module to ``path``; True if it was missing or its content changed."""
    path = Path(path)
    text = source()
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except FileNotFoundError:
        pass
    path.write_text(text, encoding="utf-8")
    return True


def main() -> int:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT
    print(f"{target}: {'regenerated' if generate(target) else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
