"""Strict conversion of plain YAML/JSON data into frozen dataclasses.

Unknown keys and wrong types are errors that name the offending key, say what was expected and
suggest the closest known key; nothing is coerced silently except an int where a float is expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from kdflow.errors import ConfigError


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if get_origin(tp) is tuple:
        return f"list of {_type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _fail(path: str, expected: Any, value: Any) -> ConfigError:
    return ConfigError(
        f"config key '{path}' must be {_type_name(expected)}, got {type(value).__name__} {value!r}",
        f"set '{path}' to a value of type {_type_name(expected)}",
    )


def convert(tp: Any, value: Any, path: str) -> Any:
    """Return ``value`` checked against (and converted to) the annotation ``tp``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(
                f"config key '{path}' must be one of {', '.join(repr(a) for a in get_args(tp))}, "
                f"got {value!r}",
                f"set '{path}' to one of the listed values",
            )
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _fail(path, tp, value)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(arg, value, path)
            except ConfigError:
                continue
        raise _fail(path, tp, value)
    if origin is tuple:
        (item_tp, *_rest) = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise _fail(path, tp, value)
        return tuple(convert(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(path, tp, value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(path, tp, value)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(path, tp, value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _fail(path, tp, value)
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise _fail(path, dict, value)
        return dict(value)
    raise TypeError(f"kdflow.typed cannot convert to {tp!r} (at {path})")  # a bug, not user input


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build the frozen dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    where = path or "the top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config section '{where}' must be a mapping of keys to values, got {type(data).__name__}",
            f"write '{where}' as 'key: value' lines",
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            prefix = f"{path}." if path else ""
            raise ConfigError(
                f"unknown config key '{prefix}{key}' in {where}",
                f"{hint}known keys here: {', '.join(sorted(fields))}",
            )
    kwargs = {}
    for name, value in data.items():
        key_path = f"{path}.{name}" if path else name
        kwargs[name] = convert(hints[name], value, key_path)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid config in {where}: {exc}", "see the default config: kdflow config") from exc


def to_dict(obj: Any) -> Any:
    """Plain-data form of a (nested) dataclass: tuples become lists, so it round-trips through YAML."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: the form MLflow params take."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
