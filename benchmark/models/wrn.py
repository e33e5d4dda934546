"""Wide residual networks WRN-d-k (Zagoruyko & Komodakis, 2016, "Wide Residual Networks").

Pre-activation blocks, three groups of 16k/32k/64k channels, (d - 4) / 6 blocks per group, no dropout.
Names match the ``WideResNet`` of the zju-vipa DataFree library (CMI, Fast-Datafree; from ZSKT), so its
teacher checkpoints load with ``strict=True``: ``conv1``, ``block1..3.layer.<i>.{bn1, conv1, bn2, conv2,
convShortcut}``, ``bn1`` and ``fc``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register_model


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3 twice. When the width or stride changes, the shortcut is a 1x1 conv applied to
    the pre-activated input; otherwise it is the identity on the raw input."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.same_shape = cin == cout
        # The DataFree WRN decides the shortcut by width only (every stride-2 block also widens).
        self.convShortcut = None if self.same_shape else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + (x if self.convShortcut is None else self.convShortcut(act))


class BlockGroup(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[PreActBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """3x3 stem conv (16 channels), three block groups, BN-ReLU, global average pool, linear."""

    def __init__(self, depth: int, widen: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.block1 = BlockGroup(n, 16, widths[0], 1)
        self.block2 = BlockGroup(n, widths[0], widths[1], 2)
        self.block3 = BlockGroup(n, widths[1], widths[2], 2)
        self.bn1 = nn.BatchNorm2d(widths[2])
        self.feature_dim = widths[2]
        self.fc = nn.Linear(widths[2], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        feat = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        logits = self.fc(feat)
        return (logits, feat) if return_features else logits


def _register(depth: int, widen: int, params: str) -> None:
    name = f"wrn{depth}_{widen}"

    def build(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> WideResNet:
        return WideResNet(depth, widen, num_classes, in_channels)

    build.__name__ = name
    build.__doc__ = f"WRN-{depth}-{widen} (Zagoruyko & Komodakis 2016), ~{params} parameters."
    register_model(name, min_size=8)(build)
    globals()[name] = build


for _depth, _widen, _params in ((16, 1, "0.18M"), (16, 2, "0.69M"), (40, 1, "0.57M"), (40, 2, "2.2M")):
    _register(_depth, _widen, _params)
