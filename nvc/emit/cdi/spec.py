"""A CDI spec document: the lowest ``cdiVersion`` that carries what it uses, JSON/YAML text, an atomic write.

The consumers (the Go ``tags.cncf.io/container-device-interface`` package in podman, containerd, CRI-O, docker)
refuse a spec that declares a version lower than the fields it uses, and an *older* consumer refuses a version it
does not know — podman 4.3 (Debian 12) knows nothing after 0.5.0. So the version is computed from the document,
never fixed.

The rules live in :mod:`nvc.emit.cdi.versions` (0.4.0: a mount ``type``; 0.5.0: digit-leading device names, node
``hostPath``; 0.6.0: annotations, a ``.`` in the class; 0.7.0: ``additionalGids``, ``intelRdt``; 1.1.0: net devices).

YAML is written with PyYAML (imported only here, on ``--format yaml``); JSON needs nothing beyond the stdlib.
"""

from __future__ import annotations

import os
from typing import Any

from nvc.errors import NvcError

FORMATS = ("json", "yaml")


def minimum_version(spec: dict[str, Any]) -> str:
    """The lowest ``cdiVersion`` whose fields cover everything ``spec`` uses: one set of rules for writing and
    reading (:func:`nvc.emit.cdi.versions.required_version`, which the spec reader checks files against)."""
    from nvc.emit.cdi.versions import required_version

    return required_version(spec)


def format_for(output: str | None, requested: str | None) -> str:
    """``--format`` when given; else from the output file's extension (``.json`` → json); yaml otherwise."""
    if requested:
        if requested not in FORMATS:
            raise NvcError("input", f"unknown spec format {requested!r} (json or yaml)")
        return requested
    if output and output.lower().endswith(".json"):
        return "json"
    return "yaml"


def dump(spec: dict[str, Any], fmt: str) -> str:
    """The spec as text in ``fmt``, keys in the document's order, with a final newline."""
    if fmt == "json":
        import json

        return json.dumps(spec, indent=2) + "\n"
    import yaml

    class Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
        def ignore_aliases(self, data: object) -> bool:  # every device spelled out: no &anchors / *aliases
            return True

    return yaml.dump(spec, Dumper=Dumper, sort_keys=False, default_flow_style=False, width=1 << 16)


def write_spec(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0644: a runtime reading the spec dir never sees half a
    spec, and a failure leaves the old spec (or nothing) in place."""
    from nvc.atomic_write import replace_file

    target = os.path.abspath(path)
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise NvcError("input", f"output directory does not exist: {directory}")
    if os.path.isdir(target):
        raise NvcError("input", f"output is a directory: {target}")
    try:
        replace_file(target, text.encode("utf-8"), 0o644, fsync=True)
    except OSError as exc:
        raise NvcError("input", f"cannot write {target}: {(exc.strerror or str(exc)).lower()}") from None
