"""The soft-label cache in object storage, keyed by content.

Layout under the cache root (a folder, ``file://`` or ``s3://``)::

    softlabels/v1/<key>/<split>-NNNNN.npz    ids, values, index, lse (see codec.py); one shard per
                                             dataset shard, rows in the dataset's order
    softlabels/v1/<key>/manifest.json        written last: the commit

The key is a digest of what determines the soft labels: the teacher's content digest, the dataset
fingerprint, the preprocessing spec, k and the list of cached views (one ``identity`` view now;
augmented views add entries to that list and a view axis already exists in every array).

An entry is complete only when its manifest exists, names the same key and every shard it lists
exists with the recorded size; readers also check each shard's sha256. Anything else is a miss: the
writer resumes by keeping shards that already hold the expected sample ids and rewriting the rest.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from kdflow import __version__
from kdflow.data.shards import DatasetManifest
from kdflow.digest import digest_of, pack_arrays, sha256_bytes, unpack_arrays
from kdflow.errors import CacheError, KdflowError
from kdflow.softlabels.codec import dense
from kdflow.storage import join, storage_for

log = logging.getLogger(__name__)

FORMAT = "kdflow.softlabels/1"
MANIFEST = "manifest.json"
VIEWS = ("identity",)


def cache_key(teacher_digest: str, dataset: DatasetManifest, top_k: int, views: tuple[str, ...] = VIEWS) -> str:
    return digest_of({
        "format": FORMAT,
        "teacher": teacher_digest,
        "dataset": dataset.fingerprint,
        "preprocessing": dataset.data["spec"],
        "top_k": top_k,
        "views": list(views),
    })


@dataclass(frozen=True)
class SoftLabels:
    """One split's cached soft labels, as tensors, aligned row for row with the dataset split."""

    values: torch.Tensor  # float16 [N, V, k]
    index: torch.Tensor  # int32 [N, V, k]
    lse: torch.Tensor  # float32 [N, V]
    num_classes: int

    def logits(self, rows: torch.Tensor, view: int = 0) -> torch.Tensor:
        """Dense teacher logits for dataset rows ``rows`` [B]: float32 [B, num_classes]."""
        return dense(self.values[rows, view], self.index[rows, view], self.lse[rows, view], self.num_classes)

    def top1(self, view: int = 0) -> torch.Tensor:
        """The teacher's predicted class per row [N] (exact: the top-1 logit is always kept)."""
        best = self.values[:, view].float().argmax(dim=-1, keepdim=True)
        return self.index[:, view].gather(-1, best).squeeze(-1).long()

    def to(self, device: torch.device | str) -> "SoftLabels":
        return SoftLabels(self.values.to(device), self.index.to(device), self.lse.to(device), self.num_classes)


class SoftLabelCache:
    def __init__(self, root: str):
        self.root = root
        self.store = storage_for(root)
        # Manifests verified by load_split: a step reads several splits of one entry, and lookup
        # costs a read plus a size check per shard (an S3 HEAD each).
        self._verified: dict[str, dict[str, Any]] = {}

    def entry_uri(self, key: str) -> str:
        return join(self.root, "softlabels", "v1", key)

    def lookup(self, key: str) -> dict[str, Any] | None:
        """The manifest of a complete entry, or None (absent, unfinished, or not verifying)."""
        uri = join(self.entry_uri(key), MANIFEST)
        if not self.store.exists(uri):
            return None
        try:
            manifest = json.loads(self.store.read_bytes(uri))
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("soft-label manifest %s is unreadable; treating the entry as a miss", uri)
            return None
        if manifest.get("format") != FORMAT or manifest.get("key") != key:
            log.warning("soft-label manifest %s does not match key %s; treating as a miss", uri, key[:12])
            return None
        for split in manifest["splits"].values():
            for shard in split["shards"]:
                if self.store.size(join(self.entry_uri(key), shard["file"])) != shard["size"]:
                    log.warning("soft-label shard %s is missing or resized; treating as a miss", shard["file"])
                    return None
        return manifest

    def write(
        self,
        key: str,
        dataset: DatasetManifest,
        top_k: int,
        infer: Callable[[np.ndarray], dict[str, np.ndarray]],
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        """Fill the entry ``key`` shard by shard, then commit its manifest.

        ``infer(images uint8 [n, H, W, 3])`` returns the codec arrays for those rows. A shard already
        present with the expected ids (left by an interrupted run) is kept without inference.
        """
        entry = self.entry_uri(key)
        data_store = storage_for(dataset.root)
        splits: dict[str, dict] = {}
        for split, info in dataset.data["splits"].items():
            shards = []
            for dshard in info["shards"]:
                uri = join(entry, dshard["file"])
                arrays = unpack_arrays(data_store.read_bytes(join(dataset.root, dshard["file"])))
                raw = self._resumable(uri, arrays["ids"])
                if raw is None:
                    out = infer(arrays["images"])
                    raw = pack_arrays({"ids": arrays["ids"], **out})
                    self.store.write_bytes(uri, raw)
                else:
                    log.info("soft labels: resuming, kept %s", dshard["file"])
                shards.append({"file": dshard["file"], "count": dshard["count"],
                               "sha256": sha256_bytes(raw), "size": len(raw)})
            splits[split] = {"count": info["count"], "shards": shards}
        manifest = {
            "format": FORMAT,
            "key": key,
            "kdflow_version": __version__,
            "created_unix": int(time.time()),
            "dataset_fingerprint": dataset.fingerprint,
            "num_classes": dataset.num_classes,
            "top_k": top_k,
            "views": list(VIEWS),
            "splits": splits,
            **extra,
        }
        self.store.write_bytes(join(entry, MANIFEST), json.dumps(manifest, indent=2).encode())
        return manifest

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

    def load_split(self, key: str, split: str, expected_ids: np.ndarray) -> SoftLabels:
        """Read one split, verifying shard digests and row alignment with the dataset."""
        manifest = self._verified.get(key) or self.lookup(key)
        if manifest is None:
            raise CacheError(f"soft-label cache entry {self.entry_uri(key)} is not complete",
                             "run the teacher inference step for this dataset and teacher first")
        self._verified[key] = manifest
        parts = []
        for shard in manifest["splits"][split]["shards"]:
            raw = self.store.read_bytes(join(self.entry_uri(key), shard["file"]))
            if sha256_bytes(raw) != shard["sha256"]:
                raise CacheError(f"soft-label shard {shard['file']} of {key[:12]} fails its digest check",
                                 f"delete {self.entry_uri(key)} and re-run teacher inference")
            parts.append(unpack_arrays(raw))
        ids = np.concatenate([p["ids"] for p in parts])
        if not np.array_equal(ids, expected_ids):
            raise CacheError(f"soft labels of {key[:12]} are not aligned with the dataset's '{split}' split",
                             f"delete {self.entry_uri(key)} and re-run teacher inference")
        cat = {name: torch.from_numpy(np.concatenate([p[name] for p in parts])) for name in ("values", "index", "lse")}
        return SoftLabels(cat["values"], cat["index"], cat["lse"], int(manifest["num_classes"]))
