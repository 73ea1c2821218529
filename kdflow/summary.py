"""What a finished run says about itself, read back from MLflow."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    experiment_id: str
    tracking_uri: str
    dataset_fingerprint: str
    cache_key: str
    cache_hit: bool
    teacher_accuracy: float | None
    student_accuracy: float | None
    agreement: float | None
    gate_passed: bool
    gate: str
    registered_model: str | None
    registered_version: str | None

    def lines(self) -> list[str]:
        def pct(v: float | None) -> str:
            return "n/a" if v is None else f"{100 * v:.2f}%"

        reg = (f"{self.registered_model} version {self.registered_version}"
               if self.registered_version else f"not registered ({self.gate})")
        return [
            "kdflow run summary",
            f"  dataset fingerprint   {self.dataset_fingerprint}",
            f"  teacher top-1 (test)  {pct(self.teacher_accuracy)}",
            f"  student top-1 (test)  {pct(self.student_accuracy)}",
            f"  agreement             {pct(self.agreement)}",
            f"  soft-label cache      {self.cache_key} ({'hit: teacher not run' if self.cache_hit else 'miss: teacher ran'})",
            f"  gate                  {self.gate}",
            f"  MLflow run            {self.run_id} (experiment {self.experiment_id}, {self.tracking_uri})",
            f"  registered            {reg}",
        ]


def read_summary(run_id: str, tracking_uri: str) -> RunSummary:
    from mlflow import MlflowClient

    from kdflow.tracking import Tag

    run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    tags, metrics = run.data.tags, run.data.metrics
    return RunSummary(
        run_id=run_id,
        experiment_id=run.info.experiment_id,
        tracking_uri=tracking_uri,
        dataset_fingerprint=tags.get(Tag.DATASET_FINGERPRINT, "?"),
        cache_key=tags.get(Tag.CACHE_KEY, "?"),
        cache_hit=tags.get(Tag.CACHE_HIT) == "true",
        teacher_accuracy=metrics.get("test_teacher_accuracy"),
        student_accuracy=metrics.get("test_student_accuracy"),
        agreement=metrics.get("test_agreement"),
        gate_passed=tags.get(Tag.GATE_PASSED) == "true",
        gate=tags.get(Tag.GATE, "not evaluated"),
        registered_model=tags.get(Tag.REGISTERED_MODEL),
        registered_version=tags.get(Tag.REGISTERED_VERSION),
    )
