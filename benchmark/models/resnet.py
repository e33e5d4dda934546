"""CIFAR ResNet-18/34 (He et al., 2016, "Deep Residual Learning for Image Recognition").

CIFAR variant: a 3x3 stride-1 stem convolution and no max-pooling. Parameter and buffer names match the
CIFAR ``ResNet`` of the zju-vipa DataFree library (CMI, Fast-Datafree; itself from DAFL), so teacher
checkpoints from that community load with ``strict=True``: ``conv1``, ``bn1``, ``layer1..4.<i>.{conv1,
bn1, conv2, bn2, shortcut.0, shortcut.1}`` and ``linear``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register_model


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1 conv-BN projection shortcut (post-activation)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv, four stages of basic blocks (64/128/256/512 channels), global average pool, linear."""

    def __init__(self, blocks: tuple[int, int, int, int], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            stage = []
            for j in range(n):
                stage.append(BasicBlock(cin, width, stride=2 if (i > 0 and j == 0) else 1))
                cin = width
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.feature_dim = cin
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        feat = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        logits = self.linear(feat)
        return (logits, feat) if return_features else logits


@register_model("resnet18", min_size=8)
def resnet18(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> CifarResNet:
    """CIFAR ResNet-18 (He et al. 2016), ~11.2M parameters."""
    return CifarResNet((2, 2, 2, 2), num_classes, in_channels)


@register_model("resnet34", min_size=8)
def resnet34(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> CifarResNet:
    """CIFAR ResNet-34 (He et al. 2016), ~21.3M parameters."""
    return CifarResNet((3, 4, 6, 3), num_classes, in_channels)
