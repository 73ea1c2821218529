"""Decoupled KD (``kdflow.losses.dkd``; Zhao et al., CVPR 2022, arXiv:2203.08679).

KD's KL splits into a target-class term (TCKD: the binary target / non-target distribution) and a
non-target term (NCKD: the distribution among the other classes); DKD weighs them apart (alpha,
beta), so the non-target "dark knowledge" is not suppressed when the teacher is confident. The
distillation term ramps up linearly over ``warmup_epochs`` as in the paper. Offline it reads the
non-target distribution from the cache: exact at full k, the codec's tail model below that.
"""

from __future__ import annotations

from typing import Any

import torch

from kdflow.distillers.base import Distiller, Outputs
from kdflow.distillers.registry import register_distiller
from kdflow.losses import dkd_terms, dkd_warmup, standardize


@register_distiller("dkd")
class DKD(Distiller):
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
