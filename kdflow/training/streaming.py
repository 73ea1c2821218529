"""Batches streamed shard by shard with bounded memory (``ShardBatches``), and ``make_batches``, which
keeps a split whole on the device only when it fits.

A shuffled pass cannot permute all N rows at once without holding them, so it shuffles in two
levels: a (seed, epoch) permutation of the shard order, then windows of ``shuffle_shards``
consecutive shards of that order whose rows are permuted by a (seed, epoch, window) generator. The
row stream is the windows' permuted rows one after another; batches are cut from it every
``batch_size`` rows, so a batch may span two windows. The replayed view of each row is drawn by a
(seed, epoch, shard) generator. The order therefore differs from ``ArrayBatches``' global
permutation (which would need every row at hand); both are deterministic per (seed, epoch), visit
each row once per epoch and are exact under mid-epoch resume and rank slicing. An in-order pass
streams the shards in dataset order.

Memory: one window of shards, the read-ahead (``prefetch`` shards and the one being read) and, when
a batch spans two windows, a copy of its rows from the first (fewer than ``batch_size``) are alive at
once, whatever the split's size; the soft labels of a window are loaded with its shards. On CUDA,
each batch is gathered straight into pinned host memory and copied with ``non_blocking=True`` (the
caching host allocator does not reuse a pinned block before its copy has finished), while the
read-ahead thread reads the next shards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal

import numpy as np
import torch

from kdflow.config import AugmentConfig
from kdflow.data.shards import DatasetManifest, SplitArrays
from kdflow.data.stream import read_ahead
from kdflow.softlabels.cache import SoftLabels, SoftRows
from kdflow.training import augment
from kdflow.training.batches import (ArrayBatches, ShardSoft, SoftSource, active, check_soft, concat_soft,
                                     fresh_params, rank_slice, shuffled_stop, slice_soft, soft_nbytes,
                                     to_float_images)

log = logging.getLogger(__name__)

# On the CPU the "device" is the host RAM itself: keeping a split resident would make memory grow with
# the dataset, the opposite of the point of streaming. Only small splits (CIFAR-sized and below) are
# worth holding whole, where they save the per-epoch shard reads.
RESIDENT_CPU_MAX_BYTES = 256 << 20
# On CUDA a split is resident when it takes at most this fraction of the free device memory: the
# rest is for the model, its activations, optimizer state and the allocator's fragmentation.
RESIDENT_CUDA_FRACTION = 0.5
# Headroom over the split's own bytes: the per-epoch int64 order and view index (16 bytes a row) are
# counted exactly; this margin covers the caching allocator's rounding and per-batch float copies.
RESIDENT_MARGIN = 1.1
PER_ROW_INDEX_BYTES = 16

Resident = Literal["auto", "always", "never"]


@dataclass
class _Shard:
    index: int  # shard index in the split
    offset: int  # its first row's index in the split
    arrays: SplitArrays
    soft: SoftLabels | None
    rows: np.ndarray | None = None  # int64 [n]: each row's index in the split, when not offset + arange


@dataclass
class _Window:
    shards: list[_Shard]
    starts: np.ndarray  # int64 [len(shards) + 1]: each shard's first row in the window's row space
    perm: np.ndarray  # int64 [rows]: the window's rows in stream order (window row space)
    views: np.ndarray | None  # int64 [rows]: the replayed view of each window row
    soft: SoftLabels | None  # the window's rows' soft labels (its shards' concatenated)


def _take_soft(soft: SoftLabels, rows: np.ndarray) -> SoftLabels:
    """Rows ``rows`` of ``soft`` (every view)."""
    idx = torch.from_numpy(np.ascontiguousarray(rows))
    return SoftLabels(soft.values[idx], soft.index[idx], soft.tail_lse[idx], soft.tail_mean[idx], soft.num_classes,
                      None if soft.params is None else soft.params[idx])


def _gather(window: _Window, wrows: np.ndarray, images: np.ndarray, labels: np.ndarray, rows: np.ndarray,
            ids: np.ndarray | None = None) -> None:
    """Copy window rows ``wrows`` (in that order) into ``images`` [k, H, W, 3], ``labels`` [k] and
    ``rows`` [k] (their split rows), and ``ids`` [k] when given."""
    which = np.searchsorted(window.starts, wrows, side="right") - 1  # the shard of each row
    within = wrows - window.starts[which]  # its row within that shard
    for j in np.unique(which):
        sel = np.flatnonzero(which == j)
        shard, src = window.shards[j], within[sel]
        images[sel] = shard.arrays.images[src]
        labels[sel] = shard.arrays.labels[src]
        rows[sel] = shard.offset + src if shard.rows is None else shard.rows[src]
        if ids is not None:
            ids[sel] = shard.arrays.ids[src]


def _soft_for(soft: SoftSource | None, shard: int, offset: int, arrays: SplitArrays) -> SoftLabels | None:
    if soft is None:
        return None
    if isinstance(soft, SoftLabels):
        return slice_soft(soft, offset, offset + len(arrays))
    out = soft(shard, arrays.ids)
    if out.values.shape[0] != len(arrays):
        raise ValueError(f"soft labels of shard {shard} have {out.values.shape[0]} rows, the shard {len(arrays)}")
    return out


class ShardBatches:
    """One split streamed from its shards (module docstring); the interface of ``ArrayBatches``."""

    def __init__(self, dataset: DatasetManifest, split: str, batch_size: int, device: torch.device,
                 soft: SoftSource | None = None, augmentation: AugmentConfig | None = None, *,
                 shuffle_shards: int = 4, prefetch: int = 2):
        self.dataset, self.split = dataset, split
        self.batch_size, self.device = batch_size, device
        self.soft_source = soft
        self.augmentation = active(augmentation)
        self.shuffle_shards = max(1, shuffle_shards)
        self.prefetch = prefetch
        self.counts = dataset.shard_counts(split)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)])
        self.pin = device.type == "cuda"
        # Labels and ids are small (tens of bytes a row): kept per shard as passes read them, so a
        # caller can pair predictions with them without reading the split again.
        self._labels: dict[int, np.ndarray] = {}
        self._ids: dict[int, np.ndarray] = {}
        # One shard is read now: for shape probes, and to learn what the soft labels hold.
        first = next((i for i, c in enumerate(self.counts) if c), 0)
        arrays = dataset.read_shard(split, first)
        self._remember(first, arrays)
        self._example = arrays.images[:8].copy()
        probe = _soft_for(soft, first, int(self.offsets[first]), arrays)
        self.num_views = 0 if probe is None else probe.num_views
        self._replays = probe is not None and probe.params is not None
        self.soft_row_bytes = 0 if probe is None or not len(arrays) else soft_nbytes(probe) // len(arrays)
        check_soft(None if probe is None else probe.params, probe is not None, self.augmentation)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def replays_views(self) -> bool:
        return self._replays

    def example(self, n: int = 8) -> torch.Tensor:
        """The first ``n`` (at most 8) plain pictures, float [n, C, H, W] on the device."""
        return to_float_images(torch.from_numpy(self._example[:n]).to(self.device))

    def steps_per_epoch(self) -> int:
        return max(1, len(self) // self.batch_size)

    def _remember(self, index: int, arrays: SplitArrays) -> None:
        self._labels[index], self._ids[index] = arrays.labels, arrays.ids

    def _fill_metadata(self) -> None:
        for i in range(len(self.counts)):
            if i not in self._labels:
                self._remember(i, self.dataset.read_shard(self.split, i))

    @property
    def labels(self) -> torch.Tensor:
        """Every row's label in split order: int64 [N] on the CPU (unread shards are read for it)."""
        self._fill_metadata()
        return torch.from_numpy(np.concatenate([self._labels[i] for i in range(len(self.counts))]))

    @property
    def ids(self) -> np.ndarray:
        """Every row's id in split order: str [N]."""
        self._fill_metadata()
        return np.concatenate([self._ids[i] for i in range(len(self.counts))])

    # -- the row stream ------------------------------------------------------------------------

    def _plan(self, epoch: int | None, seed: int) -> list[list[int]]:
        """The windows of a pass: lists of shard indices, in stream order."""
        n = len(self.counts)
        if epoch is None:
            return [[i] for i in range(n)]
        order = torch.randperm(n, generator=augment.generator(seed, "shards", epoch)).tolist()
        return [order[i : i + self.shuffle_shards] for i in range(0, n, self.shuffle_shards)]

    def _load(self, index: int) -> _Shard:
        arrays = self.dataset.read_shard(self.split, index)
        offset = int(self.offsets[index])
        return _Shard(index, offset, arrays, _soft_for(self.soft_source, index, offset, arrays))

    def _windows(self, plan: list[list[int]], first: int, epoch: int | None,
                 seed: int) -> Iterator[_Window]:
        flat = [s for w in plan[first:] for s in w]
        shards = read_ahead(flat, self._load, self.prefetch)
        try:
            for w in range(first, len(plan)):
                yield self._window([next(shards) for _ in plan[w]], w, epoch, seed)
        finally:
            shards.close()

    def _window(self, got: list[_Shard], w: int, epoch: int | None, seed: int) -> _Window:
        if epoch is None:  # in-order passes (prediction) collect labels and ids on the way
            for s in got:
                self._remember(s.index, s.arrays)
        starts = np.concatenate([[0], np.cumsum([len(s.arrays) for s in got], dtype=np.int64)])
        rows = int(starts[-1])
        if epoch is None:
            perm = np.arange(rows, dtype=np.int64)
        else:
            perm = torch.randperm(rows, generator=augment.generator(seed, "window", epoch, w)).numpy()
        views = None
        if epoch is not None and self._replays:
            views = np.concatenate([torch.randint(self.num_views, (len(s.arrays),),
                                                  generator=augment.generator(seed, "view", epoch, s.index)).numpy()
                                    for s in got])
        soft = concat_soft([s.soft for s in got]) if self.soft_source is not None else None
        return _Window(got, starts, perm, views, soft)

    def batches(self, epoch: int | None = None, seed: int = 0, start_step: int = 0, rank: int = 0,
                world: int = 1) -> Iterator[dict[str, Any]]:
        """Shuffled per (seed, epoch) when ``epoch`` is given, else in order; from global step
        ``start_step``; this rank's slice of each global batch (see kdflow/training/batches.py)."""
        part = rank_slice(self.batch_size, rank, world)
        bs, n = self.batch_size, len(self)
        stop = n if epoch is None else shuffled_stop(n, bs)
        pos = start_step * bs  # the first row of the stream still to use
        if pos >= stop:
            return
        plan = self._plan(epoch, seed)
        sizes = [sum(self.counts[s] for s in w) for w in plan]
        ends = np.cumsum(sizes)
        first = int(np.searchsorted(ends, pos, side="right"))  # the window holding stream row ``pos``
        skip = pos - (int(ends[first - 1]) if first else 0)
        pieces: list[tuple[_Window, np.ndarray]] = []  # (window, window rows) making up the batch
        have, step = 0, start_step
        windows = self._windows(plan, first, epoch, seed)
        try:
            for window in windows:
                at, skip = skip, 0
                while at < len(window.perm) and pos < stop:
                    take = min(len(window.perm) - at, bs - have, stop - pos)
                    pieces.append((window, window.perm[at : at + take]))
                    at, have, pos = at + take, have + take, pos + take
                    if have == bs or pos == stop:
                        yield self._batch(pieces, have, part, epoch, seed, step)
                        pieces, have, step = [], 0, step + 1
                if pieces:  # a batch continues into the next window: keep its rows, not this window
                    pieces = [(self._carry(pieces), np.arange(have))]
                del window  # freed before the next window is assembled
                if pos >= stop:
                    break
        finally:
            windows.close()  # stops the read-ahead thread when the consumer stops early

    def _carry(self, pieces: list[tuple[_Window, np.ndarray]]) -> _Window:
        """The rows of ``pieces`` copied into a window of their own (fewer than ``batch_size`` rows)."""
        m = sum(len(wrows) for _, wrows in pieces)
        images = np.empty((m, *self._example.shape[1:]), dtype=np.uint8)
        labels, rows = np.empty(m, dtype=np.int64), np.empty(m, dtype=np.int64)
        ids = np.empty(m, dtype=pieces[0][0].shards[0].arrays.ids.dtype)
        at = 0
        for window, wrows in pieces:
            k = len(wrows)
            _gather(window, wrows, images[at : at + k], labels[at : at + k], rows[at : at + k], ids[at : at + k])
            at += k
        first = pieces[0][0]
        views = None if first.views is None else np.concatenate([w.views[r] for w, r in pieces])
        soft = None if first.soft is None else concat_soft([_take_soft(w.soft, r) for w, r in pieces])
        shard = _Shard(-1, 0, SplitArrays(images, labels, ids), None, rows)
        return _Window([shard], np.array([0, m], dtype=np.int64), np.arange(m), views, soft)

    # -- one batch -----------------------------------------------------------------------------

    def _host(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=self.pin)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=self.pin)

    def _batch(self, pieces: list[tuple[_Window, np.ndarray]], rows: int, part: slice, epoch: int | None,
               seed: int, step: int) -> dict[str, Any]:
        # This rank's rows of the global batch, as (window, window rows) pieces.
        local, at = [], 0
        lo, hi = part.start, min(part.stop, rows)
        for window, wrows in pieces:
            a, b = max(lo - at, 0), min(hi - at, len(wrows))
            if a < b:
                local.append((window, wrows[a:b]))
            at += len(wrows)
        m = max(hi - lo, 0)
        height, width = self._example.shape[1:3]
        images = self._host((m, height, width, 3), torch.uint8)
        labels = self._host((m,), torch.int64)
        split_rows = self._host((m,), torch.int64)
        img_np, lab_np, row_np = images.numpy(), labels.numpy(), split_rows.numpy()
        replay = epoch is not None and self._replays
        views = self._host((m,), torch.int64) if replay else None
        soft_parts: list[SoftRows] = []
        params_parts: list[torch.Tensor] = []
        want_soft = self.soft_source is not None and (replay or not self._replays)
        at = 0
        for window, wrows in local:
            k = len(wrows)
            _gather(window, wrows, img_np[at : at + k], lab_np[at : at + k], row_np[at : at + k])
            if replay:
                views.numpy()[at : at + k] = window.views[wrows]
            if want_soft or replay:
                idx = torch.from_numpy(np.ascontiguousarray(wrows))
                v = torch.from_numpy(window.views[wrows]) if replay else None
                if want_soft:
                    soft_parts.append(window.soft.rows(idx, v))
                if replay:
                    params_parts.append(window.soft.params[idx, v])
            at += k
        batch: dict[str, Any] = {"label": self._to_device(labels), "rows": self._to_device(split_rows)}
        image = to_float_images(self._to_device(images))
        if replay:
            batch["views"] = self._to_device(views)
            image = augment.apply_views(image, self._to_device(self._cat(params_parts, (0, 5), torch.int16)))
        elif epoch is not None and self.augmentation is not None:
            params = fresh_params(self.augmentation, rows, height, width, seed, epoch, step)
            image = augment.apply_views(image, self._to_device(params[part]))
        batch["image"] = image
        if want_soft:
            batch["teacher_soft"] = self._soft_rows(soft_parts)
        return batch

    def _cat(self, parts: list[torch.Tensor], empty_shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        out = torch.cat(parts) if parts else torch.zeros(empty_shape, dtype=dtype)
        return out.pin_memory() if self.pin else out

    def _soft_rows(self, parts: list[SoftRows]) -> SoftRows:
        k = parts[0].values.shape[-1] if parts else 0
        num_classes = parts[0].num_classes if parts else 0
        return SoftRows(self._to_device(self._cat([p.values for p in parts], (0, k), torch.float32)),
                        self._to_device(self._cat([p.index for p in parts], (0, k), torch.int32)),
                        self._to_device(self._cat([p.tail_lse for p in parts], (0,), torch.float32)),
                        self._to_device(self._cat([p.tail_mean for p in parts], (0,), torch.float32)),
                        num_classes)


def _whole_soft(soft: SoftSource | None, dataset: DatasetManifest, split: str, arrays: SplitArrays
                ) -> SoftLabels | None:
    if soft is None or isinstance(soft, SoftLabels):
        return soft
    offsets = np.concatenate([[0], np.cumsum(dataset.shard_counts(split))])
    return concat_soft([soft(i, arrays.ids[offsets[i] : offsets[i + 1]]) for i in range(len(offsets) - 1)])


def make_batches(dataset: DatasetManifest, split: str, batch_size: int, device: torch.device, *,
                 soft: SoftSource | None = None, augmentation: AugmentConfig | None = None,
                 resident: Resident = "auto", shuffle_shards: int = 4, prefetch: int = 2,
                 agree: Callable[[bool], bool] | None = None) -> ArrayBatches | ShardBatches:
    """``split`` as batches: whole on ``device`` (``ArrayBatches``) when ``resident`` is "always", or
    "auto" and it fits; streamed from its shards (``ShardBatches``) otherwise.

    It fits when the images, labels, soft labels and per-epoch indexes, times ``RESIDENT_MARGIN``,
    take at most ``RESIDENT_CUDA_FRACTION`` of the free CUDA memory, or on the CPU at most
    ``RESIDENT_CPU_MAX_BYTES`` and at most what streaming would hold at once (so holding it costs no
    memory that streaming would not). ``soft`` is the whole split's soft labels or a per-shard loader.
    ``agree``: makes the ranks of a distributed run take one decision (rank 0's): each rank slices
    the same global batches only if all shuffle the same way, and free memory differs between GPUs.
    """
    stream = ShardBatches(dataset, split, batch_size, device, soft, augmentation,
                          shuffle_shards=shuffle_shards, prefetch=prefetch)
    n, size = len(stream), stream._example.shape[1:3]
    need = int(n * (size[0] * size[1] * 3 + 8 + PER_ROW_INDEX_BYTES + stream.soft_row_bytes) * RESIDENT_MARGIN)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        limit, where = int(free * RESIDENT_CUDA_FRACTION), f"half of the {free / 2**30:.2f} GiB free on {device}"
    else:
        # Never more than streaming itself would hold (a window, the read-ahead and the shard being
        # read): resident then costs no extra memory, only saves the per-epoch shard reads.
        window = (shuffle_shards + prefetch + 1) * max(stream.counts, default=0) * size[0] * size[1] * 3
        limit = min(RESIDENT_CPU_MAX_BYTES, window)
        where = f"the CPU limit ({limit / 2**20:.1f} MiB: at most {RESIDENT_CPU_MAX_BYTES >> 20} MiB, and no more " \
                "than streaming holds)"
    keep = resident == "always" or (resident == "auto" and need <= limit)
    if agree is not None:
        keep = agree(keep)
    log.info("%s split: %d rows need %.1f MiB resident (with a %.0f%% margin), %s %s: %s (train.resident=%s)",
             split, n, need / 2**20, (RESIDENT_MARGIN - 1) * 100, "within" if need <= limit else "over", where,
             "whole split on the device" if keep else f"streaming {len(stream.counts)} shards", resident)
    if not keep:
        return stream
    arrays = dataset.load_split(split)
    return ArrayBatches(arrays, batch_size, device, _whole_soft(soft, dataset, split, arrays), augmentation)


def shard_soft_labels(cache: Any, key: str, split: str, augmented: bool = False) -> ShardSoft:
    """A per-shard soft-label loader over a ``SoftLabelCache`` entry (``load_shard``)."""
    return lambda shard, ids: cache.load_shard(key, split, shard, ids, augmented=augmented)
