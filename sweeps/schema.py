"""Start-up checks of a composed config against a schema declared as data.

A schema is a dataclass whose fields are the config keys of one node, and whose annotations say
what each may hold: ``bool``, ``int``, ``float``, ``str``, ``Literal[...]`` (the allowed values),
``X | None``, ``tuple[X, ...]`` (a list), ``dict[str, X]`` (a mapping of nodes), another schema (a
nested node), each bounded by ``Annotated[X, Limits(...)]`` (aliases below: ``PositiveFloat``, ...).
A union of schemas annotated ``Tagged(key)`` is a config group: the member whose ``Literal`` field
``key`` holds the node's value is its schema (``construction`` by ``construction.name``). A schema
may add relations between its keys as a static ``rules(node)`` that yields ``(key, message)`` for
each one broken.

:func:`check` raises :class:`sweeps.errors.ConfigError` at the first bad key, named in full
(``update.lr: must be a finite number > 0, not nan``). Keys a schema does not declare are left to
the code that reads them, except in a schema with ``closed = True``; a declared key that is absent
keeps the code's default. Floats accept ints (YAML ``1`` for ``1.0``); ints reject floats and bools.
"""

from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import dataclass, fields, is_dataclass
from typing import Annotated, Any, Literal

from omegaconf import DictConfig, ListConfig
from omegaconf.errors import OmegaConfBaseException

from sweeps.errors import ConfigError

__all__ = [
    "Fraction",
    "Limits",
    "NonNegativeFloat",
    "NonNegativeInt",
    "PositiveFloat",
    "PositiveInt",
    "Tagged",
    "check",
]


@dataclass(frozen=True)
class Limits:
    """Bounds of a number (or of each element of a list): ``gt``, ``ge``, ``lt``, ``le``;
    ``finite=False`` admits ±inf (never NaN); ``pattern``: a full-match regular expression for a
    string; ``min_len``: the shortest list."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    finite: bool = True
    pattern: str | None = None
    min_len: int = 0


@dataclass(frozen=True)
class Tagged:
    """A union of schemas told apart by the value of their ``Literal`` field ``key``."""

    key: str


PositiveInt = Annotated[int, Limits(ge=1)]
NonNegativeInt = Annotated[int, Limits(ge=0)]
PositiveFloat = Annotated[float, Limits(gt=0)]
NonNegativeFloat = Annotated[float, Limits(ge=0)]
Fraction = Annotated[float, Limits(ge=0, le=1)]


def check(node: Any, schema: type, key: str = "") -> None:
    """Check ``node`` (a DictConfig) against ``schema``; raise ConfigError naming the full key."""
    if not isinstance(node, DictConfig):
        raise ConfigError(key or "config", f"must be a mapping of settings, not {_shown(node)}")
    hints = typing.get_type_hints(schema, include_extras=True)
    declared = [f.name for f in fields(schema)]
    if getattr(schema, "closed", False):
        for name in node:
            if name not in declared:
                raise ConfigError(_join(key, str(name)), f"is not a setting here; choose from {', '.join(declared)}")
    for name in declared:
        if name in node.keys():  # noqa: SIM118 (``in node`` is False for a missing ??? value)
            _check_value(_read(node, name, key), hints[name], Limits(), _join(key, name))
    for name, message in getattr(schema, "rules", lambda _: ())(node):
        raise ConfigError(_join(key, name), message)


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _read(node: DictConfig, name: str, key: str) -> Any:
    """``node[name]``, resolved; a missing mandatory value (``???``) or a broken interpolation is
    an error of that key."""
    full = _join(key, name)
    try:
        return node[name]
    except OmegaConfBaseException as error:
        if "Missing mandatory value" in str(error):
            raise ConfigError(full, f"is required: set {full}=...") from None
        raise ConfigError(full, f"cannot be resolved: {str(error).splitlines()[0]}") from None


def _shown(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _check_value(value: Any, kind: Any, limits: Limits, key: str, nullable: bool = False) -> None:
    """``value`` against the annotation ``kind`` (unwrapping ``Annotated`` and ``X | None``)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Annotated:
        marks = kind.__metadata__
        tag = next((m for m in marks if isinstance(m, Tagged)), None)
        if tag is not None:
            _check_tagged(value, tag.key, typing.get_args(args[0]), key)
            return
        limits = next((m for m in marks if isinstance(m, Limits)), limits)
        _check_value(value, args[0], limits, key, nullable)
    elif origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        (inner,) = [a for a in args if a is not type(None)]
        _check_value(value, inner, limits, key, nullable=type(None) in args)
    elif isinstance(kind, type) and is_dataclass(kind):
        check(value, kind, key)
    elif origin is Literal:
        if not any(type(value) is type(a) and value == a for a in args):  # True is not 1 here
            choices = ", ".join(map(str, args)) + (" or null" if nullable else "")
            raise ConfigError(key, f"must be one of {choices}, not {value!r}")
    elif origin is tuple:
        if not isinstance(value, (ListConfig, list, tuple)):
            raise ConfigError(key, f"must be a list, not {_shown(value)}")
        if len(value) < limits.min_len:
            raise ConfigError(key, f"must list at least {limits.min_len} value(s)")
        for i, item in enumerate(value):
            _check_value(item, args[0], Limits(), f"{key}[{i}]")
    elif origin is dict:
        if not isinstance(value, DictConfig):
            raise ConfigError(key, f"must be a mapping, not {_shown(value)}")
        for name in value:
            _check_value(_read(value, str(name), key), args[1], Limits(), _join(key, str(name)))
    else:
        _check_scalar(value, kind, limits, key)


def _check_tagged(value: Any, tag: str, schemas: tuple[type, ...], key: str) -> None:
    # a schema's tag is a Literal of one value or several (e.g. the pretrained models' kinds)
    choices = {v: s for s in schemas for v in typing.get_args(typing.get_type_hints(s)[tag])}
    if not isinstance(value, DictConfig):
        raise ConfigError(key, f"must be a mapping of settings, not {_shown(value)}")
    choice = _read(value, tag, key) if tag in value.keys() else None  # noqa: SIM118 (as in check)
    if choice not in choices:
        raise ConfigError(_join(key, tag), f"must be one of {', '.join(choices)}, not {choice!r}")
    check(value, choices[choice], key)


def _check_scalar(value: Any, kind: type, limits: Limits, key: str) -> None:
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, not {_shown(value)}")
        return
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, not {_shown(value)}")
        if limits.pattern is not None and not re.fullmatch(limits.pattern, value):
            raise ConfigError(key, f"must match {limits.pattern}, not {value!r}")
        return
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, not {_shown(value)}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"must be a number, not {_shown(value)}")
        if math.isnan(value) or (limits.finite and math.isinf(value)):
            what = "a finite number" if limits.finite else "a number"
            raise ConfigError(key, f"must be {what}{_bounds(limits)}, not {value}")
    else:
        raise TypeError(f"{key}: schema type {kind!r} is not supported")
    if (
        (limits.gt is not None and value <= limits.gt)
        or (limits.ge is not None and value < limits.ge)
        or (limits.lt is not None and value >= limits.lt)
        or (limits.le is not None and value > limits.le)
    ):
        raise ConfigError(key, f"must be {'a number' if kind is float else 'an integer'}{_bounds(limits)}, not {value}")


def _bounds(limits: Limits) -> str:
    """`` > 0``, `` ≥ 1``, or an interval `` in [0, 1]``."""
    low = ("(", ">", limits.gt) if limits.gt is not None else ("[", "≥", limits.ge) if limits.ge is not None else None
    high = (")", "<", limits.lt) if limits.lt is not None else ("]", "≤", limits.le) if limits.le is not None else None
    if low and high:
        return f" in {low[0]}{low[2]:g}, {high[2]:g}{high[0]}"
    return "".join(f" {sign} {bound:g}" for _, sign, bound in filter(None, (low, high)))
