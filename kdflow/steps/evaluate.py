"""Step 4: test-split accuracy of student and teacher, agreement, cost, and the gate."""

from __future__ import annotations

from pathlib import Path

import torch

from kdflow.config import Config
from kdflow.logs import setup_logging
from kdflow.data.shards import DatasetManifest
from kdflow.errors import DataError
from kdflow.evaluation import compare, model_cost
from kdflow.gate import decide
from kdflow.models.loading import load_checkpoint
from kdflow.softlabels.cache import SoftLabelCache
from kdflow.softlabels.ref import SoftLabelRef
from kdflow.steps.distill import STUDENT_FILE
from kdflow.training.batches import ArrayBatches
from kdflow.training.device import resolve_device
from kdflow.tracking import Tag
from kdflow.training.trainer import predict


def run_evaluation(
    dataset_dir: str, softlabels_dir: str, model_dir: str, config_yaml: str, tracking_uri: str | None, run_id: str
) -> dict:
    """Evaluate on the test split; log to the MLflow run ``run_id``; return metrics and the decision.

    The teacher's predictions come from the cache (its top-1 is always stored exactly), so the
    teacher is not run again.
    """
    import mlflow

    from kdflow import tracking

    setup_logging()
    cfg = Config.from_yaml(config_yaml)
    dataset = DatasetManifest.open(dataset_dir)
    if not dataset.count("test"):
        raise DataError("the dataset has an empty test split", "set data.test_fraction > 0 or add a test/ folder")
    ref = SoftLabelRef.load(softlabels_dir)
    student, _ = load_checkpoint((Path(model_dir) / STUDENT_FILE).read_bytes())
    test = dataset.load_split("test")
    teacher_pred = SoftLabelCache(ref.cache_uri).load_split(ref.cache_key, "test", test.ids).top1()
    device = resolve_device(cfg.train.device)
    student_pred = predict(student.to(device), ArrayBatches(test, cfg.teacher.batch_size, device)).argmax(-1)

    report = compare(student_pred, teacher_pred, torch.from_numpy(test.labels), dataset.class_names)
    report.update(model_cost(student))
    decision = decide(report["student_accuracy"], report["teacher_accuracy"], cfg.gate)
    report.update({"passed": decision.passed, "gate": decision.summary})

    tracking.use_tracking(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"test_{k}": float(report[k]) for k in
                            ("student_accuracy", "teacher_accuracy", "agreement")})
        mlflow.log_metrics({k: float(report[k]) for k in ("student_parameters", "student_size_bytes")})
        mlflow.log_dict(report, "evaluation.json")
        tracking.set_tags({Tag.GATE_PASSED: str(decision.passed).lower(), Tag.GATE: decision.summary})
    return report
