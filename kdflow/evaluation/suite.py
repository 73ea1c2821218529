"""Everything measured about a student on one dataset, as one plain dict (no I/O here).

The evaluation step loads the models and splits, calls ``measure`` and logs the result; keeping
the measuring apart from MLflow makes every number testable on tensors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kdflow.config import EvaluateConfig
from kdflow.evaluation.accuracy import confusion_matrix, per_class_accuracy, topk_correct
from kdflow.evaluation.calibration import expected_calibration_error, reliability_bins
from kdflow.evaluation.stats import bootstrap_mean_ci


def interval(per_sample: np.ndarray, ev: EvaluateConfig) -> dict:
    """{"value", "low", "high"} of the mean of per-sample values [N] (bounds None without bootstrap)."""
    value = float(per_sample.mean()) if len(per_sample) else float("nan")
    low, high = bootstrap_mean_ci(per_sample, ev.bootstrap, ev.confidence, ev.seed)
    finite = ev.bootstrap > 0 and np.isfinite(low)
    return {"value": value, "low": float(low) if finite else None, "high": float(high) if finite else None}


def accuracy_section(student_logits: torch.Tensor, teacher_top1: torch.Tensor, teacher_topk: torch.Tensor | None,
                     labels: torch.Tensor, class_names: list[str], ev: EvaluateConfig) -> dict:
    """student_logits float [N, C]; teacher_top1 int64 [N]; teacher_topk int64 [N, k] (the cached
    top-k classes, best first) or None; labels int64 [N]."""
    pred = student_logits.argmax(-1)
    teacher_top5 = None
    if teacher_topk is not None and teacher_topk.shape[1] >= min(5, len(class_names)):
        hits = (teacher_topk[:, :5] == labels[:, None]).any(1).double().numpy()
        teacher_top5 = interval(hits, ev)
    counts = torch.bincount(labels, minlength=len(class_names)).tolist()
    student_correct = (pred == labels).double().numpy()
    per_class = {
        name: {"count": n, "student": s, "teacher": t,
               # The student's per-class top-1 with its interval: classes are often small, so wide.
               "student_interval": interval(student_correct[(labels == c).numpy()], ev) if n else None}
        for c, (name, n, s, t) in enumerate(zip(class_names, counts,
                                                per_class_accuracy(pred, labels, len(class_names)),
                                                per_class_accuracy(teacher_top1, labels, len(class_names)),
                                                strict=True))
    }
    return {
        "samples": len(labels),
        "student_top1": interval(student_correct, ev),
        "student_top5": interval(topk_correct(student_logits, labels, 5).double().numpy(), ev),
        "teacher_top1": interval((teacher_top1 == labels).double().numpy(), ev),
        "teacher_top5": teacher_top5,
        "agreement": interval((pred == teacher_top1).double().numpy(), ev),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(pred, labels, len(class_names)).tolist(),
    }


def calibration_section(student_logits: torch.Tensor, labels: torch.Tensor, ev: EvaluateConfig) -> dict:
    probs = torch.softmax(student_logits.double(), -1).numpy()
    bins = reliability_bins(probs, labels.numpy(), ev.ece_bins)
    return {"ece": float(expected_calibration_error(bins)), "bins": bins}


def cost_section(student: torch.nn.Module, teacher: torch.nn.Module | None, image_shape: tuple[int, int, int],
                 ev: EvaluateConfig) -> dict:
    """Student and teacher measured interleaved on this machine's CPU (see evaluation/cost.py)."""
    from kdflow.evaluation.cost import measure_pair, speedups

    if teacher is None:
        return {}
    s, t = measure_pair(student, teacher, image_shape, runs=ev.latency_runs, batch=ev.throughput_batch,
                        threads=ev.cpu_threads)
    return {"student": s.to_dict(), "teacher": t.to_dict(), "speedups": speedups(s, t)}


def privacy_section(member_logits: torch.Tensor, member_labels: torch.Tensor, nonmember_logits: torch.Tensor,
                    nonmember_labels: torch.Tensor, ev: EvaluateConfig) -> dict:
    """Yeom et al.'s loss-threshold attack: training members [M, C] against held-out samples [M', C]."""
    from kdflow.evaluation.privacy import membership_inference, per_sample_loss

    result = membership_inference(per_sample_loss(member_logits, member_labels),
                                  per_sample_loss(nonmember_logits, nonmember_labels),
                                  ev.bootstrap, ev.confidence, ev.seed)
    return result.to_dict()


def export_section(student: torch.nn.Module, images: torch.Tensor, out_dir: Path, ev: EvaluateConfig) -> list[dict]:
    """images: float [N, C, H, W] in [0, 1], real test images the exports are checked on."""
    from kdflow.evaluation.export import export_model

    if not ev.export:
        return []
    return [c.to_dict() for c in export_model(student, images, out_dir, tuple(ev.export), ev.export_tolerance)]


def gate_inputs(report: dict) -> dict:
    """The measurements the gate's absolute checks read (kdflow.evaluation.gate.absolute_checks)."""
    acc = report["accuracy"]
    m = {"student_top1": acc["student_top1"]["value"], "teacher_top1": acc["teacher_top1"]["value"],
         "agreement": acc["agreement"]["value"], "num_classes": len(acc["per_class"])}
    if report.get("cost"):
        m["latency_p95_ms"] = report["cost"]["student"]["latency_p95_ms"]
        m["size_bytes"] = report["cost"]["student"]["size_bytes"]
    if report.get("privacy"):
        m["mia_auc"] = report["privacy"]["auc"]
    if report.get("exports"):
        bad = [e for e in report["exports"] if not e["passed"]]
        m["exports_ok"] = not bad
        m["exports_note"] = "; ".join(f"{e['format']}: {e.get('detail') or 'differs from PyTorch'} (max |diff| "
                                      f"{e['max_abs_diff']:.3g}, tolerance {e['tolerance']:.3g})" for e in bad)
    return m


def flat_metrics(report: dict) -> dict[str, float]:
    """MLflow metric names (read by summary, registry table and benchmarks: keep them stable)."""
    out: dict[str, float] = {}

    def put(name: str, iv: dict | None) -> None:
        if iv is None:
            return
        out[name] = iv["value"]
        if iv.get("low") is not None:
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = iv["low"], iv["high"]

    acc = report["accuracy"]
    put("test_student_accuracy", acc["student_top1"])
    put("test_student_top5", acc["student_top5"])
    put("test_teacher_accuracy", acc["teacher_top1"])
    put("test_teacher_top5", acc["teacher_top5"])
    put("test_agreement", acc["agreement"])
    out["test_student_ece"] = report["calibration"]["ece"]
    cost = report.get("cost") or {}
    for who in ("student", "teacher"):
        for key in ("parameters", "size_bytes", "latency_p50_ms", "latency_p95_ms", "throughput"):
            if who in cost:
                out[f"{who}_{key}"] = cost[who][key]
    out.update(cost.get("speedups", {}))
    privacy = report.get("privacy")
    if privacy:
        out["mia_auc"] = privacy["auc"]
        if privacy.get("auc_low") is not None:
            out["mia_auc_ci_low"], out["mia_auc_ci_high"] = privacy["auc_low"], privacy["auc_high"]
        out["mia_advantage"] = privacy["advantage"]
    return {k: float(v) for k, v in out.items() if v is not None and np.isfinite(v)}
