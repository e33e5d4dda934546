"""scikit-learn's bundled handwritten digits: 1,797 real 8x8 images, no download (the embedded default).

Images are scaled from 0..16 to 0..1, resized bilinearly to 16x16 (the input size of the default
``cnn_wide`` / ``cnn_narrow`` pair) and normalised with the training split's mean and std. The split is a
fixed stratified 80/20 split (1,437 train / 360 test, ``random_state=0``).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import DatasetSpec, TeacherRecipe, register_dataset

SIZE = 16
MEAN, STD = 0.3054, 0.3190   # of the resized training split; checked by tests/test_datasets.py


@functools.lru_cache(maxsize=1)
def _arrays() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    y = torch.tensor(bunch.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=0.2, stratify=y.numpy(), random_state=0
    )
    return {"train": (x[idx_train], y[idx_train]), "test": (x[idx_test], y[idx_test])}


def raw_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised images in [0, 1] and labels."""
    return _arrays()[split]


def load(split: str, root: str | None = None, download: bool = False) -> torch.utils.data.TensorDataset:
    x, y = raw_split(split)
    return torch.utils.data.TensorDataset((x - MEAN) / STD, y)


register_dataset(DatasetSpec(
    name="digits",
    num_classes=10,
    image_shape=(1, SIZE, SIZE),
    mean=(MEAN,),
    std=(STD,),
    loader=load,
    teacher_recipe=TeacherRecipe(epochs=30, batch_size=64, lr=0.05, weight_decay=5e-4, augment="crop"),
    default_teacher="cnn_wide",
    default_student="cnn_narrow",
    needs_root=False,
    how_to_get="bundled with scikit-learn",
))
