"""JSON for the container-start path, without importing :mod:`json`.

``import json`` costs ~7 ms of interpreter start-up here, almost all of it ``re`` and ``enum`` that
``json.decoder``/``json.scanner`` import for their pure-Python fallbacks. The C accelerator behind them, ``_json``,
needs neither: its scanner and encoder take a plain context object. This module drives them directly for the
common case and hands anything unusual — another encoding, a BOM, a syntax error, a missing accelerator — to the
real :mod:`json`, so results *and* error messages are exactly ``json.loads``/``json.dumps``'s.
"""

# No "from __future__ import annotations": the annotations here are valid at run time, and __future__ is one
# module less for the hook's pre-filter, which runs before anything else on every container start.
try:
    from _json import encode_basestring_ascii as _encode_ascii
    from _json import make_encoder as _make_encoder
    from _json import make_scanner as _make_scanner
except ImportError:  # an interpreter without the accelerator: json's own code does the work
    _make_scanner = _make_encoder = _encode_ascii = None

_WHITESPACE = " \t\n\r"  # exactly json.decoder.WHITESPACE
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _ScanContext:
    """The attributes ``_json.make_scanner`` reads from a ``json.JSONDecoder``, with the decoder's defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_CONSTANTS.__getitem__)


_scan = _make_scanner(_ScanContext()) if _make_scanner is not None else None


def _slow_loads(data: str | bytes | bytearray) -> object:
    import json

    return json.loads(data)


def loads(data: str | bytes | bytearray) -> object:
    """``json.loads(data)``: same result, same exceptions."""
    if _scan is None:
        return _slow_loads(data)
    if isinstance(data, (bytes, bytearray)):
        # json.detect_encoding: a BOM or a NUL in the first bytes means UTF-16/32 (or an error) — not ours.
        if data[:3] == b"\xef\xbb\xbf" or b"\x00" in data[:4]:
            return _slow_loads(data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:  # json decodes with surrogatepass: let it
            return _slow_loads(data)
    elif isinstance(data, str):
        text = data
    else:
        return _slow_loads(data)
    try:
        start = len(text) - len(text.lstrip(_WHITESPACE))
        value, end = _scan(text, start)
    except (ValueError, StopIteration, RecursionError, SystemError):
        # A syntax error. The accelerator raises json.decoder.JSONDecodeError only when json.decoder is already
        # imported (a SystemError otherwise): json itself reproduces the error with its message and position.
        return _slow_loads(data)
    if end != len(text) and text[end:].strip(_WHITESPACE):
        return _slow_loads(data)  # "Extra data"
    return value


def load(stream) -> object:
    """``json.load(stream)``."""
    return loads(stream.read())


def _default(obj: object) -> object:
    raise TypeError(f"Object of type {obj.__class__.__name__} is not JSON serializable")


def _slow_dumps(obj: object, sort_keys: bool) -> str:
    import json

    return json.dumps(obj, sort_keys=sort_keys)


def dumps(obj: object, *, sort_keys: bool = False) -> str:
    """``json.dumps(obj, sort_keys=sort_keys)`` with the default separators and ``ensure_ascii``."""
    if _make_encoder is None or isinstance(obj, (str, int, float, bool)) or obj is None:
        return _slow_dumps(obj, sort_keys)  # scalars take json's one-line paths; not worth duplicating
    encoder = _make_encoder({}, _default, _encode_ascii, None, ": ", ", ", sort_keys, False, True)
    try:
        return "".join(encoder(obj, 0))
    except (TypeError, ValueError, RecursionError):
        return _slow_dumps(obj, sort_keys)
