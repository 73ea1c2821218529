"""Hinton KD (``kdflow.losses.kd``, arXiv:1503.02531), optionally on standardized logits
(``kdflow.losses.logit_std``, Sun et al., CVPR 2024), from the cached soft labels or the teacher online."""

from __future__ import annotations

from typing import Any

import torch

from kdflow.distillers.base import Distiller, Outputs
from kdflow.distillers.registry import register_distiller
from kdflow.losses import kd_loss, standardize


@register_distiller("kd")
class KD(Distiller):
    def task_weight(self) -> float:
        return 1.0 - self.options.alpha

    def distill_weight(self) -> float:
        return self.options.alpha

    def distill_loss(self, batch: dict[str, Any], student: Outputs) -> dict[str, torch.Tensor]:
        o = self.options
        s = standardize(student.logits) if o.logit_standardization else student.logits
        kd = kd_loss(s, self.teacher_logits(batch, o.temperature, o.logit_standardization), o.temperature)
        return {"loss": kd, "kd": kd.detach()}
