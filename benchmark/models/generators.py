"""Generators of the generative DFKD methods."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class CategoricalConditionalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm without its own affine, followed by a per-class scale and shift looked up from two
    embedding tables (initialised to ones and zeros): CPSC-DFKD's categorical feature embedding (CFE)."""

    def __init__(self, num_classes: int, num_features: int, eps: float = 1e-3, momentum: float = 0.1):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=False)
        self.class_scale = nn.Embedding(num_classes, num_features)
        self.class_shift = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.class_scale.weight)
        nn.init.zeros_(self.class_shift.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = super().forward(x)
        return out * self.class_scale(labels)[:, :, None, None] + self.class_shift(labels)[:, :, None, None]


class ConditionalGenerator(nn.Module):
    """CPSC-DFKD's conditional generator (``GeneratorD`` in the authors' code), any size divisible by 4.

    Linear(nz -> 2*ngf*(s/4)^2) -> CCBN -> up x2 -> conv3x3 -> CCBN -> LeakyReLU(0.2) -> up x2 -> conv3x3
    -> CCBN -> LeakyReLU(0.2) -> conv3x3 -> Tanh -> CCBN(channels).
    """

    def __init__(self, num_classes: int, image_shape: tuple[int, int, int], nz: int = 256, ngf: int = 64):
        super().__init__()
        channels, height, width = image_shape
        if height % 4 or width % 4:
            raise ValueError(f"ConditionalGenerator needs image sizes divisible by 4, got {height}x{width}")
        self.nz, self.num_classes = nz, num_classes
        self.init_shape = (2 * ngf, height // 4, width // 4)
        self.project = nn.Linear(nz, 2 * ngf * (height // 4) * (width // 4))
        self.bn0 = CategoricalConditionalBatchNorm2d(num_classes, 2 * ngf)
        self.conv1 = nn.Conv2d(2 * ngf, 2 * ngf, 3, padding=1)
        self.bn1 = CategoricalConditionalBatchNorm2d(num_classes, 2 * ngf)
        self.conv2 = nn.Conv2d(2 * ngf, ngf, 3, padding=1)
        self.bn2 = CategoricalConditionalBatchNorm2d(num_classes, ngf)
        self.conv3 = nn.Conv2d(ngf, channels, 3, padding=1)
        self.bn3 = CategoricalConditionalBatchNorm2d(num_classes, channels)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self.project(z.flatten(1)).view(z.shape[0], *self.init_shape)
        x = self.bn0(x, labels)
        x = F.interpolate(x, scale_factor=2)
        x = F.leaky_relu(self.bn1(self.conv1(x), labels), 0.2)
        x = F.interpolate(x, scale_factor=2)
        x = F.leaky_relu(self.bn2(self.conv2(x), labels), 0.2)
        return self.bn3(torch.tanh(self.conv3(x)), labels)


class DCGANGenerator(nn.Module):
    """The unconditional generator of DAFL / DFAD / ZSKT / DFQ / CMI in the DataFree library (``Generator``):
    Linear -> BN -> up x2 -> conv -> BN -> LeakyReLU -> up x2 -> conv -> BN -> LeakyReLU -> conv -> Tanh
    -> BN(affine=False)."""

    def __init__(self, image_shape: tuple[int, int, int], nz: int = 100, ngf: int = 64):
        super().__init__()
        channels, height, width = image_shape
        if height % 4 or width % 4:
            raise ValueError(f"DCGANGenerator needs image sizes divisible by 4, got {height}x{width}")
        self.nz = nz
        self.init_shape = (2 * ngf, height // 4, width // 4)
        self.project = nn.Linear(nz, 2 * ngf * (height // 4) * (width // 4))
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * ngf),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, 2 * ngf, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * ngf),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, ngf, 3, padding=1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ngf, channels, 3, padding=1),
            nn.Tanh(),
            nn.BatchNorm2d(channels, affine=False),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.project(z.flatten(1)).view(z.shape[0], *self.init_shape))
