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


# --- JSON Schema, generated from the same type hints the loader checks against -------------------

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _field_comments(cls: type) -> dict[str, str]:
    """Field name -> its comment in the class source: the trailing ``# comment`` on the field's line,
    else the block of whole-line comments right above it. Empty when the source is unavailable."""
    import ast
    import inspect
    import io
    import textwrap
    import tokenize

    try:
        source = textwrap.dedent(inspect.getsource(cls))
        tree = ast.parse(source)
        comments = {tok.start[0]: (tok.string.lstrip("#").strip(), tok.line.strip().startswith("#"))
                    for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                    if tok.type == tokenize.COMMENT}
    except (OSError, TypeError, SyntaxError, tokenize.TokenError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    out: dict[str, str] = {}
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        trailing = comments.get(node.end_lineno)
        if trailing and not trailing[1]:
            out[node.target.id] = trailing[0]
            continue
        above, line = [], node.lineno - 1
        while line in comments and comments[line][1]:
            above.insert(0, comments[line][0])
            line -= 1
        if above:
            out[node.target.id] = " ".join(above)
    return out


def _class_description(cls: type) -> str | None:
    doc = cls.__dict__.get("__doc__")
    # dataclasses write "Name(field: type = ...)" as the docstring of a class that has none.
    if not doc or doc.startswith(f"{cls.__name__}("):
        return None
    import inspect

    return inspect.cleandoc(doc).split("\n\n")[0].replace("\n", " ")


def _plain_default(f: dataclasses.Field) -> tuple[bool, Any]:
    """(True, default as JSON data) or (False, None) when the field has none that serialises."""
    import json

    try:
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            return False, None
        value = to_dict(value)
        json.dumps(value, allow_nan=False)
    except Exception:  # a default that cannot be built or is not plain data: leave it out
        return False, None
    return True, value


def _type_schema(tp: Any) -> dict:
    """Schema of one annotation; mirrors ``convert`` case by case."""
    origin = get_origin(tp)
    if tp is Any:
        return {}
    if origin is Literal:
        return {"enum": list(get_args(tp))}
    if origin in (Union, types.UnionType):
        options = [_type_schema(a) for a in get_args(tp) if a is not type(None)]
        if type(None) in get_args(tp):
            options.append({"type": "null"})
        return options[0] if len(options) == 1 else {"anyOf": options}
    if origin is tuple:
        # The loader checks every item against the first argument: tuple[float, ...] or not.
        return {"type": "array", "items": _type_schema(get_args(tp)[0])}
    if dataclasses.is_dataclass(tp):
        return _dataclass_schema(tp)
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}  # an int is accepted where a float is expected
    if tp is str:
        return {"type": "string"}
    if tp is dict:
        return {"type": "object"}
    if origin is dict:
        args = get_args(tp)
        return {"type": "object", "additionalProperties": _type_schema(args[1]) if len(args) == 2 else {}}
    raise TypeError(f"kdflow.typed cannot describe {tp!r} in a JSON schema")  # nor can convert() load it


def _dataclass_schema(cls: type) -> dict:
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    properties: dict[str, dict] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        prop = dict(_type_schema(hints[f.name]))
        if f.name in comments:
            prop["description"] = comments[f.name]
        has_default, default = _plain_default(f)
        if has_default:
            prop["default"] = default
        properties[f.name] = prop
    schema: dict[str, Any] = {"type": "object", "title": cls.__name__}
    description = _class_description(cls)
    if description:
        schema["description"] = description
    schema["properties"] = properties
    schema["additionalProperties"] = False
    return schema


def json_schema(cls: type) -> dict:
    """JSON Schema (draft 2020-12) of the dataclass ``cls``, from the type hints ``from_dict`` uses.

    Objects are closed (``additionalProperties: false``), ``Literal`` becomes ``enum``, ``X | None``
    becomes ``anyOf`` with null, tuples become arrays (YAML lists) and ``dict[str, X]`` an object of
    X; defaults are the dataclass defaults as plain data, descriptions the fields' source comments.
    What a schema cannot say stays the loader's job: range checks in ``__post_init__``, and that
    an integral float (``3.0``) is not an int.
    """
    if not dataclasses.is_dataclass(cls) or not isinstance(cls, type):
        raise TypeError(f"json_schema needs a dataclass type, got {cls!r}")
    return {"$schema": JSON_SCHEMA_DIALECT, **_dataclass_schema(cls)}
