"""Typed settings: the one place where user values become typed fields.

Every settings object of madbench (the run configuration, a method's hyper-parameters, the
evaluation settings, a schedule's parameters) is read from a mapping of YAML values or
``--set key=value`` strings through :func:`coerce` and :func:`from_mapping`, and every error is a
:class:`ConfigError` whose message names the key (``config key 'method.tau_min' must be > 0,
got -1.0``).

A settings dataclass may define ``checks(self)``, returning ``(field, ok, what)`` triples; they
run after the types are right.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import yaml

S = TypeVar("S")


class ConfigError(ValueError):
    """A bad configuration key or value; the message names the key."""


_BOOLS = {
    "true": True,
    "false": False,
    "1": True,
    "0": False,
    "yes": True,
    "no": False,
    "on": True,
    "off": False,
}
_NONE = ("", "none", "null", "default", "~")


def _type_name(typ: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "finite number", str: "string"}
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        return " or ".join(names.get(t, "none") for t in typing.get_args(typ))
    return names.get(typ, getattr(typ, "__name__", str(typ)))


def _scalar(value: Any) -> Any:
    """A command-line string read as a YAML scalar (``1e-3`` included), else unchanged."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        pass
    try:
        parsed = yaml.safe_load(text) if text else value
    except yaml.YAMLError:
        return value
    return parsed if isinstance(parsed, bool | int | float | type(None)) else value


def _coerce_one(value: Any, typ: Any) -> Any:
    """``value`` as ``typ`` (bool, int, float or str); raises ValueError if it is not one."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLS:
            return _BOOLS[value.strip().lower()]
        raise ValueError
    if typ is int:
        v = _scalar(value)
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError
        return v
    if typ is float:
        v = _scalar(value)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError
        return float(v)
    if typ is str:
        if not isinstance(value, str):
            raise ValueError
        return value
    raise TypeError(f"unsupported settings type {typ!r}")


def coerce(key: str, value: Any, typ: Any) -> Any:
    """``value`` (a YAML value or a command-line string) as type ``typ``, else ConfigError.

    ``typ``: bool, int, float (finite), str, or an optional one (``str | None``: empty,
    ``none``, ``null`` and ``default`` give None). Integral floats are accepted as ints
    (``1e5`` steps); booleans are never numbers.
    """
    args = typing.get_args(typ) if typing.get_origin(typ) in (typing.Union, types.UnionType) else ()
    try:
        if args:
            if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
                return None
            return _coerce_one(value, next(a for a in args if a is not type(None)))
        return _coerce_one(value, typ)
    except ValueError:
        raise ConfigError(
            f"config key {key!r} must be a {_type_name(typ)}, got {value!r}"
        ) from None


def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved type of a settings dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def run_checks(obj: Any, prefix: str = "") -> None:
    """Raise ConfigError for the first failing ``(field, ok, what)`` of ``obj.checks()``."""
    checks: Iterable[tuple[str, bool, str]] = getattr(obj, "checks", lambda: ())()
    for name, ok, what in checks:
        if not ok:
            raise ConfigError(f"config key {prefix + name!r} {what}, got {getattr(obj, name)!r}")


def from_mapping(cls: type[S], data: Mapping[str, Any] | None, prefix: str = "") -> S:
    """An instance of the settings dataclass ``cls``: its defaults, then ``data`` (typed with
    :func:`coerce`), then its checks. Unknown keys are an error naming them and the known ones;
    ``prefix`` (e.g. ``"method."``) is prepended to every key in messages."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config key {prefix.rstrip('.')!r} must be a mapping, got {data!r}")
    hints = field_types(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        known = ", ".join(prefix + k for k in hints) or "(none)"
        raise ConfigError(f"unknown config key {prefix + str(unknown[0])!r}; known keys: {known}")
    values = {k: coerce(prefix + k, v, hints[k]) for k, v in data.items()}
    obj = cls(**values)
    run_checks(obj, prefix)
    return obj
