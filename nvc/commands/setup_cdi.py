"""``nvc setup containerd --cdi`` and ``nvc setup docker --cdi``: let the runtime itself read the host's CDI specs.

With CDI on, ``ctr``/CRI (``--device nvidia.com/gpu=0``, Kubernetes' CDI devices and ``cdi.k8s.io/*``
annotations) and ``docker run --device nvidia.com/gpu=all`` get GPUs from the spec ``nvc cdi generate`` wrote,
without any hook or shim of ours per container. What each needs:

* **containerd 1.7**: ``enable_cdi = true`` and ``cdi_spec_dirs`` in the CRI plugin's table,
  ``[plugins."io.containerd.grpc.v1.cri"]`` (config ``version = 2``; ``[plugins.cri]`` in a version-1 file).
* **containerd 2.x**: the same two keys in ``[plugins."io.containerd.cri.v1.runtime"]`` (config ``version = 3``;
  CDI is on by default there, but writing it keeps a config that once turned it off from staying off). A
  version-2 file is migrated by containerd 2 itself, so an existing file keeps its own schema.
* **containerd 1.6 and older** have no CDI: refused with the alternatives (our runtime shim in CDI mode).
* **docker 25+**: ``"features": {"cdi": true}`` in daemon.json (older dockerd: refused the same way).

Which containerd schema: the installed ``containerd --version`` (or ``--containerd-version`` to configure a host
image or another version), and the file's own ``version`` when it has one. Files are edited with the same rules
as the rest of ``nvc setup`` (:mod:`nvc.commands.setup_config`): comments and layout kept, a timestamped backup, atomic
replacement, nothing written twice, ``--dry-run`` shows the diff.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from nvc.commands.setup_config import (
    CONTAINERD_CONFIG,
    CRI_PLUGIN,
    DOCKER_DAEMON_CONFIG,
    ConfigChange,
    _append_block,
    _check_toml,
    _lookup,
    _parse_toml,
    _plain,
    _read_text,
    _render_table,
    _set_value,
    _under,
    containerd_config_version,
    edit_daemon_json,
    find_binary,
    write_config_file,
)
from nvc.errors import NvcError

CDI_SPEC_DIRS = ("/etc/cdi", "/var/run/cdi")
CONTAINERD_CDI_SINCE = (1, 7)
DOCKER_CDI_SINCE = (25, 0)
_VERSION = re.compile(r"\bv?(\d+)\.(\d+)(?:\.\d+)?")


def parse_version(text: str) -> tuple[int, int] | None:
    """``(major, minor)`` from ``containerd --version`` / ``dockerd --version`` output, or a plain ``1.7``."""
    for word in text.replace(",", " ").split():
        match = _VERSION.fullmatch(word.split("~")[0].split("+")[0].split("-")[0])
        if match:
            return int(match.group(1)), int(match.group(2))
    return None


def installed_version(binary: str) -> tuple[int, int] | None:
    """The version ``binary --version`` reports (found in the services' PATH), or None if it cannot be run."""
    import subprocess

    path = find_binary(binary, "")
    if not path:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_version(out)


def _version_text(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def containerd_cdi_schema(containerd: tuple[int, int], file_version: int | None) -> int:
    """The config schema version whose CRI table gets the CDI keys; refuses a containerd without CDI and a file
    whose schema that containerd cannot read."""
    if containerd < CONTAINERD_CDI_SINCE:
        raise NvcError("cdi", (
            f"containerd {_version_text(containerd)} has no CDI support (it came in containerd 1.7): upgrade "
            "containerd, or keep it and use the nvidia-container-runtime shim in CDI mode "
            "(`nvc setup containerd --runtime runc`, then mode = \"cdi\" in /etc/nvidia-container-runtime/config.toml)"
            "; --containerd-version writes the configuration for another version anyway"))
    if file_version is None:
        return 3 if containerd >= (2, 0) else 2
    if file_version == 3 and containerd < (2, 0):
        raise NvcError("cdi", f"the config file says version = 3, which containerd {_version_text(containerd)} "
                       "cannot read (version 3 is containerd 2's schema)")
    return file_version


def edit_containerd_cdi(
    text: str, containerd: tuple[int, int], spec_dirs: tuple[str, ...] = CDI_SPEC_DIRS,
    source: str = CONTAINERD_CONFIG,
) -> str:
    """containerd ``config.toml`` text → with ``enable_cdi`` and ``cdi_spec_dirs`` set in the CRI table of its
    schema (unchanged text if they already are)."""
    import tomlkit

    doc = _parse_toml(text, source)
    file_version = containerd_config_version(text) if text.strip() else None
    if file_version == 1 and _lookup(doc, ("plugins", CRI_PLUGIN[2])) is not None:
        raise NvcError("input", f'{source} has [plugins."{CRI_PLUGIN[2]}"] tables but no `version = 2` line, so '
                       "containerd ignores them; add `version = 2` as its first line and run again")
    schema = containerd_cdi_schema(containerd, file_version)
    keys = ("plugins", CRI_PLUGIN[schema])
    want: dict[str, Any] = {"enable_cdi": True, "cdi_spec_dirs": list(spec_dirs)}
    table = _lookup(doc, keys)
    if table is None or (hasattr(table, "is_super_table") and table.is_super_table()):
        comment = "# CDI: the runtime reads GPU (and other) device specs itself, added by `nvc setup containerd --cdi`"
        comment += "\n"
        block = comment + _render_table(keys, want)
        if not text.strip():
            block = f"version = {schema}\n\n" + block
        new_text = _append_block(text, block)
    else:
        changed = False
        for key, value in want.items():
            changed |= _set_value(table, key, value)
        new_text = tomlkit.dumps(doc) if changed else text
    if new_text != text:
        _check_toml(new_text, source)
        if text.strip() and _plain(_parse_toml(new_text, source)) == _plain(_parse_toml(text, source)):
            return text
    return new_text


def edit_docker_cdi(text: str, source: str = DOCKER_DAEMON_CONFIG) -> str:
    """daemon.json text → with ``"features": {"cdi": true}`` (other keys, their order and the indent kept)."""

    def enable(data: dict[str, Any]) -> None:
        features = data.setdefault("features", {})
        if not isinstance(features, dict):
            raise NvcError("input", f'{source}: "features" is not a JSON object')
        features["cdi"] = True

    return edit_daemon_json(text, source, enable)


def _known_version(override: str | None, binary: str, root: str) -> tuple[int, int] | None:
    if override:
        version = parse_version(override)
        if version is None:
            raise NvcError("input", f"cannot read a version in {override!r} (expected e.g. 1.7 or 2.0)")
        return version
    return installed_version(binary) if root in ("", "/") else None


def apply_containerd_cdi(
    config_path: str = CONTAINERD_CONFIG,
    containerd_version: str | None = None,
    spec_dirs: tuple[str, ...] = CDI_SPEC_DIRS,
    dry_run: bool = False,
    root: str = "/",
    now: datetime | None = None,
) -> ConfigChange:
    """Turn CDI on in containerd's config (restart containerd afterwards). Without ``containerd_version`` the
    installed containerd is asked; for a host image (``root``) the version must be given."""
    version = _known_version(containerd_version, "containerd", root)
    if version is None:
        raise NvcError("cdi", "cannot tell which containerd this is (`containerd --version` did not answer); "
                       "give it with --containerd-version, e.g. 1.7 or 2.0")
    config_file = _under(root, config_path)
    old = _read_text(config_file)
    new = edit_containerd_cdi(old or "", version, spec_dirs, config_path)
    return write_config_file(config_file, old, new, dry_run=dry_run, now=now)


def apply_docker_cdi(
    config_path: str = DOCKER_DAEMON_CONFIG,
    docker_version: str | None = None,
    dry_run: bool = False,
    root: str = "/",
    now: datetime | None = None,
) -> ConfigChange:
    """Turn on docker's CDI feature in daemon.json (restart dockerd afterwards); refused for a dockerd before 25."""
    version = _known_version(docker_version, "dockerd", root)
    if version is not None and version < DOCKER_CDI_SINCE:
        raise NvcError("cdi", (
            f"dockerd {_version_text(version)} has no CDI support (it came in docker 25): upgrade docker, or use "
            "`nvc setup docker --runtime runc` (the nvidia runtime, whose shim can run in CDI mode); "
            "--docker-version writes the configuration for another version anyway"))
    config_file = _under(root, config_path)
    old = _read_text(config_file)
    new = edit_docker_cdi(old or "", config_path)
    return write_config_file(config_file, old, new, dry_run=dry_run, now=now)
