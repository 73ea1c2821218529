"""The distill and evaluate steps on streamed splits (``train.resident: never``): evaluation measures
exactly what it measures on resident splits, and distillation trains and validates from shards."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
import yaml

from kdflow.config import Config
from kdflow.data.preprocess import preprocess
from kdflow.data.shards import DatasetManifest
from kdflow.models.loading import load_checkpoint
from kdflow.softlabels.ref import SoftLabelRef
from kdflow.steps.distill import STUDENT_FILE, run_distillation
from kdflow.steps.evaluate import measure
from kdflow.steps.teacher import run_teacher_inference
from kdflow.training import streaming


def _config(tiny_config_yaml: str, resident: str) -> str:
    doc = yaml.safe_load(tiny_config_yaml)
    doc["data"]["shard_size"] = 6  # several shards per split
    doc["train"].update(epochs=2, resident=resident)
    doc["evaluate"]["privacy_samples"] = 10
    return yaml.safe_dump(doc)


@pytest.fixture(scope="module")
def labelled(tiny_data, tiny_teacher, tiny_config_yaml, tmp_path_factory):
    root = tmp_path_factory.mktemp("stream_steps")
    text = _config(tiny_config_yaml, "auto")
    preprocess(str(tiny_data), str(root / "ds"), Config.from_yaml(text).data)
    run_teacher_inference(str(root / "ds"), tiny_teacher, text, str(root / "cache"), str(root / "ref"))
    return root, tiny_teacher


def test_evaluation_of_a_streamed_test_split_equals_the_resident_one(labelled, tiny_config_yaml, tmp_path):
    root, teacher_path = labelled
    dataset, ref = DatasetManifest.open(str(root / "ds")), SoftLabelRef.load(str(root / "ref"))
    assert len(dataset.shard_counts("test")) > 1 and len(dataset.shard_counts("train")) > 1
    student, _ = load_checkpoint(open(teacher_path, "rb").read())  # any classifier of the right shape
    out = {}
    for resident in ("always", "never"):
        cfg = Config.from_yaml(_config(tiny_config_yaml, resident))
        out[resident] = measure(cfg, dataset, ref, student, None, tmp_path / resident)
    (resident_report, resident_preds), (streamed_report, streamed_preds) = out["always"], out["never"]
    for section in ("accuracy", "calibration", "privacy"):
        assert streamed_report[section] == resident_report[section], section
    assert np.array_equal(streamed_preds.ids, resident_preds.ids)
    assert np.array_equal(streamed_preds.top1, resident_preds.top1)
    assert np.array_equal(streamed_preds.labels, resident_preds.labels)


def test_distillation_trains_and_validates_from_streamed_shards(labelled, tiny_config_yaml, tmp_path, monkeypatch):
    root, _ = labelled
    made = []
    real = streaming.ShardBatches.batches
    monkeypatch.setattr(streaming.ShardBatches, "batches",
                        lambda self, *a, **kw: made.append(self.split) or real(self, *a, **kw))
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_distillation(str(root / "ds"), str(root / "ref"), _config(tiny_config_yaml, "never"),
                              str(tmp_path / "out"), tracking_uri)
    assert made.count("train") == 2 and made.count("val") == 2  # both epochs streamed, validated streamed
    metrics = mlflow.get_run(result["run_id"]).data.metrics
    assert 0 <= metrics["val_accuracy"] <= 1 and 0 <= metrics["val_agreement"] <= 1
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))
    assert (tmp_path / "out" / STUDENT_FILE).exists()


def test_a_resumed_distillation_keeps_the_kind_of_batches_it_started_with(labelled, tiny_config_yaml, tmp_path,
                                                                         monkeypatch):
    """Resident and streamed batches shuffle differently: a run resumed from its checkpoint (on a
    device with more or less free memory) must keep the kind it checkpointed, or its data order."""
    from kdflow.steps import distill as step
    from kdflow.training.checkpoints import resident as checkpointed_resident

    root, _ = labelled
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    text = _config(tiny_config_yaml, "auto")
    real = step.make_batches
    # The first attempt runs where the split does not fit: "auto" streams it.
    monkeypatch.setattr(step, "make_batches", lambda *a, **kw: real(*a, **{**kw, "resident": "never"}))
    first = run_distillation(str(root / "ds"), str(root / "ref"), text, str(tmp_path / "out"), tracking_uri,
                             pipeline_run=f"resident-{tmp_path.name}")
    assert checkpointed_resident(first["checkpoints"]) is False
    assert checkpointed_resident(str(tmp_path / "none")) is None
    asked = []
    monkeypatch.setattr(step, "make_batches", lambda *a, **kw: asked.append((a[1], kw["resident"])) or real(*a, **kw))
    # Its retry (same pipeline run, inputs and config: the same checkpoint location) on a roomier device.
    run_distillation(str(root / "ds"), str(root / "ref"), text, str(tmp_path / "out2"), tracking_uri,
                     pipeline_run=f"resident-{tmp_path.name}")
    assert ("train", "never") in asked  # "auto" would hold this small split whole
