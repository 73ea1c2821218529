"""The soft-label cache in object storage, keyed by content.

Layout under the cache root (a folder, ``file://`` or ``s3://``)::

    softlabels/v2/views/<view key>/<split>-NNNNN.npz   ids, values, index, tail_lse, tail_mean
                                                       (codec.py) and, for augmented views, params
                                                       (the view's crop box and flip, int16 [n, 5]);
                                                       one shard per dataset shard, in dataset order
    softlabels/v2/views/<view key>/manifest.json       written last: the view's commit
    softlabels/v2/entries/<key>.json                   the entry: the list of its views, written
                                                       after every view is complete

A view key digests what determines that view's soft labels: the teacher's content digest, the
dataset fingerprint, the preprocessing spec, k and the view's spec (identity; or the augmentation
settings, their seed and the view's index). The entry key digests the same with the whole list of
views, so V, the augmentation spec and its seed join k in the key. Views are stored on their own,
so entries share them: a run asking for 16 views reuses the 8 an earlier run computed, and a
cross-entropy run, an online run and an offline one share the plain view.

A view is complete only when its manifest exists, names the same key and every shard it lists
exists with the recorded size; readers also check each shard's sha256. Anything else is a miss: the
writer resumes by keeping shards that already hold the expected sample ids and rewriting the rest.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from kdflow import __version__
from kdflow.data.shards import DatasetManifest
from kdflow.digest import digest_of, pack_arrays, sha256_bytes, unpack_arrays
from kdflow.errors import CacheError, KdflowError
from kdflow.softlabels.codec import dense, standardized_dense
from kdflow.softlabels.views import IDENTITY, View
from kdflow.storage import join, storage_for

log = logging.getLogger(__name__)

FORMAT = "kdflow.softlabels/2"
MANIFEST = "manifest.json"
CODEC = ("values", "index", "tail_lse", "tail_mean")

# infer(images uint8 [n, H, W, 3], view params int16 [n, 5] or None) -> codec arrays for those rows
Infer = Callable[[np.ndarray, "np.ndarray | None"], dict[str, np.ndarray]]


@dataclass(frozen=True)
class EntrySpec:
    """What a cache entry holds: one teacher's labels of one dataset's views."""

    teacher_digest: str
    dataset: DatasetManifest
    top_k: int
    views: tuple[View, ...] = (IDENTITY,)

    def _base(self) -> dict:
        return {"format": FORMAT, "teacher": self.teacher_digest, "dataset": self.dataset.fingerprint,
                "preprocessing": self.dataset.data["spec"], "top_k": self.top_k}

    @property
    def key(self) -> str:
        return digest_of({**self._base(), "views": [v.spec for v in self.views]})

    def view_key(self, view: View) -> str:
        return digest_of({**self._base(), "view": view.spec})


@dataclass(frozen=True)
class SoftRows:
    """A batch's compact teacher labels: values/index [B, k], tail_lse/tail_mean [B]."""

    values: torch.Tensor
    index: torch.Tensor
    tail_lse: torch.Tensor
    tail_mean: torch.Tensor
    num_classes: int

    def logits(self, temperature: float = 1.0, standardized: bool = False) -> torch.Tensor:
        """Dense teacher logits for softmax(z / temperature): float32 [B, num_classes]; z-scored
        per row first when ``standardized`` (logit standardization)."""
        rebuild = standardized_dense if standardized else dense
        return rebuild(self.values, self.index, self.tail_lse, self.tail_mean, self.num_classes, temperature)


@dataclass(frozen=True)
class SoftLabels:
    """One split's cached soft labels for V views, aligned row for row with the dataset split."""

    values: torch.Tensor  # float32 [N, V, k]
    index: torch.Tensor  # int32 [N, V, k]
    tail_lse: torch.Tensor  # float32 [N, V]
    tail_mean: torch.Tensor  # float32 [N, V]
    num_classes: int
    params: torch.Tensor | None = field(default=None)  # int16 [N, V, 5] for augmented views

    @property
    def num_views(self) -> int:
        return int(self.values.shape[1])

    def rows(self, rows: torch.Tensor, views: torch.Tensor | None = None) -> SoftRows:
        """The labels of dataset rows ``rows`` [B], view ``views[i]`` for row i (default view 0)."""
        views = torch.zeros_like(rows) if views is None else views
        return SoftRows(self.values[rows, views], self.index[rows, views], self.tail_lse[rows, views],
                        self.tail_mean[rows, views], self.num_classes)

    def top1(self) -> torch.Tensor:
        """The teacher's predicted class per row [N] on view 0 (exact: the top-1 logit is always kept)."""
        best = self.values[:, 0].argmax(dim=-1, keepdim=True)
        return self.index[:, 0].gather(-1, best).squeeze(-1).long()

    def to(self, device: torch.device | str) -> "SoftLabels":
        return SoftLabels(self.values.to(device), self.index.to(device), self.tail_lse.to(device),
                          self.tail_mean.to(device), self.num_classes,
                          None if self.params is None else self.params.to(device))


class SoftLabelCache:
    def __init__(self, root: str):
        self.root = root
        self.store = storage_for(root)
        # Entries and view manifests verified by lookup: a step reads several splits of one entry,
        # and verifying costs a read plus a size check per shard (an S3 HEAD each).
        self._verified: dict[str, dict[str, Any]] = {}
        self._verified_views: dict[str, dict[str, Any]] = {}

    def entry_uri(self, key: str) -> str:
        return join(self.root, "softlabels", "v2", "entries", f"{key}.json")

    def view_uri(self, view_key: str) -> str:
        return join(self.root, "softlabels", "v2", "views", view_key)

    def _read_json(self, uri: str, key: str) -> dict[str, Any] | None:
        if not self.store.exists(uri):
            return None
        try:
            data = json.loads(self.store.read_bytes(uri))
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("soft-label manifest %s is unreadable; treating it as a miss", uri)
            return None
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("key") != key:
            log.warning("soft-label manifest %s does not match key %s; treating it as a miss", uri, key[:12])
            return None
        return data

    def view_manifest(self, view_key: str) -> dict[str, Any] | None:
        """The manifest of a complete view, or None (absent, unfinished, or not verifying)."""
        manifest = self._read_json(join(self.view_uri(view_key), MANIFEST), view_key)
        if manifest is None:
            return None
        for split in manifest["splits"].values():
            for shard in split["shards"]:
                if self.store.size(join(self.view_uri(view_key), shard["file"])) != shard["size"]:
                    log.warning("soft-label shard %s of view %s is missing or resized; treating as a miss",
                                shard["file"], view_key[:12])
                    return None
        return manifest

    def lookup(self, key: str) -> dict[str, Any] | None:
        """The manifest of a complete entry (every view complete), or None."""
        entry = self._read_json(self.entry_uri(key), key)
        if entry is None:
            return None
        manifests = {}
        for view in entry["views"]:
            manifests[view["key"]] = self.view_manifest(view["key"])
            if manifests[view["key"]] is None:
                return None
        self._verified_views.update(manifests)
        return entry

    def write(self, spec: EntrySpec, infer: Infer, extra: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
        """Fill every view of ``spec`` that is not complete yet, then commit the entry.

        Returns (entry manifest, {"views_computed": n, "views_reused": m}).
        """
        keyed = [(spec.view_key(view), view) for view in spec.views]
        pending = [(vkey, view) for vkey, view in keyed if self.view_manifest(vkey) is None]
        self._fill_views(pending, spec, infer)
        entry = {
            "format": FORMAT,
            "key": spec.key,
            "kdflow_version": __version__,
            "created_unix": int(time.time()),
            "dataset_fingerprint": spec.dataset.fingerprint,
            "num_classes": spec.dataset.num_classes,
            "top_k": spec.top_k,
            "views": [{"key": vkey, "spec": view.spec} for vkey, view in keyed],
            **extra,
        }
        self.store.write_bytes(self.entry_uri(spec.key), json.dumps(entry, indent=2).encode())
        return entry, {"views_computed": len(pending), "views_reused": len(keyed) - len(pending)}

    def _fill_views(self, pending: list[tuple[str, View]], spec: EntrySpec, infer: Infer) -> None:
        """Label the pending views shard by shard: each dataset shard is read once for all of them
        and only one is held at a time; each view is committed by its manifest at the end."""
        dataset, size = spec.dataset, spec.dataset.image_size
        data_store = storage_for(dataset.root)
        splits: dict[str, dict[str, dict]] = {vkey: {} for vkey, _ in pending}
        for split, info in dataset.data["splits"].items():
            todo = [(vkey, view) for vkey, view in pending if view.covers(split)]
            if not todo:
                continue
            # Each view's parameters for the whole split (a function of seed, split and view), sliced per shard.
            params = {vkey: view.params(split, info["count"], size, size) for vkey, view in todo}
            shards: dict[str, list[dict]] = {vkey: [] for vkey, _ in todo}
            start = 0
            for dshard in info["shards"]:
                arrays = unpack_arrays(data_store.read_bytes(join(dataset.root, dshard["file"])))
                rows = slice(start, start + dshard["count"])
                start += dshard["count"]
                for vkey, _ in todo:
                    p = None if params[vkey] is None else params[vkey][rows]
                    raw = self._label_shard(join(self.view_uri(vkey), dshard["file"]), arrays, p, infer)
                    shards[vkey].append({"file": dshard["file"], "count": dshard["count"],
                                         "sha256": sha256_bytes(raw), "size": len(raw)})
            for vkey, _ in todo:
                splits[vkey][split] = {"count": info["count"], "shards": shards[vkey]}
        for vkey, view in pending:
            manifest = {"format": FORMAT, "key": vkey, "kdflow_version": __version__, "spec": view.spec,
                        "teacher_digest": spec.teacher_digest, "num_classes": dataset.num_classes,
                        "top_k": spec.top_k, "splits": splits[vkey]}
            self.store.write_bytes(join(self.view_uri(vkey), MANIFEST), json.dumps(manifest, indent=2).encode())

    def _label_shard(self, uri: str, arrays: dict[str, np.ndarray], params: np.ndarray | None,
                     infer: Infer) -> bytes:
        """One view's labels of one dataset shard: kept when an interrupted run left them, else computed."""
        raw = self._resumable(uri, arrays["ids"])
        if raw is not None:
            log.info("soft labels: resuming, kept %s", uri)
            return raw
        out = infer(arrays["images"], params)
        if params is not None:
            out["params"] = params
        raw = pack_arrays({"ids": arrays["ids"], **out})
        self.store.write_bytes(uri, raw)
        return raw

    def _resumable(self, uri: str, ids: np.ndarray) -> bytes | None:
        if not self.store.exists(uri):
            return None
        try:
            raw = self.store.read_bytes(uri)
            if np.array_equal(unpack_arrays(raw)["ids"], ids):
                return raw
        except (KdflowError, ValueError, KeyError, OSError):
            pass
        return None

    def _entry(self, key: str) -> dict[str, Any]:
        entry = self._verified.get(key) or self.lookup(key)
        if entry is None:
            raise CacheError(f"soft-label cache entry {self.entry_uri(key)} is not complete",
                             "run the teacher inference step for this dataset and teacher first")
        self._verified[key] = entry
        return entry

    def load_split(self, key: str, split: str, expected_ids: np.ndarray, augmented: bool = False) -> SoftLabels:
        """One split's labels, verifying shard digests and row alignment with the dataset.

        ``augmented=False``: the plain view only (V = 1). ``True``: the entry's augmented views,
        stacked on the view axis with their parameters (V = augment.views).
        """
        entry = self._entry(key)
        views = [v for v in entry["views"] if (v["spec"]["kind"] != "identity") == augmented]
        if not views:
            raise CacheError(f"soft-label cache entry {key[:12]} holds no {'augmented' if augmented else 'plain'} views",
                             "re-run teacher inference with this run's config (augment.views)")
        loaded = [self._load_view(v["key"], split, expected_ids) for v in views]
        stack = {name: torch.from_numpy(np.stack([a[name] for a in loaded], axis=1))
                 for name in CODEC + (("params",) if augmented else ())}
        return SoftLabels(stack["values"], stack["index"], stack["tail_lse"], stack["tail_mean"],
                          int(entry["num_classes"]), stack.get("params"))

    def _load_view(self, vkey: str, split: str, expected_ids: np.ndarray) -> dict[str, np.ndarray]:
        manifest = self._verified_views[vkey]  # verified by _entry's lookup
        if split not in manifest["splits"]:
            raise CacheError(f"soft-label view {vkey[:12]} has no complete '{split}' split",
                             "re-run teacher inference for this dataset and teacher")
        parts = []
        for shard in manifest["splits"][split]["shards"]:
            raw = self.store.read_bytes(join(self.view_uri(vkey), shard["file"]))
            if sha256_bytes(raw) != shard["sha256"]:
                raise CacheError(f"soft-label shard {shard['file']} of view {vkey[:12]} fails its digest check",
                                 f"delete {self.view_uri(vkey)} and re-run teacher inference")
            parts.append(unpack_arrays(raw))
        ids = np.concatenate([p["ids"] for p in parts])
        if not np.array_equal(ids, expected_ids):
            raise CacheError(f"soft labels of view {vkey[:12]} are not aligned with the dataset's '{split}' split",
                             f"delete {self.view_uri(vkey)} and re-run teacher inference")
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0] if name != "ids"}
