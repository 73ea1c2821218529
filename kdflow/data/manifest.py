"""The records a dataset manifest is made of, each parsed once from JSON and written by its ``to_dict``.

``manifest.json`` (``kdflow.dataset/1``) is, key by key, in this order::

    format, kdflow_version, source,
    spec        PreprocessSpec: image_size, channels, resize, interpolation, split
    class_names
    splits      {split: SplitInfo: count, class_counts, shards [ShardEntry: file, count, sha256]}
    stats       ChannelStats: mean, std (train split, [0, 1] pixels)
    report      PreprocessReport: files_seen, dropped, duplicates_removed, groups, largest_group,
                moved_to_held_out
    fingerprint

The ``to_dict`` of each record gives its keys in that order, so a manifest read and written again is
the same bytes: the dataset fingerprint and the soft-label cache key digest the spec and the shard
digests, and ``kdflow.storage.digest`` sorts keys, but a reader comparing files should not see a
change either. ``DatasetManifest`` (kdflow.data.shards) holds these records and reads the shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from kdflow.storage.digest import digest_of

FORMAT = "kdflow.dataset/1"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ShardEntry:
    """One ``<split>-NNNNN.npz`` shard: its file name (in the dataset folder), rows and content digest."""

    file: str
    count: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "count": self.count, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ShardEntry":
        return cls(str(d["file"]), int(d["count"]), str(d["sha256"]))


@dataclass(frozen=True)
class SplitInfo:
    """One split: its rows, rows per class (by class index) and shards, in dataset order."""

    count: int
    class_counts: tuple[int, ...]
    shards: tuple[ShardEntry, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "class_counts": list(self.class_counts),
                "shards": [s.to_dict() for s in self.shards]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SplitInfo":
        return cls(int(d["count"]), tuple(int(c) for c in d["class_counts"]),
                   tuple(ShardEntry.from_dict(s) for s in d["shards"]))


@dataclass(frozen=True)
class PreprocessSpec:
    """What decides the pixels and the split (kdflow.data.preprocess): part of the fingerprint, and of
    the soft-label cache key. ``split`` is ``kdflow.data.preprocess.split_spec``: its keys depend on
    ``data.group_by``, and only the settings the grouping uses are in it, so it stays a mapping."""

    image_size: int
    channels: int
    resize: str
    interpolation: str
    split: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "channels": self.channels, "resize": self.resize,
                "interpolation": self.interpolation, "split": dict(self.split)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PreprocessSpec":
        if not isinstance(d["split"], Mapping):
            raise TypeError("spec.split is not a mapping")
        return cls(int(d["image_size"]), int(d["channels"]), str(d["resize"]), str(d["interpolation"]),
                   dict(d["split"]))


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel mean and std of the train split's [0, 1] pixels (the student's normalisation)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ChannelStats":
        return cls(tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))


@dataclass(frozen=True)
class PreprocessReport:
    """What preprocessing did, in counts (the reasons per file are in ``report.json`` beside it)."""

    files_seen: int
    dropped: int
    duplicates_removed: int
    groups: int  # split units: samples, or near-duplicate groups (data.group_by)
    largest_group: int
    moved_to_held_out: int  # samples that followed a near-duplicate into a predefined val/ or test/

    def to_dict(self) -> dict[str, Any]:
        return {"files_seen": self.files_seen, "dropped": self.dropped,
                "duplicates_removed": self.duplicates_removed, "groups": self.groups,
                "largest_group": self.largest_group, "moved_to_held_out": self.moved_to_held_out}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PreprocessReport":
        return cls(*(int(d[k]) for k in ("files_seen", "dropped", "duplicates_removed", "groups", "largest_group",
                                         "moved_to_held_out")))


def fingerprint(spec: PreprocessSpec, class_names: tuple[str, ...] | list[str],
                splits: Mapping[str, SplitInfo]) -> str:
    """The dataset's content digest: the spec, the class names and every shard's digest."""
    shards = {name: [s.sha256 for s in info.shards] for name, info in splits.items()}
    return digest_of({"format": FORMAT, "spec": spec.to_dict(), "classes": list(class_names), "shards": shards})
