"""The config's JSON Schema: generated from the loader's own models, and agreeing with the loader."""

import json

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from kdflow.cli import main
from kdflow.config import Config, Strict, list_methods, method_spec
from kdflow.config.schema import config_schema
from kdflow.distillers import list_distillers
from kdflow.util.errors import ConfigError


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
    assert set(schema["properties"]) == set(Config.model_fields)
    sections = {name: f.annotation for name, f in Config.model_fields.items()
                if isinstance(f.annotation, type) and issubclass(f.annotation, Strict)}
    assert len(sections) >= 8
    for name, section in sections.items():
        assert set(schema["properties"][name]["properties"]) == set(section.model_fields)


def test_every_object_is_closed(schema):
    objects = list(_objects(schema))
    assert len(objects) > 10
    for path, node in objects:
        if "properties" in node:  # a model (a dict[str, X] has typed additionalProperties instead)
            assert node.get("additionalProperties") is False, path
        else:
            assert isinstance(node.get("additionalProperties", {}), dict), path
    # Each method's options schema is among them.
    assert sum(p.endswith("/then/properties/options") for p, _ in objects) == len(list_distillers())


def test_defaults_and_descriptions_come_from_the_models(schema):
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
    for a in list_methods():
        own = set(method_spec(a).options.model_fields)
        for b in list_methods():
            foreign = [(name, f) for name, f in method_spec(b).options.model_fields.items()
                       if name not in own and not f.is_required() and f.default_factory is None]
            for name, f in foreign[:1]:
                data = {"distill": {"method": a, "options": {name: f.default}}}
                assert not _valid(schema, data), (a, b, name)
                with pytest.raises(ConfigError):
                    Config.from_dict(data)
                pairs += 1
    assert pairs >= 1  # at least kd's options under ce


def test_schema_is_inline_and_describes_what_the_models_describe(schema):
    """Editors show a field's description: each one given in a model reaches the schema, every
    section is written inline (no $ref for a language server to chase) and no field carries
    pydantic's generated title."""
    text = json.dumps(schema)
    assert "$ref" not in text and "$defs" not in text
    described = 0
    for name, section in Config.model_fields.items():
        model = section.annotation
        if not (isinstance(model, type) and issubclass(model, Strict)):
            continue
        props = schema["properties"][name]["properties"]
        for field_name, f in model.model_fields.items():
            assert "title" not in props[field_name], (name, field_name)
            if f.description:
                assert props[field_name]["description"] == f.description
                described += 1
    assert described >= 40
    assert set(list_methods()) == set(list_distillers())  # every configurable method has a distiller


def test_cli_prints_the_schema():
    result = CliRunner().invoke(main, ["config", "--schema"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed == config_schema()
    assert "--schema" in CliRunner().invoke(main, ["config", "--help"]).output
