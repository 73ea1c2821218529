"""The soft-label cache's two kinds of manifest, typed: parsed and checked once when read, written by
their ``to_dict`` (layout: kdflow.softlabels.cache).

* A view manifest (``views/<view key>/manifests/<gen>.json``, ``ViewManifest``): per split, the view
  shard files of one view (``ViewShard``: file, count, sha256, size, ids_sha256).
* An entry (``entries/<key>.json``, ``CacheEntry``): the views of one key (``ViewRef``: key and spec)
  and what they label; optionally the teacher's digest and URI, recorded for the reader, never read
  back.

Keys are written in the order kdflow has always written them, so that racing commits of one entry
(or generation) write the same bytes, and a manifest read and written again is unchanged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from kdflow import __version__
from kdflow.softlabels.shardfile import NAME_DIGEST, parse_view_file

FORMAT = "kdflow.softlabels/5"
MALFORMED = "the manifest is malformed"
_KEY = re.compile(r"[0-9a-f]{64}")


def as_stored(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A view spec as JSON gives it back (tuples are lists): what a manifest read from storage holds,
    so that a spec made now compares equal to a stored one."""
    return json.loads(json.dumps(spec))


@dataclass(frozen=True)
class ViewShard:
    """A view shard file that was read and checked: its name, rows, digests and size."""

    file: str
    count: int
    sha256: str
    size: int
    ids_sha256: str  # the digest of the dataset shard's sample ids (labeller.ids_digest)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "count": self.count, "sha256": self.sha256, "size": self.size,
                "ids_sha256": self.ids_sha256}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ViewShard":
        return cls(str(d["file"]), int(d["count"]), str(d["sha256"]), int(d["size"]), str(d["ids_sha256"]))

    def problem(self, files: Mapping[str, int]) -> str | None:
        """Why this file cannot be used given the view folder's files ({name: size}), or None."""
        parsed = parse_view_file(self.file)  # a plain name: never a path out of the folder
        if parsed is None or parsed[1] != self.sha256[:NAME_DIGEST]:
            return f"shard {self.file} is not named by its recorded digest"
        if files.get(self.file) != self.size:
            return f"shard {self.file} is missing or resized"
        return None


@dataclass(frozen=True)
class ViewSplit:
    count: int  # rows of the split (the dataset's)
    shards: tuple[ViewShard, ...]  # one per dataset shard, in dataset order

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "shards": [s.to_dict() for s in self.shards]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ViewSplit":
        return cls(int(d["count"]), tuple(ViewShard.from_dict(s) for s in d["shards"]))


@dataclass(frozen=True)
class ViewManifest:
    """One commit of a view: every shard file of the splits it covers."""

    key: str  # the view key
    spec: Mapping[str, Any]  # the view's spec, as stored (views.View.spec)
    teacher_digest: str
    num_classes: int
    top_k: int
    splits: Mapping[str, ViewSplit]
    kdflow_version: str = __version__
    format: str = field(default=FORMAT, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "key": self.key, "kdflow_version": self.kdflow_version,
                "spec": dict(self.spec), "teacher_digest": self.teacher_digest, "num_classes": self.num_classes,
                "top_k": self.top_k, "splits": {name: s.to_dict() for name, s in self.splits.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ViewManifest":
        """Raises KeyError, TypeError, ValueError or AttributeError when ``d`` is not one."""
        if not isinstance(d["spec"], Mapping):
            raise TypeError("spec is not a mapping")
        return cls(key=str(d["key"]), spec=dict(d["spec"]), teacher_digest=str(d["teacher_digest"]),
                   num_classes=int(d["num_classes"]), top_k=int(d["top_k"]),
                   splits={str(name): ViewSplit.from_dict(s) for name, s in d["splits"].items()},
                   kdflow_version=str(d["kdflow_version"]), format=str(d["format"]))

    def shard(self, split: str, index: int) -> ViewShard | None:
        """The file named for shard ``index`` of ``split``, or None when there is none."""
        info = self.splits.get(split)
        return info.shards[index] if info is not None and 0 <= index < len(info.shards) else None

    def problem(self, files: Mapping[str, int]) -> str | None:
        """Why this manifest is not complete given the view folder's files ({name: size}), or None."""
        for split in self.splits.values():
            for shard in split.shards:
                problem = shard.problem(files)
                if problem is not None:
                    return problem
        return None


def complete_view(raw: Mapping[str, Any], files: Mapping[str, int]) -> tuple[ViewManifest | None, str | None]:
    """(the view manifest ``raw`` holds, None) when it parses and every file it names is in ``files``
    ({name: size}) with its recorded size and digest in its name; else (None, why not)."""
    try:
        manifest = ViewManifest.from_dict(raw)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None, MALFORMED
    problem = manifest.problem(files)
    return (None, problem) if problem is not None else (manifest, None)


@dataclass(frozen=True)
class ViewRef:
    """A view an entry names: its key (a digest, never a path) and spec."""

    key: str
    spec: Mapping[str, Any]

    @property
    def is_identity(self) -> bool:
        return self.spec["kind"] == "identity"

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "spec": dict(self.spec)}


@dataclass(frozen=True)
class CacheEntry:
    """A complete cache entry: one teacher's labels of one dataset's views (every sound entry of a key
    names the same views, since the key digests them)."""

    key: str
    dataset_fingerprint: str
    num_classes: int
    top_k: int
    views: tuple[ViewRef, ...]
    teacher_digest: str | None = None  # recorded when given (the teacher steps give both)
    teacher_uri: str | None = None
    kdflow_version: str = __version__
    format: str = field(default=FORMAT, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {"format": self.format, "key": self.key, "kdflow_version": self.kdflow_version,
               "dataset_fingerprint": self.dataset_fingerprint, "num_classes": self.num_classes,
               "top_k": self.top_k, "views": [v.to_dict() for v in self.views]}
        for name in ("teacher_digest", "teacher_uri"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> "CacheEntry | None":
        """The entry ``d`` holds, or None when readers could not use it: its views must be view keys
        (digests, never paths) with specs, and its class count an integer."""
        views, num_classes = d.get("views"), d.get("num_classes")
        if not isinstance(views, list) or not isinstance(num_classes, int) or not all(
                isinstance(v, dict) and isinstance(v.get("spec"), dict) and isinstance(v.get("key"), str)
                and _KEY.fullmatch(v["key"]) is not None for v in views):
            return None
        try:
            return cls(key=str(d["key"]), dataset_fingerprint=str(d["dataset_fingerprint"]), num_classes=num_classes,
                       top_k=int(d["top_k"]), views=tuple(ViewRef(v["key"], dict(v["spec"])) for v in views),
                       teacher_digest=_optional_str(d.get("teacher_digest")),
                       teacher_uri=_optional_str(d.get("teacher_uri")),
                       kdflow_version=str(d["kdflow_version"]), format=str(d["format"]))
        except (KeyError, TypeError, ValueError):
            return None


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)
