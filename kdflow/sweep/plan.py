"""A sweep expanded: every trial's run config, checked before anything runs, and the labelling config.

The plan travels to the pipeline as one JSON string (the ``trials`` parameter): the trials' configs
as YAML, the swept keys, the metric, and which trial's config the teacher labels with.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
from dataclasses import dataclass
from typing import Any, Iterator

from kdflow.config import Config
from kdflow.storage.digest import digest_of
from kdflow.util.errors import ConfigError
from kdflow.sweep.spec import EXAMPLE, MAX_TRIALS, SubGrid, SweepSpec

FORMAT = 1
# Short forms of frequent keys in trial names (``t03-kd-T2``); any other key uses its last part.
_SHORT = {"distill.method": "", "student.arch": "", "distill.options.temperature": "T", "distill.options.alpha": "a",
          "train.epochs": "ep", "train.batch_size": "bs", "train.seed": "seed", "distill.teacher": ""}


@dataclass(frozen=True)
class Trial:
    index: int
    name: str  # t03-kd-T2: the index and the values drawn; the MLflow run name of the trial
    params: dict[str, Any]  # the swept keys this trial sets, as drawn
    config: Config


def value_at(data: dict, key: str) -> Any:
    """The value at a dotted key of a config dict, or None where the config has no such key (e.g. the
    temperature of a method without one)."""
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _fmt(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):  # e.g. hint pairs: a short digest, not a long repr
        return "#" + digest_of(value)[:6]
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def trial_name(index: int, params: dict[str, Any], width: int) -> str:
    parts = [f"t{index:0{width}d}"]
    for key, value in params.items():
        parts.append(f"{_SHORT.get(key, key.rsplit('.', 1)[-1])}{_fmt(value)}")
    return "-".join(parts)[:80].replace(" ", "")


def trial_dict(base: Config, params: dict[str, Any]) -> dict:
    """The base config's dict with the dotted keys set. A trial of another method than the base's
    starts from that method's own option defaults: the base's options belong to the base's method."""
    data = copy.deepcopy(base.to_dict())
    if params.get("distill.method", base.distill.method) != base.distill.method:
        data["distill"]["options"] = {}
    for key, value in params.items():
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}  # a key below a plain value: the config check below names it
            node = node[part]
        node[leaf] = copy.deepcopy(value)
    return data


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items()) or "the base config unchanged"


def _build(base: Config, params: dict[str, Any], index: int) -> Config:
    from kdflow.distillers.preflight import check_models

    try:
        cfg = Config.from_dict(trial_dict(base, params))
        check_models(cfg)  # a trial's layer names, before any trial runs
        return cfg
    except ConfigError as exc:
        fix = exc.fix or ""
        if "unknown config key 'distill.options." in exc.problem:
            from kdflow.config import method_spec

            method = params.get("distill.method", base.distill.method)
            known = ", ".join(method_spec(method).options.model_fields) or "none"
            fix = (f"'{method}' takes the options: {known}. Options belong to one method: sweep them in that "
                   f"method's own sub-grid, e.g. {EXAMPLE}")
        raise ConfigError(f"sweep trial {index} ({_describe(params)}) is not a valid run config: {exc.problem}",
                          fix) from None


def _draws(spec: SweepSpec) -> Iterator[dict[str, Any]]:
    """Grid: every combination of every sub-grid, in order. Random: one draw per attempt (a sub-grid,
    then a value per key, uniformly), seeded; the caller stops when it has enough distinct trials."""
    if spec.strategy == "grid":
        for grid in spec.grids:
            keys = list(grid)
            for combo in itertools.product(*(grid[k].values for k in keys)):
                yield dict(zip(keys, combo))
        return
    rng = random.Random(spec.seed)
    # Enough attempts to find `trials` distinct points unless the space is (nearly) exhausted.
    for _ in range(50 * spec.trials + 100):
        grid: SubGrid = rng.choice(spec.grids)
        yield {k: d.sample(rng) for k, d in grid.items()}


def expand(spec: SweepSpec, base: Config) -> "SweepPlan":
    """Every trial's config, validated, identical trials merged (the first kept). Raises ConfigError
    naming the first bad trial with its index and values."""
    wanted = spec.trials if spec.strategy == "random" else MAX_TRIALS
    seen: set[str] = set()
    kept: list[tuple[dict[str, Any], Config]] = []
    for params in _draws(spec):
        cfg = _build(base, params, len(kept))
        identity = digest_of(cfg.to_dict())
        if identity in seen:
            continue
        seen.add(identity)
        kept.append((params, cfg))
        if len(kept) == wanted:
            break
    if spec.strategy == "random" and len(kept) < spec.trials:
        raise ConfigError(f"sweep drew only {len(kept)} distinct trial(s), not trials: {spec.trials}",
                          "lower trials, widen the ranges, or use strategy: grid")
    if spec.strategy == "grid" and spec.trials is not None and spec.trials != len(kept):
        raise ConfigError(f"sweep key 'trials' is {spec.trials} but the grid expands to {len(kept)} distinct "
                          "trial(s)", f"remove trials (a grid runs every combination) or set trials: {len(kept)}")
    width = max(2, len(str(len(kept) - 1)))
    trials = tuple(Trial(i, trial_name(i, params, width), params, cfg) for i, (params, cfg) in enumerate(kept))
    return SweepPlan(strategy=spec.strategy, metric=spec.metric, swept=spec.swept, trials=trials,
                     labelling=labelling_index(trials), spec=spec.to_dict())


def labelling_index(trials: tuple[Trial, ...]) -> int:
    """The trial whose config the teacher labels with: the first that replays the cache (so the cache
    holds the augmented views the offline trials replay), else the first. Every replaying trial must
    need the same views; the key rules make that so, and this says so if they ever do not."""
    replaying = [t for t in trials if t.config.replays_cache()]
    views = {t.config.cached_views() for t in replaying}
    if len(views) > 1:
        raise ConfigError(f"sweep trials replay different numbers of cached teacher views ({sorted(views)})",
                          "keep augment.* and the cache settings fixed in the base config: all trials share "
                          "one soft-label cache entry")
    return replaying[0].index if replaying else 0


@dataclass(frozen=True)
class SweepPlan:
    strategy: str
    metric: str
    swept: tuple[str, ...]
    trials: tuple[Trial, ...]
    labelling: int  # index of the trial whose config the teacher labels with
    spec: dict  # the sweep file, as logged with the sweep

    def labelling_config(self) -> Config:
        return self.trials[self.labelling].config

    def values(self, trial: Trial) -> dict[str, Any]:
        """Each swept key's value in this trial's config (None where the config has no such key)."""
        data = trial.config.to_dict()
        return {key: value_at(data, key) for key in self.swept}

    def by_name(self) -> dict[str, Trial]:
        return {t.name: t for t in self.trials}

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT, "strategy": self.strategy, "metric": self.metric, "swept": list(self.swept),
            "labelling": self.labelling, "spec": self.spec,
            "trials": [{"index": t.index, "name": t.name, "params": t.params, "config": t.config.to_yaml()}
                       for t in self.trials],
        })

    @classmethod
    def from_json(cls, text: str) -> "SweepPlan":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"the sweep's trials parameter is not JSON: {exc}",
                              "pass the plan kdflow sweep writes (SweepPlan.to_json)") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ConfigError("the sweep's trials parameter is not a kdflow sweep plan (format 1)",
                              "pass the plan kdflow sweep writes (SweepPlan.to_json)")
        trials = tuple(Trial(t["index"], t["name"], t["params"], Config.from_yaml(t["config"], f"trial {t['index']}"))
                       for t in data["trials"])
        return cls(strategy=data["strategy"], metric=data["metric"], swept=tuple(data["swept"]), trials=trials,
                   labelling=data["labelling"], spec=data["spec"])

    def table_lines(self) -> list[str]:
        """The trials as text (``kdflow sweep --dry-run``)."""
        header = ["trial"] + list(self.swept)
        rows = [[t.name] + ["n/a" if v is None else _fmt(v) for v in self.values(t).values()] for t in self.trials]
        widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]
        label = self.labelling_config()
        lines.append(f"{len(self.trials)} trial(s), {self.strategy}; the winner is the best {self.metric}; "
                     f"the teacher labels once with trial {self.labelling}'s config "
                     f"({label.cached_views()} augmented view(s) cached)")
        return lines
