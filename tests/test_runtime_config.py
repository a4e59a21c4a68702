"""config.toml: NVIDIA's locations, defaults, its shipped file, and the errors a hook must print."""

from __future__ import annotations

import pytest

from nvc.components import ALL_CAPABILITIES, Capability
from nvc.errors import NvcError
from nvc.request.runtime_config import (
    RuntimeConfig,
    config_file_path,
    default_config,
    load_config,
    normalize_ldconfig_path,
    parse_config,
)

# What `nvidia-ctk config default` writes (toolkit 1.17, Ubuntu: ldconfig.real present), comments and all.
NVIDIA_SHIPPED_CONFIG = """\
#accept-nvidia-visible-devices-as-volume-mounts = false
#accept-nvidia-visible-devices-envvar-when-unprivileged = true
disable-require = false
supported-driver-capabilities = "compat32,compute,display,graphics,ngx,utility,video"
#swarm-resource = "DOCKER_RESOURCE_GPU"

[nvidia-container-cli]
#debug = "/var/log/nvidia-container-toolkit.log"
environment = []
#ldcache = "/etc/ld.so.cache"
ldconfig = "@/sbin/ldconfig.real"
load-kmods = true
#no-cgroups = false
#path = "/usr/bin/nvidia-container-cli"
#root = "/run/nvidia/driver"
#user = "root:video"

[nvidia-container-runtime]
#debug = "/var/log/nvidia-container-runtime.log"
log-level = "info"
mode = "auto"
runtimes = ["docker-runc", "runc", "crun"]

[nvidia-container-runtime.modes]

[nvidia-container-runtime.modes.cdi]
annotation-prefixes = ["cdi.k8s.io/"]
default-kind = "nvidia.com/gpu"
spec-dirs = ["/etc/cdi", "/var/run/cdi"]

[nvidia-container-runtime.modes.csv]
mount-spec-path = "/etc/nvidia-container-runtime/host-files-for-container.d"

[nvidia-container-runtime.modes.legacy]
cuda-compat-mode = "ldconfig"

[nvidia-container-runtime-hook]
path = "nvidia-container-runtime-hook"
skip-mode-detection = false

[nvidia-ctk]
path = "nvidia-ctk"
"""


def has_real(path: str) -> bool:
    return path == "/sbin/ldconfig.real"


def no_real(path: str) -> bool:
    return False


def test_defaults_match_nvidia():
    config = default_config(no_real)
    assert config.disable_require is False
    assert config.swarm_resource == ()
    assert config.accept_envvar_unprivileged is True
    assert config.accept_device_list_as_volume_mounts is False
    assert config.supported_driver_capabilities == frozenset(ALL_CAPABILITIES)
    assert config.cli.load_kmods is True
    assert config.cli.no_cgroups is False
    assert config.cli.root == config.cli.path == config.cli.user == config.cli.debug == config.cli.ldcache == ""
    assert config.cli.environment == ()
    assert config.cli.ldconfig == "@/sbin/ldconfig"
    assert config.runtime.log_level == "info"
    assert config.runtime.mode == "auto"
    assert config.runtime.runtimes == ("runc", "crun")
    assert config.runtime.modes.cdi.default_kind == "nvidia.com/gpu"
    assert config.runtime.modes.cdi.annotation_prefixes == ("cdi.k8s.io/",)
    assert config.runtime.modes.cdi.spec_dirs == ("/etc/cdi", "/var/run/cdi")
    assert config.runtime.modes.legacy.cuda_compat_mode == "ldconfig"
    assert config.hook.path == "nvidia-container-runtime-hook"
    assert config.hook.skip_mode_detection is False
    assert config.ctk.path == "nvidia-ctk"
    assert config.features.allow_ldconfig_from_container is False
    assert config.source is None


def test_default_ldconfig_prefers_real():
    assert default_config(has_real).cli.ldconfig == "@/sbin/ldconfig.real"


def test_empty_file_is_defaults():
    assert parse_config("", "x.toml", path_exists=no_real) == RuntimeConfig(source="x.toml")


def test_nvidia_shipped_file_loads(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(NVIDIA_SHIPPED_CONFIG)
    config = load_config(str(path), {}, path_exists=has_real)
    assert config.source == str(path)
    assert config.cli.ldconfig == "@/sbin/ldconfig.real"
    assert config.runtime.runtimes == ("docker-runc", "runc", "crun")
    assert config.supported_driver_capabilities == frozenset(ALL_CAPABILITIES)
    assert config.runtime.modes.csv.mount_spec_path == "/etc/nvidia-container-runtime/host-files-for-container.d"
    # The same file on a host without ldconfig.real falls back, as NVIDIA's NormalizeLDConfigPath does.
    assert load_config(str(path), {}, path_exists=no_real).cli.ldconfig == "@/sbin/ldconfig"


def test_values_and_unknown_keys():
    config = parse_config(
        """
        disable-require = true
        swarm-resource = " DOCKER_RESOURCE_GPU , ,OTHER_GPU"
        accept-nvidia-visible-devices-envvar-when-unprivileged = false
        accept-nvidia-visible-devices-as-volume-mounts = true
        supported-driver-capabilities = "compute, utility"
        some-future-key = 3
        [nvidia-container-cli]
        root = "/run/nvidia/driver"
        environment = ["A=1"]
        no-cgroups = true
        user = "root:video"
        future = { nested = true }
        [nvidia-container-runtime.modes.legacy]
        cuda-compat-mode = "mount"
        [nvidia-container-runtime.modes.jit-cdi]
        anything = "goes"
        [features]
        ignore-imex-channel-requests = true
        """,
        path_exists=no_real,
    )
    assert config.disable_require is True
    assert config.swarm_resource == ("DOCKER_RESOURCE_GPU", "OTHER_GPU")
    assert config.accept_envvar_unprivileged is False
    assert config.accept_device_list_as_volume_mounts is True
    assert config.supported_driver_capabilities == {Capability.COMPUTE, Capability.UTILITY}
    assert config.cli.root == "/run/nvidia/driver"
    assert config.cli.environment == ("A=1",)
    assert config.cli.no_cgroups is True
    assert config.cli.load_kmods is True  # untouched default
    assert config.runtime.modes.legacy.cuda_compat_mode == "mount"
    assert config.features.ignore_imex_channel_requests is True


def test_cuda_compat_mode_unset_and_many_dots_in_values():
    """NVIDIA reads cuda-compat-mode = "" as unset (nvc.request.container_request.cuda_compat_flag decides the flag),
    and dots in values never count as key depth."""
    dots = "/" + "a." * 300 + "so"
    config = parse_config(f'[nvidia-container-runtime.modes.legacy]\ncuda-compat-mode = ""\n'
                          f'[nvidia-container-cli]\nldcache = "{dots}"\nenvironment = ["A=B=C", "E="]\n',
                          path_exists=no_real)
    assert config.runtime.modes.legacy.cuda_compat_mode == ""
    assert config.cli.ldcache == dots and config.cli.environment == ("A=B=C", "E=")


def test_supported_capabilities_all():
    config = parse_config('supported-driver-capabilities = "all"', path_exists=no_real)
    assert config.supported_driver_capabilities == frozenset(ALL_CAPABILITIES)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, ("/etc/nvidia-container-runtime/config.toml", False)),
        ({"XDG_CONFIG_HOME": ""}, ("/etc/nvidia-container-runtime/config.toml", False)),
        ({"XDG_CONFIG_HOME": "/home/u/.config"}, ("/home/u/.config/nvidia-container-runtime/config.toml", False)),
        ({"XDG_CONFIG_HOME": "/x", "NVIDIA_CTK_CONFIG_FILE_PATH": "/opt/c.toml"}, ("/opt/c.toml", True)),
        ({"NVIDIA_CTK_CONFIG_FILE_PATH": ""}, ("/etc/nvidia-container-runtime/config.toml", False)),
    ],
)
def test_config_file_path(environ, expected):
    assert config_file_path(environ) == expected


def test_env_path_override_and_xdg(tmp_path):
    override = tmp_path / "override.toml"
    override.write_text("disable-require = true\n")
    assert load_config(None, {"NVIDIA_CTK_CONFIG_FILE_PATH": str(override)}, path_exists=no_real).disable_require

    xdg = tmp_path / "xdg" / "nvidia-container-runtime"
    xdg.mkdir(parents=True)
    (xdg / "config.toml").write_text("[nvidia-container-cli]\nload-kmods = false\n")
    config = load_config(None, {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}, path_exists=no_real)
    assert config.cli.load_kmods is False
    assert config.source == str(xdg / "config.toml")


def test_missing_default_file_is_defaults(tmp_path):
    config = load_config(None, {"XDG_CONFIG_HOME": str(tmp_path)}, path_exists=no_real)
    assert config == default_config(no_real)


@pytest.mark.parametrize("how", ["argument", "env"])
def test_missing_required_file_is_an_error(tmp_path, how):
    missing = str(tmp_path / "nope.toml")
    args = (missing, {}) if how == "argument" else (None, {"NVIDIA_CTK_CONFIG_FILE_PATH": missing})
    with pytest.raises(NvcError) as caught:
        load_config(*args, path_exists=no_real)
    assert str(caught.value) == f"input error: {missing}: couldn't open required configuration file: no such file"


def test_unreadable_path_is_an_error(tmp_path):
    with pytest.raises(NvcError, match=r"couldn't open configuration file"):
        load_config(str(tmp_path), {}, path_exists=no_real)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("disable-require = \n", "c.toml: invalid TOML: "),
        ("[nvidia-container-cli\n", "c.toml: invalid TOML: "),
        ('a = 1\na = 2\n', "c.toml: invalid TOML: "),
        ('disable-require = "yes"\n', "c.toml: disable-require: expected a boolean, got string"),
        ("swarm-resource = 1\n", "c.toml: swarm-resource: expected a string, got integer"),
        ("[nvidia-container-cli]\nload-kmods = 1\n", "c.toml: nvidia-container-cli.load-kmods: expected a boolean"),
        ('[nvidia-container-cli]\nenvironment = "A=1"\n', "c.toml: nvidia-container-cli.environment: expected an"),
        ("[nvidia-container-runtime]\nruntimes = [1]\n", "c.toml: nvidia-container-runtime.runtimes: expected an"),
        ("nvidia-container-cli = true\n", "c.toml: nvidia-container-cli: expected a table, got boolean"),
        ("[nvidia-container-runtime]\nmodes = 1\n", "c.toml: nvidia-container-runtime.modes: expected a table"),
        (
            '[nvidia-container-runtime.modes.legacy]\ncuda-compat-mode = "auto"\n',
            "c.toml: nvidia-container-runtime.modes.legacy.cuda-compat-mode: invalid value 'auto'",
        ),
        (
            'supported-driver-capabilities = "compute,gpu"\n',
            "c.toml: invalid value for config option 'supported-driver-capabilities'; compute,gpu (supported: ",
        ),
        ('supported-driver-capabilities = "compute,all"\n', "c.toml: invalid value for config option"),
        ('[nvidia-container-cli]\nenvironment = ["NOEQUALS"]\n',
         "c.toml: nvidia-container-cli.environment: entry 'NOEQUALS' is not NAME=VALUE"),
        ('[nvidia-container-cli]\nenvironment = ["=1"]\n', "c.toml: nvidia-container-cli.environment: entry '=1'"),
        ('[nvidia-container-cli]\nenvironment = ["A=\\u0000"]\n', "c.toml: nvidia-container-cli.environment: entry"),
        ("a." * 200 + "b = 1\n", "c.toml: invalid TOML: keys nested too deeply (line 1)"),
        ("x = 1\n[" + "a." * 200 + "b]\n", "c.toml: invalid TOML: keys nested too deeply (line 2)"),
        ("a = " + "[" * 5000 + "]" * 5000 + "\n", "c.toml: invalid TOML: arrays or tables nested too deeply"),
    ],
)
def test_bad_files(text, message):
    with pytest.raises(NvcError) as caught:
        parse_config(text, "c.toml", path_exists=no_real)
    assert caught.value.stage == "input"
    assert caught.value.message.startswith(message)
    assert "\n" not in str(caught.value)


def test_not_utf8(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b"root = \"\xff\"\n")
    with pytest.raises(NvcError, match="invalid TOML: not UTF-8"):
        load_config(str(path), {}, path_exists=no_real)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[nvidia-container-cli]\nldconfig = "@/sbin/ldconfig"\n', "@/sbin/ldconfig.real"),
        ('[nvidia-container-cli]\nldconfig = "@/sbin/ldconfig.real"\n', "@/sbin/ldconfig.real"),
        ('[nvidia-container-cli]\nldconfig = "@/usr/sbin/ldconfig"\n', "@/usr/sbin/ldconfig"),
        (
            '[nvidia-container-cli]\nldconfig = "/sbin/ldconfig"\n[features]\nallow-ldconfig-from-container = true\n',
            "/sbin/ldconfig",
        ),
    ],
)
def test_ldconfig_rules(text, expected):
    assert parse_config(text, path_exists=has_real).cli.ldconfig == expected


@pytest.mark.parametrize("value", ["/sbin/ldconfig", ""])
def test_container_ldconfig_refused_without_feature(value):
    with pytest.raises(NvcError) as caught:
        parse_config(f'[nvidia-container-cli]\nldconfig = "{value}"\n', "c.toml", path_exists=has_real)
    assert caught.value.message.startswith(
        f"c.toml: nvidia-container-cli.ldconfig value \"{value}\" is not host-relative (does not start with a '@')"
    )


def test_normalize_ldconfig_path():
    assert normalize_ldconfig_path("/sbin/ldconfig", has_real) == "/sbin/ldconfig"
    assert normalize_ldconfig_path("@/sbin/ldconfig.real", no_real) == "@/sbin/ldconfig"


def test_tomllib_not_imported_at_module_import():
    import subprocess
    import sys

    code = ("import sys, nvc.request.runtime_config, nvc.request.container_env; print('tomllib' in sys.modules, 'json' "
            "in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
