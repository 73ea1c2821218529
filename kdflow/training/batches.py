"""Batches from decoded shards held in memory (on the training device when it fits).

Images stay uint8 [N, H, W, 3] until a batch is cut: conversion to float [B, 3, H, W] in [0, 1]
and augmentation happen per batch on the device, so no epoch decodes or copies the dataset again.

A shuffled pass picks the picture each sample shows, in this order:
- replayed views: with cached augmented soft labels (V views per sample), one view per sample is
  chosen by (seed, epoch), rendered from its stored parameters, and paired with the teacher's
  labels of exactly that view;
- fresh views: with augmentation on and no cached views (cross-entropy, online teacher), views are
  drawn per batch from a (seed, epoch, step) generator;
- the plain picture otherwise. In-order passes (evaluation, inference) always show the plain picture.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from kdflow.config import AugmentConfig
from kdflow.data.shards import SplitArrays
from kdflow.softlabels.cache import SoftLabels
from kdflow.training import augment


def to_float_images(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, C] -> float32 [B, C, H, W] in [0, 1]."""
    return images_u8.permute(0, 3, 1, 2).float().div_(255.0)


class ArrayBatches:
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
        self.soft = soft_labels.to(device) if soft_labels is not None else None
        self.augmentation = augmentation if augmentation is not None and augmentation.active else None
        self.batch_size = batch_size
        self.device = device
        if self.soft is not None and self.soft.params is None and self.augmentation is not None:
            raise ValueError("teacher labels of the plain pictures cannot be paired with augmented ones: "
                             "cache augmented views (augment.views) or run the teacher online")

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

    def batches(self, epoch: int | None = None, seed: int = 0) -> Iterator[dict[str, Any]]:
        """Shuffled with a (seed, epoch) generator when ``epoch`` is given, else in order.

        Shuffled passes drop a last short batch (a batch of one breaks BatchNorm statistics).
        """
        n = len(self)
        views = None
        if epoch is None:
            order = torch.arange(n, device=self.device)
            stop = n
        else:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=g).to(self.device)
            stop = n - n % self.batch_size if n >= self.batch_size else n
            if self.replays_views:
                views = self.epoch_views(epoch, seed).to(self.device)
        height, width = self.images.shape[1:3]
        for step, start in enumerate(range(0, stop, self.batch_size)):
            rows = order[start : start + self.batch_size]
            image = to_float_images(self.images[rows])
            batch: dict[str, Any] = {"label": self.labels[rows], "rows": rows}
            if views is not None:
                batch["views"] = views[rows]
                image = augment.apply_views(image, self.soft.params[rows, views[rows]])
            elif epoch is not None and self.augmentation is not None:
                params = augment.sample(self.augmentation, len(rows), height, width,
                                        augment.generator(seed, "fresh", epoch, step))
                image = augment.apply_views(image, params)
            batch["image"] = image
            # Labels go only with the pictures they describe: an in-order pass shows plain pictures,
            # which replayed (augmented) labels do not describe.
            if self.soft is not None and (views is not None or not self.replays_views):
                batch["teacher_soft"] = self.soft.rows(rows, batch.get("views"))
            yield batch
