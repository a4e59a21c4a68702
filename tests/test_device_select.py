"""The --device grammar against NVML's view of the GPUs."""

from __future__ import annotations

import pytest

from nvc.driver_info import GpuInfo, MigDevice
from nvc.errors import NvcError
from nvc.request.device_select import normalize_bus_id, select_devices, split_device_list

GPUS = (
    GpuInfo(0, 2, "NVIDIA A100", "Tesla", "GPU-aaaa0000-0000-0000-0000-000000000000", "00000000:3b:00.0", "8.0",
            True, (MigDevice(0, 1, 0, "MIG-11111111-0000-0000-0000-000000000000"),
                   MigDevice(1, 2, 0, "MIG-22222222-0000-0000-0000-000000000000"))),
    GpuInfo(1, 0, "Tesla T4", "Tesla", "GPU-bbbb0000-0000-0000-0000-000000000000", "00000001:af:00.0", "7.5"),
)


def chosen(spec: str):
    sel = select_devices(split_device_list([spec]), GPUS)
    return [g.index for g in sel.gpus], [(g.index, m.index) for g, m in sel.migs]


@pytest.mark.parametrize(
    ("spec", "gpus", "migs"),
    [
        ("all", [0, 1], [(0, 0), (0, 1)]),
        ("ALL", [0, 1], [(0, 0), (0, 1)]),
        ("1", [1], []),
        ("1,0,1", [0, 1], []),
        (",,1,", [1], []),
        ("gpu-BBBB0000-0000-0000-0000-000000000000", [1], []),
        ("0000:3b:00.0", [0], []),
        ("3b:00.0", [0], []),
        ("1:af:00", [1], []),
        ("00000001:AF:00.0", [1], []),
        ("MIG-22222222-0000-0000-0000-000000000000", [0], [(0, 1)]),
        ("0:0", [0], [(0, 0)]),
        ("0:1,1", [0, 1], [(0, 1)]),
        ("", [], []),
    ],
)
def test_grammar(spec, gpus, migs):
    assert chosen(spec) == (gpus, migs)


@pytest.mark.parametrize("spec", ["2", "GPU-cccc", "MIG-x", "1:0", "foo", "5:00.0", "-1"])
def test_unknown_device_error_text(spec):
    with pytest.raises(NvcError) as err:
        chosen(spec)
    assert str(err.value) == f"device error: {spec}: unknown device"


def test_repeated_options_are_joined():
    assert split_device_list(["0,1", "2", " 3 "]) == ["0", "1", "2", "3"]


def test_bus_id_normalisation():
    assert normalize_bus_id("3B:0.0") == "00000000:3b:00.0"
    assert normalize_bus_id("nope") is None
