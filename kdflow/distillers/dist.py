"""DIST (``kdflow.losses.dist``; Huang et al., NeurIPS 2022, arXiv:2205.10536).

Matches relations rather than values: the Pearson correlation of student and teacher
probabilities within each sample (inter-class) and within each class across the batch
(intra-class), which holds up better than KL when the teacher is much stronger than the student.
"""

from __future__ import annotations

from typing import Any

import torch

from kdflow.distillers.base import Distiller, Outputs
from kdflow.distillers.registry import register_distiller
from kdflow.losses import dist_terms


@register_distiller("dist")
class DIST(Distiller):
    def task_weight(self) -> float:
        return self.options.ce_weight

    def distill_loss(self, batch: dict[str, Any], student: Outputs) -> dict[str, torch.Tensor]:
        o = self.options
        inter, intra = dist_terms(student.logits, self.teacher_logits(batch, o.temperature), o.temperature)
        dist = o.beta * inter + o.gamma * intra
        return {"loss": dist, "dist": dist.detach(), "inter": inter.detach(), "intra": intra.detach()}
