"""Distillation losses: pure functions of tensors, each citing its paper."""

from kdflow.losses.dist import dist_loss, dist_terms, pearson
from kdflow.losses.dkd import dkd_loss, dkd_terms, dkd_warmup
from kdflow.losses.hint import hint_loss
from kdflow.losses.kd import kd_loss
from kdflow.losses.logit_std import standardize

__all__ = ["dist_loss", "dist_terms", "dkd_loss", "dkd_terms", "dkd_warmup", "hint_loss", "kd_loss",
           "pearson", "standardize"]
