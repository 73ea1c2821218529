"""Hinton KD from the teacher's cached soft labels (or the teacher online) (``kdflow.losses.kd``, arXiv:1503.02531)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdflow.distillers.base import Distiller
from kdflow.distillers.registry import register_distiller
from kdflow.errors import ConfigError
from kdflow.losses import kd_loss


@register_distiller("kd")
class KD(Distiller):
    @dataclass(frozen=True)
    class Options:
        temperature: float = 4.0
        alpha: float = 0.9  # weight of the distillation term; 1 - alpha weighs cross-entropy

        def __post_init__(self) -> None:
            if self.temperature <= 0:
                raise ConfigError(f"distill.options.temperature is {self.temperature}", "use T > 0")
            if not 0.0 <= self.alpha <= 1.0:
                raise ConfigError(f"distill.options.alpha is {self.alpha}", "use alpha in [0, 1]")

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.student(batch["image"])
        kd = kd_loss(logits, self.teacher_logits(batch, self.options.temperature), self.options.temperature)
        ce = F.cross_entropy(logits.float(), batch["label"])
        loss = self.options.alpha * kd + (1.0 - self.options.alpha) * ce
        return {"loss": loss, "output": logits, "kd": kd.detach(), "ce": ce.detach()}
