"""The distiller contract (after mdistiller's ``Distiller`` and timm's ``TrainingTask``).

A distiller owns the student and, when it needs one online, the frozen teacher. ``forward(batch)``
returns ``{"loss": scalar, "output": student logits [B, C], <named loss terms>}``; the training loop
only ever calls that and steps the optimizer on ``trainable_parameters()``.

A batch is a dict:
    image           float [B, C, H, W], pixels in [0, 1] (augmented when the run augments)
    label           int64 [B]
    teacher_soft    ``SoftRows``: the cached teacher labels of exactly these pictures (absent when
                    the teacher runs online); ``teacher_logits(batch, T)`` rebuilds dense rows
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from kdflow.models.loading import Frozen
from kdflow.training.device import full_fp32


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
        # Wrapped so that train()/eval() never reach it: an exported (MLflow pt2) teacher refuses them.
        self.teacher = teacher if teacher is None or isinstance(teacher, Frozen) else Frozen(teacher.eval())
        self.options = options
        if teacher is not None:
            for p in teacher.parameters():
                p.requires_grad_(False)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """What the optimizer updates: the student (a subclass adds its own connectors)."""
        return self.student.parameters()

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """What a training checkpoint must hold: everything but the frozen teacher."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise RuntimeError(f"checkpoint does not fit {type(self).__name__}: missing {missing}, "
                               f"unexpected {unexpected}")

    def teacher_logits(self, batch: dict[str, Any], temperature: float = 1.0) -> torch.Tensor:
        """Teacher logits of the batch's pictures, for softmax(z / temperature): float32 [B, C].

        From the cache when the batch carries them, else from the teacher online, in full fp32
        (outside autocast, no TF32), as the cache's were computed: offline and online see the same
        numbers.
        """
        if "teacher_soft" in batch:
            return batch["teacher_soft"].logits(temperature)
        if self.teacher is None:
            raise RuntimeError(f"{type(self).__name__} needs teacher logits: none cached, no teacher online")
        with torch.no_grad(), torch.autocast(batch["image"].device.type, enabled=False), full_fp32():
            return self.teacher(batch["image"].float()).float()

    @abstractmethod
    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Return ``{"loss", "output", <named terms>}`` for one batch."""
