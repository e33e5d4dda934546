"""Small BatchNorm CNNs sized for the embedded digits default (16x16, 1 channel; any size >= 8 works)."""
from __future__ import annotations

import torch
import torch.nn as nn

from . import register_model


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """Conv-BN-ReLU stages separated by 2x2 max-pooling, global average pooling, one linear layer."""

    def __init__(self, stages: list[list[int]], num_classes: int, in_channels: int):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, stage in enumerate(stages):
            if i:
                layers.append(nn.MaxPool2d(2))
            for cout in stage:
                layers += _block(cin, cout)
                cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = cin
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        feat = torch.flatten(self.pool(self.features(x)), 1)
        logits = self.fc(feat)
        return (logits, feat) if return_features else logits


@register_model("cnn_wide", min_size=8)
def cnn_wide(num_classes: int = 10, in_channels: int = 1, image_size: int = 16) -> SmallCNN:
    """5-conv BN CNN (32-32 | 64-64 | 128), ~0.14M parameters: the digits default teacher."""
    return SmallCNN([[32, 32], [64, 64], [128]], num_classes, in_channels)


@register_model("cnn_narrow", min_size=8)
def cnn_narrow(num_classes: int = 10, in_channels: int = 1, image_size: int = 16) -> SmallCNN:
    """3-conv BN CNN (16 | 32 | 64), ~0.03M parameters: the digits default student."""
    return SmallCNN([[16], [32], [64]], num_classes, in_channels)
