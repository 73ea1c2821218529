"""The strict loader: plain YAML/JSON data into frozen pydantic models.

Every config-like file kdflow reads (the run config, a method's options, the platform file, a sweep
spec) is a tree of ``Strict`` models: frozen, closed (an unknown key is an error), and strict about
types (a bool is not an int, a string is not a number; an int is accepted where a float is
expected). Data is validated in pydantic's JSON mode because that is what a config is: YAML's
lists become tuples and its mappings nested models, and nothing else is coerced.

pydantic's own error text names its internals ("Input should be a valid integer [type=int_type]");
``from_dict`` turns the first error into a ``ConfigError`` that names the key by its full dotted path,
says what was expected and what was given, and suggests the fix (the closest known key for a typo).
Range checks are the models' own validators, which raise ``ConfigError`` directly.
"""

from __future__ import annotations

import difflib
import json
import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError

from kdflow.util.errors import ConfigError


class Strict(BaseModel):
    """Base of every model loaded from a config file."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> "Strict":
        """``cls`` from plain data (a YAML mapping); ``path`` is where the data sits in its file, for
        error messages (``distill.options``); None is an empty mapping (all defaults)."""
        where = f"section '{path}'" if path else "the top level"
        if data is None:
            data = {}
        if isinstance(data, Strict):
            data = data.to_dict()
        if not isinstance(data, dict):
            raise ConfigError(f"config {where} must be a mapping of keys to values, got {type(data).__name__}",
                              f"write {path or 'the file'!r} as 'key: value' lines")
        try:
            # default=str: YAML reads 2024-01-01 as a date; as text it meets the type check like any string.
            text = json.dumps(data, default=str)
        except (TypeError, ValueError) as exc:  # a mapping with keys JSON cannot hold, or a cycle
            raise ConfigError(f"config {where} is not plain data: {exc}", "write plain YAML mappings, lists and "
                                                                          "scalars") from None
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise _config_error(cls, exc, path) from None

    def to_dict(self) -> dict:
        """Plain data (tuples as lists) that ``from_dict`` reads back to an equal model."""
        return self.model_dump(mode="json")

    def replace(self, **changes: Any) -> "Strict":
        """A copy with ``changes`` applied, validated again like a loaded file."""
        plain = {k: v.to_dict() if isinstance(v, Strict) else v for k, v in changes.items()}
        return type(self).from_dict({**self.to_dict(), **plain})


def type_name(tp: Any) -> str:
    """An annotation in the words of a config error: ``int``, ``list of float``, ``'a' | 'b'``."""
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(tp))
    if get_origin(tp) is tuple:
        return f"list of {type_name(get_args(tp)[0])}"
    if get_origin(tp) is dict or tp is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _model_of(tp: Any) -> type[BaseModel] | None:
    """The model class an annotation holds (``X`` or ``X | None``), else None."""
    for arg in (tp, *get_args(tp)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _walk(cls: type[BaseModel], loc: tuple) -> tuple[list[str], Any, type[BaseModel] | None, type[BaseModel]]:
    """Follow an error's location through the models: (the key's parts, its annotation, the model it
    is a field of, the model the last part was looked up in). Stops at a union member's tag."""
    parts: list[str] = []
    model: type[BaseModel] | None = cls
    owner: type[BaseModel] = cls
    ann: Any = cls
    for step in loc:
        if isinstance(step, int) and parts:
            parts[-1] += f"[{step}]"
            args = get_args(ann)
            ann = args[0] if args else Any
            model = _model_of(ann)
        elif model is not None and step in model.model_fields:
            owner = model
            parts.append(step)
            ann = model.model_fields[step].annotation
            model = _model_of(ann)
        elif model is not None:  # a key the model does not have: extra_forbidden
            owner = model
            parts.append(str(step))
            ann, model = Any, None
        elif get_origin(ann) is dict and isinstance(step, str):
            parts.append(step)
            ann = get_args(ann)[1] if len(get_args(ann)) == 2 else Any
            model = _model_of(ann)
        else:
            break
    return parts, ann, model, owner


def _config_error(cls: type[BaseModel], exc: ValidationError, path: str) -> ConfigError:
    err = exc.errors(include_url=False)[0]
    parts, ann, _model, owner = _walk(cls, err["loc"])
    key = ".".join(([path] if path else []) + parts)
    value = err.get("input")
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = key.rpartition(".")[0]
        known = sorted(owner.model_fields)
        close = difflib.get_close_matches(parts[-1], known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return ConfigError(f"unknown config key '{key}' in {f'{parent}' if parent else 'the top level'}",
                           f"{hint}known keys here: {', '.join(known)}")
    if kind in ("model_type", "model_attributes_type", "dict_type") and (
            _model_of(ann) is not None or get_origin(ann) is dict or ann is dict):
        return ConfigError(f"config section '{key}' must be a mapping of keys to values, got {type(value).__name__}",
                           f"write '{key}' as 'key: value' lines")
    if kind == "literal_error":
        choices = ", ".join(repr(a) for a in get_args(ann)) if get_origin(ann) is Literal else err["msg"]
        return ConfigError(f"config key '{key}' must be one of {choices}, got {value!r}",
                           f"set '{key}' to one of the listed values")
    if kind == "missing":
        return ConfigError(f"config key '{key}' is required", f"set '{key}' (see the defaults: kdflow config)")
    expected = type_name(ann)
    return ConfigError(f"config key '{key}' must be {expected}, got {type(value).__name__} {value!r}",
                       f"set '{key}' to a value of type {expected}")


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
