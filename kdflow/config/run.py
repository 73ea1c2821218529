"""The run configuration: typed, frozen, loaded from YAML with ``yaml.safe_load``.

One ``Config`` describes a whole run. Every step receives the same resolved config (as YAML text,
so a KFP component takes one primitive string) and reads the sections it needs. Unknown keys and
wrong types are errors (kdflow.config.base); value ranges are checked by each section.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml
from pydantic import Field, model_validator

from kdflow.config.base import Strict
from kdflow.config.methods import DistillConfig, method_spec
from kdflow.config.sections import AugmentConfig, DataConfig, StudentConfig, TeacherConfig, TrainConfig, check
from kdflow.config.verdict import EvaluateConfig, GateConfig, RegistryConfig
from kdflow.util.errors import ConfigError

DEFAULT_CONFIG = "digits.yaml"  # the embedded default's config, beside this module


class Config(Strict):
    """A whole run. ``data_uri`` and friends are inputs a CLI flag or pipeline parameter may override."""

    data_uri: str | None = Field(None, description="image folder (root/<class>/<file>, optionally train/ and test/)")
    teacher_uri: str | None = Field(None, description="TorchScript file, state_dict checkpoint or models:/ URI")
    cache_uri: str | None = Field(None, description="soft-label cache root: a folder, file:// or s3://")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI")
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)

    @model_validator(mode="after")
    def _across_sections(self) -> "Config":
        check(not self.registry.model_name.endswith(".kdflow-lock"), "registry.model_name",
              f"is {self.registry.model_name!r}",
              "the suffix .kdflow-lock is kdflow's registry lock: choose another name")
        self.distill.options.check_run(self)
        if self.augment.active and self.augment.views == 0 and self.replays_cache():
            raise ConfigError(
                "augment is on but augment.views is 0: the student would see augmented pictures while "
                "the cached teacher labels describe the plain ones",
                "set augment.views >= 1 (replayed teacher views), distill.teacher: online, or turn "
                "augmentation off (augment.crop: none, augment.flip: false)",
            )
        return self

    def teacher_mode(self) -> str:
        """``none`` (the method uses no teacher), ``offline`` (cached teacher logits) or ``online``
        (the teacher runs on every batch: asked for, or needed by the method for its features)."""
        if not method_spec(self.distill.method).uses_teacher:
            return "none"
        online = self.distill.options.requires_online() or self.distill.teacher == "online"
        return "online" if online else "offline"

    def replays_cache(self) -> bool:
        """True when the student learns from cached teacher logits."""
        return self.teacher_mode() == "offline"

    def cached_views(self) -> int:
        """Augmented teacher views the soft-label cache must hold for this run (0: the plain view only)."""
        return self.augment.views if self.augment.active and self.replays_cache() else 0

    @classmethod
    def from_yaml(cls, text: str, source: str = "config") -> "Config":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source} is not valid YAML: {exc}", "fix the YAML syntax") from exc
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist", "pass the path of a YAML file")
        return cls.from_yaml(p.read_text(), source=str(p))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def load_config(path: str | None, embedded: bool = True) -> Config:
    """The file at ``path``; else the embedded digits config, or the generic defaults when the run
    brings its own data (digits settings such as a 16-pixel image size would not fit it)."""
    if path:
        return Config.load(path)
    if not embedded:
        return Config()
    text = resources.files("kdflow.config").joinpath(DEFAULT_CONFIG).read_text()
    return Config.from_yaml(text, source=f"built-in {DEFAULT_CONFIG}")
