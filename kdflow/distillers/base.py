"""The distiller contract (after mdistiller's ``Distiller`` and timm's ``TrainingTask``).

A distiller owns the student and, when it needs one online, the frozen teacher. ``forward(batch)``
returns ``{"loss": scalar, "output": student logits [B, C], <named loss terms>}``; the training loop
only ever calls that and steps the optimizer on ``trainable_parameters()``.

Every method's loss has the same shape::

    loss = task_weight * cross_entropy(student, label) + distill_weight * distill_loss(...)["loss"]

so a method subclass writes ``distill_loss`` (its own term, from the student's outputs and the
teacher's) and, when its mixing differs from "1 x CE + 1 x term", the two weights. The ``combined``
distiller reuses any method's ``distill_loss`` under its own global weights.

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
import torch.nn.functional as F
from torch import nn

from kdflow.config.methods import Options
from kdflow.losses import standardize
from kdflow.models.features import FeatureTap
from kdflow.models.loading import Frozen
from kdflow.training.device import full_fp32

_TEACHER_OUT = "_teacher_outputs"  # batch key memoising the online teacher's pass over a batch


@dataclass
class Outputs:
    """One forward pass: logits float [B, C] and the outputs of the layers asked for, by name."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor]


class Distiller(nn.Module, ABC):
    """Base: one subclass per method, registered with ``@register_distiller``."""

    # Set by @register_distiller from the method's registration in the configuration layer
    # (kdflow.config.methods), which owns the options and the traits the config needs.
    method_name: ClassVar[str] = ""
    description: ClassVar[str] = ""  # one line, for `kdflow methods`
    Options: ClassVar[type[Options]] = Options
    # True when the method needs the teacher's forward pass (features, or logits of views that are
    # not cached); the trainer then loads the teacher and the batch carries no teacher_soft.
    needs_teacher_online: ClassVar[bool] = False
    uses_teacher: ClassVar[bool] = True  # False for the cross-entropy baseline
    mixing_options: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def check_models(cls, options: Any, run: Any, key: str = "distill.options") -> None:
        """Checks of the options that need the networks (``run``: a ``Config``): the distillation
        step's pre-flight (kdflow.distillers.preflight), before the teacher or an MLflow run is touched;
        raise a ConfigError naming ``key``. Checks without models belong to ``Options.check_run``."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, options: Any):
        super().__init__()
        self.student = student
        # Wrapped so that train()/eval() never reach it: an exported (MLflow pt2) teacher refuses them.
        self.teacher = teacher if teacher is None or isinstance(teacher, Frozen) else Frozen(teacher.eval())
        self.options = options
        self.epoch = 0
        if teacher is not None:
            for p in teacher.parameters():
                p.requires_grad_(False)
        self._taps: dict[str, FeatureTap] = {}

    # -- hooks a method may override --------------------------------------------------------------

    def student_layers(self) -> tuple[str, ...]:
        """Student layers whose outputs ``distill_loss`` reads (by module name)."""
        return ()

    def teacher_layers(self) -> tuple[str, ...]:
        """Teacher layers whose outputs ``distill_loss`` reads (the teacher then runs online)."""
        return ()

    def prepare(self, images: torch.Tensor) -> None:
        """Called once before training (and before a checkpoint is restored) with a few training
        images on the training device: where a method builds modules sized by the networks'
        features (``hint``'s connectors). It may be called more than once: build once."""

    def start_epoch(self, epoch: int) -> None:
        """Called by the training loop before each epoch (0-based); schedules such as DKD's warm-up read it."""
        self.epoch = epoch

    def task_weight(self) -> float:
        """Weight of the cross-entropy with the true labels."""
        return 1.0

    def distill_weight(self) -> float:
        """Weight of ``distill_loss``'s term."""
        return 1.0

    @abstractmethod
    def distill_loss(self, batch: dict[str, Any], student: Outputs) -> dict[str, torch.Tensor]:
        """The method's own term: ``{"loss": scalar, <named parts>}`` (named parts are logged)."""

    # -- shared machinery -------------------------------------------------------------------------

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """What the optimizer updates: every parameter but the frozen teacher's (the student and a
        method's own modules, such as hint connectors)."""
        return (p for name, p in self.named_parameters() if not name.startswith("teacher."))

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """What a training checkpoint must hold: everything but the frozen teacher."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise RuntimeError(f"checkpoint does not fit {type(self).__name__}: missing {missing}, "
                               f"unexpected {unexpected}")

    def _tap(self, role: str, model: nn.Module, names: tuple[str, ...]) -> FeatureTap:
        key = f"{role}:{','.join(names)}"
        if key not in self._taps:
            self._taps[key] = FeatureTap(model, names, role)
        return self._taps[key]

    def run_student(self, images: torch.Tensor) -> Outputs:
        """The student's logits on ``images`` and the outputs of ``student_layers()``."""
        names = self.student_layers()
        if not names:
            return Outputs(self.student(images), {})
        tap = self._tap("student", self.student, names)
        with tap.capture() as features:
            logits = self.student(images)
        return Outputs(logits, dict(features))

    def teacher_outputs(self, batch: dict[str, Any]) -> Outputs:
        """The online teacher on the batch's pictures, in full fp32 (outside autocast, no TF32), as
        the cache's labels were computed; run once per batch whoever asks (memoised in the batch)."""
        names = self.teacher_layers()
        memo = batch.get(_TEACHER_OUT)
        if memo is not None and all(n in memo.features for n in names):
            return memo
        if self.teacher is None:
            raise RuntimeError(f"{type(self).__name__} needs the teacher online, and none was loaded")
        image = batch["image"].float()
        with torch.no_grad(), torch.autocast(image.device.type, enabled=False), full_fp32():
            if names:
                tap = self._tap("teacher", self.teacher, names)
                with tap.capture() as features:
                    logits = self.teacher(image)
                out = Outputs(logits.float(), {k: v.float() for k, v in features.items()})
            else:
                out = Outputs(self.teacher(image).float(), {})
        batch[_TEACHER_OUT] = out
        return out

    def teacher_logits(self, batch: dict[str, Any], temperature: float = 1.0,
                       standardized: bool = False) -> torch.Tensor:
        """Teacher logits of the batch's pictures, for softmax(z / temperature): float32 [B, C];
        z-scored per row first when ``standardized`` (logit standardization).

        From the cache when the batch carries them (rebuilt for this temperature), else from the
        teacher online: at full k the two are the same numbers.
        """
        if "teacher_soft" in batch:
            return batch["teacher_soft"].logits(temperature, standardized)
        logits = self.teacher_outputs(batch).logits
        return standardize(logits) if standardized else logits

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        student = self.run_student(batch["image"])
        ce = F.cross_entropy(student.logits.float(), batch["label"])
        terms = self.distill_loss(batch, student)
        loss = self.task_weight() * ce + self.distill_weight() * terms["loss"]
        named = {k: v.detach() for k, v in terms.items() if k != "loss"}
        return {"loss": loss, "output": student.logits, "ce": ce.detach(), **named}
