"""The baseline: the student trained on the labels alone, no teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdflow.distillers.base import Distiller
from kdflow.distillers.registry import register_distiller


@register_distiller("ce")
class CrossEntropy(Distiller):
    uses_teacher = False

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.student(batch["image"])
        ce = F.cross_entropy(logits.float(), batch["label"])
        return {"loss": ce, "output": logits, "ce": ce.detach()}
