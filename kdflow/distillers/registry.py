"""Distiller registry: ``@register_distiller`` and one constructor signature for every method."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from kdflow.distillers.base import Distiller
from kdflow.config.methods import method_spec
from kdflow.util.errors import ConfigError

_DISTILLERS: dict[str, type[Distiller]] = {}


def register_distiller(name: str) -> Callable[[type[Distiller]], type[Distiller]]:
    """Class decorator: ``cls`` implements the method ``name`` registered in kdflow.config.methods,
    whose options type, description and traits it takes from there (one place for each)."""

    def wrap(cls: type[Distiller]) -> type[Distiller]:
        if name in _DISTILLERS:
            raise ValueError(f"distiller '{name}' is registered twice")
        spec = method_spec(name)  # a distiller without options in the configuration layer is a bug
        cls.method_name = name
        cls.description = spec.description
        cls.Options = spec.options
        cls.uses_teacher = spec.uses_teacher
        cls.needs_teacher_online = spec.needs_teacher_online
        cls.mixing_options = spec.mixing_options
        _DISTILLERS[name] = cls
        return cls

    return wrap


def list_distillers() -> list[str]:
    return sorted(_DISTILLERS)


def describe_distillers() -> dict[str, str]:
    """Every method's one-line description, by name."""
    return {name: _DISTILLERS[name].description for name in list_distillers()}


def get_distiller_class(name: str) -> type[Distiller]:
    if name not in _DISTILLERS:
        raise ConfigError(f"unknown distillation method '{name}'",
                          f"set distill.method to one of: {', '.join(list_distillers())}")
    return _DISTILLERS[name]


def build_distiller(name: str, student: nn.Module, teacher: nn.Module | None, options: Any) -> Distiller:
    return get_distiller_class(name)(student, teacher, options)
