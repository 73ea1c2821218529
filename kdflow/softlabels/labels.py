"""Soft labels as the losses read them: decoded (float32 values, int64 indices), aligned with dataset rows."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kdflow.softlabels.codec import dense, standardized_dense


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
    """Cached soft labels for V views, aligned row for row with a dataset split (or one of its shards)."""

    values: torch.Tensor  # float32 [N, V, k]
    index: torch.Tensor  # int64 [N, V, k]
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
