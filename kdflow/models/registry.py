"""Model registry: ``@register_model`` and one constructor signature for every entry.

Every entry is ``fn(num_classes: int, in_channels: int = 3) -> nn.Module`` whose module maps
normalised images [B, C, H, W] to logits [B, num_classes] and also offers
``forward_features(x) -> (logits, [stage features])`` for feature-based distillers.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from kdflow.util.errors import ConfigError

ModelFn = Callable[..., nn.Module]
_MODELS: dict[str, ModelFn] = {}


def register_model(name: str) -> Callable[[ModelFn], ModelFn]:
    def wrap(fn: ModelFn) -> ModelFn:
        if name in _MODELS:
            raise ValueError(f"model '{name}' is registered twice")
        _MODELS[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    if name not in _MODELS:
        raise ConfigError(f"unknown model architecture '{name}'", f"use one of: {', '.join(list_models())}")
    return _MODELS[name](num_classes=num_classes, in_channels=in_channels)
