"""Top-1 and top-k accuracy, per-class accuracy and the confusion matrix of predictions on one split."""

from __future__ import annotations

import numpy as np
import torch


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of rows where ``pred`` equals ``target`` (both int64 [N]); 0 for no rows."""
    return (pred == target).sum().item() / max(len(target), 1)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Bool [N]: True where ``labels`` (int64 [N]) is among the ``k`` largest of ``logits`` (float [N, C]).

    ``k`` is clamped to C, so top-5 on a 3-class problem is trivially all True rather than an error:
    callers report top-5 for every dataset without special-casing small ones. Ties at the k-th place
    are broken by ``torch.topk``'s order, as everywhere else in PyTorch's own top-k accuracy.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices  # [N, k]
    return (top == labels.unsqueeze(-1)).any(dim=-1)  # [N]


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> np.ndarray:
    """Int64 [C, C] counts: row = true class, column = predicted class (the scikit-learn convention).

    One ``bincount`` over ``label * C + pred`` instead of a Python loop, so C = 1000 costs one pass.
    """
    for name, t in (("pred", pred), ("labels", labels)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ValueError(f"{name} holds a class index outside [0, {num_classes})")
    flat = labels.long().cpu() * num_classes + pred.long().cpu()  # [N], in [0, C*C)
    counts = torch.bincount(flat, minlength=num_classes * num_classes)  # [C*C]
    return counts.numpy().astype(np.int64).reshape(num_classes, num_classes)


def per_class_accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Top-1 per class; None for a class with no samples in the split."""
    out: list[float | None] = []
    for c in range(num_classes):
        mask = labels == c
        out.append((pred[mask] == c).float().mean().item() if mask.any() else None)
    return out
