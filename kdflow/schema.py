"""JSON Schema of the run config, for editors (YAML language servers) and other tools.

Generated from the same type hints the strict loader (``kdflow.typed``) checks against, so the two
cannot drift apart. ``distill.options`` is typed ``Any`` in ``DistillConfig`` and resolved to the
chosen method's ``Options`` dataclass at load time; the schema says the same with one
``if``/``then`` per registered method, discovered at run time.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys

from kdflow.typed import json_schema


def _method_description(cls: type) -> str | None:
    doc = cls.__dict__.get("__doc__") or getattr(sys.modules.get(cls.__module__), "__doc__", None)
    return inspect.cleandoc(doc).split("\n\n")[0].replace("\n", " ") if doc else None


def config_schema() -> dict:
    """JSON Schema (draft 2020-12) of ``kdflow.config.Config``, ``distill.options`` by method."""
    from kdflow.config import Config, DistillConfig
    from kdflow.distillers import get_distiller_class, list_distillers

    schema = json_schema(Config)
    distill = schema["properties"]["distill"]
    methods = list_distillers()
    default_method = next(f.default for f in dataclasses.fields(DistillConfig) if f.name == "method")

    method = distill["properties"]["method"]
    method["enum"] = methods
    method.setdefault("description", f"distillation method (kdflow methods lists them); default {default_method}")
    options = distill["properties"]["options"]
    options.pop("default", None)  # null: the method's defaults, which the per-method schema carries
    options["description"] = "options of the chosen method (distill.method); their defaults when absent"

    subs = {}
    for name in methods:
        cls = get_distiller_class(name)
        sub = json_schema(cls.Options)
        sub.pop("$schema")
        sub["title"] = f"{name} options"
        description = _method_description(cls)
        if description:
            sub["description"] = description
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
        sub = subs[name]
        # "properties" constrains only keys that are present: a config without distill.method
        # satisfies {"properties": {"method": {"const": m}}} for every m. Only the default method
        # may match that way (the loader uses it then); every other method must be named.
        condition: dict = {"properties": {"method": {"const": name}}}
        if name != default_method:
            condition["required"] = ["method"]
        branches.append({"if": condition, "then": {"properties": {"options": sub}}})
    distill["allOf"] = branches
    distill.pop("default", None)  # would repeat the default method's options; each key has its own
    return schema
