"""Versioned dataset shards and their manifest.

A dataset folder holds ``<split>-NNNNN.npz`` shards (``images`` uint8 [n, H, W, 3], ``labels`` int64
[n], ``ids`` str [n]) and ``manifest.json``, written last. The manifest lists every shard with its
sha256; the dataset fingerprint is a digest of the spec, the class names and those shard digests,
so it changes exactly when the preprocessed content changes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from kdflow import __version__
from kdflow.digest import digest_of, pack_arrays, sha256_bytes, unpack_arrays
from kdflow.errors import DataError
from kdflow.storage import join, storage_for

FORMAT = "kdflow.dataset/1"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class SplitArrays:
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int64 [N]
    ids: np.ndarray  # str [N], stable content ids

    def __len__(self) -> int:
        return len(self.labels)


def write_split_shards(root: str, split: str, arrays: SplitArrays, shard_size: int) -> list[dict]:
    """Write one split's shards; returns their manifest entries."""
    store = storage_for(root)
    entries = []
    for i, start in enumerate(range(0, max(len(arrays), 1), shard_size)):
        sl = slice(start, start + shard_size)
        data = pack_arrays({"images": arrays.images[sl], "labels": arrays.labels[sl], "ids": arrays.ids[sl]})
        name = f"{split}-{i:05d}.npz"
        store.write_bytes(join(root, name), data)
        entries.append({"file": name, "count": int(len(arrays.labels[sl])), "sha256": sha256_bytes(data)})
    return entries


def fingerprint(spec: dict, class_names: list[str], splits: dict[str, dict]) -> str:
    shards = {name: [s["sha256"] for s in info["shards"]] for name, info in splits.items()}
    return digest_of({"format": FORMAT, "spec": spec, "classes": class_names, "shards": shards})


def write_manifest(root: str, manifest: dict[str, Any]) -> None:
    """The commit point of a dataset: written after every shard."""
    storage_for(root).write_bytes(join(root, MANIFEST), json.dumps(manifest, indent=2).encode())


@dataclass(frozen=True)
class DatasetManifest:
    root: str
    data: dict[str, Any]

    @classmethod
    def open(cls, root: str) -> "DatasetManifest":
        store = storage_for(root)
        uri = join(root, MANIFEST)
        if not store.exists(uri):
            raise DataError(f"{root} holds no dataset manifest", "run the preprocess step on the data first")
        data = json.loads(store.read_bytes(uri))
        if data.get("format") != FORMAT:
            raise DataError(
                f"{uri} has format {data.get('format')!r}, this kdflow {__version__} reads {FORMAT!r}",
                "re-run preprocess with this kdflow version",
            )
        return cls(root, data)

    @property
    def fingerprint(self) -> str:
        return self.data["fingerprint"]

    @property
    def class_names(self) -> list[str]:
        return list(self.data["class_names"])

    @property
    def num_classes(self) -> int:
        return len(self.data["class_names"])

    @property
    def image_size(self) -> int:
        return int(self.data["spec"]["image_size"])

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.data["stats"]["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.data["stats"]["std"])

    def split_names(self) -> list[str]:
        return [s for s, info in self.data["splits"].items() if info["count"] > 0]

    def count(self, split: str) -> int:
        return int(self.data["splits"][split]["count"])

    def load_split(self, split: str) -> SplitArrays:
        """Read and verify one split's shards (sha256 against the manifest)."""
        if split not in self.data["splits"]:
            raise DataError(f"dataset {self.root} has no split '{split}'", f"use one of {self.split_names()}")
        store = storage_for(self.root)
        parts = []
        for shard in self.data["splits"][split]["shards"]:
            raw = store.read_bytes(join(self.root, shard["file"]))
            if sha256_bytes(raw) != shard["sha256"]:
                raise DataError(
                    f"shard {shard['file']} of {self.root} does not match its manifest digest",
                    "the dataset was modified after preprocessing; re-run preprocess",
                )
            parts.append(unpack_arrays(raw))
        return SplitArrays(
            images=np.concatenate([p["images"] for p in parts]),
            labels=np.concatenate([p["labels"] for p in parts]).astype(np.int64),
            ids=np.concatenate([p["ids"] for p in parts]),
        )
