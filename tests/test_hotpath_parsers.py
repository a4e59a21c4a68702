"""The hook's string parsers that replaced regular expressions accept and reject exactly what the regexes did.

``import re`` (which also imports enum) costs the OCI hook about 5 ms per container start, so the parsers on its
path are plain string code. Each one is checked here against the regex it replaced -- kept verbatim below -- on
hand-picked edge cases and on many generated inputs (whitespace and digits beyond ASCII included: re's ``\\s`` and
``\\d`` in a str pattern are Unicode-aware, ``[0-9]`` is not).
"""

from __future__ import annotations

import fnmatch
import glob
import itertools
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nvc.apply import cgroups
from nvc.apply.cgroups import DeviceRule
from nvc.host import proc_driver
from nvc.host.ldcache import writer
from nvc.request import device_select
from nvc.sys import mount
from nvc.sys.mount import unescape_mountinfo

REPO = Path(__file__).resolve().parent.parent
SEED = 20240601
ALL_CHARS = "".join(chr(c) for c in range(0x110000))

# --- the regexes the parsers replaced (verbatim) --------------------------------------------------------------------

OLD_RULE = r"\s*([abc])(?:\s+(\*|\d+):(\*|\d+)(?:\s+([rwm]+))?)?\s*"
OLD_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")
OLD_VERSION = re.compile(r"^NVRM version:.*?Kernel Module(?:\s+for\s+\S+)?\s+(\d+(?:\.\d+)+)", re.MULTILINE)
OLD_PCI = re.compile(r"^(?:([0-9a-f]{1,8}):)?([0-9a-f]{1,2}):([0-9a-f]{1,2})(?:\.([0-7]))?$", re.IGNORECASE)
OLD_MIG_PAIR = re.compile(r"^\d+:\d+$")
OLD_LIBCMP_TOKEN = re.compile(rb"[0-9]+|[^0-9]")
OLD_LIBCMP_DIGITS = re.compile(rb"([0-9]+)")


def old_rule_parse(text: str) -> DeviceRule:
    m = re.fullmatch(OLD_RULE, text)
    if not m:
        raise ValueError(f"invalid device rule {text!r}")
    kind, major, minor, access = m.groups()
    return DeviceRule(
        kind,
        None if major in (None, "*") else int(major),
        None if minor in (None, "*") else int(minor),
        access or "rwm",
    )


def old_unescape(text: str) -> str:
    return OLD_OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)


def old_nvrm_version(text: str) -> str | None:
    match = OLD_VERSION.search(text)
    return match.group(1) if match else None


def old_normalize_bus_id(text: str) -> str | None:
    match = OLD_PCI.match(text)
    if not match:
        return None
    domain, bus, device, _function = match.groups()
    return f"{int(domain or '0', 16):08x}:{int(bus, 16):02x}:{int(device, 16):02x}.0"


def old_libcmp_key(raw: bytes) -> tuple[int, ...]:
    out: list[int] = []
    for token in OLD_LIBCMP_TOKEN.findall(raw):
        first = token[0]
        if 0x30 <= first <= 0x39:
            out += (1, writer._int32(int(token)))
        else:
            out += (0, first - 256 if writer._CHAR_IS_SIGNED and first >= 0x80 else first)
    out += (0, 0)
    return tuple(out)


def old_descending_libcmp_key(raw: bytes) -> tuple[int, ...]:
    out: list[int] = []
    for index, part in enumerate(OLD_LIBCMP_DIGITS.split(raw)):
        if index % 2:
            out += (-1, -writer._int32(int(part)))
        elif part:
            out += part.translate(writer._DESCENDING_CHAR)
    out.append(127)
    return tuple(out)


def outcome(fn, *args):
    """A comparable result: the value, or the exception's type and message."""
    try:
        return ("ok", fn(*args))
    except ValueError as exc:
        return ("error", type(exc).__name__, str(exc))


def generated(tokens: list[str], count: int, max_tokens: int, seed: int = SEED) -> list[str]:
    """``count`` random concatenations of 0..max_tokens tokens (deterministic)."""
    rng = random.Random(seed)
    return ["".join(rng.choice(tokens) for _ in range(rng.randint(0, max_tokens))) for _ in range(count)]


# Characters that trip up naive rewrites: Unicode whitespace (re's \s and str.split agree), Unicode decimal digits
# (\d and int() accept them, [0-9] does not), digits that are not decimal ("²"), fullwidth letters, a newline.
TRICKY = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\xa0", "\u2003", "\u3000", "١", "٩", "０", "²", "ａ"]


# --- the character classes the parsers rely on ------------------------------------------------------------------


def chars_matching(pattern: str, flags: int = 0) -> set[str]:
    return set(re.findall(pattern, ALL_CHARS, flags))


def test_re_backslash_s_is_str_isspace():
    assert chars_matching(r"\s") == {c for c in ALL_CHARS if c.isspace()}


def test_re_backslash_d_is_str_isdecimal():
    assert chars_matching(r"\d") == {c for c in ALL_CHARS if c.isdecimal()}


def test_re_backslash_S_is_not_isspace():
    assert chars_matching(r"\S") == {c for c in ALL_CHARS if not c.isspace()}


def test_ignorecase_hex_class_is_ascii_only():
    assert chars_matching(r"[0-9a-f]", re.IGNORECASE) == set(device_select._HEX_DIGITS)
    assert chars_matching(r"[0-7]", re.IGNORECASE) == set(device_select._PCI_FUNCTIONS)


def test_octal_class():
    assert chars_matching(r"[0-7]") == set(mount._OCTAL_DIGITS)


def test_str_split_uses_the_same_whitespace():
    spaces = "".join(c for c in ALL_CHARS if c.isspace())
    assert f"x{spaces}y{spaces}".split() == ["x", "y"]
    assert all(f"a{c}b".split() == ["a", "b"] for c in spaces)
    assert all(len(f"a{c}b".split()) == 1 for c in ALL_CHARS if not c.isspace())


# --- cgroups: DeviceRule.parse and mountinfo unescaping -----------------------------------------------------------

# fmt: off
RULE_CASES = [
    "", " ", "a", "b", "c", "d", "A", " a ", "\ta\n", "a\u2003", "\u2003c 1:2 rw\u3000", "ab", "c 1:2", "c1:2",
    "c 1:2 rw", "c 1:2rw", "c 1: 2", "c 1 :2", "c :2", "c 1:", "c *:*", "c *:* rwm", "c **:*", "c *1:*", "c 1:2:3",
    "c 195:* rw", "b 8:0 m", "a *:* rwm", "a 1:2 r x", "c 1:2  r", "c 1:2 rr", "c 1:2 rwx", "c 1:2 ", "c 1:2 \n",
    "c ١٩٥:0 rw", "c ²:0 rw", "c ０:0 r", "c 4095:1048575 rw", "c 4096:0 rw", "c 0:1048576 rw", "c 00195:007 w",
    "c 1:2\x85rw", "c\xa01:2", "c 1:2 r w", "c 1:2 rw\n\n", "\n\nb", "c -1:2 rw", "c +1:2 rw", "c 1_0:2 rw",
]
# fmt: on


@pytest.mark.parametrize("text", RULE_CASES)
def test_rule_parse_matches_regex_edge_cases(text):
    assert outcome(DeviceRule.parse, text) == outcome(old_rule_parse, text)


def test_rule_parse_matches_regex_generated():
    tokens = ["a", "b", "c", "x", " ", " ", "*", "1", "0", "195", "4096", ":", ":", "r", "w", "m", "rw", "-", *TRICKY]
    cases = generated(tokens, 40000, 8)
    # Mostly-well-formed rules too, so the accepting paths get as much coverage as the rejecting ones.
    rng = random.Random(SEED + 1)
    pieces = [["", " ", "\t", "\u2003"], ["a", "b", "c", "x"], [" ", "  ", "\t", "", "\xa0"],
              ["*", "1", "195", "١", "²", "", "01"], [":", "", "::"], ["*", "0", "255", "٣", ""],
              ["", " ", "\n"], ["", "r", "rw", "rwm", "mr", "x", "rr"], ["", " ", "\n", "\u3000"]]  # fmt: skip
    cases += ["".join(rng.choice(options) for options in pieces) for _ in range(40000)]
    accepted = 0
    for text in cases:
        expected = outcome(old_rule_parse, text)
        assert outcome(DeviceRule.parse, text) == expected, text
        accepted += expected[0] == "ok"
    assert accepted > 3000  # the generator really exercises the accepting paths


# fmt: off
UNESCAPE_CASES = ["", "plain", "\\", "\\\\", "\\0", "\\04", "\\040", "\\0400", "\\\\040", "a\\040b\\011c", "\\8",
                  "\\777", "\\400", "\\08a", "\\04\\040", "\\٠٤٠", "end\\", "end\\04", "\\134", "\\134040",
                  "\\\\\\040"]
# fmt: on


@pytest.mark.parametrize("text", UNESCAPE_CASES)
def test_unescape_matches_regex_edge_cases(text):
    assert unescape_mountinfo(text) == old_unescape(text)


def test_unescape_matches_regex_generated():
    tokens = ["\\", "\\", "0", "1", "4", "7", "8", "9", "a", " ", "\\040", "\\1", "٠", "/", *TRICKY]
    for text in generated(tokens, 50000, 10):
        assert unescape_mountinfo(text) == old_unescape(text), text


def test_mountinfo_paths_unescaped():
    line = "36 35 0:30 /a\\040b /mnt/x\\011y rw - cgroup2 cg\\134roup rw\n"
    (mount,) = cgroups.parse_mountinfo(line)
    assert (mount.root, mount.mount_point, mount.source) == ("/a b", "/mnt/x\ty", "cg\\roup")


# --- proc_driver.parse_nvrm_version -------------------------------------------------------------------------------

VERSION_CASES = [
    "",
    "garbage",
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.309.01  Tue Oct  1 00:00:00 UTC 2024\nGCC version: 12\n",
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.15  Release Build  (dvs-builder@U16)\n",
    "NVRM version: NVIDIA UNIX Open Kernel Module for aarch64  570.86.15  Release Build\n",
    "NVRM version: Kernel Module 1.2",
    "NVRM version:Kernel Module 1.2",
    "NVRM version: Kernel Module 1",
    "NVRM version: Kernel Module 1.",
    "NVRM version: Kernel Module 1..2",
    "NVRM version: Kernel Module .1.2",
    "NVRM version: Kernel Module1.2",
    "NVRM version: Kernel Module\n1.2",
    "NVRM version: Kernel Module\n\n 1.2.3",
    "NVRM version: x\nKernel Module 1.2",
    " NVRM version: Kernel Module 1.2",
    "x\nNVRM version: Kernel Module 1.2",
    "x\rNVRM version: Kernel Module 1.2",
    "NVRM version: Kernel Module for 1.2",
    "NVRM version: Kernel Module for x86_64 1.2",
    "NVRM version: Kernel Module for x86_64\n1.2",
    "NVRM version: Kernel Module for\nx86_64\t1.2",
    "NVRM version: Kernel Module for  x86_64",
    "NVRM version: Kernel Module forx 1.2",
    "NVRM version: Kernel Module for x 1.2 Kernel Module 3.4",
    "NVRM version: Kernel Module abc Kernel Module 3.4",
    "NVRM version: Kernel Module 1 Kernel Module 3.4",
    "NVRM version: Kernel Module x\nNVRM version: Kernel Module 5.6",
    "NVRM version: Kernel ModuleKernel Module 7.8",
    "NVRM version: Kernel Module ١.٢",
    "NVRM version: Kernel Module 1.٢.3",
    "NVRM version: Kernel Module ².2",
    "NVRM version: Kernel Module\u20031.2",
    "NVRM version: Kernel Module\x851.2",
    "NVRM version: Kernel Module for\xa0x\u30001.2",
    "NVRM version: NVRM version: Kernel Module 1.2",
    "NVRM version NVRM version: Kernel Module 1.2",
]


@pytest.mark.parametrize("text", VERSION_CASES)
def test_nvrm_version_matches_regex_edge_cases(text):
    assert proc_driver.parse_nvrm_version(text) == old_nvrm_version(text)


def test_nvrm_version_matches_regex_generated():
    # fmt: off
    tokens = ["NVRM version:", "NVRM version: ", "NVRM version", "Kernel Module", "Kernel Module ", "Kernel Modul",
              " for ", "for", "x86_64", " ", " ", "\n", "535", ".", "104", "05", "..", "Open", "\r", "a", *TRICKY]
    cases = generated(tokens, 30000, 12)
    rng = random.Random(SEED + 2)
    pieces = [["", "x\n", "\n", " "], ["NVRM version:", "NVRM version: NVIDIA UNIX x86_64 "], ["", "Open "],
              ["Kernel Module", "Kernel Module 9", "Kernel Module1.2 "], ["", " for", " for x86_64", " for\n"],
              [" ", "  ", "\n", "", "\u2003"], ["535.309.01", "1", "1.", "١.٢", "2.x", "for 1.2", ""],
              ["", "\n", " z"]]
    # fmt: on
    cases += ["".join(rng.choice(options) for options in pieces) for _ in range(30000)]
    found = 0
    for text in cases:
        expected = old_nvrm_version(text)
        assert proc_driver.parse_nvrm_version(text) == expected, text
        found += expected is not None
    assert found > 1000


# --- device_select: PCI bus ids and MIG pairs ---------------------------------------------------------------------

BUS_CASES = [
    "", "3b:00", "3B:00", "0000:3b:00.0", "00000000:3b:00.7", "000000000:3b:00.0", "3b:00.8", "3b:00.", "3b:00.00",
    "3b:000", "3bb:00", ":3b:00", "3b:", ":", "::", "3b::00", "0:0:0:0", "a:b", "g:0", "3b:00\n", "3b:00\n\n",
    "3b:00.0\n", "\n3b:00", " 3b:00", "3b:00 ", "3b:0a.1", "ff:ff.7", "FFFFFFFF:FF:FF.7", "١:0", "0:١", "ａ:0",
    "3b:00.١", "0:0.0.0", "1:2", "12:34", "GPU-1234", "0x3b:00",
]  # fmt: skip


@pytest.mark.parametrize("text", BUS_CASES)
def test_bus_id_matches_regex_edge_cases(text):
    assert device_select.normalize_bus_id(text) == old_normalize_bus_id(text)


def test_bus_id_matches_regex_generated():
    tokens = ["0", "00", "0000", "00000000", "0000000", "3b", "3B", "ff", "f", "g", ":", ":", ".", "7", "8", "0.0",
              "\n", *TRICKY]  # fmt: skip
    cases = generated(tokens, 50000, 7)
    cases += ["".join(p) for p in itertools.product(["", "0:", "ab:", "123456789:", "0:0:"], ["3b", "3", "", "3bc"],
                                                   [":"], ["0", "00", "000", "x"], ["", ".0", ".7", ".8", "."],
                                                   ["", "\n", "\n\n", " "])]  # fmt: skip
    found = 0
    for text in cases:
        expected = old_normalize_bus_id(text)
        assert device_select.normalize_bus_id(text) == expected, text
        found += expected is not None
    assert found > 100


def test_mig_pair_matches_regex():
    tokens = ["0", "1", "12", ":", ":", "a", " ", "\n", "-", "+", *TRICKY]
    cases = [*generated(tokens, 30000, 6), "", ":", "0:0", "0:0\n", "0:0\n\n", "١:٢", "²:1", "1:", ":1", "1:2:3"]
    for text in cases:
        assert device_select._is_mig_pair(text) == bool(OLD_MIG_PAIR.match(text)), text


# --- ldcache writer: _dl_cache_libcmp keys, include lines and globs -----------------------------------------------


def byte_strings() -> list[bytes]:
    rng = random.Random(SEED + 3)
    alphabet = [b"0", b"1", b"9", b"00", b"123", b"4294967296", b"99999999999", b"a", b".", b"-", b"\x80", b"\xff",
                b"\x00", b"\x2f", b"\x3a", b"libcuda.so.", "١".encode()]  # fmt: skip
    out = [b"", b"0", b"a", b"12a", b"a12", b"libc.so.6", b"libnvidia-ml.so.535.309.01", b"1000000000", b"999999999"]
    out += [b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8))) for _ in range(30000)]
    out += [bytes(rng.randrange(256) for _ in range(rng.randint(0, 12))) for _ in range(10000)]
    return out


def test_libcmp_keys_match_regex_versions():
    for raw in byte_strings():
        assert writer._split_digit_runs(raw) == OLD_LIBCMP_DIGITS.split(raw), raw
        assert writer.libcmp_key(raw) == old_libcmp_key(raw), raw
        assert writer._descending_libcmp_key(raw) == old_descending_libcmp_key(raw), raw


def test_include_line_split_matches_regex():
    # _conf_lines splits an include line's patterns with replace + split instead of re.split(r"[ \t]", ...).
    for text in generated(["a", "/x/*.conf", " ", "\t", "  ", "\n", "\xa0", "\u2003"], 20000, 8):
        assert text.replace("\t", " ").split(" ") == re.split(r"[ \t]", text), text


def test_wildcard_match_is_fnmatchcase_exhaustive():
    patterns = ["".join(p) for n in range(6) for p in itertools.product("*?ab", repeat=n)]
    names = ["".join(p) for n in range(5) for p in itertools.product("ab\n", repeat=n)]
    for pattern in patterns:
        matcher = re.compile(fnmatch.translate(pattern)).match
        for name in names:
            assert writer._wildcard_match(pattern, name) == bool(matcher(name)), (pattern, name)


def test_wildcard_match_is_fnmatchcase_generated():
    rng = random.Random(SEED + 4)
    alphabet = ["*", "?", "a", "b", ".", "\\", "conf", "*.conf", "\n", "é", "\udcff"]
    for _ in range(20000):
        pattern = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        name = "".join(rng.choice(alphabet[2:]) for _ in range(rng.randint(0, 6)))
        assert writer._wildcard_match(pattern, name) == fnmatch.fnmatchcase(name, pattern), (pattern, name)


def old_glob_names(directory: str, pattern: str) -> list[str]:
    matches = sorted(glob.glob(os.path.join(glob.escape(directory), pattern)))
    return [os.path.basename(match) for match in matches]


GLOB_FILES = ["a.conf", "b.conf", "ab.conf", ".hidden.conf", ".conf", "a.conf.bak", "conf", "x\ny.conf", "[a].conf",
              "?", "*", "ab", "aXb", "aab", "é.conf", os.fsdecode(b"\xff.conf"), "00-first.conf"]  # fmt: skip
GLOB_PATTERNS = ["*", "*.conf", "?.conf", "??.conf", "a*", "*b", "a?b", "a*b", "*a*", ".*", ".*.conf", "*.*", "?",
                 "**", "***.conf", "a.conf", ".hidden.conf", "missing.conf", "", "[a].conf", "[[]a].conf", "[ab]*",
                 "[!a]*", "*\n*", "é*", "\\*", ".", "..", "*.conf/", "sub", "sub*", "link*"]  # fmt: skip


@pytest.fixture
def glob_tree(tmp_path: Path) -> Path:
    for parent in (tmp_path / "plain", tmp_path / "we[ir]d*dir?"):
        parent.mkdir()
        for name in GLOB_FILES:
            (parent / name).write_text("x")
        (parent / "sub").mkdir()
        (parent / "sub.d").mkdir()
        (parent / "link-dangling").symlink_to("nowhere")
        (parent / "link-dir").symlink_to("sub")
    return tmp_path


def test_glob_names_matches_glob(glob_tree: Path):
    directories = [str(glob_tree / "plain"), str(glob_tree / "plain") + "/", str(glob_tree / "we[ir]d*dir?"),
                   str(glob_tree / "missing"), str(glob_tree / "plain" / "a.conf")]  # fmt: skip
    rng = random.Random(SEED + 5)
    patterns = GLOB_PATTERNS + ["".join(rng.choice("*?ab.ncof") for _ in range(rng.randint(1, 6))) for _ in range(300)]
    for directory in directories:
        for pattern in patterns:
            assert writer._glob_names(directory, pattern) == old_glob_names(directory, pattern), (directory, pattern)


def test_glob_names_relative_directory(glob_tree: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(glob_tree / "plain")
    for directory in ("", ".", "sub", "../plain"):
        for pattern in GLOB_PATTERNS:
            assert writer._glob_names(directory, pattern) == old_glob_names(directory, pattern), (directory, pattern)


def test_ldconfig_search_dirs_include_globs(tmp_path: Path):
    root = tmp_path / "root"
    conf_d = root / "etc" / "ld.so.conf.d"
    conf_d.mkdir(parents=True)
    (root / "etc" / "ld.so.conf").write_text("include /etc/ld.so.conf.d/*.conf\t other/?.conf\n/opt/first\n")
    (conf_d / "b.conf").write_text("/opt/b\n")
    (conf_d / "a.conf").write_text("/opt/a\n")
    (conf_d / ".hidden.conf").write_text("/opt/hidden\n")
    (conf_d / "c.conf.disabled").write_text("/opt/c\n")
    (root / "etc" / "other").mkdir()
    (root / "etc" / "other" / "x.conf").write_text("/opt/x\n")
    for name in ("a", "b", "c", "hidden", "x", "first"):
        (root / "opt" / name).mkdir(parents=True)
    dirs = writer.ldconfig_search_dirs(root, system_dirs=())
    assert [d.name for d in dirs] == ["/opt/a", "/opt/b", "/opt/x", "/opt/first"]


# --- the hook's import cost ---------------------------------------------------------------------------------------

HEAVY = {"re", "enum", "typing", "collections", "collections.abc", "functools", "contextlib", "glob", "fnmatch",
         "shutil", "json", "threading"}  # fmt: skip


def test_modules_import_no_heavy_stdlib():
    modules = ["nvc.apply.cgroups", "nvc.request.device_select", "nvc.host.proc_driver", "nvc.host.ldcache.writer",
        "nvc.sys.bpf",
               "nvc.sys._ffi"]  # fmt: skip
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); import {', '.join(modules)}; print(*sys.modules)"
    loaded = set(subprocess.check_output([sys.executable, "-I", "-S", "-c", code], text=True).split())
    assert set(modules) <= loaded
    assert loaded & HEAVY == set()
