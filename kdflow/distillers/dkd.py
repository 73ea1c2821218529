"""Decoupled KD (``kdflow.losses.dkd``; Zhao et al., CVPR 2022, arXiv:2203.08679).

KD's KL splits into a target-class term (TCKD: the binary target / non-target distribution) and a
non-target term (NCKD: the distribution among the other classes); DKD weighs them apart (alpha,
beta), so the non-target "dark knowledge" is not suppressed when the teacher is confident. The
distillation term ramps up linearly over ``warmup_epochs`` as in the paper. Offline it reads the
non-target distribution from the cache: exact at full k, the codec's tail model below that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kdflow.distillers.base import Distiller, Outputs
from kdflow.distillers.options import non_negative, positive
from kdflow.distillers.registry import register_distiller
from kdflow.errors import ConfigError
from kdflow.losses import dkd_terms, dkd_warmup, standardize


@register_distiller("dkd")
class DKD(Distiller):
    description = "Decoupled KD: target and non-target terms weighted apart (Zhao et al. 2022)"

    @dataclass(frozen=True)
    class Options:
        # The paper's CIFAR-100 settings (mdistiller configs/cifar100/dkd).
        alpha: float = 1.0  # weight of TCKD
        beta: float = 8.0  # weight of NCKD
        temperature: float = 4.0
        warmup_epochs: int = 20  # linear ramp of the distillation term (the paper: 20 of 240 epochs)
        ce_weight: float = 1.0
        logit_standardization: bool = False  # z-score the logits before the temperature (Sun et al. 2024)

        def __post_init__(self) -> None:
            positive("temperature", self.temperature)
            for name in ("alpha", "beta", "ce_weight"):
                non_negative(name, getattr(self, name))
            if self.warmup_epochs < 0:
                raise ConfigError(f"distill.options.warmup_epochs is {self.warmup_epochs}", "use 0 (off) or more")

    mixing_options = ("ce_weight",)

    @classmethod
    def check_run(cls, options: Any, run: Any, key: str = "distill.options") -> None:
        if options.warmup_epochs > run.train.epochs:
            raise ConfigError(
                f"{key}.warmup_epochs is {options.warmup_epochs} but train.epochs is {run.train.epochs}: "
                "the distillation term would never reach its full weight",
                f"use at most train.epochs warm-up epochs (the paper ramps over 20 of 240 epochs, "
                f"about {max(1, round(run.train.epochs / 12))} of {run.train.epochs})",
            )

    def task_weight(self) -> float:
        return self.options.ce_weight

    def distill_loss(self, batch: dict[str, Any], student: Outputs) -> dict[str, torch.Tensor]:
        o = self.options
        s = standardize(student.logits) if o.logit_standardization else student.logits
        t = self.teacher_logits(batch, o.temperature, o.logit_standardization)
        tckd, nckd = dkd_terms(s, t, batch["label"], o.temperature)
        dkd = o.alpha * tckd + o.beta * nckd
        # The warm-up belongs to the method, so it also holds inside `combined`.
        return {"loss": dkd_warmup(self.epoch, o.warmup_epochs) * dkd, "dkd": dkd.detach(),
                "tckd": tckd.detach(), "nckd": nckd.detach()}
