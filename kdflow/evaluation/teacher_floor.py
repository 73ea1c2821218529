"""The teacher's own test accuracy against a floor, checked where its labels are made.

A teacher fed the wrong normalisation, image size or class order still produces confident logits;
a student distilled from them is as wrong, and a gate that only compares the two lets both pass. So
teacher inference measures the teacher on the test split before anything is cached and stops the run
with a diagnosis when it is below ``gate.min_teacher_accuracy``.
"""

from __future__ import annotations

import numpy as np

from kdflow.util.errors import KdflowError


def teacher_floor_error(pred: np.ndarray, labels: np.ndarray, class_names: list[str],
                        floor: float) -> KdflowError | None:
    """None when the teacher's top-1 (``pred`` int [N] against ``labels`` int [N]) reaches ``floor``;
    else the error to raise, naming the likely cause."""
    if len(labels) == 0:
        return None
    top1 = float((pred == labels).mean())
    if top1 >= floor - 1e-6:
        return None
    problem = (f"the teacher's top-1 on the test split is {top1:.4f} ({len(labels)} images), below "
               f"gate.min_teacher_accuracy={floor}: it is not labelling these images as it was trained to")
    mapping, mapped = _class_mapping(pred, labels, len(class_names))
    if mapping is not None and mapped >= max(floor, 2 * top1):
        moved = [f"folder '{class_names[c]}' -> teacher class {m} ('{class_names[m]}')"
                 for c, m in enumerate(mapping) if m != c][:4]
        return KdflowError(
            f"{problem}; under another class order it would score {mapped:.4f} ({', '.join(moved)}, ...)",
            "the teacher was trained with another class order: kdflow sorts class folders by name, so rename "
            "the folders (or re-map the teacher's output layer) to match the teacher's classes")
    return KdflowError(
        problem,
        "check teacher.mean and teacher.std (the normalisation it was trained with; null means the "
        "dataset's statistics), data.image_size and data.resize (what it saw), and that the teacher "
        "is the one trained for these classes; if it really is this weak, lower gate.min_teacher_accuracy")


def _class_mapping(pred: np.ndarray, labels: np.ndarray, n: int) -> tuple[list[int] | None, float]:
    """The class each true class is most often predicted as, when that is a permutation other than
    the identity, and the accuracy under it; (None, 0) otherwise."""
    counts = np.zeros((n, n), dtype=np.int64)
    np.add.at(counts, (labels, pred), 1)
    present = counts.sum(1) > 0
    mapping = counts.argmax(1)
    if len(set(mapping[present].tolist())) != int(present.sum()) or all(mapping[present] == np.flatnonzero(present)):
        return None, 0.0
    return mapping.tolist(), float(counts[np.arange(n), mapping][present].sum() / len(labels))
