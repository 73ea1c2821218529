"""Versioned dataset shards and their manifest.

A dataset folder holds ``<split>-NNNNN.npz`` shards (``images`` uint8 [n, H, W, 3], ``labels`` int64
[n], ``ids`` str [n]) and ``manifest.json``, written last. The manifest lists every shard with its
sha256; the dataset fingerprint is a digest of the spec, the class names and those shard digests,
so it changes exactly when the preprocessed content changes. Its records are typed in
kdflow.data.manifest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from kdflow import __version__
from kdflow.data.manifest import (FORMAT, MANIFEST, ChannelStats, PreprocessReport, PreprocessSpec, ShardEntry,
                                  SplitInfo, fingerprint)
from kdflow.storage.digest import pack_arrays, sha256_bytes, unpack_arrays
from kdflow.util.errors import DataError
from kdflow.data.stream import read_ahead, shard_cache
from kdflow.storage import join, storage_for


@dataclass(frozen=True)
class SplitArrays:
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int64 [N]
    ids: np.ndarray  # str [N], stable content ids

    def __len__(self) -> int:
        return len(self.labels)


def write_split_shards(root: str, split: str, arrays: SplitArrays, shard_size: int) -> list[ShardEntry]:
    """Write one split's shards; returns their manifest entries."""
    store = storage_for(root)
    entries = []
    for i, start in enumerate(range(0, max(len(arrays), 1), shard_size)):
        sl = slice(start, start + shard_size)
        data = pack_arrays({"images": arrays.images[sl], "labels": arrays.labels[sl], "ids": arrays.ids[sl]})
        name = f"{split}-{i:05d}.npz"
        store.write_bytes(join(root, name), data)
        entries.append(ShardEntry(name, int(len(arrays.labels[sl])), sha256_bytes(data)))
    return entries


@dataclass(frozen=True)
class DatasetManifest:
    """A dataset folder's manifest, parsed and checked once (``open``), and its shards' reader.

    ``root`` is where the folder is (not stored in the file); every other field is a key of
    ``manifest.json`` (kdflow.data.manifest lists them), written back by ``to_dict``.
    """

    root: str
    source: str  # the image folder it was made from
    spec: PreprocessSpec
    class_names: tuple[str, ...]  # class index -> folder name, sorted
    splits: Mapping[str, SplitInfo]  # in the order preprocessing wrote them (train, val, test)
    stats: ChannelStats
    report: PreprocessReport
    fingerprint: str
    kdflow_version: str = __version__  # the kdflow that wrote it
    format: str = field(default=FORMAT, repr=False)

    @classmethod
    def build(cls, root: str, source: str, spec: PreprocessSpec, class_names: Sequence[str],
              splits: Mapping[str, SplitInfo], stats: ChannelStats, report: PreprocessReport) -> "DatasetManifest":
        """A new dataset's manifest (this kdflow's version, the fingerprint of its content); ``write`` stores it."""
        names = tuple(class_names)
        return cls(root, source, spec, names, dict(splits), stats, report, fingerprint(spec, names, splits))

    @classmethod
    def open(cls, root: str) -> "DatasetManifest":
        store = storage_for(root)
        uri = join(root, MANIFEST)
        if not store.exists(uri):
            raise DataError(f"{root} holds no dataset manifest", "run the preprocess step on the data first")
        data = json.loads(store.read_bytes(uri))
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else None
            raise DataError(
                f"{uri} has format {found!r}, this kdflow {__version__} reads {FORMAT!r}",
                "re-run preprocess with this kdflow version",
            )
        return cls.from_dict(root, data, uri)

    @classmethod
    def from_dict(cls, root: str, data: Mapping[str, Any], where: str = "") -> "DatasetManifest":
        """The manifest ``data`` (parsed JSON) of the dataset at ``root``; a DataError naming what is
        missing or mistyped, so that no reader meets a half-formed manifest later."""
        try:
            return cls(root=root, source=str(data["source"]), spec=PreprocessSpec.from_dict(data["spec"]),
                       class_names=tuple(str(c) for c in data["class_names"]),
                       splits={str(s): SplitInfo.from_dict(i) for s, i in data["splits"].items()},
                       stats=ChannelStats.from_dict(data["stats"]), report=PreprocessReport.from_dict(data["report"]),
                       fingerprint=str(data["fingerprint"]), kdflow_version=str(data["kdflow_version"]),
                       format=str(data["format"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"the dataset manifest {where or join(root, MANIFEST)} is malformed "
                            f"({type(exc).__name__}: {exc})",
                            "re-run preprocess on the data: it writes the manifest whole") from exc

    def to_dict(self) -> dict[str, Any]:
        """``manifest.json``'s content, keys in the order preprocessing has always written them."""
        return {
            "format": self.format,
            "kdflow_version": self.kdflow_version,
            "source": self.source,
            "spec": self.spec.to_dict(),
            "class_names": list(self.class_names),
            "splits": {name: info.to_dict() for name, info in self.splits.items()},
            "stats": self.stats.to_dict(),
            "report": self.report.to_dict(),
            "fingerprint": self.fingerprint,
        }

    def write(self) -> "DatasetManifest":
        """The commit point of a dataset: written after every shard. Returns self."""
        storage_for(self.root).write_bytes(join(self.root, MANIFEST), json.dumps(self.to_dict(), indent=2).encode())
        return self

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return self.spec.image_size

    @property
    def mean(self) -> tuple[float, ...]:
        return self.stats.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.stats.std

    def split_names(self) -> list[str]:
        return [s for s, info in self.splits.items() if info.count > 0]

    def has_split(self, split: str) -> bool:
        return split in self.splits

    def count(self, split: str) -> int:
        return self.splits[split].count

    def shards(self, split: str) -> tuple[ShardEntry, ...]:
        """``split``'s shard entries, in dataset order; a DataError naming the splits there are otherwise."""
        if split not in self.splits:
            raise DataError(f"dataset {self.root} has no split '{split}'", f"use one of {self.split_names()}")
        return self.splits[split].shards

    def units(self) -> list[tuple[str, int]]:
        """Every (split, shard index), in manifest order."""
        return [(split, i) for split, info in self.splits.items() for i in range(len(info.shards))]

    @property
    def remote(self) -> bool:
        """Whether the shards live in object storage (read through the local disk cache)."""
        return "://" in self.root and not self.root.startswith("file://")

    def shard_counts(self, split: str) -> list[int]:
        """Rows in each of ``split``'s shards, in dataset order (from the manifest: nothing is read)."""
        return [s.count for s in self.shards(split)]

    def _raw_shard(self, shard: ShardEntry) -> bytes:
        """A shard's verified bytes; remote shards are downloaded once into the local disk cache."""
        uri, digest = join(self.root, shard.file), shard.sha256
        cache = shard_cache() if self.remote else None
        if cache is not None and (raw := cache.get(digest)) is not None:
            if sha256_bytes(raw) == digest:
                return raw
            cache.discard(digest)  # a damaged local copy: download again
        raw = storage_for(self.root).read_bytes(uri)
        if sha256_bytes(raw) != digest:
            raise DataError(
                f"shard {shard.file} of {self.root} does not match its manifest digest",
                "the dataset was modified after preprocessing; re-run preprocess",
            )
        if cache is not None:
            cache.put(digest, raw)
        return raw

    def read_shard(self, split: str, index: int) -> SplitArrays:
        """One shard of ``split``, verified against its manifest sha256."""
        shards = self.shards(split)
        if not 0 <= index < len(shards):
            raise DataError(f"split '{split}' of {self.root} has {len(shards)} shards, not shard {index}",
                            f"use a shard index in [0, {len(shards)})")
        arrays = unpack_arrays(self._raw_shard(shards[index]))
        return SplitArrays(arrays["images"], arrays["labels"].astype(np.int64), arrays["ids"])

    def iter_shards(self, split: str, start: int = 0, order: Sequence[int] | None = None,
                    prefetch: int = 2) -> Iterator[SplitArrays]:
        """The shards ``order[start:]`` (default: every shard in dataset order), each verified, read by a
        background thread up to ``prefetch`` shards ahead of the consumer (at most ``prefetch`` + 2
        decoded shards alive at once). A shard that fails to read or verify raises its error here, at
        that shard; breaking out of the loop stops the thread."""
        order = list(range(len(self.shards(split)))) if order is None else [int(i) for i in order]
        return read_ahead(order[start:], lambda i: self.read_shard(split, i), prefetch)

    def load_split(self, split: str) -> SplitArrays:
        """Read and verify one split's shards (sha256 against the manifest), whole: for small splits;
        large ones are read with ``iter_shards``."""
        parts = [self.read_shard(split, i) for i in range(len(self.shards(split)))]
        if not parts:
            raise DataError(f"split '{split}' of {self.root} has no shards", "re-run preprocess")
        return SplitArrays(
            images=np.concatenate([p.images for p in parts]),
            labels=np.concatenate([p.labels for p in parts]).astype(np.int64),
            ids=np.concatenate([p.ids for p in parts]),
        )


class ImageShardWriter:
    """Writes one split's ``<split>-NNNNN.npz`` shards as rows arrive, holding at most one shard.

    The bytes (and so the manifest entries) are exactly those ``write_split_shards`` writes for the
    same rows: a split of N rows in shards of ``shard_size``, and one empty shard for an empty split.
    Each shard is packed straight into its zip buffer (no separate .npy copy of the rows), so a
    flush costs the shard buffer plus one packed copy.
    """

    def __init__(self, root: str, split: str, shard_size: int, image_shape: tuple[int, ...]):
        self.root, self.split, self.shard_size = root, split, shard_size
        self.store = storage_for(root)
        self.images = np.zeros((shard_size, *image_shape), np.uint8)  # [shard_size, H, W, 3], reused
        self.labels = np.zeros(shard_size, np.int64)
        self.ids = np.zeros(shard_size, "<U16")
        self.filled = 0
        self.entries: list[ShardEntry] = []

    def add(self, images: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> None:
        """Append rows (uint8 [n, H, W, 3], int [n], str [n]); full shards are written at once."""
        done = 0
        while done < len(labels):
            take = min(self.shard_size - self.filled, len(labels) - done)
            sl = slice(self.filled, self.filled + take)
            self.images[sl] = images[done:done + take]
            self.labels[sl] = labels[done:done + take]
            self.ids[sl] = ids[done:done + take]
            self.filled += take
            done += take
            if self.filled == self.shard_size:
                self._flush()

    def close(self) -> list[ShardEntry]:
        """Write the last, partial shard (or the empty shard of an empty split); returns the entries."""
        if self.filled or not self.entries:
            self._flush()
        self.images = self.labels = self.ids = None  # free the buffer
        return self.entries

    def _flush(self) -> None:
        n = self.filled
        data = _pack_stored({"images": self.images[:n], "labels": self.labels[:n], "ids": self.ids[:n]})
        name = f"{self.split}-{len(self.entries):05d}.npz"
        self.store.write_bytes(join(self.root, name), data)
        self.entries.append(ShardEntry(name, n, sha256_bytes(data)))
        self.filled = 0


class _Counter:
    """A write-only sink that only counts bytes: the length of an .npy entry before writing it."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, b) -> int:
        self.n += len(memoryview(b).cast("B"))
        return self.n


def _pack_stored(arrays: dict[str, np.ndarray]) -> bytes:
    """``kdflow.storage.digest.pack_arrays``'s exact bytes, with each .npy streamed into the zip (zipfile's
    ``writestr`` is ``open(info, 'w')`` with the size set first, which is what this does)."""
    import io
    import zipfile

    from kdflow.storage.digest import _EPOCH

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            arr = np.ascontiguousarray(arrays[name])
            size = _Counter()
            np.lib.format.write_array(size, arr, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.file_size = size.n
            with zf.open(info, mode="w") as dest:
                np.lib.format.write_array(dest, arr, allow_pickle=False)
    return buf.getvalue()
