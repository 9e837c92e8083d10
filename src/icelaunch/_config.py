"""Configurable: record construction arguments now, build the real object on ``freeze()``.

A configurable class is any subclass of :class:`Configurable` whose
``__freeze__(self, ...)`` signature defines its arguments. ``@configurable``
and :func:`make_configurable` derive such a subclass from an ordinary class,
using its ``__init__`` as ``__freeze__``; the original class is never modified.

>>> @configurable
... class AClass:
...     def __init__(self, a, b, c, d):
...         self.a, self.b, self.c, self.d = a, b, c, d
>>> i = AClass(b=0)
>>> i[0] = 2
>>> i["b"] = 1
>>> _ = i.update({"c": 3, "d": 4})
>>> _ = i.update(d=5)
>>> i
AClass(a=2, b=1, c=3, d=5)
>>> i.freeze() is i
True
>>> (i.a, i.b, i.d)
(2, 1, 5)
"""

from __future__ import annotations

import copy
import enum
import inspect
import sys
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from icelaunch._errors import FrozenError, NotFrozenError

_C = TypeVar("_C", bound="Configurable")
_T = TypeVar("_T")

_ARGS = "_cfg_args"
_STATE = "_cfg_state"
_NAMED = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class _State(enum.Enum):
    RECORDED = "recorded"
    BUILDING = "building"
    FROZEN = "frozen"


_SIGNATURES: dict[type, inspect.Signature] = {}


def _signature(cls: type) -> inspect.Signature:
    """The argument signature of ``cls.__freeze__`` without ``self`` (cached per class)."""
    if cls not in _SIGNATURES:
        params = list(inspect.signature(cls.__freeze__).parameters.values())  # type: ignore[attr-defined]
        _SIGNATURES[cls] = inspect.Signature(params[1:])
    return _SIGNATURES[cls]


def _var_keyword(sig: inspect.Signature) -> str | None:
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return p.name
    return None


class Configurable:
    """Base class of configurable objects: arguments first, the real object on ``freeze()``.

    Subclasses define ``__freeze__(self, ...)``; its signature is the argument
    list, and calling it on ``freeze()`` builds the object in place.
    """

    __configurable_base__: ClassVar[type | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        sig = _signature(type(self))
        try:
            bound = sig.bind_partial(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(
                f"{type(self).__name__}(...): {exc}; valid arguments: {_valid_names(sig)}"
            ) from None
        object.__setattr__(self, _ARGS, dict(bound.arguments))
        object.__setattr__(self, _STATE, _State.RECORDED)

    def __freeze__(self) -> None:
        """Build the real object from the recorded arguments (overridden by subclasses)."""

    # -- state ------------------------------------------------------------------

    def freeze(self: _C) -> _C:
        """Build the real object in place (once) and return ``self``.

        Configurable arguments are frozen first. Freezing again does nothing.

        Raises:
            TypeError: a required argument was never given.
        """
        if _is_frozen(self):
            return self
        sig = _signature(type(self))
        ordered = {n: self._cfg_args[n] for n in sig.parameters if n in self._cfg_args}
        ordered = {n: freeze(v) for n, v in ordered.items()}
        partial = inspect.BoundArguments(sig, ordered)  # type: ignore[arg-type]
        try:
            bound = sig.bind(*partial.args, **partial.kwargs)
        except TypeError as exc:
            raise TypeError(f"cannot freeze {self!r}: {exc}") from None
        object.__setattr__(self, _STATE, _State.BUILDING)
        try:
            self.__freeze__(*bound.args, **bound.kwargs)
        except BaseException:
            object.__setattr__(self, _STATE, _State.RECORDED)
            raise
        object.__setattr__(self, _ARGS, ordered)
        object.__setattr__(self, _STATE, _State.FROZEN)
        return self

    def clone(self: _C, deepcopy: bool = True) -> _C:
        """Return an unfrozen, independent copy with the same arguments.

        Args:
            deepcopy: deep-copy the arguments (configurable ones are cloned).
        """
        cls = type(self)
        new = cls.__new__(cls)
        args = {n: clone(v, deepcopy) for n, v in self._cfg_args.items()}
        object.__setattr__(new, _ARGS, args)
        object.__setattr__(new, _STATE, _State.RECORDED)
        return new

    # -- arguments --------------------------------------------------------------

    def __getitem__(self, key: str | int) -> Any:
        real = _next_method(self, "__getitem__")
        if real is not None and not _is_recording(self):
            return real(key)
        sig = _signature(type(self))
        name = _resolve_key(self, sig, key)
        if name in self._cfg_args:
            return self._cfg_args[name]
        varkw = _var_keyword(sig)
        if varkw is not None and name in self._cfg_args.get(varkw, {}):
            return self._cfg_args[varkw][name]
        param = sig.parameters.get(name)
        if param is not None and param.default is not inspect.Parameter.empty:
            return param.default
        raise KeyError(f"{type(self).__name__}: argument {name!r} has not been given")

    def __setitem__(self, key: str | int, value: Any) -> None:
        real = _next_method(self, "__setitem__")
        if real is not None and not _is_recording(self):
            real(key, value)
            return
        self._check_editable(f"[{key!r}] = ...")
        sig = _signature(type(self))
        name = _resolve_key(self, sig, key)
        varkw = _var_keyword(sig)
        if name in sig.parameters or varkw is None:
            self._cfg_args[name] = value
        else:
            self._cfg_args.setdefault(varkw, {})[name] = value

    def update(self, *mapping: Mapping[str, Any], **kwargs: Any) -> Any:
        """Change several arguments by name: ``update({"a": 1})`` or ``update(a=1)``.

        Once built, a class's own ``update`` (e.g. ``nn.ModuleDict.update``) is used.
        """
        real = _next_method(self, "update")
        if real is not None and not _is_recording(self):
            return real(*mapping, **kwargs)
        self._check_editable("update(...)")
        for m in mapping:
            for key, value in dict(m).items():
                self[key] = value
        for key, value in kwargs.items():
            self[key] = value
        return self

    def _check_editable(self, what: str) -> None:
        if _is_frozen(self):
            name = type(self).__name__
            raise FrozenError(
                f"{name} is frozen: its arguments can no longer change ({what}). "
                f"Use clone() for an editable copy, e.g. `cfg = obj.clone(); cfg['x'] = 1`."
            )

    # -- Python protocol --------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        state = self.__dict__.get(_STATE)
        if state is _State.RECORDED and not _is_dunder(name):
            raise NotFrozenError(
                f"{type(self).__name__} is not frozen yet, so {name!r} does not exist: "
                f"call .freeze() first, e.g. `obj = {type(self).__name__}(...).freeze()`"
            )
        real = _next_method(self, "__getattr__")
        if real is not None and state is not None:
            return real(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        real = _next_method(self, "__repr__")
        if real is not None and _is_frozen(self):
            return str(real())
        return _construction_repr(self)

    def __reduce_ex__(self, protocol: Any) -> Any:
        reduced = super().__reduce_ex__(protocol)
        cls = type(self)
        if _importable(cls) or cls.__configurable_base__ is None:
            return reduced
        state = reduced[2] if isinstance(reduced, tuple) and len(reduced) > 2 else None
        return (_new_configurable, (cls.__configurable_base__,), state)


def _is_frozen(obj: Configurable) -> bool:
    return obj.__dict__.get(_STATE) is _State.FROZEN


def _is_recording(obj: Configurable) -> bool:
    return obj.__dict__.get(_STATE) is _State.RECORDED


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def _next_method(obj: Configurable, name: str) -> Any:
    """The bound method ``name`` of the first class after Configurable in the MRO, if any."""
    mro = type(obj).__mro__
    for klass in mro[mro.index(Configurable) + 1 :]:
        if klass is object:
            return None
        if name in klass.__dict__:
            return klass.__dict__[name].__get__(obj, type(obj))
    return None


def _valid_names(sig: inspect.Signature) -> str:
    names = [p.name for p in sig.parameters.values() if p.kind in _NAMED]
    names += [p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    return ", ".join(names) if names else "(none)"


def _resolve_key(obj: Configurable, sig: inspect.Signature, key: str | int) -> str:
    """Map a positional index or a name to an argument name, or raise TypeError."""
    cls = type(obj).__name__
    if isinstance(key, int) and not isinstance(key, bool):
        named = [p.name for p in sig.parameters.values() if p.kind in _NAMED]
        if not -len(named) <= key < len(named):
            raise IndexError(
                f"{cls}: argument index {key} is out of range; it takes {len(named)} "
                f"positional argument(s): {', '.join(named) or '(none)'}"
            )
        return named[key]
    if not isinstance(key, str):
        raise TypeError(f"{cls}: arguments are addressed by name or position, not {key!r}")
    param = sig.parameters.get(key)
    if param is not None and param.kind in (*_NAMED, inspect.Parameter.KEYWORD_ONLY):
        return key
    if param is None and _var_keyword(sig) is not None:
        return key
    raise TypeError(f"{cls} has no argument {key!r}; valid arguments: {_valid_names(sig)}")


def _construction_repr(obj: Configurable) -> str:
    """``Name(a=1, b=2)``: a legal construction statement for the recorded arguments."""
    sig = _signature(type(obj))
    args = obj.__dict__.get(_ARGS, {})
    params = [p for p in sig.parameters.values() if p.name in args]
    has_varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    parts: list[str] = []
    gap = False  # a positional-only argument was skipped: later ones cannot be positional
    for p in sig.parameters.values():
        if p.name not in args:
            gap = gap or p.kind is inspect.Parameter.POSITIONAL_ONLY
            continue
        value = args[p.name]
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            parts += [repr(v) for v in value]
        elif p.kind is inspect.Parameter.VAR_KEYWORD:
            parts += [f"{k}={v!r}" for k, v in value.items()]
        elif (p.kind is inspect.Parameter.POSITIONAL_ONLY and not gap) or (
            has_varargs and p.kind in _NAMED
        ):
            parts.append(repr(value))
        else:
            parts.append(f"{p.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"


def _importable(cls: type) -> bool:
    """Whether pickle can find ``cls`` by its module and qualified name."""
    target: Any = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        target = getattr(target, part, None)
    return target is cls


def _new_configurable(base: type) -> Configurable:
    cls = make_configurable(base)
    return cls.__new__(cls)  # type: ignore[no-any-return]


_DERIVED: dict[type, type] = {}


def configurable(cls: type[_T]) -> type[_T]:
    """Class decorator: construction records arguments; ``freeze()`` runs ``__init__``.

    The result is a subclass of ``cls`` and :class:`Configurable` that keeps the
    name of ``cls``; applying it to a configurable class returns it unchanged.
    """
    if is_configurable(cls):
        return cls
    if cls not in _DERIVED:
        namespace = {
            "__freeze__": cls.__init__,
            "__configurable_base__": cls,
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
        }
        metaclass: Any = type(cls)
        _DERIVED[cls] = metaclass(cls.__name__, (Configurable, cls), namespace)
    return _DERIVED[cls]


def make_configurable(*classes: type) -> Any:
    """Configurable versions of existing classes (e.g. ``torch.nn.Linear``).

    Returns one class for one argument, else a tuple, in order. The same class
    always gives the same configurable class; the originals are not modified.
    """
    made: tuple[type, ...] = tuple(configurable(c) for c in classes)
    return made[0] if len(made) == 1 else made


def is_configurable(obj: Any) -> bool:
    """Whether ``obj`` is a configurable class or an instance of one."""
    if isinstance(obj, type):
        return issubclass(obj, Configurable)
    return isinstance(obj, Configurable)


def frozen(obj: Any) -> bool:
    """Whether ``obj`` is built: a frozen configurable, or a container of built objects.

    Objects that are not configurable count as built.
    """
    if isinstance(obj, Configurable):
        return _is_frozen(obj)
    if isinstance(obj, (list, tuple)):
        return all(frozen(v) for v in obj)
    if isinstance(obj, dict):
        return all(frozen(v) for v in obj.values())
    return True


def freeze(obj: _T) -> _T:
    """Freeze ``obj`` in place, recursing into lists, tuples and dicts; returns ``obj``."""
    if isinstance(obj, Configurable):
        obj.freeze()
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            freeze(v)
    elif isinstance(obj, dict):
        for v in obj.values():
            freeze(v)
    return obj


def clone(obj: _T, deepcopy: bool = True) -> _T:
    """Unfrozen copy of ``obj``, recursing into lists, tuples and dicts.

    Args:
        deepcopy: deep-copy values that are not configurable; otherwise share them.
    """
    if isinstance(obj, Configurable):
        return obj.clone(deepcopy)  # type: ignore[return-value]
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(clone(v, deepcopy) for v in obj))  # type: ignore[return-value]
    if isinstance(obj, (list, tuple)):
        items = [clone(v, deepcopy) for v in obj]
        if type(obj) in (list, tuple):
            return type(obj)(items)  # type: ignore[return-value]
        new_seq = copy.copy(obj)
        if isinstance(new_seq, list):
            new_seq[:] = items
        return new_seq  # type: ignore[return-value]
    if isinstance(obj, dict):
        new_map = copy.copy(obj)  # keeps the dict subclass and its extras (default_factory)
        for k, v in obj.items():
            new_map[k] = clone(v, deepcopy)
        return new_map
    return copy.deepcopy(obj) if deepcopy else obj
