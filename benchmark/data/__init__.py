"""Dataset registry entries: classes, image shape, normalisation, teacher recipe and a loader.

Every loader returns a ``torch.utils.data.Dataset`` of ``(normalised image tensor, label)``. Only the
embedded ``digits`` set needs no data root; the others read ``--data-root`` and download only when asked.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..registry import DATASETS


class DataError(RuntimeError):
    """Missing or incomplete data; the message names the expected path and how to get the data."""


@dataclass(frozen=True)
class TeacherRecipe:
    """How ``benchmark teacher`` trains a teacher from scratch (SGD + momentum, cosine decay)."""

    epochs: int
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: str = "crop+flip"     # crop+flip | crop | none  (crop: pad 4 (2 for small images) and random crop)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    image_shape: tuple[int, int, int]          # (channels, height, width) as the models see it
    mean: tuple[float, ...]
    std: tuple[float, ...]
    loader: Callable[..., torch.utils.data.Dataset] = field(repr=False)   # (split, root, download) -> Dataset
    teacher_recipe: TeacherRecipe
    default_teacher: str
    default_student: str
    needs_root: bool = True
    how_to_get: str = ""

    def load(self, split: str, root: str | None = None, download: bool = False) -> torch.utils.data.Dataset:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if self.needs_root and not root:
            raise DataError(f"dataset {self.name!r} needs --data-root (a folder holding it); {self.how_to_get}")
        return self.loader(split=split, root=root, download=download)

    def fingerprint(self) -> dict:
        """What the models see of this dataset (input shape, normalisation, classes). Part of every cell's id
        and of every cached teacher's key, so changing it (e.g. digits' input size) never reuses a result
        or a teacher computed on other inputs."""
        return {"image_shape": list(self.image_shape), "mean": list(self.mean), "std": list(self.std),
                "num_classes": self.num_classes}

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x * std + mean).clamp(0, 1)


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    return DATASETS.add(spec.name, spec)


def get_dataset(name: str) -> DatasetSpec:
    return DATASETS.get(name)


# Import every dataset module explicitly, in one place (no star-import side effects).
for _module in ("digits", "torchvision_sets", "tiny_imagenet"):
    try:
        importlib.import_module(f"{__name__}.{_module}")
    except ModuleNotFoundError as exc:  # pragma: no cover - only while a module is being written
        if exc.name != f"{__name__}.{_module}":
            raise
