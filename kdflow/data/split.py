"""De-duplication and the seeded, stratified train/val/test split.

Exact duplicates (same file bytes) collapse to one sample whose id is the content hash, so a
duplicate can never sit in two splits. When copies sit in different predefined splits, the copy in
the most held-out split is kept (test over val over train): a test image must not be trained on.
Copies filed under different classes are ambiguous and all dropped.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from kdflow.data.imagefolder import Decoded
from kdflow.errors import DataError

_HELD_OUT_RANK = {"test": 2, "val": 1, "train": 0, None: 0}
ID_CHARS = 16  # sample id: the first 64 bits of the content sha256


@dataclass(frozen=True)
class Sample:
    id: str
    label: int
    image: np.ndarray  # uint8 [H, W, 3]
    split: str | None  # predefined split, or None


def deduplicate(decoded: list[Decoded], class_names: list[str]) -> tuple[list[Sample], list[dict]]:
    """Collapse exact duplicates. Returns (unique samples, report entries for what was removed)."""
    label_of = {name: i for i, name in enumerate(class_names)}
    groups: dict[str, list[Decoded]] = defaultdict(list)
    for d in decoded:
        groups[d.sha256].append(d)
    samples: list[Sample] = []
    report: list[dict] = []
    ids: dict[str, str] = {}
    for sha, copies in groups.items():
        copies = sorted(copies, key=lambda d: (-_HELD_OUT_RANK[d.split], d.rel))
        keep = copies[0]
        if len({d.label_name for d in copies}) > 1:
            report.extend(
                {"path": d.rel, "reason": "identical file filed under different classes: "
                 + ", ".join(sorted({c.label_name for c in copies}))}
                for d in copies
            )
            continue
        for d in copies[1:]:
            report.append({"path": d.rel, "reason": f"duplicate of {keep.rel}"})
        sid = sha[:ID_CHARS]
        if sid in ids:  # 64-bit prefix collision between different contents: refuse, never merge
            raise DataError(f"sample id collision between {ids[sid]} and {keep.rel}",
                            "report this; it should not happen with real data")
        ids[sid] = keep.rel
        samples.append(Sample(sid, label_of[keep.label_name], keep.image, keep.split))
    return samples, report


def _take(n: int, fraction: float) -> int:
    return int(round(n * fraction))


def assign_splits(
    samples: list[Sample], class_names: list[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[Sample]]:
    """Split per class with a seeded permutation, keeping predefined splits where the data has them.

    A class's samples are ordered by id before shuffling, so the split depends only on content and
    seed, not on file names or scan order.
    """
    predefined = {s.split for s in samples} - {None}
    out: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        if s.split in ("val", "test"):
            out[s.split].append(s)
        else:
            by_class[s.label].append(s)
    carve_test = "test" not in predefined
    for label in range(len(class_names)):
        pool = sorted(by_class.get(label, []), key=lambda s: s.id)
        order = rng.permutation(len(pool))
        pool = [pool[i] for i in order]
        n_test = _take(len(pool), test_fraction) if carve_test else 0
        n_val = _take(len(pool), val_fraction) if "val" not in predefined else 0
        out["test"].extend(pool[:n_test])
        out["val"].extend(pool[n_test : n_test + n_val])
        out["train"].extend(pool[n_test + n_val :])
    train_counts = np.bincount([s.label for s in out["train"]], minlength=len(class_names))
    empty = [class_names[i] for i, c in enumerate(train_counts) if c == 0]
    if empty:
        raise DataError(
            f"no training images left for class(es): {', '.join(empty)}",
            "add images to these classes, remove their folders, or lower data.val_fraction/test_fraction",
        )
    for name in out:
        out[name].sort(key=lambda s: s.id)
    return out
