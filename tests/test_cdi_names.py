"""CDI qualified names and annotation keys: the specification's rules, accepted and refused cases side by side."""

from __future__ import annotations

import pytest

from nvc.emit.cdi import names
from nvc.emit.cdi.names import CdiNameError


@pytest.mark.parametrize(
    "qualified, parts",
    [
        ("nvidia.com/gpu=0", ("nvidia.com", "gpu", "0")),
        ("nvidia.com/gpu=all", ("nvidia.com", "gpu", "all")),
        ("nvidia.com/gpu=0:1", ("nvidia.com", "gpu", "0:1")),
        ("nvidia.com/gpu=GPU-4d9c2b1e-0000-1111-2222", ("nvidia.com", "gpu", "GPU-4d9c2b1e-0000-1111-2222")),
        ("nvidia.com/gpu=MIG-4d9c2b1e-0000-1111-2222", ("nvidia.com", "gpu", "MIG-4d9c2b1e-0000-1111-2222")),
        ("vendor_x/class-y.z=dev_1.2-3:4", ("vendor_x", "class-y.z", "dev_1.2-3:4")),
        ("a/b=c", ("a", "b", "c")),
        ("A1/B2=9", ("A1", "B2", "9")),
    ],
)  # fmt: skip
def test_valid_qualified_names_parse_into_their_parts(qualified, parts):
    assert names.parse_qualified_name(qualified) == parts
    assert names.is_qualified_name(qualified)
    assert names.qualified_name(*parts) == qualified


@pytest.mark.parametrize(
    "device, why",
    [
        ("", "unqualified"),
        ("0", "unqualified"),
        ("/dev/nvidia0", "unqualified"),
        ("nvidia.com/gpu", "unqualified"),
        ("nvidia.com=0", "unqualified"),
        ("/gpu=0", "unqualified"),
        ("nvidia.com/=0", "unqualified"),
        ("nvidia.com/gpu=", "unqualified"),
        ("=0", "unqualified"),
        ("1nvidia.com/gpu=0", "vendor"),
        (".nvidia.com/gpu=0", "vendor"),
        ("nvidia.com./gpu=0", "vendor"),
        ("nvidia.com-/gpu=0", "vendor"),
        ("nvi dia.com/gpu=0", "vendor"),
        ("nvidia.com/gpu/x=0", "class"),
        ("nvidia.com/9gpu=0", "class"),
        ("nvidia.com/gpu_=0", "class"),
        ("nvidia.com/gp:u=0", "class"),
        ("nvidia.com/gpu=0=1", "device name"),
        ("nvidia.com/gpu=-0", "device name"),
        ("nvidia.com/gpu=0:", "device name"),
        ("nvidia.com/gpu=:0", "device name"),
        ("nvidia.com/gpu=0/1", "device name"),
        ("nvidia.com/gpu=gpu 0", "device name"),
        ("nvidia.com/gpu=gpü", "device name"),
        ("nvidia.com/gpu=a*", "device name"),
    ],
)  # fmt: skip
def test_invalid_qualified_names_are_refused_with_the_part_named(device, why):
    assert not names.is_qualified_name(device)
    with pytest.raises(CdiNameError, match=why):
        names.parse_qualified_name(device)


def test_split_device_is_lenient_and_only_recognises_the_shape():
    assert names.split_device("nvidia.com/gpu=0") == ("nvidia.com", "gpu", "0")
    assert names.split_device("1bad/gpu=x*") == ("1bad", "gpu", "x*")
    assert names.split_device("nvidia.com/gpu=a=b") == ("nvidia.com", "gpu", "a=b")
    assert names.split_device("nvidia.com/gpu/x=0") == ("nvidia.com", "gpu/x", "0")
    for unqualified in ("", "0", "/dev/x=y/z", "gpu=0", "v/c=", "=x"):
        assert names.split_device(unqualified) == ("", "", unqualified)


@pytest.mark.parametrize("part", ["", "9x", "-x", "x-", "x.", "x_", "x:y", "x/y", "x=y", "x y", "é"])
def test_vendor_and_class_validators_refuse(part):
    with pytest.raises(CdiNameError, match="invalid vendor"):
        names.validate_vendor(part)
    with pytest.raises(CdiNameError, match="invalid class"):
        names.validate_class(part)
    with pytest.raises(CdiNameError):
        names.build_kind(part, "gpu")
    with pytest.raises(CdiNameError):
        names.qualified_name("nvidia.com", part, "0")


@pytest.mark.parametrize("part", ["x", "X", "nvidia.com", "a-b_c.d", "k8s.io", "Z9"])
def test_vendor_and_class_validators_accept(part):
    names.validate_vendor(part)
    names.validate_class(part)
    assert names.parse_kind(names.build_kind(part, part)) == (part, part)


@pytest.mark.parametrize("name", ["0", "a", "all", "0:1", "12:3", "GPU-abc", "a.b_c-d:e"])
def test_device_name_validator_accepts(name):
    names.validate_device_name(name)


@pytest.mark.parametrize("name", ["", ":", "-", ".0", "0.", "0_", "a=b", "a/b", "a b", "a,b", "a\n"])
def test_device_name_validator_refuses(name):
    with pytest.raises(CdiNameError, match="invalid device name"):
        names.validate_device_name(name)


@pytest.mark.parametrize("kind", ["nvidia.com", "nvidia.com/", "/gpu", "nvidia.com/gpu/x", "1x/gpu", "x/gpu="])
def test_parse_kind_refuses(kind):
    with pytest.raises(CdiNameError):
        names.parse_kind(kind)


@pytest.mark.parametrize(
    "key",
    ["nvc/driver-version", "nvc/driver-root", "cdi.k8s.io/device", "nvidia.com/gpu.product", "plain", "A_b.C-9",
     "Example.COM/Name", "x" * 63, "a/" + "b" * 63, ".".join(["a" * 63] * 3) + "/x"],
)  # fmt: skip
def test_annotation_keys_accepted(key):
    names.validate_annotation_key(key)


@pytest.mark.parametrize(
    "key, why",
    [
        ("", "empty name"),
        ("nvc/", "empty name"),
        ("/x", "prefix"),
        ("a/b/c", "at most one"),
        ("nvc_x/driver", "prefix"),
        ("-nvc/driver", "prefix"),
        ("nvc-/driver", "prefix"),
        ("nvc..io/driver", "prefix"),
        ("nvc/-driver", "name must"),
        ("nvc/driver.", "name must"),
        ("nvc/driver version", "name must"),
        ("nvc/driver:version", "name must"),
        ("x" * 64, "longer than 63"),
        ("a" * 64 + ".io/x", "prefix"),
        (".".join(["a" * 63] * 4) + "/x", "prefix"),
    ],
)  # fmt: skip
def test_annotation_keys_refused(key, why):
    with pytest.raises(CdiNameError, match=why):
        names.validate_annotation_key(key)


def test_annotations_total_size_and_value_types():
    names.validate_annotations({"nvc/driver-version": "535.309.01", "nvc/driver-root": "/"})
    names.validate_annotations({"k": "v" * (names.ANNOTATIONS_TOTAL_MAX - 1)})
    with pytest.raises(CdiNameError, match="limit"):
        names.validate_annotations({"k": "v" * names.ANNOTATIONS_TOTAL_MAX})
    with pytest.raises(CdiNameError, match="limit"):  # counted in bytes, as the consumers do
        names.validate_annotations({"k": "é" * (names.ANNOTATIONS_TOTAL_MAX // 2)})
    with pytest.raises(CdiNameError, match="strings"):
        names.validate_annotations({"k": 1})  # type: ignore[dict-item]
    with pytest.raises(CdiNameError, match="prefix"):
        names.validate_annotations({"ok": "1", "bad_prefix/x": "2"})


def test_names_module_imports_no_regex_engine():
    """The runtime shim parses names on every container start: no ``re``/``typing``/``enum`` for it."""
    import subprocess
    import sys
    from pathlib import Path

    repo = str(Path(__file__).resolve().parent.parent)
    code = (f"import sys; sys.path.insert(0, {repo!r}); import nvc.emit.cdi.names; "
            "print(','.join(m for m in ('re', 'typing', 'enum') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
