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

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kdflow.distillers.base import Distiller, Outputs
from kdflow.distillers.options import non_negative
from kdflow.distillers.registry import build_distiller, get_distiller_class, list_distillers, register_distiller
from kdflow.errors import ConfigError
from kdflow.typed import from_dict

_NOT_PARTS = ("ce", "combined")


def _part_options(name: str, value: Any) -> Any:
    """A part's typed options; errors name the key under ``methods``, and the part's own mixing
    with the cross-entropy (which the global weights replace) is refused rather than ignored."""
    cls = get_distiller_class(name)
    key = f"distill.options.methods.{name}"
    if value is not None and not dataclasses.is_dataclass(value) and not isinstance(value, dict):
        return from_dict(cls.Options, value, key)  # raises: says the key must be a mapping
    given = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else (value or {})
    for option in cls.mixing_options:
        # A value equal to the default is what a resolved config writes back out: let it round-trip.
        if option in given and given[option] != _default(cls.Options, option):
            raise ConfigError(f"{key}.{option} is set, but combined replaces {name}'s own mixing with the "
                              "cross-entropy by its global weights",
                              f"remove it; weigh {name} with distill.options.weights.{name} and the "
                              "cross-entropy with distill.options.ce_weight")
    if dataclasses.is_dataclass(value):
        return value
    try:
        return from_dict(cls.Options, value, key)
    except ConfigError as exc:  # the part's own range checks name distill.options.<option>
        problem = exc.problem if key in exc.problem else exc.problem.replace("distill.options.", f"{key}.")
        raise ConfigError(problem, exc.fix) from None


def _default(options_cls: type, name: str) -> Any:
    field_ = next(f for f in dataclasses.fields(options_cls) if f.name == name)
    return field_.default


def _unique(names) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


@register_distiller("combined")
class Combined(Distiller):
    description = "global weighted: several methods' terms mixed by global weights, e.g. kd + hint"

    @dataclass(frozen=True)
    class Options:
        weights: dict[str, float] = field(default_factory=dict)  # method -> global weight, e.g. {kd: 1.0, hint: 0.5}
        methods: dict[str, Any] = field(default_factory=dict)  # method -> its options (its defaults if absent)
        ce_weight: float = 1.0

        def __post_init__(self) -> None:
            parts = [m for m in list_distillers() if m not in _NOT_PARTS]
            if not self.weights:
                raise ConfigError("distill.options.weights is empty: combined needs the methods it mixes",
                                  f"give weights for some of {', '.join(parts)}, e.g. {{kd: 1.0, hint: 0.5}}")
            for name, w in self.weights.items():
                if name not in parts:
                    raise ConfigError(f"distill.options.weights names '{name}', which combined cannot mix",
                                      f"use some of: {', '.join(parts)}")
                if isinstance(w, bool) or not isinstance(w, (int, float)):
                    raise ConfigError(f"distill.options.weights.{name} must be a number, got {w!r}",
                                      "give each method a number")
                non_negative(f"weights.{name}", w)
            for name in self.methods:
                if name not in self.weights:
                    raise ConfigError(f"distill.options.methods.{name} is given but '{name}' has no weight",
                                      "add it to distill.options.weights, or remove its options")
            non_negative("ce_weight", self.ce_weight)
            resolved = {m: _part_options(m, self.methods.get(m)) for m in self.weights}
            object.__setattr__(self, "weights", {m: float(w) for m, w in self.weights.items()})
            object.__setattr__(self, "methods", resolved)

    @classmethod
    def check_run(cls, options: Any, run: Any, key: str = "distill.options") -> None:
        for name, part in options.methods.items():
            get_distiller_class(name).check_run(part, run, f"{key}.methods.{name}")

    @classmethod
    def requires_online(cls, options: Any) -> bool:
        return any(get_distiller_class(m).requires_online(o) for m, o in options.methods.items())

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
