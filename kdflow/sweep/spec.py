"""The sweep file: which run config to start from, what to vary, how to search, what picks the winner.

```yaml
base: run.yaml            # a run config, relative to this file; or `config:` inline; neither: the defaults
strategy: grid            # grid (cartesian product) | random (uniform draws)
trials: 8                 # random: how many; grid: absent, or the number of trials the grid expands to
seed: 0                   # seeds the random draws
metric: val_accuracy      # val_accuracy | val_agreement: validation only, never the test split
parameters:               # dotted run-config key -> list of values; or a list of such mappings
  distill.method: [kd, ce]
  distill.options.temperature: [2.0, 4.0]
```

For ``strategy: random`` a value may also be a distribution: ``{uniform: [a, b]}``,
``{loguniform: [a, b]}`` or ``{int: [a, b]}`` (both ends included). A list of mappings is a union
of sub-grids (as scikit-learn's ParameterGrid takes), so options of one method sweep on their own.

Only ``distill.*``, ``train.*`` and ``student.*`` may vary: every trial replays the same teacher
labels, so anything that changes the data or the soft-label cache entry is fixed across trials.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, PrivateAttr, model_validator

from kdflow.config import Config
from kdflow.util.errors import ConfigError
from kdflow.config.base import Strict

MAX_TRIALS = 256  # a sweep is one pipeline run: more trials than this is a job for several sweeps

SWEEPABLE = ("distill.", "train.", "student.")
# Fixed across trials: all trials share one preprocessing run, one teacher run and one cache entry.
SHARED_PREFIXES = ("data.", "teacher.", "augment.")
SHARED_KEYS = ("data_uri", "teacher_uri", "cache_uri", "tracking_uri")
# Decided once, for the winner.
WINNER_PREFIXES = ("gate.", "registry.")
VALIDATION_METRICS = ("val_accuracy", "val_agreement")  # what the distill step logs per epoch
EXAMPLE = "parameters: [{distill.method: [kd], distill.options.temperature: [2, 4]}, {distill.method: [ce]}]"


@dataclass(frozen=True)
class Choice:
    """A finite list of values (grid and random)."""

    values: tuple

    def sample(self, rng: random.Random) -> Any:
        return rng.choice(self.values)


@dataclass(frozen=True)
class Distribution:
    """A range drawn from by ``strategy: random``: uniform, log-uniform, or integers (ends included)."""

    kind: Literal["uniform", "loguniform", "int"]
    low: float
    high: float

    def sample(self, rng: random.Random) -> Any:
        if self.kind == "int":
            return rng.randint(int(self.low), int(self.high))
        if self.kind == "loguniform":
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return rng.uniform(self.low, self.high)


Domain = Choice | Distribution
SubGrid = dict[str, Domain]


def _error(where: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"sweep {where} {problem}", fix)


def check_key(key: Any, where: str) -> str:
    """A dotted run-config key that may vary across trials; anything else is refused with why."""
    if not isinstance(key, str) or not key.strip():
        raise _error(where, f"has the key {key!r}", "name a run-config setting as a dotted key, e.g. train.lr")
    if key in SHARED_KEYS or key.startswith(SHARED_PREFIXES) or key in ("data", "teacher", "augment"):
        raise _error(where, f"varies '{key}', which must be the same in every trial",
                     "set it in the base config: all trials share one preprocessing run, one teacher run and "
                     "one soft-label cache entry, so the data, the teacher and the augmented views they label "
                     "are fixed; sweep distill.*, train.* or student.* keys")
    if key.startswith(WINNER_PREFIXES) or key in ("gate", "registry"):
        raise _error(where, f"varies '{key}', which is decided once, for the sweep's winner",
                     "set gate.* and registry.* in the base config; sweep distill.*, train.* or student.* keys")
    if not key.startswith(SWEEPABLE):
        hint = "name one setting, e.g. train.lr, " if key in ("distill", "train", "student") else ""
        raise _error(where, f"varies '{key}', which is not a run-config key a sweep may vary",
                     f"{hint}sweep keys under distill., train. or student. (e.g. distill.options.temperature)")
    return key


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _distribution(value: dict, where: str) -> Distribution:
    kinds = ", ".join("{%s: [a, b]}" % k for k in ("uniform", "loguniform", "int"))
    if len(value) != 1 or next(iter(value)) not in ("uniform", "loguniform", "int"):
        raise _error(where, f"is {value!r}, not a distribution", f"write one of {kinds}, or a list of values")
    kind, ends = next(iter(value.items()))
    if not (isinstance(ends, list) and len(ends) == 2 and all(_number(e) for e in ends) and ends[0] <= ends[1]):
        raise _error(where, f"has {kind} ends {ends!r}", f"write {{{kind}: [low, high]}} with numbers low <= high")
    if kind == "loguniform" and ends[0] <= 0:
        raise _error(where, f"is loguniform from {ends[0]}", "use a positive low end (log scale)")
    if kind == "int" and not all(isinstance(e, int) for e in ends):
        raise _error(where, f"has int ends {ends!r}", "use whole numbers, or uniform for a float range")
    return Distribution(kind, ends[0], ends[1])


def _domain(value: Any, where: str, strategy: str) -> Domain:
    if isinstance(value, list):
        if not value:
            raise _error(where, "is an empty list", "give at least one value")
        return Choice(tuple(value))
    if isinstance(value, dict):
        if strategy == "grid":
            raise _error(where, f"is the distribution {value!r} in a grid",
                         "a grid needs a list of values; use strategy: random to draw from a distribution")
        return _distribution(value, where)
    raise _error(where, f"is the single value {value!r}",
                 f"write a list of values, e.g. [{value!r}] (a setting fixed across trials belongs in the base config)")


def parse_parameters(raw: Any, strategy: str) -> tuple[SubGrid, ...]:
    """The ``parameters`` section as sub-grids (one for a mapping, one per item of a list)."""
    if raw is None:
        raise _error("file", "has no 'parameters'",
                     "add parameters: {<dotted key>: [values]}, e.g. parameters: {distill.options.temperature: [2, 4]}")
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise _error("key 'parameters'", "is an empty list", f"give at least one mapping, e.g. {EXAMPLE}")
    grids = []
    for i, item in enumerate(items):
        where = f"key 'parameters[{i}]'" if isinstance(raw, list) else "key 'parameters'"
        if not isinstance(item, dict):
            raise _error(where, f"must be a mapping of dotted keys to lists of values, got {type(item).__name__}",
                         f"write e.g. {EXAMPLE}")
        if not item and not isinstance(raw, list):
            raise _error(where, "is empty",
                         "name at least one setting to vary, e.g. distill.options.temperature: [2, 4]")
        grid = {}
        for key, value in item.items():
            name = check_key(key, where)
            grid[name] = _domain(value, f"parameter '{name}'", strategy)
        grids.append(grid)
    return tuple(grids)


def grid_size(grids: tuple[SubGrid, ...]) -> float:
    """Combinations of a grid (before identical trials are merged); a distribution makes it infinite."""
    total = 0
    for grid in grids:
        if any(isinstance(d, Distribution) for d in grid.values()):
            return math.inf
        total += math.prod(len(d.values) for d in grid.values())
    return total


class SweepSpec(Strict):
    """A sweep file, strictly typed (``parameters`` is free-form and checked by hand)."""

    parameters: Any = None
    base: str | None = Field(None, description="path of a run config; made absolute against the sweep file's folder")
    config: dict[str, Any] | None = Field(None, description="the run config inline")
    strategy: Literal["grid", "random"] = "grid"
    trials: int | None = None
    seed: int = 0
    metric: str = "val_accuracy"
    _grids: tuple = PrivateAttr(default=())  # the parsed parameters, one mapping of key -> values per sub-grid

    @property
    def grids(self) -> tuple:
        return self._grids

    @model_validator(mode="after")
    def _check(self) -> "SweepSpec":
        if self.base is not None and self.config is not None:
            raise _error("file", "has both 'base' and 'config'",
                         "keep one: base (a run-config file) or config (the run config inline)")
        if self.metric.startswith("test_"):
            raise _error("key 'metric'", f"is '{self.metric}', a test-split metric",
                         "choose the winner on the validation split (val_accuracy or val_agreement): the test "
                         "split measures the winner afterwards, and choosing on it would make that measure optimistic")
        if self.metric not in VALIDATION_METRICS:
            raise _error("key 'metric'", f"is '{self.metric}'", f"use one of: {', '.join(VALIDATION_METRICS)}")
        if self.strategy == "random":
            if self.trials is None:
                raise _error("key 'trials'", "is missing for strategy: random",
                             "say how many trials to draw, e.g. trials: 8")
            if not 1 <= self.trials <= MAX_TRIALS:
                raise _error("key 'trials'", f"is {self.trials}", f"use 1..{MAX_TRIALS}")
        self._grids = parse_parameters(self.parameters, self.strategy)
        size = grid_size(self.grids)
        if self.strategy == "grid" and size > MAX_TRIALS:
            raise _error("grid", f"has {size} combinations, more than {MAX_TRIALS}",
                         "vary fewer settings or values, split it into several sweeps, or use strategy: random "
                         "with trials: N")
        if self.strategy == "random" and self.trials > size:
            raise _error("key 'trials'", f"is {self.trials} but the parameters have only {size} combination(s)",
                         f"use trials: {size} or fewer, or strategy: grid")
        return self

    @property
    def swept(self) -> tuple[str, ...]:
        """Every varied key, in the order they first appear."""
        return tuple(dict.fromkeys(k for grid in self.grids for k in grid))

    @classmethod
    def from_dict(cls, data: Any, base_dir: str | Path = ".") -> "SweepSpec":
        if isinstance(data, dict) and isinstance(data.get("base"), str) and data["base"]:
            data = {**data, "base": str((Path(base_dir) / data["base"]).resolve())}
        return super().from_dict(data)

    @classmethod
    def from_yaml(cls, text: str, source: str = "sweep file", base_dir: str | Path = ".") -> "SweepSpec":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source} is not valid YAML: {exc}", "fix the YAML syntax") from exc
        try:
            return cls.from_dict(data, base_dir)
        except ConfigError as exc:  # say which file: a sweep names two (itself and its base)
            raise ConfigError(f"{source}: {exc.problem}", exc.fix) from None

    @classmethod
    def load(cls, path: str | Path) -> "SweepSpec":
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"sweep file {p} does not exist", "pass the path of a sweep YAML file "
                                                                 "(see examples/sweep-digits.yaml)")
        return cls.from_yaml(p.read_text(), source=str(p), base_dir=p.parent)

    def base_config(self, embedded: bool = True) -> Config:
        """The run config the trials start from: ``base``, ``config``, else what ``kdflow run`` would use
        (the embedded digits config, or the generic defaults for a run that brings its own data)."""
        from kdflow.config import load_config

        if self.config is not None:
            return Config.from_dict(self.config)
        return load_config(self.base, embedded=embedded)

    def to_dict(self) -> dict:
        """The file's content (``base`` made absolute), as logged with the sweep."""
        return {name: getattr(self, name) for name in type(self).model_fields}
