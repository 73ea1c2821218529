"""Option checks shared by the methods' typed ``Options`` (each raises a ConfigError naming the key)."""

from __future__ import annotations

from kdflow.errors import ConfigError


def positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"distill.options.{name} is {value}", f"use {name} > 0")


def non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ConfigError(f"distill.options.{name} is {value}", f"use {name} >= 0")


def fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"distill.options.{name} is {value}", f"use {name} in [0, 1]")
