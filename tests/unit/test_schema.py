"""The config's JSON Schema: generated from the loader's type hints, and agreeing with the loader."""

import dataclasses
import json
import typing
from typing import Any, Literal

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from kdflow.cli import main
from kdflow.config import Config
from kdflow.distillers import get_distiller_class, list_distillers
from kdflow.errors import ConfigError
from kdflow.schema import config_schema
from kdflow.typed import json_schema


@pytest.fixture(scope="module")
def schema():
    s = config_schema()
    jsonschema.Draft202012Validator.check_schema(s)
    return s


def _valid(schema, data) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(data)


def _loads(text: str) -> bool:
    try:
        Config.from_yaml(text)
    except ConfigError:
        return False
    return True


def _objects(node, path="#"):
    """Every object schema (``type: object``; not ``if``/``then`` fragments), with its JSON pointer."""
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield path, node
        for key, value in node.items():
            yield from _objects(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _objects(value, f"{path}/{i}")


def test_schema_is_json_and_names_every_config_field(schema):
    assert json.loads(json.dumps(schema)) == schema
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["properties"]) == {f.name for f in dataclasses.fields(Config)}
    sections = {name: tp for name, tp in typing.get_type_hints(Config).items() if dataclasses.is_dataclass(tp)}
    assert len(sections) >= 8
    for name, section in sections.items():
        assert set(schema["properties"][name]["properties"]) == {f.name for f in dataclasses.fields(section)}


def test_every_object_is_closed(schema):
    objects = list(_objects(schema))
    assert len(objects) > 10
    for path, node in objects:
        if "properties" in node:  # a dataclass (a dict[str, X] has typed additionalProperties instead)
            assert node.get("additionalProperties") is False, path
        else:
            assert isinstance(node.get("additionalProperties", {}), dict), path
    # Each method's options schema is among them.
    assert sum(p.endswith("/then/properties/options") for p, _ in objects) == len(list_distillers())


def test_defaults_and_comments_come_from_the_dataclasses(schema):
    train = schema["properties"]["train"]["properties"]
    assert train["epochs"] == {"type": "integer", "default": 30}
    assert train["optimizer"]["enum"] == ["sgd", "adamw"]
    assert schema["properties"]["augment"]["properties"]["scale"]["default"] == [0.35, 1.0]
    assert schema["properties"]["augment"]["properties"]["scale"]["type"] == "array"
    assert schema["properties"]["data_uri"]["anyOf"] == [{"type": "string"}, {"type": "null"}]
    assert "warm-up" in train["warmup_epochs"]["description"]
    assert set(schema["properties"]["distill"]["properties"]["method"]["enum"]) == set(list_distillers())


def test_the_default_config_validates(schema):
    assert _valid(schema, Config().to_dict())
    assert _valid(schema, {})
    assert _valid(schema, yaml.safe_load(Config().to_yaml()))


# Methods whose options have no valid defaults (they must name what they use).
REQUIRED_OPTIONS = {
    "hint": {"pairs": [{"teacher": "layer2", "student": "stages.1"}]},
    "combined": {"weights": {"kd": 1.0, "hint": 0.5},
                 "methods": {"hint": {"pairs": [{"teacher": "layer2", "student": "stages.1"}]}}},
}


@pytest.mark.parametrize("method", list_distillers())
def test_each_methods_resolved_config_validates(schema, method):
    cfg = Config.from_dict({"distill": {"method": method, "options": REQUIRED_OPTIONS.get(method, {})}})
    assert _valid(schema, cfg.to_dict())


@pytest.mark.parametrize("text", [
    "trian: {epochs: 3}",  # unknown top-level key
    "train: {epochz: 3}",  # unknown nested key
    "train: {epochs: three}",  # wrong type
    "train: {epochs: true}",  # a bool is not an int
    "train: {optimizer: adam}",  # not one of the Literal's values
    "augment: {scale: 0.5}",  # a tuple is a list
    "augment: {scale: [0.5, x]}",  # ... of numbers
    "data_uri: 3",  # str | None
    "distill: {method: nope}",  # not a registered method
    "distill: {options: {temprature: 2}}",  # the default method's options, misspelt
    "distill: {method: combined, options: {weights: {kd: 1.0}, methods: {kd: {bogus: 1}}}}",  # a part's options
    "distill: {method: combined, options: {weights: {ce: 1.0}}}",  # a method combined cannot mix
    "distill: {method: kd, options: {temperature: hot}}",
])
def test_what_the_loader_rejects_the_schema_rejects(schema, text):
    assert not _loads(text)
    assert not _valid(schema, yaml.safe_load(text))


@pytest.mark.parametrize("text", [
    "train: {lr: 1}",  # an int where a float is expected
    "data_uri: null",
    "teacher: {mean: [0.5, 0.5, 0.5], std: [0.2, 0.2, 0.2]}",
    "distill: {options: {temperature: 2}}",  # no method: the default method's options
    "distill: {method: kd, options: {temperature: 2, alpha: 1}}",
    "distill: {method: ce, options: {}}",
])
def test_what_the_loader_accepts_the_schema_accepts(schema, text):
    assert _loads(text)
    assert _valid(schema, yaml.safe_load(text))


def test_options_of_another_method_are_rejected(schema):
    pairs = 0
    for a in list_distillers():
        own = {f.name for f in dataclasses.fields(get_distiller_class(a).Options)}
        for b in list_distillers():
            foreign = [f for f in dataclasses.fields(get_distiller_class(b).Options)
                       if f.name not in own and f.default is not dataclasses.MISSING]
            for f in foreign[:1]:
                data = {"distill": {"method": a, "options": {f.name: f.default}}}
                assert not _valid(schema, data), (a, b, f.name)
                with pytest.raises(ConfigError):
                    Config.from_dict(data)
                pairs += 1
    assert pairs >= 1  # at least kd's options under ce


def test_json_schema_covers_every_annotation_the_loader_takes():
    @dataclasses.dataclass(frozen=True)
    class Inner:
        x: int = 1

    @dataclasses.dataclass(frozen=True)
    class Loadable:
        a: bool = True
        b: float = 0.5
        c: Literal["p", "q"] | None = None
        d: tuple[str, ...] = ("u",)
        e: dict[str, float] = dataclasses.field(default_factory=dict)
        f: dict = dataclasses.field(default_factory=dict)
        g: Any = float("nan")  # not JSON: no default
        h: Inner = dataclasses.field(default_factory=Inner)
        i: int | str = 0

    @dataclasses.dataclass(frozen=True)
    class Outer(Loadable):
        j: object = dataclasses.field(default_factory=object)

    with pytest.raises(TypeError, match="cannot describe"):
        json_schema(Outer)  # `object` is no annotation the loader can load either

    s = json_schema(Loadable)
    jsonschema.Draft202012Validator.check_schema(s)
    p = s["properties"]
    assert p["a"] == {"type": "boolean", "default": True}
    assert p["c"] == {"anyOf": [{"enum": ["p", "q"]}, {"type": "null"}], "default": None}
    assert p["d"] == {"type": "array", "items": {"type": "string"}, "default": ["u"]}
    assert p["e"] == {"type": "object", "additionalProperties": {"type": "number"}, "default": {}}
    assert p["f"] == {"type": "object", "default": {}}
    assert p["g"] == {"description": "not JSON: no default"}  # Any: no type; a comment describes
    assert p["h"]["properties"] == {"x": {"type": "integer", "default": 1}} and p["h"]["default"] == {"x": 1}
    assert p["i"] == {"anyOf": [{"type": "integer"}, {"type": "string"}], "default": 0}
    assert s["additionalProperties"] is False


def test_cli_prints_the_schema():
    result = CliRunner().invoke(main, ["config", "--schema"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed == config_schema()
    assert "--schema" in CliRunner().invoke(main, ["config", "--help"]).output
