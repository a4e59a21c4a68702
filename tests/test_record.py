"""nvc.record, the exec-free dataclass stand-in, and the hook path staying free of ``dataclasses``."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest

from nvc.record import FrozenInstanceError, asdict, field, fields, is_record, record, replace

REPO = Path(__file__).resolve().parent.parent


@record(frozen=True)
class Point:
    x: int
    y: int = 0
    tags: tuple[str, ...] = field(default_factory=tuple)


@record(frozen=True, slots=True)
class Slotted:
    name: str
    value: int = 1


@record
class Mutable:
    items: list[int] = field(default_factory=list)
    secret: str = field(default="", repr=False)
    KIND: ClassVar[str] = "mutable"


@record(frozen=True)
class Checked:
    low: int
    high: int

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError("low > high")


@record(frozen=True)
class Outer:
    point: Point
    many: tuple[Point, ...] = ()
    listed: list[Slotted] = field(default_factory=list)
    table: dict[str, Point] = field(default_factory=dict)


def test_positional_keyword_and_defaults():
    assert Point(1) == Point(x=1) == Point(1, 0, ()) == Point(y=0, x=1)
    assert (Point(1, 2).x, Point(1, 2).y, Point(1, 2).tags) == (1, 2, ())
    assert Slotted("a").value == 1 and Slotted("a", 5).value == 5 and Slotted(value=3, name="b").name == "b"


def test_default_factory_makes_a_fresh_value_each_time():
    a, b = Mutable(), Mutable()
    a.items.append(1)
    assert b.items == [] and a.items == [1]
    assert "items" not in Mutable.__dict__  # a factory field leaves no class attribute behind


def test_argument_errors_match_dataclasses():
    with pytest.raises(TypeError, match=r"missing 1 required positional argument: 'x'"):
        Point()
    with pytest.raises(TypeError, match=r"missing 2 required positional arguments: 'low' and 'high'"):
        Checked()
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'z'"):
        Point(1, z=2)
    with pytest.raises(TypeError, match=r"multiple values for argument 'x'"):
        Point(1, x=2)
    with pytest.raises(TypeError, match=r"takes 4 positional arguments but 5 were given"):
        Point(1, 2, (), 4)


def test_frozen_assignment_and_deletion_raise():
    p = Point(1)
    with pytest.raises(FrozenInstanceError):
        p.x = 2
    with pytest.raises(AttributeError):  # FrozenInstanceError is an AttributeError, as in dataclasses
        del p.y
    with pytest.raises(FrozenInstanceError):
        Slotted("a").value = 3
    with pytest.raises(FrozenInstanceError):
        p.new_attribute = 1
    m = Mutable()
    m.secret = "s"  # not frozen
    assert m.secret == "s"


def test_eq_and_hash():
    assert Point(1, 2) == Point(1, 2) and Point(1, 2) != Point(2, 1)
    assert hash(Point(1, 2, ("a",))) == hash(Point(1, 2, ("a",)))
    assert len({Point(1), Point(1), Point(2)}) == 2
    assert Point(1) != (1, 0, ())  # another class never compares equal

    @record(frozen=True)
    class Other:
        x: int
        y: int = 0
        tags: tuple[str, ...] = ()

    assert Point(1) != Other(1)
    assert Mutable.__hash__ is None  # like dataclasses: eq without frozen makes instances unhashable
    with pytest.raises(TypeError):
        hash(Mutable())


def test_repr_hides_repr_false_fields():
    assert repr(Point(1, 2)) == "Point(x=1, y=2, tags=())"
    assert repr(Slotted("a")) == "Slotted(name='a', value=1)"
    assert repr(Mutable([1], "hidden")) == "Mutable(items=[1])"


def test_classvar_is_not_a_field():
    assert [f.name for f in fields(Mutable)] == ["items", "secret"]
    assert Mutable.KIND == "mutable"


def test_post_init_runs_on_init_and_replace():
    assert Checked(1, 2).high == 2
    with pytest.raises(ValueError):
        Checked(3, 2)
    with pytest.raises(ValueError):
        replace(Checked(1, 2), low=5)


def test_replace():
    p = Point(1, 2, ("a",))
    q = replace(p, y=5)
    assert q == Point(1, 5, ("a",)) and p.y == 2
    assert replace(Slotted("a"), value=9) == Slotted("a", 9)
    with pytest.raises(TypeError):
        replace(p, nope=1)
    with pytest.raises(TypeError):
        replace(object())


def test_asdict_recurses_into_records_and_containers():
    outer = Outer(Point(1), (Point(2, tags=("t",)),), [Slotted("s")], {"k": Point(3)})
    assert asdict(outer) == {
        "point": {"x": 1, "y": 0, "tags": ()},
        "many": ({"x": 2, "y": 0, "tags": ("t",)},),
        "listed": [{"name": "s", "value": 1}],
        "table": {"k": {"x": 3, "y": 0, "tags": ()}},
    }
    assert type(asdict(outer)["many"]) is tuple and type(asdict(outer)["listed"]) is list
    with pytest.raises(TypeError):
        asdict(Point)


def test_fields_is_record_and_match_args():
    assert [f.name for f in fields(Point)] == ["x", "y", "tags"] == [f.name for f in fields(Point(1))]
    assert is_record(Point) and is_record(Point(1)) and not is_record(object()) and not is_record(dict)
    assert Point.__match_args__ == ("x", "y", "tags")
    match Point(4, 5):
        case Point(x, y):
            assert (x, y) == (4, 5)
    with pytest.raises(TypeError):
        fields(object())


def test_slots_copy_and_pickle():
    s = Slotted("a", 2)
    assert not hasattr(s, "__dict__") and Slotted.__slots__ == ("name", "value")
    assert copy.copy(s) == s and copy.deepcopy(s) == s and pickle.loads(pickle.dumps(s)) == s
    p = Point(1, 2, ("x",))
    assert copy.deepcopy(p) == p and pickle.loads(pickle.dumps(p)) == p


def test_class_body_methods_win():
    @record(frozen=True)
    class Custom:
        a: int

        def __repr__(self) -> str:
            return "custom"

    assert repr(Custom(1)) == "custom" and Custom(1) == Custom(1)


def test_definition_errors():
    with pytest.raises(ValueError, match="mutable default"):

        @record
        class BadDefault:
            items: list[int] = []  # noqa: RUF012

    with pytest.raises(TypeError, match="non-default argument"):

        @record
        class BadOrder:
            a: int = 1
            b: int

    with pytest.raises(ValueError):
        field(default=1, default_factory=int)


def test_defining_records_is_cheap(monkeypatch):
    """No generated source: dataclasses ``exec()``s each method's text (~25 ms for 44 classes on the hook's path);
    a record's methods are closures. Counted rather than timed (a timing fails whenever the machine is busy)."""
    import builtins

    calls = []
    for name in ("exec", "compile", "eval"):
        real = getattr(builtins, name)

        def counting(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(builtins, name, counting)
    for _ in range(44):

        @record(frozen=True)
        class Many:
            a: int
            b: str
            c: str = ""
            d: tuple[int, ...] = field(default_factory=tuple)
            e: int = 0

    monkeypatch.undo()
    assert Many(1, "b").e == 0
    assert calls == []


# --- the hook path must not import dataclasses ------------------------------------------------------------------


def _launcher_path() -> list[str]:
    from fixtures.tools import _site_dirs

    return [str(REPO), *_site_dirs()]


HOOK_MODULES = (
    "nvc.commands.hook", "nvc.commands.configure", "nvc.plan.planner", "nvc.apply.cgroups", "nvc.request.container_env",
    "nvc.apply.container_fs",
    "nvc.request.runtime_config", "nvc.host.ldcache", "nvc.host.ldcache.writer", "nvc.apply.ldcache_update",
    "nvc.host.elf", "nvc.host.discovery",
    "nvc.host.inventory", "nvc.host.inventory_cache", "nvc.driver_info", "nvc.request.device_select",
    "nvc.request.options", "nvc.sys.bpf",
)  # fmt: skip


def test_hook_modules_do_not_import_dataclasses():
    code = (f"import sys; sys.path[:0] = {_launcher_path()!r}; import importlib; "
            f"[importlib.import_module(m) for m in {HOOK_MODULES!r}]; "
            "print('dataclasses' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True,
                         timeout=60).stdout  # fmt: skip
    assert out.strip() == "False"
