"""Distillers: one class per method, registered by name."""

from kdflow.distillers import ce, combined, dist, dkd, hint, kd  # noqa: F401  (registration side effects)
from kdflow.distillers.base import Distiller
from kdflow.distillers.registry import (build_distiller, describe_distillers, get_distiller_class, list_distillers,
                                       register_distiller)

__all__ = ["Distiller", "build_distiller", "describe_distillers", "get_distiller_class", "list_distillers", "register_distiller"]
