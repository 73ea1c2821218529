"""ImageNet ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, table 1):
ResNet-18/34 (BasicBlocks) and ResNet-50 (Bottlenecks, stride on the 3x3 conv as in torchvision's v1.5).

Written here, without torchvision, because the core must not depend on it. Parameter names
(conv1, bn1, layer{1..4}.{i}.conv{1,2,3}/bn{1,2,3}, layer{1..4}.0.downsample.{0,1}, fc) match
torchvision's, so its pretrained state_dicts load with ``load_state_dict`` (teacher.arch: resnet50).
A 7x7 stride-2 stem and a max-pool: 224 px inputs give 7x7 maps at the last stage; any size >= 32 runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdflow.models.registry import register_model


def _downsample(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(cin, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = _downsample(cin, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ImageNetResNet(nn.Module):
    def __init__(self, block: type[nn.Module], counts: tuple[int, ...], num_classes: int, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin, layers = 64, []
        for planes, n, stride in zip((64, 128, 256, 512), counts, (1, 2, 2, 2)):
            blocks = []
            for i in range(n):
                blocks.append(block(cin, planes, stride if i == 0 else 1))
                cin = planes * block.expansion
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))  # [B, 64, H/4, W/4]
        f1 = self.layer1(x)  # [B, 64 * e, H/4, W/4] (e: 1 for BasicBlock, 4 for Bottleneck)
        f2 = self.layer2(f1)  # [B, 128 * e, H/8, W/8]
        f3 = self.layer3(f2)  # [B, 256 * e, H/16, W/16]
        f4 = self.layer4(f3)  # [B, 512 * e, H/32, W/32]
        return self.fc(f4.mean(dim=(2, 3))), [f1, f2, f3, f4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


for _name, _block, _counts in (("resnet18", BasicBlock, (2, 2, 2, 2)), ("resnet34", BasicBlock, (3, 4, 6, 3)),
                               ("resnet50", Bottleneck, (3, 4, 6, 3))):
    register_model(_name)(lambda num_classes, in_channels=3, _b=_block, _c=_counts:
                          ImageNetResNet(_b, _c, num_classes, in_channels))
