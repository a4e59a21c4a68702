"""Where NVIDIA Container Toolkit's ``config.toml`` lives (NVIDIA's rules), without loading anything else.

An explicit path (the hook's ``-config``) or ``$NVIDIA_CTK_CONFIG_FILE_PATH`` must exist; otherwise
``${XDG_CONFIG_HOME:-/etc}/nvidia-container-runtime/config.toml`` is read when present. Its own module, free of
:mod:`os`, because the hook's pre-filter (:mod:`nvc.prefilter`) needs the path before it decides whether to
load anything at all; :mod:`nvc.request.runtime_config` re-exports it.
"""

CONFIG_PATH_ENV = "NVIDIA_CTK_CONFIG_FILE_PATH"
XDG_CONFIG_HOME_ENV = "XDG_CONFIG_HOME"
RELATIVE_CONFIG_PATH = "nvidia-container-runtime/config.toml"
DEFAULT_CONFIG_PATH = "/etc/" + RELATIVE_CONFIG_PATH


def config_file_path(environ=None) -> "tuple[str, bool]":
    """Where the config lives and whether it must exist: ``$NVIDIA_CTK_CONFIG_FILE_PATH`` (required), else
    ``${XDG_CONFIG_HOME:-/etc}/nvidia-container-runtime/config.toml`` (optional). ``environ`` defaults to
    :data:`os.environ`."""
    if environ is None:
        import os

        environ = os.environ
    override = environ.get(CONFIG_PATH_ENV, "")
    if override:
        return override, True
    root = environ.get(XDG_CONFIG_HOME_ENV, "") or "/etc"
    return (root if root.endswith("/") else root + "/") + RELATIVE_CONFIG_PATH, False  # os.path.join's result
