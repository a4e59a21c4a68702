"""The writing side of the hook's pre-filter (:mod:`nvc.prefilter`): which strings mark a possible GPU container
under a config.toml, and the memo that carries them to the hook's launcher.

Kept apart from the reader because it needs the parsed config.toml (:mod:`nvc.request.runtime_config`), which the
launcher's no-GPU path must not load; only the full hook (and the runtime shim, for its own memo) import it.
"""

from __future__ import annotations

import posix

from nvc.prefilter import FIXED_MARKERS, FORMAT, HOOK_MEMO, config_identity, settled

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from collections.abc import Mapping

    from nvc.request.runtime_config import RuntimeConfig


def _literal_prefix(text: str) -> str:
    """The part of ``text`` that appears verbatim in any JSON spelling of it: up to the first character a JSON
    writer may escape. An empty result matches everything, which is the safe answer."""
    for i, ch in enumerate(text):
        if ch in '/"\\' or ord(ch) < 0x20 or ord(ch) >= 0x7F:
            return text[:i]
    return text


def markers_for(config: RuntimeConfig) -> tuple[str, ...]:
    """The strings one of which every GPU container's ``config.json`` contains, under ``config``."""
    extra = (*config.swarm_resource, *config.runtime.modes.cdi.annotation_prefixes)
    return tuple(dict.fromkeys((*FIXED_MARKERS, *(_literal_prefix(name) for name in extra))))


def remember_hook_config(config_arg: str | None, environ: Mapping[str, str], config: RuntimeConfig) -> None:
    """After the hook loaded ``config`` without error, from the default location: memoise its markers for
    :func:`nvc.prefilter.hook_may_skip`. Never raises; writes only when the entry changes."""
    try:
        _remember_hook_config(config_arg, environ, config)
    except Exception:  # a memo we cannot write only costs the next start the full path
        pass


def _remember_hook_config(config_arg: str | None, environ: Mapping[str, str], config: RuntimeConfig) -> None:
    from nvc import jsonfast
    from nvc.config_location import config_file_path
    from nvc.host.nvml import cache as store

    if config_arg or store.caching_disabled(environ):
        return
    path, required = config_file_path(environ)
    identity = config_identity(path)
    if not path.startswith("/") or identity is False or (identity is None and required) or not settled(identity):
        return
    entry = {"format": FORMAT, "config": path, "id": identity, "markers": list(markers_for(config))}
    data = jsonfast.dumps(entry, sort_keys=True).encode()
    dir_fd = store.open_cache_dir(store.cache_dir_path(environ=environ))
    if dir_fd is None:
        return
    try:
        if store.read_private_file(dir_fd, HOOK_MEMO) != data:
            store.write_private_file(dir_fd, HOOK_MEMO, data)
    finally:
        posix.close(dir_fd)
