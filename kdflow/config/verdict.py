"""The sections that judge a student and file it: evaluate, gate, registry (accuracies as fractions in [0, 1])."""

from __future__ import annotations

from pydantic import Field, model_validator

from kdflow.config.base import Strict
from kdflow.config.sections import check

EXPORT_FORMATS = ("torchscript", "onnx")


class EvaluateConfig(Strict):
    """How the test split is measured (accuracies as fractions in [0, 1]).

    Confidence intervals are percentile bootstraps over test samples. Cost is measured on the CPU of
    the evaluation step, student and teacher interleaved on the same machine, so their ratio is fair
    even when the absolute times are not those of the serving hardware.
    """

    bootstrap: int = Field(1000, description="bootstrap resamples for every confidence interval (0: no intervals)")
    confidence: float = Field(0.95, description="of the intervals")
    seed: int = Field(0, description="seeds the bootstrap resampling")
    ece_bins: int = Field(15, description="equal-width confidence bins of the calibration error and reliability "
                                          "diagram")
    latency_runs: int = Field(50, description="timed batch-1 forward passes per model (after a warm-up)")
    throughput_batch: int = Field(64, description="batch size of the throughput measurement")
    cpu_threads: int = Field(0, description="torch CPU threads while timing (0: the CPUs this process may use: "
                                            "affinity, cgroup quota)")
    privacy_samples: int = Field(2000, description="at most this many training members, and as many held-out "
                                                   "samples")
    export: tuple[str, ...] = Field(EXPORT_FORMATS, description="serving formats exported and verified")
    # Exporters reorder float32 sums, so their logits differ in the last bits; a real mistake is O(1).
    export_tolerance: float = Field(1e-3, description="largest |exported - PyTorch| logit difference on test "
                                                      "images, relative to the largest |logit| (absolute when "
                                                      "logits are under 1)")

    @model_validator(mode="after")
    def _ranges(self) -> "EvaluateConfig":
        check(self.bootstrap == 0 or self.bootstrap >= 100, "evaluate.bootstrap", f"is {self.bootstrap}",
              "use 0 (no intervals) or at least 100 resamples (1000 is a good default)")
        check(0.5 <= self.confidence < 1, "evaluate.confidence", f"is {self.confidence}", "use e.g. 0.95")
        check(1 <= self.ece_bins <= 100, "evaluate.ece_bins", f"is {self.ece_bins}", "use 1..100 (15 is usual)")
        check(self.latency_runs >= 5, "evaluate.latency_runs", f"is {self.latency_runs}",
              "use at least 5 (a p95 needs a few runs; 50 is a good default)")
        check(self.throughput_batch >= 1, "evaluate.throughput_batch", f"is {self.throughput_batch}",
              "use a positive batch size")
        check(self.cpu_threads >= 0, "evaluate.cpu_threads", f"is {self.cpu_threads}", "use 0 (default) or more")
        check(self.privacy_samples >= 10, "evaluate.privacy_samples", f"is {self.privacy_samples}",
              "use at least 10")
        unknown = sorted(set(self.export) - set(EXPORT_FORMATS))
        check(not unknown, "evaluate.export", f"names unknown format(s) {unknown}",
              "use a list of torchscript and onnx (or [] for no export)")
        check(self.export_tolerance > 0, "evaluate.export_tolerance", f"is {self.export_tolerance}",
              "use a positive relative tolerance on logits, e.g. 0.001")
        return self


class GateConfig(Strict):
    """The ship/no-ship decision on the test split (accuracies as fractions in [0, 1]; null: no limit).

    Absolute checks decide whether the student is registered. The champion check decides whether it
    may replace the registry's ``champion`` (automatically with auto-promote, or by ``kdflow promote``).
    """

    min_accuracy: float = Field(0.0, description="floor for the student's top-1")
    min_agreement: float = Field(0.0, description="floor for the fraction of test images where student and "
                                                  "teacher agree")
    # Checked at teacher inference, before anything is cached: a teacher fed the wrong normalisation or
    # class order stops the run there, not after a student learnt from it.
    min_teacher_accuracy: float | None = Field(None, description="floor for the teacher's top-1; null: min(0.5, 5 "
                                                                 "/ classes), far above chance yet below any "
                                                                 "teacher worth distilling")
    max_drop: float = Field(0.03, description="largest allowed teacher top-1 minus student top-1")
    max_latency_ms: float | None = Field(None, description="largest student CPU latency at batch 1 (p95, "
                                                           "milliseconds)")
    max_size_mb: float | None = Field(None, description="largest student size on disk (MB, 10^6 bytes)")
    max_mia_auc: float | None = Field(None, description="largest membership-inference attack AUC (0.5 = no leak)")
    champion_tolerance: float = Field(0.01, description="non-inferiority margin against the champion on the same "
                                                        "test images: the student is promotable when the lower end "
                                                        "of the confidence interval of (student - champion) top-1 "
                                                        "is >= -this")
    # Off: such a champion is not compared, the student is not promotable (it is registered; promote
    # it by hand), and the verdict says so.
    compare_other_data: bool = Field(False, description="compare with a champion whose dataset fingerprint differs "
                                                        "from this run's (on the test images both were evaluated "
                                                        "on)")

    @model_validator(mode="after")
    def _ranges(self) -> "GateConfig":
        for name in ("min_accuracy", "min_agreement", "min_teacher_accuracy", "max_drop", "champion_tolerance"):
            v = getattr(self, name)
            check(v is None or 0 <= v <= 1, f"gate.{name}", f"is {v}", "use a fraction in [0, 1] (0.9 means 90%)")
        if self.max_mia_auc is not None:
            check(0.5 <= self.max_mia_auc <= 1, "gate.max_mia_auc", f"is {self.max_mia_auc}",
                  "use an AUC in [0.5, 1] (0.5 is a random guess; 0.6 is a common cap)")
        for name in ("max_latency_ms", "max_size_mb"):
            v = getattr(self, name)
            check(v is None or v > 0, f"gate.{name}", f"is {v}", "use a positive number, or null for no limit")
        return self

    def teacher_floor(self, num_classes: int) -> float:
        """The teacher's top-1 floor for a task with ``num_classes`` classes."""
        if self.min_teacher_accuracy is not None:
            return self.min_teacher_accuracy
        return min(0.5, 5 / max(num_classes, 1))


class RegistryConfig(Strict):
    """Where a passing student is registered."""

    model_name: str = Field("kdflow-student", description="MLflow registered model name")
    alias: str = Field("challenger", description="alias a passing student receives (champion moves only by "
                                                 "promotion)")
    experiment: str = Field("kdflow", description="MLflow experiment of the runs")

    @model_validator(mode="after")
    def _ranges(self) -> "RegistryConfig":
        check(bool(self.model_name.strip()), "registry.model_name", "is empty", "name the model")
        # champion moves only through promotion, which checks the gate against it and keeps its history.
        check(self.alias != "champion", "registry.alias", "is 'champion'",
              "keep a registration alias such as 'challenger' and pass --auto-promote (pipeline parameter "
              "auto_promote) to promote a student that passes the gate against the champion")
        return self
