"""Distillation losses: pure functions of tensors, each citing its paper."""

from kdflow.losses.kd import kd_loss

__all__ = ["kd_loss"]
