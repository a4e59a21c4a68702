"""nvc.jsonfast: json.loads/json.dumps results and errors, without importing json on the common path."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from nvc import jsonfast

REPO = Path(__file__).resolve().parent.parent

VALID = [
    "{}", "[]", "0", "-0", "1e5", "-1.5E-3", "true", "false", "null", '"x"', ' \t\n\r{"a": 1} \n',
    '{"a": [1, 2.5, true, null, "x\\u00e9\\n"], "b": {"c": []}}', '"\\ud83d\\ude00"', '"\\ud800"',
    "NaN", "[Infinity, -Infinity]", '{"a": 1, "a": 2}', "12345678901234567890123", '"\u00e9\u4e2d"',
    '{"ociVersion": "1.0.2", "id": "c", "pid": 4242, "bundle": "/run/b", "annotations": {}}',
]
INVALID = [
    "", " ", "{", "[1,]", '{"a" 1}', "[1] x", "tru", "nul", "'x'", '"\x01"', "[1 2]", "01", "-", "1.", ".5",
    '"\\x"', "{'a': 1}", "\ufeff{}", "[" * 5 + "]" * 4,
]


def _outcome(fn, arg):
    try:
        value = fn(arg)
    except Exception as exc:  # the exception type and text are what we compare
        return ("error", type(exc).__name__, str(exc))
    return ("ok", json.dumps(value, sort_keys=True, allow_nan=True), repr(value) if isinstance(value, float) else "")


@pytest.mark.parametrize("text", VALID + INVALID)
def test_loads_str_like_json(text):
    assert _outcome(jsonfast.loads, text) == _outcome(json.loads, text)


@pytest.mark.parametrize("data", [
    *(t.encode() for t in VALID + INVALID), b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00", b"{\x00}\x00", b"\xff",
    b'"\xed\xa0\x80"', bytearray(b'{"a": 1}'), b"\x00\x00\x00[",
])  # fmt: skip
def test_loads_bytes_like_json(data):
    assert _outcome(jsonfast.loads, data) == _outcome(json.loads, data)


def test_loads_rejects_non_text_like_json():
    assert _outcome(jsonfast.loads, 12) == _outcome(json.loads, 12)


def test_nan_is_a_float_nan():
    assert math.isnan(jsonfast.loads("NaN"))


def _random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randrange(-(10**20), 10**20)
    if kind == 2:
        return rng.uniform(-1e6, 1e6)
    if kind in (3, 4):
        chars = (rng.choice([rng.randrange(32, 127), rng.randrange(0, 0x2FFF)]) for _ in range(rng.randrange(6)))
        return "".join(map(chr, chars))
    if kind in (5, 6):
        return {str(rng.randrange(100)): _random_value(rng, depth + 1)
                for _ in range(rng.randrange(4))}  # fmt: skip
    return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]


def test_random_documents_round_trip_like_json():
    rng = random.Random(6)
    for _ in range(500):
        value = _random_value(rng)
        for sort_keys in (False, True):
            assert jsonfast.dumps(value, sort_keys=sort_keys) == json.dumps(value, sort_keys=sort_keys)
        text = json.dumps(value, indent=rng.choice([None, 1]), ensure_ascii=rng.random() < 0.5)
        assert _outcome(jsonfast.loads, text) == _outcome(json.loads, text)
        cut = text[: rng.randrange(len(text) + 1)]
        assert _outcome(jsonfast.loads, cut) == _outcome(json.loads, cut)


@pytest.mark.parametrize("value", [
    "s", 1, 1.5, None, True, {"b": 1, "a": [1, {"z": None, "y": "\u00e9"}]}, [float("nan"), float("inf")],
    {1: "int key", "x": 2}, {"t": (1, 2)},
])  # fmt: skip
def test_dumps_like_json(value):
    for sort_keys in (False, True):
        if isinstance(value, dict) and 1 in value and sort_keys:
            continue  # mixed key types: json raises TypeError; so must we (checked below)
        assert jsonfast.dumps(value, sort_keys=sort_keys) == json.dumps(value, sort_keys=sort_keys)


def test_dumps_errors_like_json():
    for bad in ({1: 1, "a": 2}, {"x": object()}, [{1, 2}]):
        with pytest.raises(TypeError) as ours:
            jsonfast.dumps(bad, sort_keys=True)
        with pytest.raises(TypeError) as theirs:
            json.dumps(bad, sort_keys=True)
        assert str(ours.value) == str(theirs.value)
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        jsonfast.dumps(loop)


def test_common_path_imports_no_json():
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from nvc import jsonfast; "
            "v = jsonfast.loads(b'{\"a\": [1, 2.0, \"x\"]}'); s = jsonfast.dumps(v, sort_keys=True); "
            "print(s, sorted(m for m in ('json', 're', 'enum') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == '{"a": [1, 2.0, "x"]} []'
