"""Distillation methods as the configuration sees them: each method's typed options, registered by name.

Torch-free on purpose: loading a config, printing its schema or listing methods never imports torch.
The methods themselves (kdflow.distillers, one class per method) take their ``Options`` type from
here. A check of the options against the rest of the config that needs no model runs when the
config loads (``Options.check_run``); a check that needs the networks (``hint``'s layer names) is
the distillation step's pre-flight (kdflow.distillers.preflight).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from kdflow.config.base import Strict
from kdflow.util.errors import ConfigError

if TYPE_CHECKING:
    from kdflow.config.run import Config


class Options(Strict):
    """A method's options; each method registers a subclass."""

    def requires_online(self) -> bool:
        """Whether these options need the teacher in the loop (``combined`` asks its parts)."""
        return method_spec(self.method_name()).needs_teacher_online

    def check_run(self, run: "Config", key: str = "distill.options") -> None:
        """Checks against the rest of the run config, made when the config loads (no models needed);
        raise a ConfigError naming ``key``."""

    @classmethod
    def method_name(cls) -> str:
        return next(name for name, spec in _METHODS.items() if spec.options is cls)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    options: type[Options]
    description: str  # one line, for `kdflow methods` and the schema
    uses_teacher: bool = True  # False for the cross-entropy baseline
    # The method needs the teacher's forward pass (features, or logits of views that are not cached).
    needs_teacher_online: bool = False
    # Options that mix the method's term with the cross-entropy; ``combined`` replaces them with its
    # global weights, so it refuses them in its parts rather than ignore them.
    mixing_options: tuple[str, ...] = ()


_METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, description: str, **traits: Any) -> Callable[[type[Options]], type[Options]]:
    def wrap(cls: type[Options]) -> type[Options]:
        if name in _METHODS:
            raise ValueError(f"method '{name}' is registered twice")
        _METHODS[name] = MethodSpec(name, cls, description, **traits)
        return cls
    return wrap


def list_methods() -> list[str]:
    return sorted(_METHODS)


def method_spec(name: str) -> MethodSpec:
    if name not in _METHODS:
        raise ConfigError(f"unknown distillation method '{name}'",
                          f"set distill.method to one of: {', '.join(list_methods())}")
    return _METHODS[name]


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"distill.options.{name} is {value}", f"use {name} > 0")


def _non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ConfigError(f"distill.options.{name} is {value}", f"use {name} >= 0")


def _fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"distill.options.{name} is {value}", f"use {name} in [0, 1]")


LOGIT_STD = "z-score student and teacher logits per row before the temperature (Sun et al., CVPR 2024): the " \
            "student matches the teacher's logit relations, not their scale"


@register_method("ce", "baseline: cross-entropy with the labels, no teacher", uses_teacher=False)
class CEOptions(Options):
    """The baseline has no options."""


@register_method("kd", "Hinton KD: KL to the teacher's softened outputs (Hinton et al. 2015)",
                 mixing_options=("alpha",))
class KDOptions(Options):
    temperature: float = 4.0
    alpha: float = Field(0.9, description="weight of the distillation term; 1 - alpha weighs cross-entropy")
    logit_standardization: bool = Field(False, description=LOGIT_STD)

    @model_validator(mode="after")
    def _ranges(self) -> "KDOptions":
        _positive("temperature", self.temperature)
        _fraction("alpha", self.alpha)
        return self


@register_method("dkd", "Decoupled KD: target and non-target terms weighted apart (Zhao et al. 2022)",
                 mixing_options=("ce_weight",))
class DKDOptions(Options):
    # The paper's CIFAR-100 settings (mdistiller configs/cifar100/dkd).
    alpha: float = Field(1.0, description="weight of TCKD")
    beta: float = Field(8.0, description="weight of NCKD")
    temperature: float = 4.0
    warmup_epochs: int = Field(20, description="linear ramp of the distillation term (the paper: 20 of 240 epochs)")
    ce_weight: float = 1.0
    logit_standardization: bool = Field(False, description=LOGIT_STD)

    @model_validator(mode="after")
    def _ranges(self) -> "DKDOptions":
        _positive("temperature", self.temperature)
        for name in ("alpha", "beta", "ce_weight"):
            _non_negative(name, getattr(self, name))
        if self.warmup_epochs < 0:
            raise ConfigError(f"distill.options.warmup_epochs is {self.warmup_epochs}", "use 0 (off) or more")
        return self

    def check_run(self, run: "Config", key: str = "distill.options") -> None:
        if self.warmup_epochs > run.train.epochs:
            raise ConfigError(
                f"{key}.warmup_epochs is {self.warmup_epochs} but train.epochs is {run.train.epochs}: "
                "the distillation term would never reach its full weight",
                f"use at most train.epochs warm-up epochs (the paper ramps over 20 of 240 epochs, "
                f"about {max(1, round(run.train.epochs / 12))} of {run.train.epochs})",
            )


@register_method("dist", "DIST: inter- and intra-class Pearson correlation with the teacher (Huang et al. 2022)",
                 mixing_options=("ce_weight",))
class DISTOptions(Options):
    # The official code's dist_t4 setting (used for CIFAR-100); its defaults are all 1.
    beta: float = Field(2.0, description="weight of the inter-class relation")
    gamma: float = Field(2.0, description="weight of the intra-class relation")
    temperature: float = 4.0
    ce_weight: float = 1.0

    @model_validator(mode="after")
    def _ranges(self) -> "DISTOptions":
        _positive("temperature", self.temperature)
        for name in ("beta", "gamma", "ce_weight"):
            _non_negative(name, getattr(self, name))
        return self


class HintPair(Strict):
    teacher: str = Field(description="teacher layer, e.g. layer2 (kdflow models --layers ARCH)")
    student: str = Field(description="student layer, e.g. layer2 or stages.1")
    weight: float = 1.0

    @model_validator(mode="after")
    def _ranges(self) -> "HintPair":
        _non_negative("pairs[].weight", self.weight)
        return self


@register_method("hint", "FitNets hints: teacher layers matched to student layers, each weighted "
                 "(Romero et al. 2015)", needs_teacher_online=True, mixing_options=("ce_weight",))
class HintOptions(Options):
    pairs: tuple[HintPair, ...] = Field((), description="at least one (teacher layer, student layer, weight)")
    ce_weight: float = 1.0

    @model_validator(mode="after")
    def _ranges(self) -> "HintOptions":
        if not self.pairs:
            raise ConfigError(
                "distill.options.pairs is empty: hint needs at least one pair of layers",
                "add e.g. pairs: [{teacher: layer2, student: layer2, weight: 100.0}]; "
                "`kdflow models --layers ARCH` lists the layer names",
            )
        _non_negative("ce_weight", self.ce_weight)
        return self


_NOT_PARTS = ("ce", "combined")


def _part_options(name: str, value: Any) -> Options:
    """A part's typed options; errors name the key under ``methods``, and the part's own mixing
    with the cross-entropy (which the global weights replace) is refused rather than ignored."""
    spec = method_spec(name)
    key = f"distill.options.methods.{name}"
    if isinstance(value, Options):
        value = value.to_dict()
    if value is not None and not isinstance(value, dict):
        return spec.options.from_dict(value, key)  # raises: says the key must be a mapping
    given = value or {}
    for option in spec.mixing_options:
        # A value equal to the default is what a resolved config writes back out: let it round-trip.
        if option in given and given[option] != spec.options.model_fields[option].default:
            raise ConfigError(f"{key}.{option} is set, but combined replaces {name}'s own mixing with the "
                              "cross-entropy by its global weights",
                              f"remove it; weigh {name} with distill.options.weights.{name} and the "
                              "cross-entropy with distill.options.ce_weight")
    try:
        return spec.options.from_dict(given, key)
    except ConfigError as exc:  # the part's own range checks name distill.options.<option>
        problem = exc.problem if key in exc.problem else exc.problem.replace("distill.options.", f"{key}.")
        raise ConfigError(problem, exc.fix) from None


@register_method("combined", "global weighted: several methods' terms mixed by global weights, e.g. kd + hint")
class CombinedOptions(Options):
    weights: dict[str, float] = Field(default_factory=dict, validate_default=True, description="method -> global weight, e.g. {kd: 1.0, "
                                                                        "hint: 0.5}")
    methods: dict[str, Any] = Field(default_factory=dict, validate_default=True, description="method -> its options (its defaults if "
                                                                      "absent)")
    ce_weight: float = 1.0

    @field_validator("weights")
    @classmethod
    def _weights(cls, weights: dict[str, float]) -> dict[str, float]:
        parts = [m for m in list_methods() if m not in _NOT_PARTS]
        if not weights:
            raise ConfigError("distill.options.weights is empty: combined needs the methods it mixes",
                              f"give weights for some of {', '.join(parts)}, e.g. {{kd: 1.0, hint: 0.5}}")
        for name, w in weights.items():
            if name not in parts:
                raise ConfigError(f"distill.options.weights names '{name}', which combined cannot mix",
                                  f"use some of: {', '.join(parts)}")
            _non_negative(f"weights.{name}", w)
        return weights

    @field_validator("methods")
    @classmethod
    def _methods(cls, methods: dict[str, Any], info: ValidationInfo) -> dict[str, Options]:
        weights = info.data.get("weights", {})
        for name in methods:
            if name not in weights:
                raise ConfigError(f"distill.options.methods.{name} is given but '{name}' has no weight",
                                  "add it to distill.options.weights, or remove its options")
        return {m: _part_options(m, methods.get(m)) for m in weights}

    @model_validator(mode="after")
    def _ranges(self) -> "CombinedOptions":
        _non_negative("ce_weight", self.ce_weight)
        return self

    def requires_online(self) -> bool:
        return any(part.requires_online() for part in self.methods.values())

    def check_run(self, run: "Config", key: str = "distill.options") -> None:
        for name, part in self.methods.items():
            part.check_run(run, f"{key}.methods.{name}")


class DistillConfig(Strict):
    """Which distiller runs, and its own typed options (each method registers an Options class)."""

    method: str = Field("kd", description="distillation method (kdflow methods lists them)")
    options: Any = Field(None, validate_default=True, description="options of the chosen method (distill.method); their defaults when "
                                           "absent")
    # offline: teacher logits come from the soft-label cache (replayed views when augmenting).
    # online: the teacher runs on every training batch, on the same augmented pixels the student sees.
    teacher: Literal["offline", "online"] = Field("offline", description="offline: teacher logits from the "
                                                                         "soft-label cache; online: the teacher "
                                                                         "runs on every training batch")

    @field_validator("method")
    @classmethod
    def _known(cls, method: str) -> str:
        method_spec(method)
        return method

    @field_validator("options")
    @classmethod
    def _typed(cls, options: Any, info: ValidationInfo) -> Options:
        spec = method_spec(info.data.get("method", "kd"))
        if isinstance(options, spec.options):
            return options
        return spec.options.from_dict(options, "distill.options")

