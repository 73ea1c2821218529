"""Reading the soft-label cache: a complete entry's labels, each shard checked as it is read.

Every read checks the shard's sha256 against its view manifest and the caller's sample ids against
the manifest's ids digest; a shard that fails is refused with a CacheError (never decoded and
used). The fix names the teacher inference step, which reads every shard of a cached entry back
on a hit and relabels the missing or corrupt ones (cache.py).
"""

from __future__ import annotations

import numpy as np
import torch

from kdflow.storage.digest import sha256_bytes
from kdflow.util.errors import CacheError
from kdflow.softlabels import shardfile
from kdflow.softlabels.codec import decode
from kdflow.softlabels.labeller import ids_digest
from kdflow.softlabels.labels import SoftLabels
from kdflow.softlabels.manifest import CacheEntry, ViewManifest, ViewShard
from kdflow.storage import Storage, join

CODEC = ("values", "index", "tail_lse", "tail_mean")
REPAIR = ("re-run teacher inference: on a cache hit it reads every shard back, reports the missing or corrupt "
          "ones and relabels only those")


class CacheReading:
    """The reading half of ``SoftLabelCache`` (which provides ``lookup``, ``view_uri`` and ``entry_uri``)."""

    store: Storage
    _verified: dict[str, CacheEntry]  # entries verified by lookup
    _verified_views: dict[str, ViewManifest]  # their view manifests

    def lookup(self, key: str) -> CacheEntry | None: ...

    def view_uri(self, view_key: str) -> str: ...

    def entry_uri(self, key: str) -> str: ...

    def _entry(self, key: str) -> CacheEntry:
        entry = self._verified.get(key) or self.lookup(key)
        if entry is None:
            raise CacheError(f"soft-label cache entry {self.entry_uri(key)} is not complete",
                             "run the teacher inference step for this dataset and teacher first")
        self._verified[key] = entry
        return entry

    def _views(self, key: str, augmented: bool) -> tuple[CacheEntry, list[str]]:
        entry = self._entry(key)
        views = [v.key for v in entry.views if (not v.is_identity) == augmented]
        if not views:
            kind = "augmented" if augmented else "plain"
            raise CacheError(f"soft-label cache entry {key[:12]} holds no {kind} views",
                             "re-run teacher inference with this run's config (augment.views)")
        return entry, views

    def _shards(self, vkey: str, split: str) -> tuple[ViewShard, ...]:
        manifest = self._verified_views[vkey]  # verified by _entry's lookup
        if split not in manifest.splits:
            raise CacheError(f"soft-label view {vkey[:12]} has no complete '{split}' split",
                             REPAIR)
        return manifest.splits[split].shards

    def _read_shard(self, vkey: str, shard: ViewShard, ids: np.ndarray, split: str, num_classes: int,
                    augmented: bool) -> dict[str, np.ndarray]:
        """One view shard, verified (sha256, row alignment by the ids digest) and decoded."""
        if len(ids) != shard.count or ids_digest(ids) != shard.ids_sha256:
            raise CacheError(f"soft labels of view {vkey[:12]} are not aligned with the dataset's '{split}' split "
                             f"(shard {shard.file})",
                             f"read them with the dataset they were made for; if it is that one, {REPAIR}")
        raw = self.store.read_bytes(join(self.view_uri(vkey), shard.file))
        if sha256_bytes(raw) != shard.sha256:
            raise CacheError(f"soft-label shard {shard.file} of view {vkey[:12]} fails its digest check",
                             REPAIR)
        try:
            arrays = shardfile.unpack(raw)
        except ValueError as exc:  # the digest matched: written by another kdflow's layout of this format
            raise CacheError(f"soft-label shard {shard.file} of view {vkey[:12]} is not readable: {exc}",
                             REPAIR) from exc
        out = decode(arrays, num_classes)
        if augmented:
            out["params"] = arrays["params"]
        return out

    def load_shard(self, key: str, split: str, shard_index: int, expected_ids: np.ndarray,
                   augmented: bool = False) -> SoftLabels:
        """The labels of one dataset shard's rows (``expected_ids``, that shard's ids, checked by digest).

        ``augmented=False``: the plain view only (V = 1). ``True``: the entry's augmented views,
        stacked on the view axis with their parameters (V = augment.views).
        """
        entry, views = self._views(key, augmented)
        num_classes = entry.num_classes
        loaded = []
        for vkey in views:
            shards = self._shards(vkey, split)
            if not 0 <= shard_index < len(shards):
                raise CacheError(f"soft-label view {vkey[:12]} has {len(shards)} '{split}' shards, not {shard_index}",
                                 "read the shards of the dataset these labels were made for")
            loaded.append(self._read_shard(vkey, shards[shard_index], expected_ids, split, num_classes, augmented))
        stack = {name: torch.from_numpy(np.stack([a[name] for a in loaded], axis=1))
                 for name in CODEC + (("params",) if augmented else ())}
        return SoftLabels(stack["values"], stack["index"], stack["tail_lse"], stack["tail_mean"], num_classes,
                          stack.get("params"))

    def load_split(self, key: str, split: str, expected_ids: np.ndarray, augmented: bool = False) -> SoftLabels:
        """One split's labels, verifying shard digests and row alignment with the dataset (see
        ``load_shard``). Decoded shard by shard into arrays of the split's size."""
        entry, views = self._views(key, augmented)
        counts = [s.count for s in self._shards(views[0], split)]
        if not counts or len(expected_ids) != sum(counts):
            raise CacheError(f"soft labels of the '{split}' split hold {sum(counts)} rows, the dataset "
                             f"{len(expected_ids)}: they are not aligned",
                             "re-run teacher inference for this dataset and teacher")
        out: dict[str, torch.Tensor] = {}
        start = 0
        for index, count in enumerate(counts):
            part = self.load_shard(key, split, index, expected_ids[start:start + count], augmented)
            for name in CODEC + (("params",) if augmented else ()):
                t = getattr(part, name)
                if name not in out:
                    out[name] = torch.empty((len(expected_ids), *t.shape[1:]), dtype=t.dtype)
                out[name][start:start + count] = t
            start += count
        return SoftLabels(out["values"], out["index"], out["tail_lse"], out["tail_mean"], entry.num_classes,
                          out.get("params"))
