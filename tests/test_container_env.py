"""NVIDIA's container environment rules: OCI spec (env, capabilities, mounts) + config.toml → GpuRequest."""

from __future__ import annotations

import pytest

from nvc.components import ALL_CAPABILITIES, Capability
from nvc.errors import NvcError
from nvc.record import replace
from nvc.request.container_env import GpuRequest, cuda_major_minor, gpu_request_from_spec, parse_environment
from nvc.request.runtime_config import FeaturesConfig, RuntimeConfig

C = Capability
CU = frozenset({C.COMPUTE, C.UTILITY})
ALL = frozenset(ALL_CAPABILITIES)

DEFAULT = RuntimeConfig()
STRICT = replace(DEFAULT, accept_envvar_unprivileged=False)
MOUNTS = replace(DEFAULT, accept_device_list_as_volume_mounts=True)
MOUNTS_STRICT = replace(MOUNTS, accept_envvar_unprivileged=False)
SWARM = replace(DEFAULT, swarm_resource=("DOCKER_RESOURCE_GPU", "OTHER_GPU"))
LIMITED = replace(DEFAULT, supported_driver_capabilities=frozenset({C.COMPUTE, C.VIDEO}))
NO_REQUIRE = replace(DEFAULT, disable_require=True)
NO_IMEX = replace(DEFAULT, features=FeaturesConfig(ignore_imex_channel_requests=True))

DEFAULT_BOUNDING = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
UNPRIV = {"bounding": DEFAULT_BOUNDING, "effective": DEFAULT_BOUNDING}
PRIV = {"bounding": [*DEFAULT_BOUNDING, "CAP_SYS_ADMIN"]}
ADMIN_NOT_BOUNDING = {"bounding": DEFAULT_BOUNDING, "effective": ["CAP_SYS_ADMIN"]}
OLD_FLAT_PRIV = ["CAP_CHOWN", "CAP_SYS_ADMIN"]

ROOT = "/var/run/nvidia-container-devices"


def dev_mount(destination: str, source: str = "/dev/null") -> dict:
    return {"destination": destination, "type": "bind", "source": source, "options": ["ro", "rbind"]}


def G(devices, caps=CU, reqs=(), mig_config=None, mig_monitor=None, imex=(), priv=False) -> GpuRequest:
    return GpuRequest(tuple(devices), frozenset(caps), tuple(reqs), mig_config, mig_monitor, tuple(imex), priv)


LEGACY_10_2 = ["CUDA_VERSION=10.2.89"]
CAP_ERR = "input error: unsupported capabilities found in "

# (id, env, process.capabilities, mounts, config, expected: GpuRequest | None (not a GPU container) | error text)
CASES = [
    # --- NVIDIA_VISIBLE_DEVICES
    ("unset", ["PATH=/bin"], UNPRIV, None, DEFAULT, None),
    ("all", ["NVIDIA_VISIBLE_DEVICES=all"], UNPRIV, None, DEFAULT, G(["all"])),
    ("list", ["NVIDIA_VISIBLE_DEVICES=0,1"], UNPRIV, None, DEFAULT, G(["0", "1"])),
    ("trim-drop-empty", ["NVIDIA_VISIBLE_DEVICES= 0 , ,GPU-abc,"], UNPRIV, None, DEFAULT, G(["0", "GPU-abc"])),
    ("mig-and-pci", ["NVIDIA_VISIBLE_DEVICES=0:1,MIG-x,00000000:3b:00.0"], UNPRIV, None, DEFAULT,
     G(["0:1", "MIG-x", "00000000:3b:00.0"])),
    ("empty", ["NVIDIA_VISIBLE_DEVICES="], UNPRIV, None, DEFAULT, None),
    ("only-commas", ["NVIDIA_VISIBLE_DEVICES= , "], UNPRIV, None, DEFAULT, None),
    ("void", ["NVIDIA_VISIBLE_DEVICES=void"], PRIV, None, DEFAULT, None),
    ("void-anywhere", ["NVIDIA_VISIBLE_DEVICES=0,void"], UNPRIV, None, DEFAULT, None),
    ("none", ["NVIDIA_VISIBLE_DEVICES=none"], UNPRIV, None, DEFAULT, G([])),
    ("all-not-first", ["NVIDIA_VISIBLE_DEVICES=0,all"], UNPRIV, None, DEFAULT, G(["all"])),
    ("none-beats-all", ["NVIDIA_VISIBLE_DEVICES=all,none"], UNPRIV, None, DEFAULT, G([])),
    ("last-duplicate-wins", ["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_VISIBLE_DEVICES=1"], UNPRIV, None, DEFAULT,
     G(["1"])),
    ("last-duplicate-void", ["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_VISIBLE_DEVICES=void"], UNPRIV, None, DEFAULT, None),
    ("value-with-equals", ["NVIDIA_VISIBLE_DEVICES=a=b"], UNPRIV, None, DEFAULT, G(["a=b"])),
    ("no-process-env", None, None, None, DEFAULT, None),
    # --- legacy CUDA images
    ("legacy-unset", LEGACY_10_2, UNPRIV, None, DEFAULT, G(["all"], ALL, ["cuda>=10.2"])),
    ("legacy-major-only", ["CUDA_VERSION=9", "NVIDIA_VISIBLE_DEVICES=0"], UNPRIV, None, DEFAULT,
     G(["0"], ALL, ["cuda>=9.0"])),
    ("legacy-v-prefix", ["CUDA_VERSION=v10.1"], UNPRIV, None, DEFAULT, G(["all"], ALL, ["cuda>=10.1"])),
    # An empty NVIDIA_REQUIRE_CUDA makes a legacy image, and is passed on as NVIDIA passes it (--require=).
    ("legacy-empty-require", ["CUDA_VERSION=11.0", "NVIDIA_REQUIRE_CUDA="], UNPRIV, None, DEFAULT,
     G(["all"], ALL, ["", "cuda>=11.0"])),
    ("legacy-empty-devices", [*LEGACY_10_2, "NVIDIA_VISIBLE_DEVICES="], UNPRIV, None, DEFAULT, None),
    ("legacy-void", [*LEGACY_10_2, "NVIDIA_VISIBLE_DEVICES=void"], UNPRIV, None, DEFAULT, None),
    ("legacy-none", [*LEGACY_10_2, "NVIDIA_VISIBLE_DEVICES=none"], UNPRIV, None, DEFAULT,
     G([], ALL, ["cuda>=10.2"])),
    ("legacy-empty-cuda-version", ["CUDA_VERSION="], UNPRIV, None, DEFAULT, None),
    ("modern-image-no-devices", ["CUDA_VERSION=12.4.1", "NVIDIA_REQUIRE_CUDA=cuda>=12.4"], UNPRIV, None, DEFAULT,
     None),
    ("legacy-bad-version", ["CUDA_VERSION=10.02"], UNPRIV, None, DEFAULT,
     "input error: failed to get requirements: invalid CUDA version 10.02: invalid version string"),
    ("legacy-bad-version-require-disabled", ["CUDA_VERSION=10.x", "NVIDIA_DISABLE_REQUIRE=true"], UNPRIV, None,
     DEFAULT, G(["all"], ALL)),
    ("legacy-limited-supported", LEGACY_10_2, UNPRIV, None, LIMITED, G(["all"], {C.COMPUTE, C.VIDEO}, ["cuda>=10.2"])),
    ("legacy-caps-set", [*LEGACY_10_2, "NVIDIA_DRIVER_CAPABILITIES=video"], UNPRIV, None, DEFAULT,
     G(["all"], {C.VIDEO}, ["cuda>=10.2"])),
    # --- NVIDIA_DRIVER_CAPABILITIES
    ("caps-empty", ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES="], UNPRIV, None, DEFAULT, G(["all"])),
    ("caps-legacy-empty", [*LEGACY_10_2, "NVIDIA_DRIVER_CAPABILITIES="], UNPRIV, None, DEFAULT,
     G(["all"], CU, ["cuda>=10.2"])),
    ("caps-list", ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=compute, video"], UNPRIV, None,
     DEFAULT, G(["all"], {C.COMPUTE, C.VIDEO})),
    ("caps-all", ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=all"], UNPRIV, None, DEFAULT,
     G(["all"], ALL)),
    ("caps-all-anywhere", ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=compute,all,bogus"], UNPRIV,
     None, DEFAULT, G(["all"], ALL)),
    ("caps-unknown", ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=compute,bogus"], UNPRIV, None,
     DEFAULT, CAP_ERR + "'bogus,compute' (allowed 'compute')"),
    ("caps-case-sensitive", ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=Compute"], UNPRIV, None,
     DEFAULT, CAP_ERR + "'Compute' (allowed '')"),
    ("caps-unsupported-by-config", ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=graphics"], UNPRIV,
     None, LIMITED, CAP_ERR + "'graphics' (allowed '')"),
    ("caps-unset-limited", ["NVIDIA_VISIBLE_DEVICES=all"], UNPRIV, None, LIMITED, G(["all"], {C.COMPUTE})),
    ("caps-all-limited", ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=all"], UNPRIV, None, LIMITED,
     G(["all"], {C.COMPUTE, C.VIDEO})),
    ("caps-only-commas", ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=,"], UNPRIV, None, DEFAULT,
     G(["all"], ())),
    ("caps-error-skipped-for-non-gpu", ["NVIDIA_DRIVER_CAPABILITIES=bogus"], UNPRIV, None, DEFAULT, None),
    # --- NVIDIA_REQUIRE_* / NVIDIA_DISABLE_REQUIRE
    ("requires-sorted-jetpack-skipped",
     ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_REQUIRE_CUDA=cuda>=12.4 brand=tesla,driver>=470,driver<471",
      "NVIDIA_REQUIRE_ARCH=arch>=7.0", "NVIDIA_REQUIRE_JETPACK=csv-mounts=all", "NVIDIA_REQUIRE_JETPACK_HOST_MOUNTS=",
      "NVIDIA_REQUIRE_EMPTY=", "NVIDIA_REQUIRES=x", "CUDA_VERSION=12.4.1"],
     UNPRIV, None, DEFAULT, G(["all"], CU, ["arch>=7.0", "cuda>=12.4 brand=tesla,driver>=470,driver<471", ""])),
    ("disable-require-env", ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_REQUIRE_CUDA=cuda>=99", "NVIDIA_DISABLE_REQUIRE=1"],
     UNPRIV, None, DEFAULT, G(["all"])),
    ("disable-require-not-truthy", ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_REQUIRE_CUDA=cuda>=99",
                                    "NVIDIA_DISABLE_REQUIRE=yes"], UNPRIV, None, DEFAULT, G(["all"], CU, ["cuda>=99"])),
    ("disable-require-config", ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_REQUIRE_CUDA=cuda>=99"], UNPRIV, None,
     NO_REQUIRE, G(["all"])),
    # --- MIG (privileged only)
    ("mig-config-privileged", ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_MIG_CONFIG_DEVICES=all"], PRIV, None, DEFAULT,
     G(["all"], mig_config="all", priv=True)),
    ("mig-monitor-privileged", ["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_MIG_MONITOR_DEVICES=0,1"], PRIV, None, DEFAULT,
     G(["0"], mig_monitor="0,1", priv=True)),
    ("mig-config-unprivileged", ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_MIG_CONFIG_DEVICES=all"], UNPRIV, None,
     DEFAULT, "input error: cannot set MIG_CONFIG_DEVICES in non privileged container"),
    ("mig-monitor-unprivileged", ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_MIG_MONITOR_DEVICES=all"], UNPRIV, None,
     DEFAULT, "input error: cannot set MIG_MONITOR_DEVICES in non privileged container"),
    ("mig-admin-only-effective", ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_MIG_CONFIG_DEVICES=all"], ADMIN_NOT_BOUNDING,
     None, DEFAULT, "input error: cannot set MIG_CONFIG_DEVICES in non privileged container"),
    ("mig-old-flat-capabilities", ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_MIG_CONFIG_DEVICES=all"], OLD_FLAT_PRIV,
     None, DEFAULT, G(["all"], mig_config="all", priv=True)),
    ("mig-empty-unprivileged", ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_MIG_CONFIG_DEVICES="], UNPRIV, None, DEFAULT,
     G(["all"])),
    ("mig-non-gpu-container", ["NVIDIA_MIG_CONFIG_DEVICES=all"], UNPRIV, None, DEFAULT, None),
    # --- IMEX channels (same gating as devices)
    ("imex-privileged", ["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_IMEX_CHANNELS=0,1"], PRIV, None, DEFAULT,
     G(["0"], imex=["0", "1"], priv=True)),
    ("imex-unprivileged-accepted", ["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_IMEX_CHANNELS=3"], UNPRIV, None, DEFAULT,
     G(["0"], imex=["3"])),
    ("imex-strict-privileged", ["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_IMEX_CHANNELS=3"], PRIV, None, STRICT,
     G(["0"], imex=["3"], priv=True)),
    ("imex-strict-unprivileged", ["NVIDIA_IMEX_CHANNELS=3"], UNPRIV, [dev_mount(ROOT + "/0")], MOUNTS_STRICT,
     G(["0"])),
    ("imex-all-dropped", ["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_IMEX_CHANNELS=all"], PRIV, None, DEFAULT,
     G(["0"], priv=True)),
    ("imex-void", ["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_IMEX_CHANNELS=void"], PRIV, None, DEFAULT, G(["0"], priv=True)),
    ("imex-legacy-implicit-all", LEGACY_10_2, PRIV, None, DEFAULT, G(["all"], ALL, ["cuda>=10.2"], priv=True)),
    ("imex-ignored-by-feature", ["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_IMEX_CHANNELS=0"], PRIV, None, NO_IMEX,
     G(["0"], priv=True)),
    # --- accept-nvidia-visible-devices-envvar-when-unprivileged = false
    ("strict-unprivileged", ["NVIDIA_VISIBLE_DEVICES=all"], UNPRIV, None, STRICT, None),
    ("strict-no-capabilities", ["NVIDIA_VISIBLE_DEVICES=all"], None, None, STRICT, None),
    ("strict-privileged", ["NVIDIA_VISIBLE_DEVICES=all"], PRIV, None, STRICT, G(["all"], priv=True)),
    ("strict-legacy-unprivileged", LEGACY_10_2, UNPRIV, None, STRICT, None),
    # --- accept-nvidia-visible-devices-as-volume-mounts
    ("mounts-win-over-env", ["NVIDIA_VISIBLE_DEVICES=all"], UNPRIV,
     [dev_mount(ROOT + "/GPU-abc"), dev_mount(ROOT + "/1/")], MOUNTS, G(["GPU-abc", "1"])),
    ("mounts-all", [], UNPRIV, [dev_mount(ROOT + "/all")], MOUNTS, G(["all"])),
    ("mounts-ignored-when-off", ["NVIDIA_VISIBLE_DEVICES=0"], UNPRIV, [dev_mount(ROOT + "/1")], DEFAULT, G(["0"])),
    ("mounts-none-present-env-used", ["NVIDIA_VISIBLE_DEVICES=2"], UNPRIV, [], MOUNTS, G(["2"])),
    ("mounts-filtering", [], UNPRIV,
     [dev_mount(ROOT + "/0", source="/tmp/x"), dev_mount(ROOT + "X/1"), dev_mount(ROOT), dev_mount("/other/2"),
      dev_mount(ROOT + "//3"), dev_mount(ROOT + "/3"), dev_mount(ROOT + "/4", source="/dev/../dev/null")],
     MOUNTS, G(["3", "4"])),
    ("mounts-no-privilege-needed", [], UNPRIV, [dev_mount(ROOT + "/0")], MOUNTS_STRICT, G(["0"])),
    ("mounts-imex-and-cdi", [], UNPRIV,
     [dev_mount(ROOT + "/imex/3"), dev_mount(ROOT + "/cdi/nvidia.com/gpu/0"), dev_mount(ROOT + "/cdi/bad")],
     MOUNTS, G(["nvidia.com/gpu=0"], imex=["3"])),
    ("mounts-only-imex-falls-back-to-env", ["NVIDIA_VISIBLE_DEVICES=1"], UNPRIV, [dev_mount(ROOT + "/imex/3")],
     MOUNTS, G(["1"], imex=["3"])),
    # --- swarm-resource
    ("swarm-replaces-visible", ["DOCKER_RESOURCE_GPU=0,1", "NVIDIA_VISIBLE_DEVICES=all"], UNPRIV, None, SWARM,
     G(["0", "1"])),
    ("swarm-both-names", ["OTHER_GPU=3", "DOCKER_RESOURCE_GPU=2"], UNPRIV, None, SWARM, G(["2", "3"])),
    ("swarm-absent-uses-visible", ["NVIDIA_VISIBLE_DEVICES=2"], UNPRIV, None, SWARM, G(["2"])),
    ("swarm-present-but-empty", ["DOCKER_RESOURCE_GPU=", "NVIDIA_VISIBLE_DEVICES=all"], UNPRIV, None, SWARM, None),
    ("swarm-name-ignored-by-default", ["DOCKER_RESOURCE_GPU=0"], UNPRIV, None, DEFAULT, None),
    # --- malformed environment
    ("env-without-equals", ["NVIDIA_VISIBLE_DEVICES=all", "BROKEN"], UNPRIV, None, DEFAULT,
     "input error: invalid environment variable: BROKEN"),
    ("env-without-equals-non-gpu", ["BROKEN"], UNPRIV, None, DEFAULT,
     "input error: invalid environment variable: BROKEN"),
    ("env-not-strings", [1], UNPRIV, None, DEFAULT, "input error: could not decode OCI spec: process.env entry 1 is"),
]


def make_spec(env, capabilities, mounts) -> dict:
    process: dict = {"args": ["sh"], "cwd": "/"}
    if env is not None:
        process["env"] = env
    if capabilities is not None:
        process["capabilities"] = capabilities
    spec: dict = {"ociVersion": "1.0.2-dev", "process": process, "root": {"path": "rootfs"}}
    if mounts is not None:
        spec["mounts"] = mounts
    return spec


@pytest.mark.parametrize(("env", "capabilities", "mounts", "config", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_container_env_table(env, capabilities, mounts, config, expected):
    spec = make_spec(env, capabilities, mounts)
    if isinstance(expected, str):
        with pytest.raises(NvcError) as caught:
            gpu_request_from_spec(spec, config)
        assert str(caught.value).startswith(expected)
        assert caught.value.stage == "input"
    else:
        assert gpu_request_from_spec(spec, config) == expected


@pytest.mark.parametrize("value", ["1", "t", "T", "TRUE", "true", "True"])
def test_disable_require_truthy_values(value):
    spec = make_spec(["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_REQUIRE_CUDA=cuda>=99", f"NVIDIA_DISABLE_REQUIRE={value}"],
                     UNPRIV, None)
    assert gpu_request_from_spec(spec, DEFAULT).requirements == ()


@pytest.mark.parametrize("value", ["0", "false", "yes", "on", "", "tRUE"])
def test_disable_require_other_values(value):
    spec = make_spec(["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_REQUIRE_CUDA=cuda>=99", f"NVIDIA_DISABLE_REQUIRE={value}"],
                     UNPRIV, None)
    assert gpu_request_from_spec(spec, DEFAULT).requirements == ("cuda>=99",)


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("9", "9.0"),
        ("10.2", "10.2"),
        ("10.2.89", "10.2"),
        ("v11.8.0", "11.8"),
        ("12.4.1-rc1+build.5", "12.4"),
        ("0.1", "0.1"),
        ("10.02", None),
        ("10.2.89.1", None),
        ("10.2-rc1", None),
        ("10.2.", None),
        ("vv10.2", None),
        ("ten", None),
        ("4294967296.0", None),
    ],
)
def test_cuda_major_minor(version, expected):
    if expected is None:
        with pytest.raises(ValueError):
            cuda_major_minor(version)
    else:
        assert cuda_major_minor(version) == expected


def test_parse_environment_split_on_first_equals():
    assert parse_environment(["A=b=c", "=x", "E="]) == {"A": "b=c", "": "x", "E": ""}
    with pytest.raises(NvcError, match=r"process\.env is not a list"):
        parse_environment("A=1")
