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

Everything here works on per-file METADATA held as numpy columns (a few dozen bytes per file), never
on pixels: preprocess keeps the decoded images on disk (``kdflow.data.spool``) and reads them back
only to write shards, so an ImageNet-sized folder is split in little memory.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from kdflow.util.errors import DataError

# Predefined split of a file, as an int8 code: 0 none (no split folders), 1 train/, 2 val/, 3 test/.
SPLIT_CODES = {None: 0, "train": 1, "val": 2, "test": 3}
SPLIT_NAMES = {code: name for name, code in SPLIT_CODES.items()}
_HELD_OUT_RANK = np.array([0, 0, 1, 2], np.int8)  # by split code: test over val over train/none
ID_CHARS = 16  # sample id: the first 64 bits of the content sha256, in hex


@dataclass(frozen=True)
class FileTable:
    """Every candidate file of a folder, in scan order: what phase 1 of preprocess recorded.

    Columns are numpy arrays of length N. ``rel`` is utf-8 bytes ('S'); ``sha`` the raw sha256
    ('S32' bytes, compared as a whole, never read item by item: numpy drops trailing NULs of items);
    ``ok`` false for a file that did not decode, whose reason is in ``reasons``; ``part``/``row``
    locate the decoded image in its spool; ``phash`` only when grouping by perceptual hash.
    """

    rel: np.ndarray  # S [N]
    label: np.ndarray  # int64 [N], class index
    split: np.ndarray  # int8 [N], SPLIT_CODES
    sha: np.ndarray  # S32 [N]
    ok: np.ndarray  # bool [N]
    part: np.ndarray  # int32 [N]
    row: np.ndarray  # int64 [N], -1 when dropped
    reasons: dict[int, str]  # file index -> why it was dropped
    phash: np.ndarray | None = None  # uint64 [N]

    def __len__(self) -> int:
        return len(self.label)


@dataclass(frozen=True)
class SampleTable:
    """The unique samples after de-duplication, as columns of length M (``refs``: file index of the
    copy kept, whose image the shards get)."""

    ids: np.ndarray  # S16 [M], hex content ids
    labels: np.ndarray  # int64 [M]
    splits: np.ndarray  # int8 [M], predefined split codes
    rels: np.ndarray  # S [M], utf-8 path of the copy kept
    refs: np.ndarray  # int64 [M], index into the FileTable

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def build(cls, ids: Sequence[str], labels: Sequence[int], splits: Sequence[str | None] | None = None,
              rels: Sequence[str] | None = None) -> "SampleTable":
        """A table from plain lists (tests, small tools)."""
        n = len(ids)
        splits = [None] * n if splits is None else splits
        rels = [""] * n if rels is None else rels
        return cls(np.array([i.encode() for i in ids], dtype=f"S{ID_CHARS}"), np.asarray(labels, np.int64),
                   np.array([SPLIT_CODES[s] for s in splits], np.int8),
                   np.array([r.encode() for r in rels], dtype=bytes).reshape(n), np.arange(n, dtype=np.int64))

    def id(self, i: int) -> str:
        return self.ids[i].decode()

    def rel(self, i: int) -> str:
        return self.rels[i].decode()


_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)


def hex_ids(sha: np.ndarray) -> np.ndarray:
    """Sample ids (S16: hex of the first 8 bytes) of raw sha256 digests (S32 [M]), vectorised."""
    raw = np.frombuffer(np.ascontiguousarray(sha, dtype="S32").tobytes(), np.uint8).reshape(-1, 32)[:, :8]
    digits = np.stack([_HEX[raw >> 4], _HEX[raw & 15]], axis=-1)  # [M, 8, 2]
    return np.ascontiguousarray(digits).reshape(-1, ID_CHARS).view(f"S{ID_CHARS}").reshape(-1)


def deduplicate(files: FileTable, class_names: list[str]) -> tuple[SampleTable, list[dict]]:
    """Collapse exact duplicates among the decoded files. Returns (unique samples, report entries
    for what was removed). Samples come in the order of each content's first copy; the report lists
    the duplicate groups in that order too."""
    idx = np.flatnonzero(files.ok)  # decoded files, in scan order
    if not len(idx):
        empty = np.zeros(0, np.int64)
        return SampleTable(np.zeros(0, f"S{ID_CHARS}"), empty, np.zeros(0, np.int8), np.zeros(0, "S1"),
                           empty), []
    _, first, inverse, counts = np.unique(files.sha[idx], return_index=True, return_inverse=True,
                                          return_counts=True)
    inverse = inverse.reshape(-1)
    keep = idx[first]  # per content: the file kept (the first copy, unless a dup group decides)
    valid = np.ones(len(first), bool)
    members = np.argsort(inverse, kind="stable")  # positions grouped by content, in scan order
    starts = np.cumsum(counts) - counts
    report: list[dict] = []
    rank = _HELD_OUT_RANK[files.split]
    for g in sorted(np.flatnonzero(counts > 1).tolist(), key=lambda g: first[g]):
        copies = idx[members[starts[g]:starts[g] + counts[g]]].tolist()
        rels = {c: files.rel[c].decode() for c in copies}
        copies.sort(key=lambda c: (-int(rank[c]), rels[c]))
        labels = {int(files.label[c]) for c in copies}
        if len(labels) > 1:
            names = ", ".join(sorted(class_names[label] for label in labels))
            report.extend({"path": rels[c], "reason": f"identical file filed under different classes: {names}"}
                          for c in copies)
            valid[g] = False
            continue
        keep[g] = copies[0]
        report.extend({"path": rels[c], "reason": f"duplicate of {rels[copies[0]]}"} for c in copies[1:])
    order = np.argsort(first, kind="stable")
    refs = keep[order[valid[order]]]
    ids = hex_ids(files.sha[refs])
    uniq, at, n = np.unique(ids, return_index=True, return_counts=True)
    if len(uniq) != len(ids):  # 64-bit prefix collision between different contents: refuse, never merge
        clash = ids == uniq[np.argmax(n > 1)]
        a, b = (files.rel[refs[i]].decode() for i in np.flatnonzero(clash)[:2])
        raise DataError(f"sample id collision between {a} and {b}",
                        "report this; it should not happen with real data")
    return SampleTable(ids, files.label[refs].astype(np.int64), files.split[refs], files.rel[refs], refs), report


def dropped_summary(entries: list[dict], limit: int = 5) -> str:
    """The first few report entries as one line, for an error raised before the report is written."""
    if not entries:
        return "no files at all"
    shown = "; ".join(f"{e['path']}: {e['reason']}" for e in entries[:limit])
    return shown + (f"; and {len(entries) - limit} more" if len(entries) > limit else "")


def check_every_class_kept(files: FileTable, samples: SampleTable, class_names: list[str],
                           dup_report: list[dict], stray: list[dict], root: str) -> None:
    """Refuse a dataset in which a class folder kept no image (empty, every file unreadable, or
    every picture also filed under another class): the class would still get an index and a
    logit that nothing teaches, and a teacher's class count would no longer say anything. Raised
    before anything is written, with the reasons, since no report is written for a failed run."""
    kept = np.bincount(samples.labels, minlength=len(class_names))
    empty = [i for i in range(len(class_names)) if kept[i] == 0]
    if not empty:
        return
    why = []
    for i in empty[:5]:
        # Skipped entries (a symlink out of the root, a fifo) are not in the table: match their folder.
        lost = [e for e in stray if class_names[i] in e["path"].split("/")[:-1][:2]]
        lost += [{"path": files.rel[j].decode(), "reason": r} for j, r in sorted(files.reasons.items())
                 if files.label[j] == i]
        decoded = {files.rel[j].decode() for j in np.flatnonzero(files.ok & (files.label == i))}
        lost += [e for e in dup_report if e["path"] in decoded]  # filed under another class too
        why.append(f"{class_names[i]!r} ({dropped_summary(lost, 3) if lost else 'no files at all'})")
    more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
    raise DataError(f"class folder(s) under {root} kept no readable image: {', '.join(why)}{more}",
                    "add readable images to each of these folders, or remove the folders "
                    "(a class with no image cannot be learnt)")


SPLIT_METHOD = "sha256-unit/1"  # names the draw below; part of the split spec


def unit_draw(seed: int, key: str) -> float:
    """A number in [0, 1), uniform over keys, fixed by (seed, key)."""
    return _draw(seed, key.encode())


def _draw(seed: int, key: bytes) -> float:
    """``unit_draw`` of a utf-8 key: the same bytes are hashed."""
    digest = hashlib.sha256(b"kdflow.split\0" + str(seed).encode() + b"\0" + key).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass(frozen=True)
class SplitResult:
    splits: dict[str, np.ndarray]  # train, val, test: sample indices (int64), each sorted by sample id
    # Samples from the train folder (or an unsplit folder) put in val/test because a member of their
    # group sits in a predefined val/ or test/ folder: a near-duplicate of a test picture is not trained on.
    moved_to_held_out: int


def as_keys(keys: Sequence[str] | np.ndarray) -> np.ndarray:
    """Group keys as a numpy bytes array (utf-8), whatever they came as."""
    if isinstance(keys, np.ndarray) and keys.dtype.kind == "S":
        return keys
    return np.array([k.encode() for k in keys], dtype=bytes).reshape(len(keys))


def assign_splits(
    samples: SampleTable,
    class_names: list[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    group_keys: Sequence[str] | np.ndarray | None = None,
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
    keys = samples.ids if group_keys is None else as_keys(group_keys)
    if len(keys) != len(samples):
        raise ValueError(f"{len(keys)} group keys for {len(samples)} samples")
    uniq, inverse = np.unique(keys, return_inverse=True)
    inverse = inverse.reshape(-1)
    codes = samples.splits
    predefined = set(codes.tolist()) - {0}
    carve_test, carve_val = SPLIT_CODES["test"] not in predefined, SPLIT_CODES["val"] not in predefined
    # Per key: the most held-out predefined split (code) among its members, 0 when none is val/test.
    rank = np.where(codes >= SPLIT_CODES["val"], _HELD_OUT_RANK[codes], 0)
    held = np.zeros(len(uniq), np.int8)
    np.maximum.at(held, inverse, rank)
    held_code = np.where(held == 2, SPLIT_CODES["test"], np.where(held == 1, SPLIT_CODES["val"], 0))
    fixed = codes >= SPLIT_CODES["val"]  # in a predefined val/ or test/: stays there
    follows = ~fixed & (held[inverse] > 0)
    drawn = ~fixed & ~follows
    # One draw per key (a group shares it); only for keys some drawn sample has.
    u = np.ones(len(uniq))
    for k in np.unique(inverse[drawn]).tolist():
        u[k] = _draw(seed, bytes(uniq[k]))
    u = u[inverse]
    target = np.full(len(samples), SPLIT_CODES["train"], np.int8)
    target[fixed] = codes[fixed]
    target[follows] = held_code[inverse[follows]]
    to_test = drawn & carve_test & (u < test_fraction)
    to_val = drawn & ~to_test & carve_val & (u >= 1.0 - val_fraction)
    target[to_test] = SPLIT_CODES["test"]
    target[to_val] = SPLIT_CODES["val"]
    train_counts = np.bincount(samples.labels[target == SPLIT_CODES["train"]], minlength=len(class_names))
    empty = [class_names[i] for i, c in enumerate(train_counts) if c == 0]
    if empty:
        raise DataError(
            f"no training images left for class(es): {', '.join(empty)}",
            "add images to these classes, remove their folders, or lower data.val_fraction/test_fraction"
            + (" (grouped, a class of few groups can land wholly in val or test)" if group_keys is not None else ""),
        )
    out = {}
    for name in ("train", "val", "test"):
        members = np.flatnonzero(target == SPLIT_CODES[name])
        out[name] = members[np.argsort(samples.ids[members], kind="stable")]
    return SplitResult(out, int(follows.sum()))
