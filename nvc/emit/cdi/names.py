"""CDI qualified device names (``vendor/class=name``) and annotation keys, by the CDI specification's rules.

The rules are those the consumers enforce (the Go ``tags.cncf.io/container-device-interface`` package that podman,
containerd, CRI-O and docker link):

- a *vendor* and a *class* start with an ASCII letter, end with a letter or digit, and hold only letters, digits,
  ``_``, ``-`` and ``.`` in between (so the vendor ``nvidia.com`` and the class ``gpu``); a *kind* is
  ``vendor/class``;
- a *device name* starts and ends with a letter or digit and holds only letters, digits, ``_``, ``-``, ``.`` and
  ``:`` in between (so ``0``, ``GPU-4d9c…``, ``0:1`` for a MIG device, ``all``);
- a *qualified name* is ``vendor/class=name``, split at the first ``=`` and then at the first ``/`` — so an ``=``
  in the name or a ``/`` in the class is an invalid character, not another separator; a string starting with
  ``/`` is a path, never a qualified name;
- an *annotation key* (spec- or device-level ``annotations``) is a Kubernetes "qualified name", compared in lower
  case: an optional DNS-1123 subdomain prefix (≤ 253 characters) and ``/``, then a name of at most 63 characters
  of letters, digits, ``-``, ``_``, ``.`` starting and ending with a letter or digit; all keys and values
  together at most 256 KiB.

One difference from the Go code: a one-letter vendor or class is accepted here (the rule allows it; the Go
validator indexes past the end of such a string).

Plain string scans, no ``re``: the runtime shim's CDI mode parses names on every container start.
"""

from __future__ import annotations

_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_DIGITS = frozenset("0123456789")
_ALNUM = _LETTERS | _DIGITS
_KIND_PART_INNER = _ALNUM | frozenset("_-.")
_DEVICE_NAME_INNER = _KIND_PART_INNER | frozenset(":")
_DNS_LABEL_INNER = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")

ANNOTATION_NAME_MAX = 63
ANNOTATION_PREFIX_MAX = 253
ANNOTATIONS_TOTAL_MAX = 256 * 1024


class CdiNameError(ValueError):
    """A vendor, class, device name, qualified name or annotation key the CDI rules refuse (message says why)."""


def _validate_kind_part(what: str, value: str) -> None:
    if not value:
        raise CdiNameError(f"invalid {what} {value!r}: empty")
    if value[0] not in _LETTERS:
        raise CdiNameError(f"invalid {what} {value!r}: must start with a letter")
    for char in value[1:-1]:
        if char not in _KIND_PART_INNER:
            raise CdiNameError(f"invalid {what} {value!r}: invalid character {char!r}")
    if value[-1] not in _ALNUM:
        raise CdiNameError(f"invalid {what} {value!r}: must end with a letter or digit")


def validate_vendor(vendor: str) -> None:
    """Raise :class:`CdiNameError` unless ``vendor`` (e.g. ``nvidia.com``) is a valid CDI vendor."""
    _validate_kind_part("vendor", vendor)


def validate_class(device_class: str) -> None:
    """Raise :class:`CdiNameError` unless ``device_class`` (e.g. ``gpu``) is a valid CDI class."""
    _validate_kind_part("class", device_class)


def validate_device_name(name: str) -> None:
    """Raise :class:`CdiNameError` unless ``name`` (``0``, ``GPU-<uuid>``, ``0:1``, ``all``) is a valid device name."""
    if not name:
        raise CdiNameError("invalid device name '': empty")
    if name[0] not in _ALNUM:
        raise CdiNameError(f"invalid device name {name!r}: must start with a letter or digit")
    for char in name[1:-1]:
        if char not in _DEVICE_NAME_INNER:
            raise CdiNameError(f"invalid device name {name!r}: invalid character {char!r}")
    if name[-1] not in _ALNUM:
        raise CdiNameError(f"invalid device name {name!r}: must end with a letter or digit")


def parse_kind(kind: str) -> tuple[str, str]:
    """``"vendor/class"`` → ``(vendor, class)``, both validated; :class:`CdiNameError` otherwise."""
    vendor, sep, device_class = kind.partition("/")
    if not sep or not vendor or not device_class:
        raise CdiNameError(f"invalid kind {kind!r}: expected vendor/class")
    validate_vendor(vendor)
    validate_class(device_class)
    return vendor, device_class


def build_kind(vendor: str, device_class: str) -> str:
    """``(vendor, class)`` → ``"vendor/class"``, both validated first."""
    validate_vendor(vendor)
    validate_class(device_class)
    return f"{vendor}/{device_class}"


def split_device(device: str) -> tuple[str, str, str]:
    """Split without validating, as CDI consumers do before deciding whether a name is qualified at all.

    ``"vendor/class=name"`` → ``(vendor, class, name)``; anything that is not of that shape (no ``=``, an empty
    part, no ``/`` before the ``=``, a leading ``/`` as in a device path) → ``("", "", device)``.
    """
    if not device or device[0] == "/":
        return "", "", device
    kind, sep, name = device.partition("=")
    if not sep or not kind or not name:
        return "", "", device
    vendor, sep, device_class = kind.partition("/")
    if not sep or not vendor or not device_class:
        return "", "", device
    return vendor, device_class, name


def parse_qualified_name(device: str) -> tuple[str, str, str]:
    """``"nvidia.com/gpu=0"`` → ``("nvidia.com", "gpu", "0")``, every part validated, or :class:`CdiNameError`."""
    vendor, device_class, name = split_device(device)
    if not vendor:
        raise CdiNameError(f"unqualified device {device!r}: expected vendor/class=name")
    try:
        validate_vendor(vendor)
        validate_class(device_class)
        validate_device_name(name)
    except CdiNameError as exc:
        raise CdiNameError(f"invalid device {device!r}: {exc}") from None
    return vendor, device_class, name


def is_qualified_name(device: str) -> bool:
    """Whether ``device`` is a valid ``vendor/class=name`` (a runtime's cue to treat it as a CDI device)."""
    try:
        parse_qualified_name(device)
    except CdiNameError:
        return False
    return True


def qualified_name(vendor: str, device_class: str, name: str) -> str:
    """Build ``vendor/class=name`` from its parts, refusing any part the CDI rules refuse."""
    validate_vendor(vendor)
    validate_class(device_class)
    validate_device_name(name)
    return f"{vendor}/{device_class}={name}"


def _is_dns1123_subdomain(value: str) -> bool:
    if not value or len(value) > ANNOTATION_PREFIX_MAX:
        return False
    for label in value.split("."):
        if not label or len(label) > 63 or label[0] == "-" or label[-1] == "-":
            return False
        for char in label:
            if char not in _DNS_LABEL_INNER:
                return False
    return True


def validate_annotation_key(key: str) -> None:
    """Raise :class:`CdiNameError` unless ``key`` is a valid CDI annotation key (a Kubernetes qualified name)."""
    lowered = key.lower()
    parts = lowered.split("/")
    if len(parts) > 2:
        raise CdiNameError(f"invalid annotation key {key!r}: at most one '/' (prefix/name)")
    if len(parts) == 2:
        prefix, name = parts
        if not _is_dns1123_subdomain(prefix):
            raise CdiNameError(
                f"invalid annotation key {key!r}: prefix must be a DNS subdomain "
                "(lower-case letters, digits, '-' and '.', labels starting and ending with a letter or digit)"
            )
    else:
        name = parts[0]
    if not name:
        raise CdiNameError(f"invalid annotation key {key!r}: empty name")
    if len(name) > ANNOTATION_NAME_MAX:
        raise CdiNameError(f"invalid annotation key {key!r}: name longer than {ANNOTATION_NAME_MAX} characters")
    if name[0] not in _ALNUM or name[-1] not in _ALNUM or any(c not in _KIND_PART_INNER for c in name):
        raise CdiNameError(
            f"invalid annotation key {key!r}: name must be letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )


def validate_annotations(annotations: dict[str, str]) -> None:
    """Raise :class:`CdiNameError` unless every key is valid, every value a string and the total size in bounds."""
    total = 0
    for key, value in annotations.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise CdiNameError(f"invalid annotation {key!r}: keys and values must be strings")
        validate_annotation_key(key)
        total += len(key.encode()) + len(value.encode())
    if total > ANNOTATIONS_TOTAL_MAX:
        raise CdiNameError(f"annotations are {total} bytes, more than the limit of {ANNOTATIONS_TOTAL_MAX}")
