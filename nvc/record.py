"""A small, import-free stand-in for the part of :mod:`dataclasses` nvc uses.

Every container start runs our OCI hook, and under ``python -I -S`` ``import dataclasses`` costs about as much as
the rest of the hook's imports (it pulls ``inspect``, ``ast``, ``dis``, ``tokenize``, ``copy``...), and every
``@dataclass`` then ``exec()``s generated source for each method. ``@record`` reads the same class body (string
annotations in order, class attributes as defaults, :func:`field` for factories) and installs shared, pre-written
methods instead, so decorating a class costs microseconds and importing this module costs nothing.

Supported: ``@record``, ``@record(frozen=True, slots=True, eq=..., repr=...)``; ``field(default=, default_factory=,
repr=, compare=, hash=)``; ``__post_init__``; ``ClassVar`` annotations are skipped; fields are inherited from record
base classes. The generated methods behave like dataclasses' (same argument errors, ``__hash__`` rules and
``FrozenInstanceError``); :func:`replace`, :func:`asdict`, :func:`fields` and :func:`is_record` mirror
``dataclasses.replace/asdict/fields/is_dataclass``. Not supported: ``order``, ``init=False`` fields, ``kw_only``,
``InitVar``.
"""

from __future__ import annotations

try:  # the C implementation behind operator.attrgetter, without operator.py's own start-up cost
    from _operator import attrgetter as _attrgetter
except ImportError:  # another interpreter
    from operator import attrgetter as _attrgetter

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing would cost more than this whole module
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    _T = TypeVar("_T")

__all__ = ["MISSING", "Field", "FrozenInstanceError", "asdict", "field", "fields", "is_record", "record", "replace"]


class _MissingType:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _MissingType()


class FrozenInstanceError(AttributeError):
    """Assigning to or deleting a field of a frozen record (like ``dataclasses.FrozenInstanceError``)."""


class Field:
    """One field: what :func:`field` returns in a class body and what :func:`fields` lists."""

    __slots__ = ("compare", "default", "default_factory", "hash", "name", "repr")

    def __init__(self, default: Any = MISSING, default_factory: Any = MISSING, repr: bool = True,
                 hash: bool | None = None, compare: bool = True) -> None:  # fmt: skip
        if default is not MISSING and default_factory is not MISSING:
            raise ValueError("cannot specify both default and default_factory")
        self.name = ""
        self.default = default
        self.default_factory = default_factory
        self.repr = repr
        self.hash = hash
        self.compare = compare

    def __repr__(self) -> str:
        return (f"Field(name={self.name!r}, default={self.default!r}, default_factory={self.default_factory!r}, "
                f"repr={self.repr!r}, hash={self.hash!r}, compare={self.compare!r})")  # fmt: skip


def field(*, default: Any = MISSING, default_factory: Callable[[], Any] | Any = MISSING, repr: bool = True,
          hash: bool | None = None, compare: bool = True) -> Any:  # fmt: skip
    """A field with options, for a class body: ``items: tuple[str, ...] = field(default_factory=tuple)``."""
    return Field(default, default_factory, repr, hash, compare)


def _is_classvar(annotation: object) -> bool:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    # the substring test first: every record class is decorated at import, on each container start
    return "ClassVar" in text and text.strip().startswith(("ClassVar", "typing.ClassVar"))


def _collect(cls: type) -> list[Field]:
    """The class's fields, bases' first (like dataclasses), with defaults taken off the class where needed."""
    by_name: dict[str, Field] = {}
    mro = cls.__mro__
    if len(mro) > 2:  # (cls, object) needs no look at the bases
        for base in reversed(mro[1:]):
            for item in base.__dict__.get("__record_fields__", ()):
                by_name[item.name] = item
    namespace = cls.__dict__
    for name, annotation in namespace.get("__annotations__", {}).items():
        if _is_classvar(annotation):
            continue
        value = namespace.get(name, MISSING)
        if isinstance(value, Field):
            item = value
            if item.default is MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, item.default)
        else:
            item = Field(value)
        item.name = name
        if item.default is not MISSING and item.default.__class__.__hash__ is None:
            raise ValueError(
                f"mutable default {type(item.default)} for field {name} is not allowed: use default_factory"
            )
        by_name[name] = item
    items = list(by_name.values())
    seen_default = False
    for item in items:
        has_default = item.default is not MISSING or item.default_factory is not MISSING
        if not has_default and seen_default:
            raise TypeError(f"non-default argument {item.name!r} follows default argument")
        seen_default = seen_default or has_default
    return items


def _plural(names: list[str]) -> str:
    quoted = [repr(name) for name in names]
    if len(quoted) == 1:
        return quoted[0]
    if len(quoted) == 2:
        return f"{quoted[0]} and {quoted[1]}"
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}"


def _make_init(cls: type, items: list[Field], slots: bool, post_init: bool) -> Callable[..., None]:
    names = tuple(item.name for item in items)
    count = len(names)
    # (name, default, factory) for each field, in order; defaults are filled from here when not passed.
    specs = tuple((item.name, item.default, item.default_factory) for item in items)
    qualname = cls.__qualname__
    if slots:
        setters = tuple(getattr(cls, name).__set__ for name in names)

        def store(self: object, values: tuple[Any, ...] | list[Any]) -> None:
            for setter, value in zip(setters, values, strict=True):
                setter(self, value)

    else:

        def store(self: object, values: tuple[Any, ...] | list[Any]) -> None:
            self.__dict__.update(zip(names, values, strict=True))

    def complete(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        given = len(args)
        if given > count:
            raise TypeError(f"{qualname}.__init__() takes {count + 1} positional argument"
                            f"{'s' if count else ''} but {given + 1} were given")  # fmt: skip
        values = list(args)
        missing = []
        for name, default, factory in specs[given:]:
            if name in kwargs:
                values.append(kwargs.pop(name))
            elif default is not MISSING:
                values.append(default)
            elif factory is not MISSING:
                values.append(factory())
            else:
                missing.append(name)
        for name in kwargs:
            if name in names:
                raise TypeError(f"{qualname}.__init__() got multiple values for argument {name!r}")
            raise TypeError(f"{qualname}.__init__() got an unexpected keyword argument {name!r}")
        if missing:
            raise TypeError(f"{qualname}.__init__() missing {len(missing)} required positional argument"
                            f"{'s' if len(missing) > 1 else ''}: {_plural(missing)}")  # fmt: skip
        return values

    if post_init:

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            store(self, args if not kwargs and len(args) == count else complete(args, kwargs))
            self.__post_init__()

    else:

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            store(self, args if not kwargs and len(args) == count else complete(args, kwargs))

    __init__.__qualname__ = f"{qualname}.__init__"
    return __init__


def _getter(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """A fast ``lambda obj: tuple(getattr(obj, name) for name in names)``."""
    if not names:
        return lambda obj: ()
    if len(names) == 1:
        single = _attrgetter(names[0])
        return lambda obj: (single(obj),)
    return _attrgetter(*names)


def _frozen_setattr(self: object, name: str, value: object) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: object, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def _slots_class(cls: type, names: tuple[str, ...]) -> type:
    """``cls`` recreated with ``__slots__`` for its own fields (what ``dataclass(slots=True)`` does)."""
    namespace = dict(cls.__dict__)
    inherited = {name for base in cls.__mro__[1:-1] for name in base.__dict__.get("__slots__", ())}
    own = tuple(name for name in names if name not in inherited)
    for name in own:
        namespace.pop(name, None)
    namespace.pop("__dict__", None)
    namespace.pop("__weakref__", None)
    namespace["__slots__"] = own
    new = type(cls)(cls.__name__, cls.__bases__, namespace)
    new.__qualname__ = cls.__qualname__
    return new


def _install(cls: type, frozen: bool, slots: bool, eq: bool, repr: bool) -> type:
    items = _collect(cls)
    names = tuple([item.name for item in items])
    if slots:
        if "__slots__" in cls.__dict__:
            raise TypeError(f"{cls.__name__} already specifies __slots__")
        cls = _slots_class(cls, names)
    own = cls.__dict__
    qualname = cls.__qualname__

    def put(name: str, value: object) -> None:  # like dataclasses: never replace what the class body defines
        if name not in own:
            value.__qualname__ = f"{qualname}.{name}"  # type: ignore[attr-defined]
            setattr(cls, name, value)

    cls.__record_fields__ = tuple(items)  # type: ignore[attr-defined]
    cls.__record_params__ = (frozen, slots, eq, repr)  # type: ignore[attr-defined]
    cls.__match_args__ = names  # type: ignore[attr-defined]
    put("__init__", _make_init(cls, items, slots, hasattr(cls, "__post_init__")))
    # One attrgetter for every field list that is all the fields (the usual case): each costs a C object.
    every = _getter(list(names))

    def getter(selected: list[str]) -> Any:
        return every if len(selected) == len(names) else _getter(selected)

    if repr:
        shown = [item.name for item in items if item.repr]
        show = getter(shown)

        def __repr__(self: Any) -> str:
            values = show(self)
            inner = ", ".join(f"{name}={value!r}" for name, value in zip(shown, values, strict=True))
            return f"{self.__class__.__qualname__}({inner})"

        put("__repr__", __repr__)

    if eq:
        compared = [item.name for item in items if item.compare]
        key = getter(compared)

        def __eq__(self: Any, other: Any) -> Any:
            if other.__class__ is self.__class__:
                return key(self) == key(other)
            return NotImplemented

        put("__eq__", __eq__)
        # dataclasses' rule: a __hash__ the body defines is kept (None from a body-defined __eq__ does not count)
        if "__hash__" not in own or (own["__hash__"] is None and "__eq__" in own):
            if frozen:
                hashed = [item.name for item in items if (item.compare if item.hash is None else item.hash)]
                hash_key = getter(hashed)

                def __hash__(self: Any) -> int:
                    return hash(hash_key(self))

                __hash__.__qualname__ = f"{qualname}.__hash__"
                cls.__hash__ = __hash__  # type: ignore[method-assign]
            else:
                cls.__hash__ = None  # type: ignore[assignment]

    if frozen:
        if "__setattr__" in own or "__delattr__" in own:
            raise TypeError(f"cannot overwrite __setattr__/__delattr__ in frozen record {cls.__name__}")
        cls.__setattr__ = _frozen_setattr  # type: ignore[method-assign,assignment]
        cls.__delattr__ = _frozen_delattr  # type: ignore[method-assign,assignment]
        if slots:  # copy/pickle restore slot state through setattr, which frozen forbids
            state = every

            def __getstate__(self: Any) -> tuple[Any, ...]:
                return state(self)

            def __setstate__(self: Any, values: tuple[Any, ...]) -> None:
                for name, value in zip(names, values, strict=True):
                    object.__setattr__(self, name, value)

            put("__getstate__", __getstate__)
            put("__setstate__", __setstate__)
    return cls


def record(cls: type[_T] | None = None, /, *, frozen: bool = False, slots: bool = False, eq: bool = True,
           repr: bool = True) -> Any:  # fmt: skip
    """Class decorator: ``@record`` or ``@record(frozen=True, slots=True)``; see the module docstring."""
    if cls is None:
        return lambda klass: _install(klass, frozen, slots, eq, repr)
    return _install(cls, frozen, slots, eq, repr)


def is_record(obj: object) -> bool:
    """True for a record class or instance (like ``dataclasses.is_dataclass``)."""
    cls = obj if isinstance(obj, type) else type(obj)
    return hasattr(cls, "__record_fields__")


def fields(obj: object) -> tuple[Field, ...]:
    """The fields of a record class or instance, in order; TypeError for anything else."""
    try:
        return (obj if isinstance(obj, type) else type(obj)).__record_fields__  # type: ignore[attr-defined]
    except AttributeError:
        raise TypeError("must be called with a record type or instance") from None


def replace(obj: _T, /, **changes: Any) -> _T:
    """A copy of record ``obj`` with ``changes`` applied, built through ``__init__`` (so ``__post_init__`` runs)."""
    cls = type(obj)
    try:
        items = cls.__record_fields__  # type: ignore[attr-defined]
    except AttributeError:
        raise TypeError("replace() should be called on record instances") from None
    for item in items:
        if item.name not in changes:
            changes[item.name] = getattr(obj, item.name)
    return cls(**changes)


def asdict(obj: object, *, dict_factory: Callable[[list[tuple[str, Any]]], Any] = dict) -> Any:
    """A record as a dict, recursing into records, lists, tuples (named ones too) and dicts like
    ``dataclasses.asdict``; other values are returned as they are (not deep-copied)."""
    if not is_record(obj) or isinstance(obj, type):
        raise TypeError("asdict() should be called on record instances")
    return _asdict(obj, dict_factory)


def _asdict(obj: Any, dict_factory: Callable[[list[tuple[str, Any]]], Any]) -> Any:
    cls = type(obj)
    items = getattr(cls, "__record_fields__", None)
    if items is not None:
        return dict_factory([(item.name, _asdict(getattr(obj, item.name), dict_factory)) for item in items])
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return cls(*[_asdict(value, dict_factory) for value in obj])
    if isinstance(obj, (list, tuple)):
        return cls(_asdict(value, dict_factory) for value in obj)
    if isinstance(obj, dict):
        return cls((_asdict(key, dict_factory), _asdict(value, dict_factory)) for key, value in obj.items())
    return obj
