"""The deployable unit: a network with its input normalisation built in.

Every model kdflow trains, evaluates, logs and registers is a ``Classifier``: it takes float
images [B, C, H, W] with pixels in [0, 1] (what ``ToTensor`` gives) and returns logits, so a user of
the registered model never has to know the training statistics.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

# MLflow model metadata saying the model takes float [B, C, H, W] pixels in [0, 1] and normalises itself,
# so a kdflow model used as a teacher is not normalised twice.
INPUT_METADATA_KEY = "kdflow.input"
INPUT_PIXELS_01 = "rgb_pixels_0_1"


class Classifier(nn.Module):
    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.net.forward_features(self.normalize(x))
