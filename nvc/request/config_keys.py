"""The config.toml keys nvc parses but does not act on, each with the reason, and the debug-log lines saying so.

A host that had NVIDIA's toolkit installed has a config.toml written for NVIDIA's tools, and NVIDIA's schema has
keys for parts nvc does not have (the Tegra CSV mode, ``nvidia-ctk``, CDI spec generation). Every key of
:class:`nvc.request.runtime_config.RuntimeConfig` must either change what the hook or the runtime shim does, or be
listed here: a file that sets one of these to something other than its default gets a warning line in the debug log
(``-debug``, ``[nvidia-container-cli] debug``, ``[nvidia-container-runtime] debug``), so an administrator who set
it learns that nvc did not follow it. tests/test_config_keys.py walks the schema and fails on a key that neither
changes behaviour nor appears here.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from nvc.request.runtime_config import RuntimeConfig

#: Dotted TOML key → why nvc does not act on it.
IGNORED_KEYS: dict[str, str] = {
    "nvidia-container-runtime.log-level":
        "nvc's debug log has a single level: everything is written when a debug log is set",
    "nvidia-container-runtime.modes.csv.mount-spec-path":
        "the csv mode serves Tegra boards without NVML, which nvc does not support",
    "nvidia-ctk.path":
        "nvc never runs nvidia-ctk",
    "features.disable-cuda-compat-lib-hook":
        "nvc's runtime adds no enable-cuda-compat hook for it to disable",
}


def _format(value: object) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_format(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'
    return str(value)


def ignored_settings(config: RuntimeConfig) -> list[str]:
    """One line per ignored key that ``config`` sets to a value other than its default, in schema order."""
    from nvc.request.runtime_config import RuntimeConfig, schema_leaves

    defaults = RuntimeConfig()
    lines = []
    for key, path in schema_leaves():
        reason = IGNORED_KEYS.get(key)
        if reason is None:
            continue
        value, default = config, defaults
        for name in path:
            value, default = getattr(value, name), getattr(default, name)
        if value != default:
            lines.append(f"config.toml: {key} = {_format(value)} is ignored: {reason}")
    return lines
