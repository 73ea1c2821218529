"""Local weighted distillation: FitNets-style hints (``kdflow.losses.hint``; Romero et al., ICLR 2015).

The teacher's knowledge is split by layer: each configured pair (teacher layer, student layer)
matches the student's feature, through a connector, to the teacher's, with its own weight; the task
loss (cross-entropy) trains the rest. Layers are named as ``kdflow models --layers ARCH`` lists
them and captured with forward hooks, so any eager ``nn.Module`` teacher works; a TorchScript or
exported ``models:/`` teacher is rebuilt as an eager module from ``teacher.arch`` first (see
``kdflow.models.features``).

A connector maps the student's feature to the teacher's shape: a 1x1 convolution and BatchNorm for
[B, C, H, W] features, resized (area pooling down, bilinear up) when the spatial sizes differ; a
linear layer and BatchNorm for [B, D] features. Connectors are trained with the student and dropped
after training: the saved, logged and registered student has none of them. Unlike the paper's
two-stage recipe (hints first, then KD), everything trains in one stage, as in mdistiller's FitNet.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdflow.distillers.base import Distiller, Outputs
from kdflow.distillers.registry import register_distiller
from kdflow.util.errors import KdflowError
from kdflow.losses import hint_loss


class Connector(nn.Module):
    """Student feature [B, Cs, Hs, Ws] -> [B, Ct, Ht, Wt] (or [B, Ds] -> [B, Dt])."""

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]):
        super().__init__()
        if len(student_shape) != len(teacher_shape) or len(student_shape) not in (1, 3):
            raise KdflowError(
                f"cannot connect a student feature of shape {list(student_shape)} to a teacher feature of "
                f"shape {list(teacher_shape)}",
                "pair layers that both output [C, H, W] maps, or both [D] vectors",
            )
        if len(student_shape) == 3:
            self.proj = nn.Sequential(nn.Conv2d(student_shape[0], teacher_shape[0], 1, bias=False),
                                      nn.BatchNorm2d(teacher_shape[0]))
        else:
            self.proj = nn.Sequential(nn.Linear(student_shape[0], teacher_shape[0], bias=False),
                                      nn.BatchNorm1d(teacher_shape[0]))
        self.size = tuple(teacher_shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        if x.dim() == 4 and tuple(x.shape[2:]) != self.size:
            larger = x.shape[2] >= self.size[0] and x.shape[3] >= self.size[1]
            x = F.adaptive_avg_pool2d(x, self.size) if larger else \
                F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return x


@register_distiller("hint")
class Hint(Distiller):
    @classmethod
    def check_models(cls, options: Any, run: Any, key: str = "distill.options") -> None:
        """Layer names against the architectures, before the teacher runs or an MLflow run starts (a
        teacher given as a kdflow checkpoint or MLflow model names no architecture here: its layers
        are checked when it loads)."""
        from kdflow.models.features import probe_model, resolve_layer

        student = probe_model(run.student.arch)
        teacher = probe_model(run.teacher.arch) if run.teacher.arch else None
        for i, pair in enumerate(options.pairs):
            where = f"{key}.pairs[{i}]"
            resolve_layer(student, pair.student, f"student ({run.student.arch}, {where}.student)")
            if teacher is not None:
                resolve_layer(teacher, pair.teacher, f"teacher ({run.teacher.arch}, {where}.teacher)")

    def __init__(self, student: nn.Module, teacher: nn.Module | None, options: Any):
        super().__init__(student, teacher, options)
        # Filled by prepare(), once the feature shapes are known; keyed by pair index.
        self.connectors = nn.ModuleDict()

    def student_layers(self) -> tuple[str, ...]:
        return tuple(p.student for p in self.options.pairs)

    def teacher_layers(self) -> tuple[str, ...]:
        return tuple(p.teacher for p in self.options.pairs)

    def task_weight(self) -> float:
        return self.options.ce_weight

    @torch.no_grad()
    def prepare(self, images: torch.Tensor) -> None:
        if len(self.connectors):
            return
        was_training = self.student.training
        self.student.eval()  # a probe must not move BatchNorm statistics
        try:
            student = self.run_student(images)
        finally:
            self.student.train(was_training)
        teacher = self.teacher_outputs({"image": images})
        for i, pair in enumerate(self.options.pairs):
            s_shape = tuple(student.features[pair.student].shape[1:])
            t_shape = tuple(teacher.features[pair.teacher].shape[1:])
            self.connectors[str(i)] = Connector(s_shape, t_shape).to(images.device)

    def distill_loss(self, batch: dict[str, Any], student: Outputs) -> dict[str, torch.Tensor]:
        if not len(self.connectors):
            raise RuntimeError("Hint.prepare() was not called before training")
        teacher = self.teacher_outputs(batch)
        terms: dict[str, torch.Tensor] = {}
        total = student.logits.new_zeros((), dtype=torch.float32)
        for i, pair in enumerate(self.options.pairs):
            h = hint_loss(self.connectors[str(i)](student.features[pair.student]), teacher.features[pair.teacher])
            total = total + pair.weight * h
            terms[f"hint_{i}"] = h.detach()
        return {"loss": total, "hint": total.detach(), **terms}
