"""Batches from a split held whole on the training device (``ArrayBatches``), and what every batch
source shares. The streaming source, for splits that do not fit, is ``streaming.ShardBatches``;
``streaming.make_batches`` chooses between them.

Images stay uint8 [N, H, W, 3] until a batch is cut: conversion to float [B, 3, H, W] in [0, 1]
and augmentation happen per batch on the device, so no epoch decodes or copies the dataset again.

A shuffled pass picks the picture each sample shows, in this order:
- replayed views: with cached augmented soft labels (V views per sample), one view per sample is
  chosen by (seed, epoch), rendered from its stored parameters, and paired with the teacher's
  labels of exactly that view;
- fresh views: with augmentation on and no cached views (cross-entropy, online teacher), views are
  drawn per global batch from a (seed, epoch, step) generator;
- the plain picture otherwise. In-order passes (evaluation, inference) always show the plain picture.

Every source's ``batches(epoch, seed, start_step, rank, world)`` is a pure function of its
arguments: ``start_step`` resumes a pass mid-epoch with exactly the batches an uninterrupted pass
would have produced from there, and rank r of ``world`` gets rows [r*b, (r+1)*b) of the global
batch of ``batch_size`` rows (b = batch_size // world), with the views and augmentation parameters
drawn for the whole global batch, so a DDP run sees the same samples as one process.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Union

import numpy as np
import torch

from kdflow.config import AugmentConfig
from kdflow.data.shards import SplitArrays
from kdflow.util.errors import ConfigError
from kdflow.softlabels.cache import SoftLabels
from kdflow.training import augment

# Soft labels of a split: the whole split's, or a function (shard index, that shard's ids [n]) -> that
# shard's labels (``SoftLabelCache.load_shard``), for streaming without holding the split's labels.
ShardSoft = Callable[[int, np.ndarray], SoftLabels]
SoftSource = Union[SoftLabels, ShardSoft]


def to_float_images(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, C] -> float32 [B, C, H, W] in [0, 1]."""
    return images_u8.permute(0, 3, 1, 2).float().div_(255.0)


def rank_slice(batch_size: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s part of a global batch: rows [r*b, (r+1)*b) with b = batch_size // world."""
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"rank {rank} of world size {world} is not a valid process",
                          "launch with torchrun, which sets RANK and WORLD_SIZE consistently")
    if batch_size % world:
        raise ConfigError(f"train.batch_size {batch_size} does not split evenly over {world} processes",
                          f"use a batch size divisible by {world} (it is the global batch)")
    b = batch_size // world
    return slice(rank * b, (rank + 1) * b)


def shuffled_stop(n: int, batch_size: int) -> int:
    """Rows a shuffled pass uses: the last short batch is dropped when there is a full one (a batch of
    one breaks BatchNorm statistics)."""
    return n - n % batch_size if n >= batch_size else n


def check_soft(soft_params: torch.Tensor | None, has_soft: bool, augmentation: AugmentConfig | None) -> None:
    if has_soft and soft_params is None and augmentation is not None:
        raise ValueError("teacher labels of the plain pictures cannot be paired with augmented ones: "
                         "cache augmented views (augment.views) or run the teacher online")


def active(augmentation: AugmentConfig | None) -> AugmentConfig | None:
    return augmentation if augmentation is not None and augmentation.active else None


def fresh_params(cfg: AugmentConfig, n: int, height: int, width: int, seed: int, epoch: int,
                 step: int) -> torch.Tensor:
    """Fresh views of global batch ``step`` of ``epoch``: int16 [n, 5] on the CPU, n = global batch rows."""
    return augment.sample(cfg, n, height, width, augment.generator(seed, "fresh", epoch, step))


def concat_soft(parts: list[SoftLabels]) -> SoftLabels:
    """Stack soft labels of consecutive row ranges (shards) into one, along the row axis."""
    if len(parts) == 1:
        return parts[0]
    params = None if parts[0].params is None else torch.cat([p.params for p in parts])
    return SoftLabels(torch.cat([p.values for p in parts]), torch.cat([p.index for p in parts]),
                      torch.cat([p.tail_lse for p in parts]), torch.cat([p.tail_mean for p in parts]),
                      parts[0].num_classes, params)


def slice_soft(soft: SoftLabels, start: int, stop: int) -> SoftLabels:
    """Rows [start, stop) of ``soft`` (views)."""
    return SoftLabels(soft.values[start:stop], soft.index[start:stop], soft.tail_lse[start:stop],
                      soft.tail_mean[start:stop], soft.num_classes,
                      None if soft.params is None else soft.params[start:stop])


def soft_nbytes(soft: SoftLabels) -> int:
    return sum(t.numel() * t.element_size() for t in (soft.values, soft.index, soft.tail_lse, soft.tail_mean,
                                                       *(() if soft.params is None else (soft.params,))))


class ArrayBatches:
    """The whole split on ``device``: uint8 images [N, H, W, 3], labels [N] and soft labels."""

    def __init__(
        self,
        arrays: SplitArrays,
        batch_size: int,
        device: torch.device,
        soft_labels: SoftLabels | None = None,
        augmentation: AugmentConfig | None = None,
    ):
        self.images = torch.from_numpy(arrays.images).to(device)  # uint8 [N, H, W, 3]
        self.labels = torch.from_numpy(arrays.labels).to(device)  # int64 [N]
        self.ids = arrays.ids  # str [N], on the host
        self.soft = soft_labels.to(device) if soft_labels is not None else None
        self.augmentation = active(augmentation)
        self.batch_size = batch_size
        self.device = device
        check_soft(None if self.soft is None else self.soft.params, self.soft is not None, self.augmentation)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def replays_views(self) -> bool:
        return self.soft is not None and self.soft.params is not None

    def example(self, n: int = 8) -> torch.Tensor:
        """The first ``n`` plain pictures, float [n, C, H, W] on the device (for shape probes)."""
        return to_float_images(self.images[:n])

    def steps_per_epoch(self) -> int:
        """Batches in a shuffled pass (the last short batch is dropped when there is a full one)."""
        return max(1, len(self) // self.batch_size)

    def epoch_views(self, epoch: int, seed: int) -> torch.Tensor:
        """The replayed view of every sample in ``epoch``: int64 [N] in [0, V)."""
        assert self.soft is not None
        return torch.randint(self.soft.num_views, (len(self),), generator=augment.generator(seed, "view", epoch))

    def batches(self, epoch: int | None = None, seed: int = 0, start_step: int = 0, rank: int = 0,
                world: int = 1) -> Iterator[dict[str, Any]]:
        """Shuffled with a (seed, epoch) generator when ``epoch`` is given, else in order; from global
        step ``start_step``; this rank's slice of each global batch (module docstring)."""
        part = rank_slice(self.batch_size, rank, world)
        n = len(self)
        views = None
        if epoch is None:
            order = None
            stop = n
        else:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=g).to(self.device)
            stop = shuffled_stop(n, self.batch_size)
            if self.replays_views:
                views = self.epoch_views(epoch, seed).to(self.device)
        height, width = self.images.shape[1:3]
        for step in range(start_step, -(-stop // self.batch_size)):
            start = step * self.batch_size
            end = min(start + self.batch_size, stop)
            if order is None:
                rows = torch.arange(start, end, device=self.device)[part]
            else:
                rows = order[start:end][part]
            image = to_float_images(self.images[rows])
            batch: dict[str, Any] = {"label": self.labels[rows], "rows": rows}
            if views is not None:
                batch["views"] = views[rows]
                image = augment.apply_views(image, self.soft.params[rows, views[rows]])
            elif epoch is not None and self.augmentation is not None:
                params = fresh_params(self.augmentation, end - start, height, width, seed, epoch, step)
                image = augment.apply_views(image, params[part])
            batch["image"] = image
            # Labels go only with the pictures they describe: an in-order pass shows plain pictures,
            # which replayed (augmented) labels do not describe.
            if self.soft is not None and (views is not None or not self.replays_views):
                batch["teacher_soft"] = self.soft.rows(rows, batch.get("views"))
            yield batch
