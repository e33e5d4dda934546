"""VGG-11 with batch normalisation for small images (Simonyan & Zisserman, 2015, "Very Deep Convolutional
Networks for Large-Scale Image Recognition"; configuration A).

The CIFAR layout of the zju-vipa DataFree library (CMI, Fast-Datafree; from RepDistiller): five conv
blocks (64 | 128 | 256-256 | 512-512 | 512-512), 2x2 max-pooling after the first three (and after the
fourth for inputs of 64 px or more), global average pooling and one linear layer on 512 features.
Names match that library (``block0..4.<i>`` conv/BN indices, ``classifier``), so its checkpoints load
with ``strict=True``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register_model

CFG_A = ((64,), (128,), (256, 256), (512, 512), (512, 512))


def _block(cin: int, widths: tuple[int, ...]) -> nn.Sequential:
    """conv3x3(+bias)-BN-ReLU repeated; the block's last ReLU is applied in ``forward`` (indices stay
    conv=0, bn=1, relu=2, conv=3, bn=4 like the original)."""
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        cin = w
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    def __init__(self, cfg=CFG_A, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        cin = in_channels
        for i, widths in enumerate(cfg):
            setattr(self, f"block{i}", _block(cin, widths))
            cin = widths[-1]
        self.feature_dim = cin
        self.classifier = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        big = x.shape[2] >= 64
        out = F.max_pool2d(F.relu(self.block0(x)), 2)
        out = F.max_pool2d(F.relu(self.block1(out)), 2)
        out = F.max_pool2d(F.relu(self.block2(out)), 2)
        out = F.relu(self.block3(out))
        if big:
            out = F.max_pool2d(out, 2)
        out = F.relu(self.block4(out))
        feat = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        logits = self.classifier(feat)
        return (logits, feat) if return_features else logits


@register_model("vgg11", min_size=8)
def vgg11(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> VGG:
    """VGG-11 with BN (Simonyan & Zisserman 2015), CIFAR layout, ~9.2M parameters."""
    return VGG(CFG_A, num_classes, in_channels)
