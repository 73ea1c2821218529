"""De-duplication and the seeded train/val/test split, drawn per sample (or per group) from a hash.

Exact duplicates (same file bytes) collapse to one sample whose id is the content hash, so a
duplicate can never sit in two splits. When copies sit in different predefined splits, the copy in
the most held-out split is kept (test over val over train): a test image must not be trained on.
Copies filed under different classes are ambiguous and all dropped.

The split of a sample is a pure function of its group key (its content id unless near-duplicates
are grouped, see ``kdflow.data.groups``) and the seed: sha256(seed, key) read as a number u in
[0, 1) puts it in test when u < test_fraction, in val when u >= 1 - val_fraction, else in train.
Nothing depends on the other samples, so a dataset that grows keeps every old sample where it was
(unless a new picture joins its near-duplicate group), and a growing test split only gains new
pictures. The price: the split is not stratified. Each class's fractions come out close to the
configured ones on average (a class of n samples is off by about sqrt(f (1 - f) / n)), not exactly;
a small class can even end up with no validation or test sample.
"""

from __future__ import annotations

import hashlib
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
    rel: str = ""  # path relative to the dataset root (of the copy kept, for duplicates)


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
        samples.append(Sample(sid, label_of[keep.label_name], keep.image, keep.split, keep.rel))
    return samples, report


SPLIT_METHOD = "sha256-unit/1"  # names the draw below; part of the split spec


def unit_draw(seed: int, key: str) -> float:
    """A number in [0, 1), uniform over keys, fixed by (seed, key)."""
    digest = hashlib.sha256(f"kdflow.split\0{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass(frozen=True)
class SplitResult:
    splits: dict[str, list[Sample]]  # train, val, test; each sorted by id
    # Samples from the train folder (or an unsplit folder) put in val/test because a member of their
    # group sits in a predefined val/ or test/ folder: a near-duplicate of a test picture is not trained on.
    moved_to_held_out: int


def assign_splits(
    samples: list[Sample],
    class_names: list[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    group_keys: list[str] | None = None,
) -> SplitResult:
    """Assign every sample to train, val or test, keeping predefined splits where the data has them.

    Samples in a predefined val/ or test/ folder stay there. The others (the train folder, or all
    data when it has no split folders) are drawn per group key (default: the sample id) with
    ``unit_draw``: test when u < test_fraction (only when the data has no test/), val when
    u >= 1 - val_fraction (only when it has no val/). So val_fraction and test_fraction are both
    fractions of those samples, per sample and not stratified per class; see the module docstring.
    A group with a member in a predefined val/ or test/ folder takes its other members with it (to
    the most held-out such split). Raises DataError when a class is left with no training sample.
    """
    keys = group_keys if group_keys is not None else [s.id for s in samples]
    if len(keys) != len(samples):
        raise ValueError(f"{len(keys)} group keys for {len(samples)} samples")
    predefined = {s.split for s in samples} - {None}
    carve_test, carve_val = "test" not in predefined, "val" not in predefined
    held_out: dict[str, str] = {}  # group key -> the most held-out predefined split among its members
    for s, key in zip(samples, keys):
        if s.split in ("val", "test") and _HELD_OUT_RANK[s.split] > _HELD_OUT_RANK[held_out.get(key)]:
            held_out[key] = s.split
    out: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    moved = 0
    for s, key in zip(samples, keys):
        if s.split in ("val", "test"):
            out[s.split].append(s)
        elif key in held_out:
            out[held_out[key]].append(s)
            moved += 1
        else:
            u = unit_draw(seed, key)
            if carve_test and u < test_fraction:
                out["test"].append(s)
            elif carve_val and u >= 1.0 - val_fraction:
                out["val"].append(s)
            else:
                out["train"].append(s)
    train_counts = np.bincount([s.label for s in out["train"]], minlength=len(class_names))
    empty = [class_names[i] for i, c in enumerate(train_counts) if c == 0]
    if empty:
        raise DataError(
            f"no training images left for class(es): {', '.join(empty)}",
            "add images to these classes, remove their folders, or lower data.val_fraction/test_fraction"
            + (" (grouped, a class of few groups can land wholly in val or test)" if group_keys else ""),
        )
    for name in out:
        out[name].sort(key=lambda s: s.id)
    return SplitResult(out, moved)
