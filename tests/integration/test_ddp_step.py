"""The distillation step under torchrun: ``train.processes: 2`` on the CPU (gloo) trains in two ranks
and leaves exactly what one process leaves: one MLflow run (rank 0's), the student, its tags."""

from __future__ import annotations

import mlflow
import yaml

from kdflow.models.loading import load_checkpoint
from kdflow.steps.distill import STUDENT_FILE, run_distillation


def _config(tiny_config_yaml: str, processes: int) -> str:
    doc = yaml.safe_load(tiny_config_yaml)
    doc["train"].update(epochs=1, processes=processes, batch_size=16, device="cpu")
    return yaml.safe_dump(doc)


def test_two_processes_log_one_run_and_write_one_student(tiny_labelled, tiny_config_yaml, tmp_path):
    text = _config(tiny_config_yaml, 2)
    labelled = tiny_labelled.copy_to(tmp_path)  # the step keeps its checkpoints beside the cache
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_distillation(str(labelled.dataset), str(labelled.ref), text, str(tmp_path / "out"), tracking_uri)
    client = mlflow.tracking.MlflowClient(tracking_uri)
    run = client.get_run(result["run_id"])
    assert run.data.tags["kdflow.processes"] == "2"
    assert "train_loss" in run.data.metrics and "val_accuracy" in run.data.metrics
    runs = client.search_runs([run.info.experiment_id])
    assert [r.info.run_id for r in runs] == [result["run_id"]]  # rank 1 started no run
    student, _ = load_checkpoint((tmp_path / "out" / STUDENT_FILE).read_bytes())
    assert student is not None
