"""Generators of the generative DFKD methods."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmark.config import ConfigError


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


class DataFreeGenerator(nn.Module):
    """The unconditional generator of the zju-vipa DataFree / Fast-Datafree code (``Generator`` with width 2,
    used by CMI and Fast; ``LargeGenerator`` with width 4, used there for DAFL, DFAD, ZSKT and DFQ):

    ``l1`` = Linear(nz -> width*ngf*(H/4)*(W/4)), then ``conv_blocks`` = BN, up x2, conv3x3(width*ngf -> 2*ngf),
    BN, LeakyReLU(0.2), up x2, conv3x3(2*ngf -> ngf), BN, LeakyReLU(0.2), conv3x3(ngf -> C), Sigmoid: an image
    in [0, 1]. Given ``mean`` and ``std`` it returns ``(x - mean) / std`` (the library's ``Normalizer``),
    i.e. an image normalised like the real data. Module names follow the released code (Fast's
    ``reset_l0`` targets ``l1.0`` and ``conv_blocks.0``).
    """

    def __init__(self, image_shape: tuple[int, int, int], nz: int = 256, ngf: int = 64, width: int = 2,
                 mean=None, std=None):
        super().__init__()
        channels, height, width_px = image_shape
        if height % 4 or width_px % 4:
            raise ConfigError(f"the generator needs image sizes divisible by 4, got {height}x{width_px}")
        self.nz = nz
        self.init_shape = (width * ngf, height // 4, width_px // 4)
        self.l1 = nn.Sequential(nn.Linear(nz, width * ngf * (height // 4) * (width_px // 4)))
        self.conv_blocks = nn.Sequential(
            nn.BatchNorm2d(width * ngf),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(width * ngf, 2 * ngf, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * ngf),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, ngf, 3, padding=1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ngf, channels, 3, padding=1),
            nn.Sigmoid(),
        )
        self.normalize = mean is not None
        if self.normalize:
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.get_default_dtype()).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std, dtype=torch.get_default_dtype()).view(1, -1, 1, 1), persistent=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_blocks(self.l1(z.flatten(1)).view(z.shape[0], *self.init_shape))
        return (x - self.mean) / self.std if self.normalize else x
