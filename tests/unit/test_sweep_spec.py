"""Sweep files: expansion into validated trial configs, the keys a sweep may not vary, the table and plot."""

import json
import random

import pytest

from kdflow.config import Config
from kdflow.util.errors import ConfigError
from kdflow.sweep import MAX_TRIALS, SweepPlan, SweepSpec, expand
from kdflow.sweep.report import TrialResult, plot_trials, ranked, table_markdown, trial_table

BASE = Config.from_yaml("""
augment: {crop: pad, padding: 2, views: 2}
train: {epochs: 2}
distill: {method: kd, options: {temperature: 3.0, alpha: 0.5}}
""")


def plan_of(text: str, base: Config = BASE) -> SweepPlan:
    return expand(SweepSpec.from_yaml(text), base)


def test_grid_is_the_cartesian_product_in_order():
    plan = plan_of("parameters: {distill.options.temperature: [2, 4], train.lr: [0.1, 0.01, 0.001]}")
    got = [(t.config.distill.options.temperature, t.config.train.lr) for t in plan.trials]
    assert got == [(2.0, 0.1), (2.0, 0.01), (2.0, 0.001), (4.0, 0.1), (4.0, 0.01), (4.0, 0.001)]
    assert [t.index for t in plan.trials] == list(range(6))
    assert plan.trials[0].name == "t00-T2-lr0.1"
    # Everything not swept is the base's, options included.
    assert all(t.config.distill.options.alpha == 0.5 and t.config.train.epochs == 2 for t in plan.trials)
    assert plan.swept == ("distill.options.temperature", "train.lr")


def test_list_of_mappings_is_a_union_of_sub_grids_and_duplicates_merge():
    plan = plan_of("""
parameters:
  - {distill.method: [kd], distill.options.temperature: [2, 4]}
  - {distill.method: [ce]}
  - {distill.options.temperature: [4.0, 3]}   # T=4 again, and T=3: the base itself
""")
    names = [t.name for t in plan.trials]
    assert names == ["t00-kd-T2", "t01-kd-T4", "t02-ce", "t03-T3"]
    assert [t.config.distill.method for t in plan.trials] == ["kd", "kd", "ce", "kd"]
    assert plan.trials[3].config == BASE


def test_method_change_drops_the_base_options_and_keeps_them_otherwise():
    plan = plan_of("parameters: [{distill.method: [ce]}, {distill.method: [kd], train.seed: [7]}]")
    ce, kd = plan.trials
    assert ce.config.distill.method == "ce" and ce.config.to_dict()["distill"]["options"] == {}
    # Same method as the base: the base's (non-default) options are carried over.
    assert kd.config.distill.options.temperature == 3.0 and kd.config.distill.options.alpha == 0.5


def test_method_specific_option_in_a_shared_grid_names_the_trial_and_the_fix():
    with pytest.raises(ConfigError) as exc:
        plan_of("parameters: {distill.method: [kd, ce], distill.options.temperature: [2, 4]}")
    msg = str(exc.value)
    assert "sweep trial 2 (distill.method='ce', distill.options.temperature=2)" in msg
    assert "unknown config key 'distill.options.temperature'" in msg
    assert "sub-grid" in msg


def test_bad_value_reports_the_first_bad_trial_with_its_index_and_values():
    with pytest.raises(ConfigError, match=r"sweep trial 1 \(train.lr=-0.1\).*'train.lr' is -0.1"):
        plan_of("parameters: {train.lr: [0.1, -0.1, -0.2]}")
    with pytest.raises(ConfigError, match=r"(?s)sweep trial 0 \(train.epochz=3\).*did you mean 'epochs'"):
        plan_of("parameters: {train.epochz: [3]}")


def test_random_sampling_is_reproducible_by_seed_and_draws_from_distributions():
    text = """
strategy: random
trials: 6
seed: {seed}
parameters:
  train.lr: {{loguniform: [0.001, 0.1]}}
  train.batch_size: {{int: [8, 64]}}
  distill.options.alpha: {{uniform: [0.2, 0.8]}}
  distill.options.temperature: [2, 4, 8]
"""
    a, b, c = (plan_of(text.format(seed=s)) for s in (0, 0, 1))
    values = [[tuple(t.params.values()) for t in p.trials] for p in (a, b, c)]
    assert values[0] == values[1] and values[0] != values[2]
    assert len(a.trials) == 6
    for t in a.trials:
        lr, bs, alpha, temp = t.params.values()
        assert 0.001 <= lr <= 0.1 and isinstance(bs, int) and 8 <= bs <= 64 and 0.2 <= alpha <= 0.8
        assert temp in (2, 4, 8) and t.config.train.lr == lr


def test_random_over_a_finite_space_draws_distinct_trials_or_says_it_cannot():
    plan = plan_of("{strategy: random, trials: 4, parameters: {train.seed: [0, 1], train.lr: [0.1, 0.2]}}")
    assert len({(t.config.train.seed, t.config.train.lr) for t in plan.trials}) == 4
    with pytest.raises(ConfigError, match="trials' is 5 but the parameters have only 4 combination"):
        SweepSpec.from_yaml("{strategy: random, trials: 5, parameters: {train.seed: [0, 1], train.lr: [0.1, 0.2]}}")
    # A list-of-one-sub-grid union of equal points: 2 combinations, 1 distinct trial.
    with pytest.raises(ConfigError, match="drew only 1 distinct"):
        plan_of("{strategy: random, trials: 2, parameters: [{train.seed: [0]}, {train.seed: [0]}]}")


@pytest.mark.parametrize("key", ["data.image_size", "teacher.top_k", "augment.views", "data_uri", "teacher_uri",
                                 "cache_uri", "tracking_uri", "augment"])
def test_keys_that_change_the_data_or_the_cache_entry_are_refused(key):
    with pytest.raises(ConfigError) as exc:
        SweepSpec.from_yaml(f"parameters: {{{key}: [1, 2]}}")
    msg = str(exc.value)
    assert f"'{key}', which must be the same in every trial" in msg
    assert "one teacher run and one soft-label cache entry" in msg and "fix:" in msg


def test_other_keys_are_refused_with_what_may_vary():
    with pytest.raises(ConfigError, match="(?s)decided once, for the sweep's winner.*base config"):
        SweepSpec.from_yaml("parameters: {gate.max_drop: [0.01, 0.02]}")
    with pytest.raises(ConfigError, match="(?s)'optimizer'.*not a run-config key.*distill., train. or student."):
        SweepSpec.from_yaml("parameters: {optimizer: [sgd]}")


def test_test_metrics_are_refused_with_why():
    with pytest.raises(ConfigError) as exc:
        SweepSpec.from_yaml("{metric: test_student_accuracy, parameters: {train.lr: [0.1]}}")
    assert "a test-split metric" in str(exc.value) and "val_accuracy" in exc.value.fix
    assert SweepSpec.from_yaml("{metric: val_agreement, parameters: {train.lr: [0.1]}}").metric == "val_agreement"


@pytest.mark.parametrize("text, match", [
    ("{}", "has no 'parameters'"),
    ("parameters: {train.lr: 0.1}", r"single value 0.1.*\[0.1\]"),
    ("parameters: {train.lr: []}", "empty list"),
    ("parameters: {train.lr: {uniform: [0.1, 0.2]}}", "distribution .* in a grid"),
    ("{strategy: random, trials: 2, parameters: {train.lr: {normal: [0, 1]}}}", "not a distribution"),
    ("{strategy: random, trials: 2, parameters: {train.lr: {loguniform: [0, 1]}}}", "positive low end"),
    ("{strategy: random, parameters: {train.lr: [0.1]}}", "'trials' is missing"),
    ("{strategy: grid, trials: 3, parameters: {train.lr: [0.1, 0.2]}}", "grid expands to 2"),
    ("{metrik: val_accuracy, parameters: {train.lr: [0.1]}}", "unknown config key 'metrik'"),
    ("{base: a.yaml, config: {}, parameters: {train.lr: [0.1]}}", "both 'base' and 'config'"),
    ("parameters: [{train.lr: [0.1]}, 3]", r"parameters\[1\]' must be a mapping"),
])
def test_malformed_sweep_files_say_what_and_how(text, match):
    with pytest.raises(ConfigError, match=f"(?s){match}"):
        plan_of(text)


def test_grid_size_is_capped_before_expansion():
    values = list(range(MAX_TRIALS + 1))
    with pytest.raises(ConfigError, match=f"{MAX_TRIALS + 1} combinations, more than {MAX_TRIALS}"):
        SweepSpec.from_dict({"parameters": {"train.seed": values}})


def test_labelling_config_is_the_first_that_replays_the_cache():
    plan = plan_of("parameters: [{distill.method: [ce]}, {distill.method: [kd], distill.options.temperature: [2]}]")
    assert plan.labelling == 1 and plan.labelling_config().cached_views() == 2
    only_ce = plan_of("parameters: {distill.method: [ce], train.seed: [0, 1]}")
    assert only_ce.labelling == 0


def test_base_file_is_relative_to_the_sweep_file_and_inline_config_works(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "run.yaml").write_text("train: {epochs: 3}\n")
    (tmp_path / "sweep.yaml").write_text("base: runs/run.yaml\nparameters: {train.lr: [0.1]}\n")
    assert SweepSpec.load(tmp_path / "sweep.yaml").base_config().train.epochs == 3
    inline = SweepSpec.from_yaml("{config: {train: {epochs: 4}}, parameters: {train.lr: [0.1]}}")
    assert inline.base_config().train.epochs == 4
    with pytest.raises(ConfigError, match="sweep file .* does not exist"):
        SweepSpec.load(tmp_path / "nope.yaml")


def test_plan_round_trips_through_json():
    plan = plan_of("parameters: [{distill.method: [kd], distill.options.temperature: [2, 4]}, {distill.method: [ce]}]")
    again = SweepPlan.from_json(plan.to_json())
    assert again == plan
    assert json.loads(plan.to_json())["spec"]["parameters"][1] == {"distill.method": ["ce"]}
    assert again.values(again.trials[2]) == {"distill.method": "ce", "distill.options.temperature": None}


def _results() -> list[TrialResult]:
    rows = [("t00-kd-T2", {"distill.method": "kd", "distill.options.temperature": 2.0}, 0.90),
            ("t01-kd-T4", {"distill.method": "kd", "distill.options.temperature": 4.0}, 0.95),
            ("t02-ce", {"distill.method": "ce", "distill.options.temperature": None}, 0.95)]
    return [TrialResult(i, name, f"run{i}", values, metric, agreement=metric - 0.01, seconds=12.345)
            for i, (name, values, metric) in enumerate(rows)]


def test_ranking_prefers_the_higher_metric_then_the_lower_index():
    results = _results()
    random.Random(0).shuffle(results)
    assert [r.name for r in ranked(results)] == ["t01-kd-T4", "t02-ce", "t00-kd-T2"]


def test_table_columns_and_markdown():
    table = trial_table(_results(), ["distill.method", "distill.options.temperature"], "val_accuracy")
    assert list(table) == ["rank", "trial", "run_id", "distill.method", "distill.options.temperature",
                           "val_accuracy", "val_agreement", "train_seconds"]
    assert table["trial"] == ["t01-kd-T4", "t02-ce", "t00-kd-T2"] and table["rank"] == [1, 2, 3]
    assert table["distill.options.temperature"] == ["4.0", "n/a", "2.0"]  # one type per column
    assert table["train_seconds"] == [12.3, 12.3, 12.3]
    md = table_markdown(table).splitlines()
    assert md[0].startswith("| rank | trial | run_id |") and len(md) == 2 + 3
    assert "| 1 | t01-kd-T4 | run1 | kd | 4.0 | 0.9500 |" in md[2]


def test_plot_has_one_subplot_per_swept_key_and_writes_a_png(tmp_path):
    swept = ["distill.method", "distill.options.temperature", "train.lr"]
    results = [TrialResult(r.index, r.name, r.run_id, {**r.values, "train.lr": 0.1 * (r.index + 1)}, r.metric)
               for r in _results()]
    fig = plot_trials(results, swept, "val_accuracy", tmp_path / "sweep.png")
    assert len(fig.axes) == 3
    assert [ax.get_xlabel() for ax in fig.axes] == ["distill.method", "distill.options.temperature (1 trial(s) n/a)",
                                                    "train.lr"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["kd", "ce"]
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trial_names_stay_short_for_list_values():
    from kdflow.sweep.plan import trial_name

    pairs_a = [{"teacher": "layer2", "student": "stages.1", "weight": 10.0}]
    pairs_b = [{"teacher": "layer2", "student": "stages.1", "weight": 100.0}]
    a = trial_name(0, {"distill.method": "hint", "distill.options.pairs": pairs_a}, 2)
    b = trial_name(1, {"distill.method": "hint", "distill.options.pairs": pairs_b}, 2)
    assert a.startswith("t00-hint-pairs#") and len(a) < 30 and a[4:] != b[4:]
