"""Accuracy of student and teacher on one split, their agreement, per-class accuracy, and cost."""

from __future__ import annotations

import torch


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of rows where ``pred`` equals ``target`` (both int64 [N]); 0 for no rows."""
    return (pred == target).sum().item() / max(len(target), 1)


def per_class_accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Top-1 per class; None for a class with no samples in the split."""
    out: list[float | None] = []
    for c in range(num_classes):
        mask = labels == c
        out.append((pred[mask] == c).float().mean().item() if mask.any() else None)
    return out


def compare(student_pred: torch.Tensor, teacher_pred: torch.Tensor, labels: torch.Tensor,
            class_names: list[str]) -> dict:
    """All predictions are int64 [N] class indices on the same rows."""
    return {
        "student_accuracy": accuracy(student_pred, labels),
        "teacher_accuracy": accuracy(teacher_pred, labels),
        "agreement": accuracy(student_pred, teacher_pred),
        "samples": len(labels),
        "per_class": {
            name: {"student": s, "teacher": t}
            for name, s, t in zip(class_names,
                                  per_class_accuracy(student_pred, labels, len(class_names)),
                                  per_class_accuracy(teacher_pred, labels, len(class_names)), strict=True)
        },
    }


def model_cost(model: torch.nn.Module) -> dict:
    params = sum(p.numel() for p in model.parameters())
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return {"student_parameters": params, "student_size_bytes": size}
