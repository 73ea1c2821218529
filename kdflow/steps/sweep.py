"""Sweep steps: open the MLflow parent run before the trials train, pick the winner after.

The trials themselves are the distill step (``run_distillation`` with ``parent_run_id``), one per
trial config, all replaying the soft labels one teacher-inference step wrote.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import yaml

from kdflow.config import Config
from kdflow.data.shards import DatasetManifest
from kdflow.util.errors import ConfigError, DataError, KdflowError
from kdflow.util.logs import setup_logging
from kdflow.steps.preamble import begin_step
from kdflow.util.redact import redact_text
from kdflow.sweep.plan import SweepPlan
from kdflow.sweep.report import TrialResult, plot_trials, ranked, table_markdown, trial_table
from kdflow.registry.tags import SweepTag, Tag

log = logging.getLogger(__name__)

VAL_FIX = "set data.val_fraction > 0 (or give the data a val/ folder): a sweep picks its winner on the validation split"


def _check_labelling(cfg: Config, plan: SweepPlan) -> None:
    """The ``config`` the teacher labelled with must describe the cache entry the trials replay."""
    want = plan.labelling_config()
    same = (cfg.data, cfg.teacher, cfg.augment) == (want.data, want.teacher, want.augment)
    if not same or cfg.cached_views() != want.cached_views():
        raise ConfigError("the pipeline's config is not the sweep's labelling config: the teacher would label "
                          "other views than the trials replay",
                          f"pass config = the config of trial {plan.labelling} of the plan in trials")


def start_sweep(dataset_dir: str, config_yaml: str, trials_json: str, tracking_uri: str | None,
                pipeline_run: str = "", sweep_id: str = "") -> dict:
    """Create the sweep's MLflow parent run (left RUNNING until ``select_best`` finishes it, or
    ``close_sweep`` fails it), tagged with ``sweep_id`` (default: the pipeline run's name), and log
    the sweep file, the plan and the labelling config to it. Returns {"parent_run_id", "trials": one
    item per trial for the pipeline's loop: run_name, config (YAML), parent_run_id, pipeline_run}."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    from kdflow.registry import tracking

    cfg = begin_step(config_yaml)
    sweep_id = sweep_id or pipeline_run
    plan = SweepPlan.from_json(trials_json)
    _check_labelling(cfg, plan)
    dataset = DatasetManifest.open(dataset_dir)
    if not dataset.count("val"):  # refused before any trial trains, not after
        raise DataError("the dataset has no validation split to choose the sweep's winner on", VAL_FIX)
    tracking_uri = tracking.use_tracking(tracking_uri)
    from kdflow.sweep.summary import find_parent

    if find_parent(sweep_id) is not None:
        raise ConfigError(f"a sweep with id '{sweep_id}' already exists in MLflow",
                          "give each sweep run its own sweep_id (kdflow sweep makes a fresh one)")
    exp = tracking.experiment_id(cfg.registry.experiment, tracking_uri)
    client = MlflowClient()
    run = client.create_run(exp, run_name=f"sweep-{len(plan.trials)}-trials", tags={
        SweepTag.SWEEP: "true", SweepTag.ID: sweep_id, SweepTag.METRIC: plan.metric, SweepTag.TRIALS: str(len(plan.trials)),
        Tag.PIPELINE_RUN: pipeline_run, Tag.DATASET_FINGERPRINT: dataset.fingerprint})
    run_id = run.info.run_id
    params = {"sweep.strategy": plan.strategy, "sweep.metric": plan.metric, "sweep.trials": len(plan.trials),
              "sweep.swept": ", ".join(plan.swept), "sweep.labelling_trial": plan.trials[plan.labelling].name}
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    # Artifacts anyone with access to the experiment reads: a URI with credentials or a secret value
    # that got into the sweep file or a config is masked (the trials themselves refuse such URIs).
    client.log_text(run_id, redact_text(yaml.safe_dump(plan.spec, sort_keys=False)), "sweep/spec.yaml")
    client.log_text(run_id, redact_text(trials_json), "sweep/plan.json")
    client.log_text(run_id, redact_text(cfg.to_yaml()), "sweep/labelling-config.yaml")
    log.info("sweep: parent run %s, %d trial(s), winner by %s", run_id, len(plan.trials), plan.metric)
    items = [{"run_name": t.name, "config": t.config.to_yaml(), "parent_run_id": run_id, "pipeline_run": pipeline_run}
             for t in plan.trials]
    return {"parent_run_id": run_id, "trials": items}


def _final(client, run_id: str, metric: str) -> float | None:
    """The value at the last logged step (the last epoch: the model the trial saved)."""
    history = client.get_metric_history(run_id, metric)
    return max(history, key=lambda m: (m.step, m.timestamp)).value if history else None


def _results(client, parent_run_id: str, trial_run_ids: list[str], plan: SweepPlan) -> list[TrialResult]:
    by_name = plan.by_name()
    results: dict[str, TrialResult] = {}
    for run_id in trial_run_ids:
        run = client.get_run(run_id)
        if run.data.tags.get(SweepTag.PARENT_RUN_ID) != parent_run_id:
            raise KdflowError(f"run {run_id} is not a trial of the sweep {parent_run_id}",
                              "pass the run ids the sweep's distill tasks returned")
        trial = by_name.get(run.info.run_name)
        if trial is None or trial.name in results:
            raise KdflowError(f"run {run_id} ({run.info.run_name}) is not one of the plan's trials, or is twice",
                              "pass each trial's run id once")
        value = _final(client, run_id, plan.metric)
        if value is None:
            raise DataError(f"trial {trial.name} (run {run_id}) logged no {plan.metric}", VAL_FIX)
        agreement = _final(client, run_id, "val_agreement")
        seconds = (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None
        results[trial.name] = TrialResult(trial.index, trial.name, run_id, plan.values(trial), value, agreement,
                                          seconds)
    missing = [name for name in by_name if name not in results]
    if missing:
        raise KdflowError(f"the sweep has no run for trial(s) {', '.join(missing)}", "pass every trial's run id")
    return list(results.values())


def _model_uri(run) -> str:
    outputs = run.outputs.model_outputs if run.outputs else []
    if not outputs:
        raise KdflowError(f"the winning run {run.info.run_id} logged no model", "re-run the sweep")
    return f"models:/{outputs[-1].model_id}"


def select_best(parent_run_id: str, trial_run_ids: list[str], trials_json: str, tracking_uri: str | None,
                trial_models: list[tuple[str, str]], out_dir: str) -> dict:
    """Pick the trial with the best final validation metric (ties: the lower index); log the trials'
    table (trials.json, trials.md) and plot (sweep.png) to the parent run, rank every trial, name the
    winner on the parent and finish it. Test metrics are never read.

    ``trial_models``: (model folder, run id) of every trial; the winner's folder is copied to
    ``out_dir`` (its student, without the training checkpoints), matched by run id, not by order.
    Returns {"run_id", "model_uri", "config" (YAML), "index", "name", "metric", "value"} of the winner.
    """
    from mlflow import MlflowClient

    from kdflow.registry import tracking

    setup_logging()
    plan = SweepPlan.from_json(trials_json)
    tracking.use_tracking(tracking_uri)
    client = MlflowClient()
    results = _results(client, parent_run_id, trial_run_ids, plan)
    order = ranked(results)
    best = order[0]
    table = trial_table(results, plan.swept, plan.metric)
    with tempfile.TemporaryDirectory() as tmp:
        plot_trials(results, plan.swept, plan.metric, Path(tmp) / "sweep.png")
        client.log_artifact(parent_run_id, str(Path(tmp) / "sweep.png"))
    client.log_table(parent_run_id, data=table, artifact_file="trials.json")
    client.log_text(parent_run_id, table_markdown(table), "trials.md")
    # What can still fail comes before the parent is marked finished with a winner.
    model_uri = _model_uri(client.get_run(best.run_id))
    folder = next((path for path, run_id in trial_models if run_id == best.run_id), None)
    if folder is None:
        raise KdflowError(f"no trial model belongs to the winning run {best.run_id}",
                          "pass every trial's model folder with its run id")
    # The student is what evaluation and registration need; the checkpoints stay with the trial.
    shutil.copytree(folder, out_dir, ignore=shutil.ignore_patterns("checkpoints"), dirs_exist_ok=True)
    for rank, result in enumerate(order, 1):
        client.set_tag(result.run_id, SweepTag.RANK, str(rank))
    client.set_tag(parent_run_id, SweepTag.BEST_RUN_ID, best.run_id)
    client.set_tag(parent_run_id, SweepTag.BEST_TRIAL, best.name)
    client.log_metric(parent_run_id, f"best_{plan.metric}", best.metric)
    client.set_terminated(parent_run_id, "FINISHED")
    log.info("sweep: winner %s (run %s), %s %.4f", best.name, best.run_id, plan.metric, best.metric)
    trial = plan.trials[best.index]
    return {"run_id": best.run_id, "model_uri": model_uri, "config": trial.config.to_yaml(), "index": best.index,
            "name": best.name, "metric": plan.metric, "value": best.metric}


def close_sweep(sweep_id: str, tracking_uri: str | None, state: str, error: str | None = None,
                pipeline_run: str = "") -> list[str]:
    """``sweep_id`` empty: the pipeline run's name, as ``start_sweep`` tagged it."""
    """The sweep pipeline's exit step: when the pipeline did not succeed, mark the sweep's parent run
    (and any trial still RUNNING) FAILED, so a failed sweep leaves no run that looks in progress.
    Returns the ids of the runs it closed."""
    import mlflow
    from mlflow import MlflowClient

    from kdflow.registry import tracking
    from kdflow.sweep.summary import find_parent

    setup_logging()
    if state == "SUCCEEDED":
        return []
    sweep_id = sweep_id or pipeline_run
    # The pipeline's error text quotes what failed (URIs, a library's message naming the tracking URL):
    # redacted before it becomes a tag, and before the cut, which could split a URI and hide its "@".
    reason = redact_text(error or state)[:5000]
    tracking.use_tracking(tracking_uri)
    parent = find_parent(sweep_id)
    if parent is None:  # it failed before start-sweep made the parent run: nothing to close
        log.warning("sweep %s ended %s before its parent run was made", sweep_id, state)
        return []
    if pipeline_run and parent.data.tags.get(Tag.PIPELINE_RUN) != pipeline_run:
        # Another pipeline run's sweep (this one was refused for reusing its id): not ours to touch.
        log.warning("sweep %s ended %s; its id belongs to pipeline run %s", sweep_id, state,
                    parent.data.tags.get(Tag.PIPELINE_RUN))
        return []
    client = MlflowClient()
    # A sweep that failed after selection (evaluation, registration) keeps its FINISHED parent and
    # winner, and says why the pipeline failed.
    client.set_tag(parent.info.run_id, SweepTag.ERROR, reason)
    children = mlflow.search_runs(experiment_ids=[parent.info.experiment_id], output_format="list",
                                  filter_string=f"tags.`{SweepTag.PARENT_RUN_ID}` = '{parent.info.run_id}'")
    closed = []
    for run in [parent, *children]:
        if run.info.status == "RUNNING":
            if run is not parent:  # the parent is tagged above, finished or not
                client.set_tag(run.info.run_id, SweepTag.ERROR, reason)
            client.set_terminated(run.info.run_id, "FAILED")
            closed.append(run.info.run_id)
    if closed:
        log.warning("sweep %s ended %s: marked FAILED %s", sweep_id, state, closed)
    return closed
