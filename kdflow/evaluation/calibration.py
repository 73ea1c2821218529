"""Calibration: reliability bins and the expected calibration error (ECE).

Guo, Pleiss, Sun & Weinberger, 2017, "On Calibration of Modern Neural Networks" (ICML), section 2:
group predictions by confidence (the top softmax probability) into equal-width bins; a calibrated
model's accuracy in each bin equals its mean confidence there. ECE is the count-weighted mean gap.
A distilled student can match its teacher's accuracy and still be over-confident, which matters
to anyone thresholding its scores, so the evaluation reports both.
"""

from __future__ import annotations

import numpy as np


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> list[dict]:
    """One dict per equal-width confidence bin, empty bins included (Guo et al., 2017, eq. 2-3).

    ``probs`` float [N, C] are softmax rows, ``labels`` int [N]. Bin i holds confidences in
    (i/bins, (i+1)/bins]; a confidence of exactly 0 goes in bin 0 and one rounded above 1 in the
    last. Each dict: lower, upper, count, confidence (mean, None if empty), accuracy (None if empty).
    Fifteen bins is the paper's choice.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).ravel()
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probs must be [N, C] and labels [N]; got {probs.shape} and {labels.shape}")
    confidence = probs.max(axis=1) if len(probs) else np.zeros(0)  # [N]
    correct = (probs.argmax(axis=1) == labels) if len(probs) else np.zeros(0, bool)  # [N]
    # Edges as i / bins (each correctly rounded), not linspace, so a confidence equal to an edge
    # such as 0.7 compares equal to it and lands in the bin it closes.
    edges = np.arange(bins + 1, dtype=np.float64) / bins  # [bins + 1]
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)  # [N]
    count = np.bincount(index, minlength=bins)  # [bins]
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)  # [bins]
    correct_sum = np.bincount(index, weights=correct.astype(np.float64), minlength=bins)  # [bins]
    out = []
    for i in range(bins):
        n = int(count[i])
        out.append({
            "lower": float(edges[i]),
            "upper": float(edges[i + 1]),
            "count": n,
            "confidence": float(conf_sum[i] / n) if n else None,
            "accuracy": float(correct_sum[i] / n) if n else None,
        })
    return out


def expected_calibration_error(bins: list[dict]) -> float:
    """ECE = sum over bins of count / N * |accuracy - confidence| (Guo et al., 2017, eq. 3); 0.0 for no samples."""
    total = sum(b["count"] for b in bins)
    if total == 0:
        return 0.0
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]))
