"""The --require DSL against libnvidia-container's dsl.c semantics, quirks included."""

from __future__ import annotations

import pytest

from nvc.driver_info import DriverInfo, GpuInfo
from nvc.errors import NvcError
from nvc.request.requirements import (
    MAX_REQUIREMENTS,
    Condition,
    check_requirements,
    compare_versions,
    parse_condition,
    parse_requirements,
)

DRIVER = DriverInfo(driver_version="550.54.15", cuda_version="12.4")
TESLA = GpuInfo(0, 0, "Tesla T4", "Tesla", "GPU-aaaa", "00000000:3b:00.0", "7.5")
GEFORCE = GpuInfo(1, 1, "NVIDIA GeForce RTX 3090", "GeForceRTX", "GPU-bbbb", "00000000:af:00.0", "8.6")

CUDA_HINT = "please update your driver to a newer version, or use an earlier cuda container"
INVALID = "requirement error: invalid expression"

# (expressions, selected GPUs, expected error or None)
CASES = [
    # plain version comparisons against CUDA 12.4 / driver 550.54.15
    (["cuda>=12.4"], (), None),
    (["cuda>=12.0"], (), None),
    (["cuda=12.4.0"], (), None),  # trailing zero components ignored
    (["cuda!=12.4"], (), "requirement error: unsatisfied condition: cuda!=12.4"),
    (["cuda>12.4"], (), "requirement error: unsatisfied condition: cuda>12.4"),
    (["cuda<=12.4.0.0"], (), None),
    (["cuda<12.10"], (), None),  # numeric, not lexical: 4 < 10
    (["cuda>=12.5"], (), f"requirement error: unsatisfied condition: cuda>=12.5, {CUDA_HINT}"),
    (["CUDA>=12.5"], (), "requirement error: unsatisfied condition: CUDA>=12.5"),  # hint only for literal "cuda>="
    (["driver>=550"], (), None),
    (["driver<550.54.15"], (), "requirement error: unsatisfied condition: driver<550.54.15"),
    (["Driver>=384,driver<551"], (), None),  # names in any case
    # OR of ANDs: the real NVIDIA_REQUIRE_CUDA shape
    (["cuda>=12.6 brand=tesla,driver>=470,driver<471 brand=tesla,driver>=550,driver<551"], (TESLA,), None),
    (
        ["cuda>=12.6 brand=tesla,driver>=470,driver<471"],
        (TESLA,),
        f"requirement error: unsatisfied condition: cuda>=12.6, {CUDA_HINT}",
    ),
    # the message names the first term whichever term failed last
    (["driver>=999 cuda>=99"], (), "requirement error: unsatisfied condition: driver>=999"),
    # device rules: true without a device, checked per selected GPU otherwise
    (["arch>=8.0"], (), None),
    (["arch>=8.0"], (GEFORCE,), None),
    (["arch>=8.0"], (TESLA, GEFORCE), "requirement error: unsatisfied condition: arch>=8.0"),
    (["brand=TESLA"], (TESLA,), None),
    (["brand!=tesla"], (TESLA,), "requirement error: unsatisfied condition: brand!=tesla"),
    (["brand=tesla"], (), None),
    (["brand<tesla"], (), None),  # never compared: no device, so NVIDIA never notices the bad operator
    (["brand<tesla"], (TESLA,), INVALID),
    # every expression must hold
    (["cuda>=12", "driver>=600"], (), "requirement error: unsatisfied condition: driver>=600"),
    ([], (TESLA,), None),
    ([""], (), None),
    (["  cuda>=1  "], (), None),  # empty terms skipped
    (["cuda>=1,,driver>=1"], (), None),  # empty conditions skipped
    # malformed conditions: only when the evaluation reaches them
    (["cuda"], (), INVALID),
    ([">=12"], (), INVALID),
    (["cuda>="], (), INVALID),
    (["cuda=>12"], (), INVALID),
    (["cuda==12"], (), INVALID),
    (["vram>=16"], (), INVALID),
    (["cuda>=12.x"], (), INVALID),
    (["cuda>=.5"], (), INVALID),
    (["cuda>=1 junk"], (), None),  # first term holds: the second is never parsed by NVIDIA
    (["cuda>=99 junk"], (), INVALID),
    # a comma-only term ends the OR chain with the previous result (dsl.c's loop)
    (["cuda>=99 , cuda>=1"], (), f"requirement error: unsatisfied condition: cuda>=99, {CUDA_HINT}"),
    ([","], (), None),
]


@pytest.mark.parametrize(("exprs", "gpus", "error"), CASES)
def test_requirements_table(exprs, gpus, error):
    reqs = parse_requirements(exprs)
    if error is None:
        check_requirements(reqs, DRIVER, gpus)
    else:
        with pytest.raises(NvcError) as caught:
            check_requirements(reqs, DRIVER, gpus)
        assert str(caught.value) == error
        assert caught.value.stage == "requirement"


@pytest.mark.parametrize(
    ("left", "op", "right", "expected"),
    [
        ("12", "=", "12.0", True),
        ("12.0.1", ">", "12", True),
        ("12.04", ">", "12", True),
        ("12.4", "<", "12.4.1", True),
        ("12.4", "<=", "12.4", True),
        ("12.4", ">=", "12.40", False),
        ("1..2", "=", "1.2", True),
        ("010", "=", "10", True),
        ("12", "!=", "12.000", False),
    ],
)
def test_compare_versions(left, op, right, expected):
    assert compare_versions(left, op, right) is expected


def test_parse_condition_shapes():
    assert parse_condition("Cuda>=12.4") == Condition("Cuda>=12.4", "cuda", ">=", "12.4", True)
    assert parse_condition("brand=a=b") == Condition("brand=a=b", "brand", "=", "a=b", True)
    assert not parse_condition("cuda<>1").valid


def test_too_many_requirements_is_an_input_error():
    parse_requirements(["cuda>=1"] * MAX_REQUIREMENTS)
    with pytest.raises(NvcError) as caught:
        parse_requirements(["cuda>=1"] * (MAX_REQUIREMENTS + 1))
    assert str(caught.value) == "input error: too many requirements"


def test_texts_round_trip_and_lone_string():
    reqs = parse_requirements(["cuda>=12 brand=tesla", "driver>=1"])
    assert reqs.texts == ("cuda>=12 brand=tesla", "driver>=1")
    assert len(parse_requirements("cuda>=12")) == 1


def test_unknown_driver_values_hold():
    blank = DriverInfo(driver_version="", cuda_version="")
    no_brand = GpuInfo(0, 0, "x", "", "GPU-x", "00000000:01:00.0", "8.0")
    check_requirements(parse_requirements(["cuda>=99", "driver>=999", "brand=tesla"]), blank, (no_brand,))


def test_first_failing_gpu_wins():
    with pytest.raises(NvcError, match="brand=geforcertx"):
        check_requirements(parse_requirements(["brand=geforcertx"]), DRIVER, (TESLA, GEFORCE))
