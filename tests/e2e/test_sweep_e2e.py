"""A sweep through kfp.local against a real MLflow server and a real S3 API on loopback, and the CLI."""

import boto3
import pytest

from kdflow.config import Config
from kdflow.sweep import SweepSpec, expand
from kdflow.pipelines.local import run_sweep_local
from tests.helpers import run_kdflow

pytestmark = pytest.mark.e2e

SWEEP = """
strategy: grid
parameters:
  - {distill.method: [kd], distill.options.temperature: [2.0, 4.0]}
  - {distill.method: [ce]}
"""


def _final(client, run_id, metric):
    return max(client.get_metric_history(run_id, metric), key=lambda m: (m.step, m.timestamp)).value


def _plan(tiny_config_yaml, sweep_yaml, *, model, experiment, epochs, cache_uri, inputs):
    """The tiny config renamed for this test, with its inputs, and the sweep plan expanded from it."""
    config = (tiny_config_yaml.replace("tiny-student", model).replace("experiment: tiny", f"experiment: {experiment}")
              .replace("train: {epochs: 8,", f"train: {{epochs: {epochs},"))
    base = Config.from_yaml(config).replace(cache_uri=cache_uri, **inputs)
    return base, expand(SweepSpec.from_yaml(sweep_yaml), base)


def _run(tmp_path, base, plan, **extra):
    return run_sweep_local(str(tmp_path / "root"), {
        "data_uri": base.data_uri, "teacher_uri": base.teacher_uri, "config": plan.labelling_config().to_yaml(),
        "trials": plan.to_json(), "cache_uri": base.cache_uri, "tracking_uri": base.tracking_uri, **extra})


def test_sweep_labels_once_and_registers_the_best_on_validation(tmp_path, tiny_data, tiny_teacher, tiny_config_yaml,
                                                                 mlflow_server, s3_bucket):
    from mlflow import MlflowClient

    inputs = {"data_uri": str(tiny_data), "teacher_uri": tiny_teacher, "tracking_uri": mlflow_server}
    base, plan = _plan(tiny_config_yaml, SWEEP, model="sweep-student", experiment="sweep", epochs=2,
                       cache_uri=f"s3://{s3_bucket}/cache", inputs=inputs)
    assert [t.name for t in plan.trials] == ["t00-kd-T2", "t01-kd-T4", "t02-ce"] and plan.labelling == 0
    winner = _run(tmp_path, base, plan)

    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    parent_id = client.get_run(winner).data.tags["mlflow.parentRunId"]
    parent = client.get_run(parent_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    by_name = {r.info.run_name: r for r in children}
    assert sorted(by_name) == ["t00-kd-T2", "t01-kd-T4", "t02-ce"]
    assert by_name["t02-ce"].data.params["distill.method"] == "ce"
    assert by_name["t01-kd-T4"].data.params["distill.options.temperature"] == "4.0"

    # The teacher labelled once: one cache entry, and every trial replayed (or validated on) it.
    objects = boto3.client("s3").list_objects_v2(Bucket=s3_bucket, Prefix="cache/")["Contents"]
    entries = [o["Key"] for o in objects if "/entries/" in o["Key"]]
    assert len(entries) == 1
    keys = {r.data.tags["kdflow.softlabel_cache_key"] for r in children}
    assert len(keys) == 1 and entries[0].endswith(f"{keys.pop()}.json")
    assert {r.data.tags["kdflow.softlabel_cache_hit"] for r in children} == {"false"}  # this sweep's one teacher run
    assert {r.data.tags["kdflow.pipeline_run"] for r in children} == {parent.data.tags["kdflow.pipeline_run"]}

    # The winner is the best final validation accuracy, a tie going to the lower index; test metrics
    # exist on the winner alone (the losers were never evaluated on the test split).
    finals = {name: _final(client, r.info.run_id, "val_accuracy") for name, r in by_name.items()}
    best = max(plan.trials, key=lambda t: (finals[t.name], -t.index))
    assert winner == by_name[best.name].info.run_id
    for name, run in by_name.items():
        assert ("test_student_accuracy" in run.data.metrics) == (name == best.name)
    ranks = {name: int(r.data.tags["kdflow.sweep.rank"]) for name, r in
             ((n, client.get_run(r.info.run_id)) for n, r in by_name.items())}
    assert ranks[best.name] == 1 and sorted(ranks.values()) == [1, 2, 3]

    # The parent: finished, the table and the plot, the winner named.
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["kdflow.sweep.best_run_id"] == winner
    assert parent.data.metrics["best_val_accuracy"] == finals[best.name]
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"trials.json", "trials.md", "sweep.png", "sweep"} <= artifacts

    version = client.get_model_version_by_alias("sweep-student", "challenger")
    assert version.tags["kdflow.run_id"] == winner and version.run_id == winner


def test_a_failed_trial_fails_the_sweep_and_closes_its_runs(tmp_path, tiny_data, tiny_teacher, tiny_config_yaml,
                                                             mlflow_server, s3_bucket):
    """A trial that diverges fails the pipeline; the exit task marks the parent FAILED; nothing is registered."""
    from mlflow import MlflowClient

    inputs = {"data_uri": str(tiny_data), "teacher_uri": tiny_teacher, "tracking_uri": mlflow_server}
    base, plan = _plan(tiny_config_yaml, "parameters: {train.lr: [0.05, 1.0e+30]}", model="never-swept",
                       experiment="sweep-fail", epochs=1, cache_uri=f"s3://{s3_bucket}/cache-fail", inputs=inputs)
    with pytest.raises(RuntimeError):
        _run(tmp_path, base, plan, sweep_id="sweep-that-fails")
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    (parent,) = client.search_runs([client.get_experiment_by_name("sweep-fail").experiment_id],
                                   "tags.`kdflow.sweep.id` = 'sweep-that-fails'")
    assert parent.info.status == "FAILED" and "kdflow.sweep.error" in parent.data.tags
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {r.info.status for r in children} <= {"FINISHED", "FAILED"} and "FAILED" in {r.info.status for r in children}
    assert "kdflow.sweep.best_run_id" not in parent.data.tags
    assert client.search_model_versions("name='never-swept'") == []


def kdflow(*args, cwd):
    return run_kdflow(*args, cwd=cwd)


def test_cli_dry_run_prints_the_trials_and_runs_nothing(tmp_path, tiny_config_yaml):
    (tmp_path / "run.yaml").write_text(tiny_config_yaml)
    (tmp_path / "sweep.yaml").write_text("base: run.yaml\n" + SWEEP)
    done = kdflow("sweep", "--config", str(tmp_path / "sweep.yaml"), "--dry-run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["trial", "distill.method", "distill.options.temperature"]
    assert [line.split() for line in lines[1:4]] == [["t00-kd-T2", "kd", "2"], ["t01-kd-T4", "kd", "4"],
                                                     ["t02-ce", "ce", "n/a"]]
    assert "3 trial(s), grid" in lines[4] and "2 augmented view(s)" in lines[4]
    assert not (tmp_path / ".kdflow").exists()


def test_cli_refuses_a_bad_sweep_file_with_exit_2(tmp_path):
    (tmp_path / "sweep.yaml").write_text("parameters: {distill.method: [kd, ce], data.image_size: [8, 12]}\n")
    done = kdflow("sweep", "--config", str(tmp_path / "sweep.yaml"), cwd=tmp_path)
    assert done.returncode == 2
    assert "'data.image_size', which must be the same in every trial" in done.stderr
    assert "fix:" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / ".kdflow").exists()
