"""Model zoo with one uniform API.

Every classifier ``m`` has ``m.feature_dim`` and ``m(x)`` -> logits, ``m(x, return_features=True)`` ->
``(logits, penultimate features)`` (features before the final linear layer, not normalised). Entries declare
the input channels and smallest input size they accept, so impossible combinations fail before any work.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from ..config import ConfigError
from ..registry import MODELS


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable[..., nn.Module]            # (num_classes, in_channels, image_size) -> nn.Module
    channels: tuple[int, ...] | None = None    # accepted input channels (None: any)
    min_size: int = 8                          # smallest accepted height/width
    description: str = ""


def register_model(name: str, channels: tuple[int, ...] | None = None, min_size: int = 8, description: str = ""):
    """Decorator: register ``build(num_classes, in_channels, image_size) -> nn.Module`` under ``name``."""

    def add(build):
        MODELS.add(name, ModelEntry(name, build, channels, min_size, description or (build.__doc__ or "").strip().split("\n")[0]))
        return build

    return add


def check_model_fits(name: str, image_shape: tuple[int, int, int]) -> ModelEntry:
    entry: ModelEntry = MODELS.get(name)
    c, h, w = image_shape
    if entry.channels is not None and c not in entry.channels:
        raise ConfigError(f"model {name!r} takes {'/'.join(map(str, entry.channels))}-channel input, the dataset has {c}")
    if min(h, w) < entry.min_size:
        raise ConfigError(f"model {name!r} needs inputs of at least {entry.min_size}x{entry.min_size}, the dataset has {h}x{w}")
    return entry


def create_model(name: str, num_classes: int, image_shape: tuple[int, int, int]) -> nn.Module:
    entry = check_model_fits(name, image_shape)
    model = entry.build(num_classes=num_classes, in_channels=image_shape[0], image_size=image_shape[1])
    model.arch = name
    return model


for _module in ("small_cnn", "resnet", "vgg", "wrn", "lenet"):
    try:
        importlib.import_module(f"{__name__}.{_module}")
    except ModuleNotFoundError as exc:  # pragma: no cover - only while a module is being written
        if exc.name != f"{__name__}.{_module}":
            raise
