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
    metrics: dict  # every metric of the run (evaluation's names: kdflow.evaluation.suite.flat_metrics)
    champion_check: str  # the gate against the champion, in words
    aliases: tuple[str, ...] = ()  # of the registered version

    def lines(self) -> list[str]:
        def pct(v: float | None) -> str:
            return "n/a" if v is None else f"{100 * v:.2f}%"

        def ci(name: str) -> str:
            low, high = self.metrics.get(f"{name}_ci_low"), self.metrics.get(f"{name}_ci_high")
            return "" if low is None else f" [{100 * low:.2f}, {100 * high:.2f}]"

        m = self.metrics
        reg = (f"{self.registered_model} version {self.registered_version}"
               + (f" @{', @'.join(self.aliases)}" if self.aliases else "")
               if self.registered_version else f"not registered ({self.gate})")
        extra = []
        if "test_student_top5" in m:
            extra.append(f"  student top-5         {pct(m['test_student_top5'])}; calibration error (ECE) "
                         f"{pct(m.get('test_student_ece'))}")
        if "latency_speedup" in m:
            extra.append(f"  cost (CPU, batch 1)   student p95 {m['student_latency_p95_ms']:.2f} ms, "
                         f"{m['latency_speedup']:.1f}x faster and {m['size_ratio']:.1f}x smaller than the teacher")
        if "mia_auc" in m:
            extra.append(f"  membership inference  attack AUC {m['mia_auc']:.3f} (0.5: no leak)")
        return [
            "kdflow run summary",
            f"  dataset fingerprint   {self.dataset_fingerprint}",
            f"  teacher top-1 (test)  {pct(self.teacher_accuracy)}",
            f"  student top-1 (test)  {pct(self.student_accuracy)}{ci('test_student_accuracy')}",
            f"  agreement             {pct(self.agreement)}{ci('test_agreement')}",
            *extra,
            f"  soft-label cache      {self.cache_key} ({'hit: teacher not run' if self.cache_hit else 'miss: teacher ran'})",
            f"  gate                  {self.gate}",
            f"  against the champion  {self.champion_check}",
            f"  MLflow run            {self.run_id} (experiment {self.experiment_id}, {self.tracking_uri})",
            f"  registered            {reg}",
        ]


def read_summary(run_id: str, tracking_uri: str) -> RunSummary:
    from mlflow import MlflowClient

    from kdflow.registry.tags import Tag

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
        metrics=dict(metrics),
        champion_check=tags.get(Tag.CHAMPION_CHECK, "not checked"),
        aliases=_aliases(tracking_uri, tags.get(Tag.REGISTERED_MODEL), tags.get(Tag.REGISTERED_VERSION)),
    )


def _aliases(tracking_uri: str, name: str | None, version: str | None) -> tuple[str, ...]:
    from mlflow import MlflowClient

    if not (name and version):
        return ()
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return tuple(client.get_model_version(name, version).aliases)
