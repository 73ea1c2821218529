"""JSON Schema of the run config, for editors (YAML language servers) and other tools.

pydantic writes it from the same models the loader validates with, so the two cannot drift apart;
this module only reshapes it for people: every section inline (no ``$ref``), no generated titles
on fields, and ``distill.options`` spelt out per method. ``distill.options`` is one field whose type
depends on ``distill.method``; the schema says so with one ``if``/``then`` per registered method.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import GenerateJsonSchema

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _inline(node: Any, defs: dict) -> Any:
    """``node`` with every ``$ref`` replaced by its definition and field titles dropped."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            return _inline({**target, **{k: v for k, v in node.items() if k != "$ref"}}, defs)
        out = {k: _inline(v, defs) for k, v in node.items() if k not in ("$defs",)}
        if "properties" in out:
            for prop in out["properties"].values():
                prop.pop("title", None)
        return out
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def model_schema(model: type) -> dict:
    """JSON Schema (draft 2020-12) of a ``Strict`` model, every nested model inline, objects closed."""
    raw = model.model_json_schema(schema_generator=GenerateJsonSchema, mode="validation")
    return _inline(raw, raw.get("$defs", {}))


def config_schema() -> dict:
    """JSON Schema of ``kdflow.config.Config``, ``distill.options`` by method."""
    from kdflow.config.methods import DistillConfig, list_methods, method_spec
    from kdflow.config.run import Config

    schema: dict[str, Any] = {"$schema": JSON_SCHEMA_DIALECT, **model_schema(Config)}
    distill = schema["properties"]["distill"]
    methods = list_methods()
    default_method = DistillConfig.model_fields["method"].default
    distill["properties"]["method"]["enum"] = methods
    options = distill["properties"]["options"]
    options.pop("default", None)  # null: the method's defaults, which the per-method schema carries

    subs = {}
    for name in methods:
        spec = method_spec(name)
        sub = model_schema(spec.options)
        sub["title"] = f"{name} options"
        sub["description"] = spec.description
        subs[name] = sub
    # combined's parts: each method's own options under methods.<name>, and only methods it can mix.
    combined = subs.get("combined", {}).get("properties", {})
    if "methods" in combined and "weights" in combined:
        parts = [m for m in methods if m not in ("ce", "combined")]
        combined["methods"]["properties"] = {m: subs[m] for m in parts}
        combined["methods"]["additionalProperties"] = False
        combined["weights"]["propertyNames"] = {"enum": parts}
    branches = []
    for name in methods:
        # "properties" constrains only keys that are present: a config without distill.method
        # satisfies {"properties": {"method": {"const": m}}} for every m. Only the default method
        # may match that way (the loader uses it then); every other method must be named.
        condition: dict = {"properties": {"method": {"const": name}}}
        if name != default_method:
            condition["required"] = ["method"]
        branches.append({"if": condition, "then": {"properties": {"options": subs[name]}}})
    distill["allOf"] = branches
    return schema
