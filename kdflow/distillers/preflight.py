"""Checks of a run config that need the networks, made before anything is computed or recorded.

The configuration layer checks names, types, ranges and what one section says about another
without importing torch. What needs the models themselves, such as ``hint``'s layer names against
the student's and the teacher's architectures, is checked here: by the distillation step before it
loads the teacher or starts an MLflow run, and by the CLI before a run is launched or submitted, so
a typo fails in seconds rather than after the teacher has labelled the data.
"""

from __future__ import annotations

from kdflow.config import Config
from kdflow.distillers.registry import get_distiller_class


def check_models(cfg: Config) -> None:
    """Raise a ConfigError naming the key when the method's options do not fit the architectures."""
    get_distiller_class(cfg.distill.method).check_models(cfg.distill.options, cfg)
