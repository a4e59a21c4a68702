"""nvc/host/elf.py's hot-path readers: the one-open identity + SONAME read the in-process ld.so.cache update uses gives
what the separate readers give, and the SONAME what pyelftools reads (an independent parser)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nvc.host.elf import read_details, read_identity, read_identity_and_soname, read_soname


def _libraries(root: Path) -> list[Path]:
    found = []
    for dirpath, _dirs, files in os.walk(root):
        found += [Path(dirpath, name) for name in files if ".so" in name and not Path(dirpath, name).is_symlink()]
    return sorted(found)


def test_one_open_read_matches_the_separate_readers_and_pyelftools(fixture_set):
    libraries = _libraries(fixture_set.multiarch_root)  # 64- and 32-bit driver libraries
    assert len(libraries) > 20
    named = 0
    for path in libraries:
        identity, soname = read_identity_and_soname(str(path))
        assert (identity, soname) == (read_identity(str(path)), read_soname(str(path))), path
        details = read_details(str(path))
        assert soname == (details.soname if details else None), path
        named += soname is not None
    assert named > 20
    classes = {read_identity(str(p)).elf_class for p in libraries if read_identity(str(p))}
    assert classes == {1, 2}  # both ELF classes were read


@pytest.mark.parametrize(
    "content",
    [b"", b"not an elf file at all", b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"\x03\x00\x3e\x00",
     b"\x7fELF" + b"\xff" * 60],
    ids=["empty", "text", "header-only", "garbage-header"],
)
def test_one_open_read_of_non_libraries(tmp_path, content):
    path = tmp_path / "file"
    path.write_bytes(content)
    assert read_identity_and_soname(str(path)) == (read_identity(str(path)), read_soname(str(path)))
    assert read_identity_and_soname(str(path))[1] is None


def test_one_open_read_of_what_is_not_a_file(tmp_path):
    assert read_identity_and_soname(str(tmp_path / "missing")) == (None, None)
    assert read_identity_and_soname(str(tmp_path)) == (None, None)  # a directory: open works, read does not


def test_a_program_header_offset_past_any_file_is_no_soname(tmp_path):
    """A header claiming its program headers at 2**64-1: None from both readers, not the OverflowError that
    ``pread`` raises for such an offset (``seek`` raises one that the old reader caught)."""
    head = bytearray(b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"\x03\x00\x3e\x00" + b"\0" * 44)
    head[0x20:0x28] = (2**64 - 1).to_bytes(8, "little")
    head[0x36:0x3A] = (56).to_bytes(2, "little") + (1).to_bytes(2, "little")
    path = tmp_path / "lib.so"
    path.write_bytes(bytes(head))
    assert read_identity_and_soname(str(path))[1] is None
    assert read_soname(str(path)) is None
