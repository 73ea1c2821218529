"""Batches from decoded shards held in memory (on the training device when it fits).

Images stay uint8 [N, H, W, 3] until a batch is cut: conversion to float [B, 3, H, W] in [0, 1]
happens per batch on the device, so no epoch decodes or copies the dataset again.
"""

from __future__ import annotations

from typing import Iterator

import torch

from kdflow.data.shards import SplitArrays
from kdflow.softlabels.cache import SoftLabels


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
    ):
        self.images = torch.from_numpy(arrays.images).to(device)  # uint8 [N, H, W, 3]
        self.labels = torch.from_numpy(arrays.labels).to(device)  # int64 [N]
        self.soft = soft_labels.to(device) if soft_labels is not None else None
        self.batch_size = batch_size
        self.device = device

    def __len__(self) -> int:
        return len(self.labels)

    def steps_per_epoch(self) -> int:
        """Batches in a shuffled pass (the last short batch is dropped when there is a full one)."""
        return max(1, len(self) // self.batch_size)

    def batches(self, epoch: int | None = None, seed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Shuffled with a (seed, epoch) generator when ``epoch`` is given, else in order.

        Shuffled passes drop a last short batch (a batch of one breaks BatchNorm statistics).
        """
        n = len(self)
        if epoch is None:
            order = torch.arange(n, device=self.device)
            stop = n
        else:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=g).to(self.device)
            stop = n - n % self.batch_size if n >= self.batch_size else n
        for start in range(0, stop, self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = {"image": to_float_images(self.images[rows]), "label": self.labels[rows], "rows": rows}
            if self.soft is not None:
                batch["teacher_logits"] = self.soft.logits(rows)
            yield batch
