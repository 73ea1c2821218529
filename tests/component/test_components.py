"""Components run through kfp.local.SubprocessRunner, as a cluster would run them.

kfp.local runs a lone component only when its inputs are parameters; components that take
artifacts run inside small test pipelines that wire just them.
"""

import json
from pathlib import Path
from typing import NamedTuple

import pytest
from kfp import dsl, local

from kdflow.components.distill import distill
from kdflow.components.evaluate import evaluate
from kdflow.components.preprocess import preprocess
from kdflow.components.register import register
from kdflow.components.teacher_commit import teacher_commit
from kdflow.components.teacher_inference import teacher_inference
from kdflow.components.teacher_part import teacher_part
from kdflow.components.teacher_plan import teacher_plan
from kdflow.pipelines.distill_pipeline import make_preprocess_fanout

pytestmark = pytest.mark.component


@pytest.fixture()
def runner(tmp_path):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=True)
    return tmp_path


def test_preprocess_component(runner, tiny_data, tiny_config_yaml):
    prep = preprocess(data_uri=str(tiny_data), config=tiny_config_yaml)
    dataset = prep.outputs["dataset"]
    manifest = json.loads((Path(dataset.path) / "manifest.json").read_text())
    assert prep.outputs["Output"] == manifest["fingerprint"] == dataset.metadata["fingerprint"]
    counts = dataset.metadata["counts"]
    assert counts == {s: manifest["splits"][s]["count"] for s in ("train", "val", "test")}
    assert sum(counts.values()) == 60 and min(counts.values()) > 0  # per-sample hash split of 60 images
    assert dataset.metadata["groups"] == 60  # no grouping: every sample is its own group


def test_preprocess_component_fails_cleanly(runner, tmp_path, tiny_config_yaml):
    (tmp_path / "bad" / "only").mkdir(parents=True)
    with pytest.raises(RuntimeError, match="preprocess"):
        preprocess(data_uri=str(tmp_path / "bad"), config=tiny_config_yaml)
    assert not list((runner / "root").rglob("manifest.json"))


def _plain(task, cache: bool = True):
    return task


_PREPROCESS_FANOUT = make_preprocess_fanout(_plain, 2)


@dsl.pipeline(name="preprocess-both-ways")
def _preprocess_both_ways(data_uri: str, config: str, work: str) -> NamedTuple("Prints", one=str, fanned=str):
    one = preprocess(data_uri=data_uri, config=config)
    fanned = _PREPROCESS_FANOUT(data_uri=data_uri, config=config, work=work, source_fingerprint="")
    Prints = NamedTuple("Prints", one=str, fanned=str)
    return Prints(one=one.outputs["Output"], fanned=fanned.outputs["fingerprint"])


def test_preprocess_fans_out_into_the_one_task_dataset(runner, tiny_data, tiny_config_yaml):
    """plan -> a ParallelFor of decode parts (20 files each: 3) -> assemble gives the dataset the
    one-task step gives: the same fingerprint, hence the same shard bytes."""
    fanned = tiny_config_yaml.replace("data: {", "data: {files_per_part: 20, ")
    assert fanned != tiny_config_yaml
    out = _preprocess_both_ways(data_uri=str(tiny_data), config=fanned, work=str(runner / "work"))
    assert out.outputs["one"] == out.outputs["fanned"]
    assert len(list((runner / "work").rglob("part-*"))) == 3


@dsl.pipeline(name="teacher-twice")
def _teacher_twice(data_uri: str, teacher_uri: str, config: str, cache_uri: str
                   ) -> NamedTuple("Hits", first=bool, second=bool):
    prep = preprocess(data_uri=data_uri, config=config)
    first = teacher_inference(dataset=prep.outputs["dataset"], teacher_uri=teacher_uri, config=config,
                              cache_uri=cache_uri)
    second = teacher_inference(dataset=prep.outputs["dataset"], teacher_uri=teacher_uri, config=config,
                               cache_uri=cache_uri).after(first)
    Hits = NamedTuple("Hits", first=bool, second=bool)
    return Hits(first=first.outputs["Output"], second=second.outputs["Output"])


def test_teacher_inference_component_misses_then_hits(runner, tiny_data, tiny_teacher, tiny_config_yaml):
    cache = runner / "cache"
    out = _teacher_twice(data_uri=str(tiny_data), teacher_uri=tiny_teacher, config=tiny_config_yaml,
                         cache_uri=str(cache))
    assert out.outputs["first"] is False and out.outputs["second"] is True
    assert len(list(cache.rglob("entries/*.json"))) == 1
    assert len(list(cache.rglob("views/*/manifests/*.json"))) == 3  # the plain view and 2 augmented ones


@dsl.pipeline(name="teacher-fanout")
def _teacher_fanout(data_uri: str, teacher_uri: str, config: str, one_task_config: str, cache_uri: str
                    ) -> NamedTuple("Fanned", hit=bool, again=bool):
    prep = preprocess(data_uri=data_uri, config=config)
    plan = teacher_plan(dataset=prep.outputs["dataset"], teacher_uri=teacher_uri, config=config, cache_uri=cache_uri)
    with dsl.ParallelFor(plan.output) as item:
        part = teacher_part(dataset=prep.outputs["dataset"], teacher_uri=item.teacher_uri, config=config,
                            cache_uri=cache_uri, part=item.part, parts=item.parts, teacher_digest=item.teacher_digest)
    commit = teacher_commit(dataset=prep.outputs["dataset"], teacher_uri=teacher_uri, config=config,
                            cache_uri=cache_uri).after(part)
    again = teacher_inference(dataset=prep.outputs["dataset"], teacher_uri=teacher_uri, config=one_task_config,
                              cache_uri=cache_uri).after(commit)
    Fanned = NamedTuple("Fanned", hit=bool, again=bool)
    return Fanned(hit=commit.outputs["Output"], again=again.outputs["Output"])


def test_teacher_inference_fans_out_into_the_one_task_entry(runner, tiny_data, tiny_teacher, tiny_config_yaml):
    """plan -> a ParallelFor of parts (one per dataset shard: 3) -> commit; the one-task step then finds
    the same entry (teacher.shards_per_task is not part of the key)."""
    cache = runner / "cache"
    fanned = tiny_config_yaml.replace("teacher: {", "teacher: {shards_per_task: 1, ")
    out = _teacher_fanout(data_uri=str(tiny_data), teacher_uri=tiny_teacher, config=fanned,
                          one_task_config=tiny_config_yaml, cache_uri=str(cache))
    assert out.outputs["hit"] is False and out.outputs["again"] is True
    assert len([p for p in (runner / "root").rglob("teacher-part") if "-iteration-" in p.parent.name]) == 3
    assert len(list(cache.rglob("entries/*.json"))) == 1
    assert len(list(cache.rglob("views/*/manifests/*.json"))) == 3


@dsl.pipeline(name="distill-evaluate")
def _distill_evaluate(data_uri: str, teacher_uri: str, config: str, cache_uri: str, tracking_uri: str
                      ) -> NamedTuple("Out", run_id=str, passed=bool):
    prep = preprocess(data_uri=data_uri, config=config)
    labels = teacher_inference(dataset=prep.outputs["dataset"], teacher_uri=teacher_uri, config=config,
                               cache_uri=cache_uri)
    trained = distill(dataset=prep.outputs["dataset"], soft_labels=labels.outputs["soft_labels"], config=config,
                      tracking_uri=tracking_uri, pipeline_run="component-test")
    checked = evaluate(dataset=prep.outputs["dataset"], soft_labels=labels.outputs["soft_labels"],
                       model=trained.outputs["model"], config=config, tracking_uri=tracking_uri,
                       run_id=trained.outputs["run_id"])
    Out = NamedTuple("Out", run_id=str, passed=bool)
    return Out(run_id=trained.outputs["run_id"], passed=checked.outputs["Output"])


def test_distill_and_evaluate_then_register_refuses_a_failed_gate(runner, tiny_data, tiny_teacher,
                                                                  tiny_config_yaml):
    from mlflow import MlflowClient

    tracking = f"sqlite:///{runner / 'mlflow.db'}"
    failing = tiny_config_yaml.replace("gate: {min_accuracy: 0.0, max_drop: 1.0}",
                                       "gate: {min_accuracy: 1.0, max_drop: 0.0}")
    failing = failing.replace("train: {epochs: 8, batch_size: 16, lr: 0.05",
                              "train: {epochs: 1, batch_size: 16, lr: 0.000001")
    out = _distill_evaluate(data_uri=str(tiny_data), teacher_uri=tiny_teacher, config=failing,
                            cache_uri=str(runner / "cache"), tracking_uri=tracking)
    assert out.outputs["passed"] is False
    run = MlflowClient(tracking).get_run(out.outputs["run_id"])
    assert run.data.tags["kdflow.gate_passed"] == "false"
    assert "gate.min_accuracy=1.0" in run.data.tags["kdflow.gate"]
    assert {"test_student_accuracy", "test_teacher_accuracy", "test_agreement"} <= set(run.data.metrics)

    # The registration component refuses a run that did not pass, and no version appears.
    with pytest.raises(RuntimeError, match="register"):
        register(run_id=out.outputs["run_id"], model_uri="models:/unused", config=failing, tracking_uri=tracking)
    assert MlflowClient(tracking, registry_uri=tracking).search_model_versions("name='tiny-student'") == []
