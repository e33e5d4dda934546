"""LeNet-5 (LeCun et al., 1998, "Gradient-based learning applied to document recognition") as used for
MNIST in DAFL (Chen et al., 2019) and the zju-vipa DataFree library.

Three unpadded 5x5 convs (6 | 16 | 120 channels, ReLU, 2x2 max-pooling after the first two) and two
linear layers (120 -> 84 -> classes); ``lenet5_half`` halves every width (3 | 8 | 60, 60 -> 42). Needs
32x32 inputs (MNIST resized, as in DAFL); larger inputs are average-pooled to 1x1 after the last conv.
Names (``features.{0,3,6}``, ``fc.{0,2}``) match the DataFree library.

``lenet5_bn`` / ``lenet5_half_bn`` (this project's variants, not DAFL's): the same networks with a
BatchNorm2d after each conv (before its ReLU), so that the methods that match the teacher's BatchNorm
statistics (DeepInversion, DFQ, CMI, Fast, CPSC-DFKD, NAYER, CuDFKD) run on MNIST; they are MNIST's
default pair. The BN-free ``lenet5`` -> ``lenet5_half`` stays the pair of DAFL's paper.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register_model


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0, bn: bool = False):
        super().__init__()
        c1, c2, c3, h = (max(1, round(c * width)) for c in (6, 16, 120, 84))

        def conv(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 5), *([nn.BatchNorm2d(cout)] if bn else []), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *conv(in_channels, c1), nn.MaxPool2d(2, 2),
            *conv(c1, c2), nn.MaxPool2d(2, 2),
            *conv(c2, c3),
        )
        self.feature_dim = c3
        self.fc = nn.Sequential(nn.Linear(c3, h), nn.ReLU(inplace=True), nn.Linear(h, num_classes))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        feat = torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)
        logits = self.fc(feat)
        return (logits, feat) if return_features else logits


@register_model("lenet5", channels=(1,), min_size=32)
def lenet5(num_classes: int = 10, in_channels: int = 1, image_size: int = 32) -> LeNet5:
    """LeNet-5 (LeCun et al. 1998) as in DAFL, 1x32x32 input, ~62K parameters."""
    return LeNet5(num_classes, in_channels, 1.0)


@register_model("lenet5_half", channels=(1,), min_size=32)
def lenet5_half(num_classes: int = 10, in_channels: int = 1, image_size: int = 32) -> LeNet5:
    """LeNet-5-Half (DAFL): LeNet-5 with half the channels, ~16K parameters."""
    return LeNet5(num_classes, in_channels, 0.5)



@register_model("lenet5_bn", channels=(1,), min_size=32)
def lenet5_bn(num_classes: int = 10, in_channels: int = 1, image_size: int = 32) -> LeNet5:
    """LeNet-5 with BatchNorm after each conv (MNIST's default teacher), ~62K parameters."""
    return LeNet5(num_classes, in_channels, 1.0, bn=True)


@register_model("lenet5_half_bn", channels=(1,), min_size=32)
def lenet5_half_bn(num_classes: int = 10, in_channels: int = 1, image_size: int = 32) -> LeNet5:
    """LeNet-5-Half with BatchNorm after each conv (MNIST's default student), ~16K parameters."""
    return LeNet5(num_classes, in_channels, 0.5, bn=True)
