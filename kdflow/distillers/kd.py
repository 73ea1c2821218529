"""Hinton KD (``kdflow.losses.kd``, arXiv:1503.02531), optionally on standardized logits
(``kdflow.losses.logit_std``, Sun et al., CVPR 2024), from the cached soft labels or the teacher online."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kdflow.distillers.base import Distiller, Outputs
from kdflow.distillers.options import fraction, positive
from kdflow.distillers.registry import register_distiller
from kdflow.losses import kd_loss, standardize


@register_distiller("kd")
class KD(Distiller):
    description = "Hinton KD: KL to the teacher's softened outputs (Hinton et al. 2015)"

    @dataclass(frozen=True)
    class Options:
        temperature: float = 4.0
        alpha: float = 0.9  # weight of the distillation term; 1 - alpha weighs cross-entropy
        # Z-score student and teacher logits per row before the temperature (Sun et al., CVPR 2024):
        # the student matches the teacher's logit relations, not their scale.
        logit_standardization: bool = False

        def __post_init__(self) -> None:
            positive("temperature", self.temperature)
            fraction("alpha", self.alpha)

    mixing_options = ("alpha",)

    def task_weight(self) -> float:
        return 1.0 - self.options.alpha

    def distill_weight(self) -> float:
        return self.options.alpha

    def distill_loss(self, batch: dict[str, Any], student: Outputs) -> dict[str, torch.Tensor]:
        o = self.options
        s = standardize(student.logits) if o.logit_standardization else student.logits
        kd = kd_loss(s, self.teacher_logits(batch, o.temperature, o.logit_standardization), o.temperature)
        return {"loss": kd, "kd": kd.detach()}
