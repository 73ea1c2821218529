"""Labelling view shards: the teacher's forward passes overlapped with encoding and writing.

One part of a fan-out (``SoftLabelCache.label_part``) walks its range of dataset shards; for each
shard that some pending view still lacks, it reads the dataset shard once (prefetched by a thread,
``DatasetManifest.iter_shards``), runs ``infer`` for each such view on this thread, and hands the
float32 result to a writer thread that encodes it (codec.encode), packs it and writes the file. The
queue between them is bounded, so at most a couple of shards' labels wait in memory, and the
device does not sit idle while object storage takes a shard.

A view shard file (``kdflow.softlabels.shardfile``) is named by its stem and the digest of its
bytes (``train-00003.<sha256[:32]>.kdsl``), and holds the stored codec arrays, ``params`` for
augmented views, and two sha256 digests: ``shard_sha256``, the dataset shard's content digest (from the dataset
manifest: a rerun checks a kept file against it without reading the dataset), and ``ids_sha256``,
the digest of the shard's sample ids (``ids_digest``), which the view manifest records so that
readers check row alignment without a copy of the ids in every view. A file is reused (by a
restarted or concurrent run) only when its bytes hash to its name's digest and its header matches
its dataset shard (``read_valid``).
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from kdflow.storage.digest import sha256_bytes
from kdflow.util.errors import KdflowError
from kdflow.softlabels import shardfile
from kdflow.softlabels.codec import encode
from kdflow.softlabels.manifest import ViewShard
from kdflow.storage import Storage, join

log = logging.getLogger(__name__)

STORED = ("values", "index", "tail")  # codec.encode's arrays
QUEUE_DEPTH = 2  # labelled shards waiting for the writer: bounds the memory the overlap costs

# infer(images uint8 [n, H, W, 3], view params int16 [n, 5] or None) -> compress()'s float32 arrays
Infer = Callable[[np.ndarray, "np.ndarray | None"], dict[str, np.ndarray]]


def ids_digest(ids: np.ndarray) -> str:
    """sha256 of a shard's sample ids, one per line (independent of the array's string width)."""
    return sha256_bytes("\n".join(str(i) for i in ids.tolist()).encode())


@dataclass(frozen=True)
class ShardCheck:
    """What a view shard file must be: its dataset shard's digest and rows, and params or not."""

    shard_sha256: str
    count: int
    augmented: bool

    def verify(self, raw: bytes) -> tuple[str, dict]:
        """(ids digest, arrays) of a valid file; raises ValueError/KeyError/KdflowError otherwise."""
        arrays = shardfile.unpack(raw)
        if arrays["shard_sha256"] != self.shard_sha256:
            raise ValueError("labels of another dataset shard")
        if ("params" in arrays) != self.augmented or arrays["values"].shape[0] != self.count:
            raise ValueError("unexpected arrays or row count")
        return str(arrays["ids_sha256"]), arrays


def read_valid(store: Storage, view_dir: str, name: str, check: ShardCheck) -> ViewShard | None:
    """The record of the view shard file ``name`` in ``view_dir`` when it is valid, else None: its bytes
    must hash to the digest its name carries (a truncated, torn or overwritten file never does) and
    be the labels of the dataset shard ``check`` describes. A failing read (storage unreachable) is
    raised, not taken for an invalid file."""
    parsed = shardfile.parse_view_file(name)
    if parsed is None:
        return None
    raw = store.read_bytes(join(view_dir, name))
    sha = sha256_bytes(raw)
    if sha[:shardfile.NAME_DIGEST] != parsed[1]:
        return None
    try:
        ids_sha, _ = check.verify(raw)
    except (KdflowError, ValueError, KeyError):
        return None
    return ViewShard(name, check.count, sha, len(raw), ids_sha)


def shard_bytes(codec: dict[str, np.ndarray], params: np.ndarray | None, num_classes: int, shard_sha256: str,
                ids_sha256: str) -> bytes:
    """One view shard file's bytes (``kdflow.softlabels.shardfile``; same labels, same bytes)."""
    return shardfile.pack(encode(codec, num_classes), params, shard_sha256, ids_sha256)


class ViewShardWriter:
    """A thread that encodes and writes labelled shards while the caller runs the teacher on the next.

    ``put`` blocks while ``QUEUE_DEPTH`` shards wait; an error in the thread is raised by the next
    ``put`` or by ``close``. ``close`` writes everything already queued, also when the caller
    failed: labels already computed are kept for the rerun.
    """

    def __init__(self, store: Storage, num_classes: int):
        self.store, self.num_classes = store, num_classes
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kdflow-softlabel-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain: the caller sees the first error
            view_dir, stem, codec, params, shard_sha, ids_sha = item
            try:
                raw = shard_bytes(codec, params, self.num_classes, shard_sha, ids_sha)
                # The name carries the content's digest: a concurrent writer of this shard writes
                # these same bytes to this name, or other bytes to another name, never a mix.
                name = shardfile.view_file(stem, sha256_bytes(raw))
                self.store.write_bytes(join(view_dir, name), raw)  # atomic: whole or absent
            except BaseException as exc:  # noqa: BLE001 (re-raised on the caller's thread)
                self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, view_dir: str, stem: str, codec: dict[str, np.ndarray], params: np.ndarray | None,
            shard_sha: str, ids_sha: str) -> None:
        """Queue one view shard: written to ``view_dir`` as ``<stem>.<sha256[:32]>.kdsl``."""
        self._raise()
        self._queue.put((view_dir, stem, codec, params, shard_sha, ids_sha))

    def close(self, raise_error: bool = True) -> None:
        """Write what is queued and stop; ``raise_error=False`` when the caller is already failing (its
        error is the one to report; the writer's is logged)."""
        self._queue.put(None)
        self._thread.join()
        if raise_error:
            self._raise()
        elif self._error is not None:
            log.error("soft labels: writing a labelled shard failed too: %s", self._error)


def runs(units: Iterable[tuple[str, int]]) -> list[tuple[str, list[int]]]:
    """Consecutive (split, shard) units grouped by split, in order: one prefetching read per run."""
    out: list[tuple[str, list[int]]] = []
    for split, index in units:
        if out and out[-1][0] == split:
            out[-1][1].append(index)
        else:
            out.append((split, [index]))
    return out
