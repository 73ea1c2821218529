"""Plain VGG-style ConvNets: small, fast on a CPU, any input size (global average pooling)."""

from __future__ import annotations

import torch
from torch import nn

from kdflow.models.registry import register_model


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class ConvNet(nn.Module):
    """Stages of two 3x3 convs; 2x2 max-pool between stages; GAP; one linear layer."""

    def __init__(self, widths: tuple[int, ...], num_classes: int, in_channels: int = 3):
        super().__init__()
        stages, cin = [], in_channels
        for w in widths:
            stages.append(_block(cin, w))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.pool = nn.MaxPool2d(2)
        self.linear = nn.Linear(cin, num_classes)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x if i == 0 else self.pool(x))
            feats.append(x)  # [B, widths[i], H / 2^i, W / 2^i]
        return self.linear(x.mean(dim=(2, 3))), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


for _name, _widths in {"convnet_xs": (8, 16), "convnet_s": (16, 32), "convnet_m": (32, 64, 128),
                       "convnet_l": (64, 128, 256)}.items():
    register_model(_name)(lambda num_classes, in_channels=3, _w=_widths: ConvNet(_w, num_classes, in_channels))
