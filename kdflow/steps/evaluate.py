"""Step 4: measure the student on the test split (accuracy with intervals, calibration, cost against
the teacher, membership inference, exports), decide the gate, and log it all to the MLflow run.

The teacher's test predictions come from the soft-label cache (its top-1 is stored exactly); the
teacher model is loaded only to measure its cost beside the student's.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from kdflow.config import Config
from kdflow.data.shards import DatasetManifest, SplitArrays
from kdflow.util.errors import DataError
from kdflow.evaluation import suite
from kdflow.evaluation.record import Predictions
from kdflow.evaluation.gate import Verdict, absolute_checks, champion_check, stricter
from kdflow.models.loading import TeacherSource, load_checkpoint
from kdflow.softlabels.cache import SoftLabelCache
from kdflow.softlabels.ref import SoftLabelRef
from kdflow.steps.distill import STUDENT_FILE
from kdflow.steps.preamble import begin_step
from kdflow.training.batches import ArrayBatches, to_float_images
from kdflow.training.streaming import make_batches
from kdflow.training.device import resolve_device
from kdflow.registry.tags import Tag
from kdflow.training.predict import predict

log = logging.getLogger(__name__)

REPORT_ARTIFACT = "evaluation/report.html"
REPORT_HTML = "report_html"  # the returned report's key for the HTML text
EXPORT_DIR = "export"  # run artifact folder of the serving exports
EXPORT_CHECK_IMAGES = 64  # test images each export is checked on


def _sample_rows(count: int, n: int, seed: int) -> np.ndarray:
    """``n`` of ``count`` rows drawn without replacement, sorted (all of them when there are no more)."""
    if count <= n:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, n, replace=False))


def _read_rows(dataset: DatasetManifest, split: str, rows: np.ndarray) -> SplitArrays:
    """Rows ``rows`` (sorted) of ``split``, reading only the shards that hold them."""
    starts = np.concatenate([[0], np.cumsum(dataset.shard_counts(split))])
    which = np.searchsorted(starts, rows, side="right") - 1  # the shard of each row
    parts = []
    for shard in np.unique(which):
        arrays = dataset.read_shard(split, int(shard))
        local = rows[which == shard] - starts[shard]
        parts.append(SplitArrays(arrays.images[local], arrays.labels[local], arrays.ids[local]))
    return SplitArrays(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                       np.concatenate([p.ids for p in parts]))


def _first_images(dataset: DatasetManifest, split: str, n: int) -> np.ndarray:
    """The first ``n`` images of ``split``: uint8 [n, H, W, 3], reading only the shards needed."""
    parts, have = [], 0
    for shard in dataset.iter_shards(split, prefetch=0):
        parts.append(shard.images[: n - have])
        have += len(parts[-1])
        if have >= n:
            break
    return np.concatenate(parts)


def _champion(cfg: Config, tracking_uri: str | None):
    """(label, Predictions or None, gate settings) of the registry's champion: (None, None, the run's
    own) when there is none. The gate is the run's, with the champion's promotion policy where that
    is stricter (``gate.stricter``)."""
    from kdflow.registry.promotion import connect, run_config
    from kdflow.registry.aliases import CHAMPION, by_alias

    client = connect(tracking_uri)
    version = by_alias(client, cfg.registry.model_name, CHAMPION)
    if version is None:
        return None, None, cfg.gate
    gate = stricter(cfg.gate, run_config(client, version.run_id)[0].gate)
    return (f"{cfg.registry.model_name} version {version.version} (@{CHAMPION})",
            Predictions.of_run(client, version.run_id), gate)


def measure(cfg: Config, dataset: DatasetManifest, ref: SoftLabelRef, student: torch.nn.Module,
            teacher: torch.nn.Module | None, export_dir: Path) -> tuple[dict, Predictions]:
    """All measurements of ``student`` (see evaluation/suite.py) and its per-sample test predictions."""
    ev, device = cfg.evaluate, resolve_device(cfg.train.device)
    # The test split whole on the device when it fits, else streamed: only logits [N, C], labels
    # and ids are kept for every row.
    test = make_batches(dataset, "test", cfg.teacher.batch_size, device, resident=cfg.train.resident)
    student = student.to(device).eval()
    logits = predict(student, test)  # [N, C] on the CPU
    labels, test_ids = test.labels.cpu().long(), test.ids  # after predict: a streamed split has read them
    soft = SoftLabelCache(ref.cache_uri).load_split(ref.cache_key, "test", test_ids)
    order = soft.values[:, 0].argsort(-1, descending=True)  # [N, k]: the cached classes, best first
    teacher_topk = soft.index[:, 0].gather(-1, order).long()

    report = {"confidence": ev.confidence,
              "accuracy": suite.accuracy_section(logits, teacher_topk[:, 0], teacher_topk, labels,
                                                 dataset.class_names, ev),
              "calibration": suite.calibration_section(logits, labels, ev)}
    # Privacy: as many training members as held-out test images (the attack's prior is then 1/2).
    # Only the shards holding the sampled members are read.
    n = min(ev.privacy_samples, dataset.count("train"), len(test))
    if n >= 2:
        members = _read_rows(dataset, "train", _sample_rows(dataset.count("train"), n, ev.seed))
        rows = _sample_rows(len(test), n, ev.seed + 1)
        report["privacy"] = suite.privacy_section(
            predict(student, ArrayBatches(members, cfg.teacher.batch_size, device)),
            torch.from_numpy(members.labels).long(), logits[rows], labels[rows], ev)
    shape = (3, dataset.image_size, dataset.image_size)
    student_cpu = student.cpu()
    report["cost"] = suite.cost_section(student_cpu, teacher, shape, ev)
    check_images = to_float_images(torch.from_numpy(_first_images(dataset, "test", EXPORT_CHECK_IMAGES)))
    report["exports"] = suite.export_section(student_cpu, check_images, export_dir, ev)
    preds = Predictions(test_ids, labels.numpy().astype(np.int64), logits.argmax(-1).numpy().astype(np.int64),
                        dataset.fingerprint, tuple(dataset.class_names))
    return report, preds


def run_evaluation(
    dataset_dir: str, softlabels_dir: str, model_dir: str, config_yaml: str, tracking_uri: str | None, run_id: str
) -> dict:
    """Evaluate on the test split; log to the MLflow run ``run_id``; return the report (with
    "passed", "promotable" and "gate" = the verdict in words)."""
    import mlflow

    from kdflow.registry import tracking
    from kdflow.evaluation.plots import confusion_matrix_png, reliability_png
    from kdflow.evaluation.report import render_html

    cfg = begin_step(config_yaml, heavy=True, tracking_uri=tracking_uri)
    dataset = DatasetManifest.open(dataset_dir)
    if not dataset.count("test"):
        raise DataError("the dataset has an empty test split", "set data.test_fraction > 0 or add a test/ folder")
    ref = SoftLabelRef.load(softlabels_dir)
    student, _ = load_checkpoint((Path(model_dir) / STUDENT_FILE).read_bytes())
    source = TeacherSource.of(ref.teacher_uri, cfg.teacher).reach(tracking_uri)
    teacher = source.load(dataset.mean, dataset.std).cpu().eval()

    with tempfile.TemporaryDirectory() as tmp:
        export_dir = Path(tmp) / EXPORT_DIR
        report, preds = measure(cfg, dataset, ref, student, teacher, export_dir)
        label, champion, gate = _champion(cfg, tracking_uri)
        verdict = Verdict(absolute_checks(suite.gate_inputs(report), cfg.gate),
                          champion_check(preds, champion, label, gate, cfg.evaluate))
        report["gate"] = verdict.to_dict()
        log.info("gate: %s", verdict.summary)
        for check in (*verdict.checks, verdict.champion):
            log.info("  %s", check.line())

        images = {"confusion_matrix.png": confusion_matrix_png(np.array(report["accuracy"]["confusion_matrix"]),
                                                               dataset.class_names),
                  "reliability_diagram.png": reliability_png(report["calibration"]["bins"],
                                                            report["calibration"]["ece"])}
        tracking.use_tracking(tracking_uri)
        with mlflow.start_run(run_id=run_id):
            metrics = {**suite.flat_metrics(report), **verdict.metrics()}
            mlflow.log_metrics(metrics)
            mlflow.log_dict(report, "evaluation/evaluation.json")
            for name, png in images.items():
                (Path(tmp) / name).write_bytes(png)
                mlflow.log_artifact(str(Path(tmp) / name), "evaluation")
            page = render_html(report, f"kdflow evaluation of run {run_id}", images)
            mlflow.log_text(page, REPORT_ARTIFACT)
            preds.log()
            if report["exports"]:
                mlflow.log_artifacts(str(export_dir), EXPORT_DIR)
                mlflow.log_dict({"exports": report["exports"]}, f"{EXPORT_DIR}/verification.json")
            tracking.set_tags({**verdict.tags(), **_export_tags(report["exports"], run_id)})
    report.update({"passed": verdict.passed, "promotable": verdict.promotable, "gate": verdict.summary,
                   "verdict": verdict.to_dict(), "metrics": metrics, "class_names": list(dataset.class_names),
                   "images": images, REPORT_HTML: page})
    return report


def _export_tags(exports: list[dict], run_id: str) -> dict[str, str]:
    """Where each export is and how it matched PyTorch; registration copies them onto the version,
    so ``models:/NAME@champion`` leads to its ONNX and TorchScript files."""
    tags = {}
    for e in exports:
        tags[Tag.EXPORT_PREFIX + e["format"]] = f"runs:/{run_id}/{EXPORT_DIR}/{e['file']}"
        tags[Tag.EXPORT_PREFIX + e["format"] + ".check"] = (
            f"{'pass' if e['passed'] else 'FAIL'}: max |logit diff| {e['max_abs_diff']:.3g} on test images, "
            f"tolerance {e['tolerance']:.3g}, verified with {e['verified_with']}")
    return tags
