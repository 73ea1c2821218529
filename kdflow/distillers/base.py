"""The distiller contract (after mdistiller's ``Distiller`` and timm's ``TrainingTask``).

A distiller owns the student and, when it needs one online, the frozen teacher. ``forward(batch)``
returns ``{"loss": scalar, "output": student logits [B, C], <named loss terms>}``; the training loop
only ever calls that and steps the optimizer on ``trainable_parameters()``.

A batch is a dict:
    image           float [B, C, H, W], pixels in [0, 1]
    label           int64 [B]
    teacher_logits  float [B, K] rebuilt from the soft-label cache (present unless the teacher
                    runs online)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import torch
from torch import nn


class Distiller(nn.Module, ABC):
    """Base: one subclass per method, registered with ``@register_distiller``."""

    # True when the method needs the teacher's forward pass (features, or logits of views that are
    # not cached); the trainer then loads the teacher and the batch carries no teacher_logits.
    needs_teacher_online: ClassVar[bool] = False
    uses_teacher: ClassVar[bool] = True  # False for the cross-entropy baseline

    @dataclass(frozen=True)
    class Options:
        """Method options, typed; a subclass replaces this with its own frozen dataclass."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, options: Any):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.options = options
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: BatchNorm statistics and dropout stay in inference mode
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """What the optimizer updates: the student (a subclass adds its own connectors)."""
        return self.student.parameters()

    def teacher_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "teacher_logits" in batch:
            return batch["teacher_logits"]
        if self.teacher is None:
            raise RuntimeError(f"{type(self).__name__} needs teacher logits: none cached, no teacher online")
        with torch.no_grad():
            return self.teacher(batch["image"])

    @abstractmethod
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return ``{"loss", "output", <named terms>}`` for one batch."""
