"""Parsers for the NVIDIA kernel driver's /proc files (text in, values out; no I/O here)."""

from __future__ import annotations

_PREFIX = "NVRM version:"
_MODULE = "Kernel Module"


def parse_nvrm_version(text: str) -> str | None:
    r"""Driver version from ``/proc/driver/nvidia/version`` (proprietary and open kernel module wording).

    The first line starting ``NVRM version:`` whose ``Kernel Module`` is followed by whitespace, optionally
    ``for <word>`` and whitespace, then a dotted version. Plain string scanning, exactly what the regex
    ``^NVRM version:.*?Kernel Module(?:\s+for\s+\S+)?\s+(\d+(?:\.\d+)+)`` (re.MULTILINE, ``search``) matches --
    including its quirks: ``\s`` may span newlines after ``Kernel Module``, ``\d`` is any Unicode decimal digit.
    Not a regex because ``import re`` costs the OCI hook about 5 ms at every container start.
    """
    start = 0
    while True:
        found = text.find(_PREFIX, start)
        if found < 0:
            return None
        if found == 0 or text[found - 1] == "\n":  # MULTILINE ^: the start of the text or after a \n
            version = _version_on_line(text, found + len(_PREFIX))
            if version is not None:
                return version
        start = found + 1


def _version_on_line(text: str, pos: int) -> str | None:
    """The version after the first ``Kernel Module`` at or after ``pos`` on this line that is followed by one."""
    line_end = text.find("\n", pos)  # ``.*?`` never crosses a \n
    if line_end < 0:
        line_end = len(text)
    while True:
        found = text.find(_MODULE, pos, line_end)
        if found < 0:
            return None
        after = found + len(_MODULE)
        # (?:\s+for\s+\S+)? is tried first; each run is maximal (a shorter one is followed by no match).
        ws = _skip_space(text, after)
        if ws > after and text.startswith("for", ws):
            word = _skip_space(text, ws + 3)
            if word > ws + 3:
                word_end = _skip_nonspace(text, word)
                if word_end > word:
                    digits = _skip_space(text, word_end)
                    if digits > word_end:
                        version = _dotted_version(text, digits)
                        if version is not None:
                            return version
        if ws > after:
            version = _dotted_version(text, ws)
            if version is not None:
                return version
        pos = found + 1


def _skip_space(text: str, pos: int) -> int:
    end = len(text)
    while pos < end and text[pos].isspace():  # the set re's \s matches in a str pattern
        pos += 1
    return pos


def _skip_nonspace(text: str, pos: int) -> int:
    end = len(text)
    while pos < end and not text[pos].isspace():
        pos += 1
    return pos


def _skip_decimal(text: str, pos: int) -> int:
    end = len(text)
    while pos < end and text[pos].isdecimal():  # the set re's \d matches in a str pattern
        pos += 1
    return pos


def _dotted_version(text: str, pos: int) -> str | None:
    r"""``\d+(?:\.\d+)+`` at ``pos``, longest match, or None."""
    end = _skip_decimal(text, pos)
    if end == pos:
        return None
    parts = 0
    while text.startswith(".", end):
        next_end = _skip_decimal(text, end + 1)
        if next_end == end + 1:
            break
        end = next_end
        parts += 1
    return text[pos:end] if parts else None


def parse_mig_minors(text: str) -> dict[str, int]:
    """``/proc/driver/nvidia-caps/mig-minors``: ``config 1``, ``gpu0/gi1/ci0/access 42`` → name → minor."""
    minors: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            minors[parts[0]] = int(parts[1])
    return minors


def parse_device_majors(text: str) -> dict[str, int]:
    """``/proc/devices`` character-device section: name → major (e.g. ``nvidia-uvm`` → 510)."""
    majors: dict[str, int] = {}
    in_char = False
    for line in text.splitlines():
        if line.startswith("Character devices:"):
            in_char = True
            continue
        if line.startswith("Block devices:"):
            in_char = False
            continue
        parts = line.split()
        if in_char and len(parts) == 2 and parts[0].isdigit():
            majors.setdefault(parts[1], int(parts[0]))
    return majors


def parse_params(text: str) -> dict[str, str]:
    """The driver's ``params`` (``Key: value`` lines) as ``{key: value}``, keys and values stripped."""
    params = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            params[key.strip()] = value.strip()
    return params


def rewrite_params(text: str) -> str:
    """The driver's ``params`` with ``ModifyDeviceFiles: 0``, so CUDA inside the container never tries to create
    or chmod device nodes (it can't, and must not)."""
    lines = []
    for line in text.splitlines(keepends=True):
        key, sep, _value = line.partition(":")
        if sep and key.strip() == "ModifyDeviceFiles":
            newline = "\n" if line.endswith("\n") else ""
            line = f"{key}: 0{newline}"
        lines.append(line)
    return "".join(lines)


def proc_bus_id(nvml_bus_id: str) -> str:
    """NVML's ``00000000:3b:00.0`` → the ``/proc/driver/nvidia/gpus`` directory name ``0000:3b:00.0``."""
    domain, _, rest = nvml_bus_id.partition(":")
    try:
        return f"{int(domain, 16):04x}:{rest.lower()}"
    except ValueError:
        return nvml_bus_id.lower()
