"""Global weighted distillation: several methods' terms under global weights, as one distiller.

    loss = ce_weight * CE + sum_m weights[m] * distill_loss_m

e.g. ``weights: {kd: 1.0, hint: 0.5}`` adds a logit method (fixed-teacher family) to FitNets hints
(local weighted family). Each part is the registered method itself, built through the registry on
the same student and teacher, so no method's code is copied here; only its own mixing with the
cross-entropy (KD's alpha, DKD/DIST/hint's ce_weight) is replaced by the global weights. What a
part schedules inside its term (DKD's warm-up) still applies. The student and the online teacher
each run once per batch, whatever the parts read from them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdflow.distillers.base import Distiller, Outputs
from kdflow.distillers.registry import build_distiller, get_distiller_class, register_distiller

def _unique(names) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


@register_distiller("combined")
class Combined(Distiller):
    @classmethod
    def check_models(cls, options: Any, run: Any, key: str = "distill.options") -> None:
        for name, part in options.methods.items():
            get_distiller_class(name).check_models(part, run, f"{key}.methods.{name}")

    def __init__(self, student: nn.Module, teacher: nn.Module | None, options: Any):
        super().__init__(student, teacher, options)
        parts = {m: build_distiller(m, student, self.teacher, options.methods[m]) for m in options.weights}
        # The parts share this distiller's student and teacher, so they are kept out of the module
        # tree (their state would repeat the student's); their own modules (hint's connectors) are
        # registered here, so they are trained, moved and checkpointed with the rest.
        self.__dict__["parts"] = parts
        self.extras = nn.ModuleDict({m: nn.ModuleDict({k: v for k, v in p.named_children()
                                                       if k not in ("student", "teacher")})
                                     for m, p in parts.items()})

    def student_layers(self) -> tuple[str, ...]:
        return _unique(n for p in self.parts.values() for n in p.student_layers())

    def teacher_layers(self) -> tuple[str, ...]:
        return _unique(n for p in self.parts.values() for n in p.teacher_layers())

    def prepare(self, images: torch.Tensor) -> None:
        for part in self.parts.values():
            part.prepare(images)

    def start_epoch(self, epoch: int) -> None:
        super().start_epoch(epoch)
        for part in self.parts.values():
            part.start_epoch(epoch)

    def task_weight(self) -> float:
        return self.options.ce_weight

    def distill_loss(self, batch: dict[str, Any], student: Outputs) -> dict[str, torch.Tensor]:
        if self.teacher is not None and "teacher_soft" not in batch:
            self.teacher_outputs(batch)  # one teacher pass with every part's layers, reused by each part
        total = student.logits.new_zeros((), dtype=torch.float32)
        terms: dict[str, torch.Tensor] = {}
        for name, part in self.parts.items():
            out = part.distill_loss(batch, student)
            total = total + self.options.weights[name] * out["loss"]
            for k, v in out.items():
                if k != "loss":
                    terms[k if k.startswith(name) else f"{name}_{k}"] = v
        return {"loss": total, **terms}
