"""MNIST, SVHN, CIFAR-10 and CIFAR-100 through torchvision, read from ``--data-root``.

Files live where torchvision puts them under the root (``MNIST/raw/*-ubyte``, ``{train,test}_32x32.mat``,
``cifar-10-batches-py/``, ``cifar-100-python/``); torchvision fetches them only with ``download=True``
(``--download``). Before torchvision is called, the expected files are checked, so a missing or incomplete
root raises ``DataError`` without creating anything; torchvision's own MD5 checks (CIFAR, SVHN) then catch
corrupt files. Each split is decoded once into an in-memory ``TensorDataset`` of normalised float images
(CIFAR-10 train: ~0.6 GB), which the harness batches by slicing.

Normalisation constants follow the zju-vipa DataFree library (CMI / Fast-Datafree ``registry.py``) so
teachers trained there see the inputs they were trained on; MNIST is resized to 32x32 as in DAFL.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import DataError, DatasetSpec, TeacherRecipe, register_dataset

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
SVHN_MEAN, SVHN_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)

# Files torchvision requires (it checks all of them whichever split is asked for).
EXPECTED = {
    "mnist": ("MNIST/raw", ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                            "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")),
    "svhn": (".", ("train_32x32.mat", "test_32x32.mat")),
    "cifar10": ("cifar-10-batches-py", ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                                        "data_batch_5", "test_batch", "batches.meta")),
    "cifar100": ("cifar-100-python", ("train", "test", "meta")),
}
HOW_TO_GET = "pass --download to fetch it with torchvision (or put torchvision's files under --data-root)"


def check_files(name: str, root: str | os.PathLike, split: str | None = None) -> Path:
    """Raise ``DataError`` naming the first expected file that is missing; return the folder."""
    folder_rel, files = EXPECTED[name]
    folder = Path(root).expanduser() / folder_rel
    if name == "svhn" and split is not None:   # torchvision's SVHN checks only the split it loads
        files = (f"{split}_32x32.mat",)
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        where = folder.resolve() if folder_rel != "." else Path(root).expanduser().resolve()
        raise DataError(f"dataset {name!r}: expected {where / missing[0]}"
                        f"{f' (and {len(missing) - 1} more files)' if len(missing) > 1 else ''}; {HOW_TO_GET}")
    return folder


def _torchvision(name: str, split: str, root: str, download: bool):
    from torchvision import datasets

    root = str(Path(root).expanduser())
    if not download:
        check_files(name, root, split)
    train = split == "train"
    try:
        if name == "mnist":
            return datasets.MNIST(root, train=train, download=download)
        if name == "svhn":
            return datasets.SVHN(root, split=split, download=download)
        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        return cls(root, train=train, download=download)
    except (RuntimeError, OSError, ValueError) as exc:
        msg = " ".join(str(exc).split())
        raise DataError(f"dataset {name!r} under {Path(root).resolve()} could not be loaded ({msg}); "
                        f"delete the damaged files and pass --download") from None


def _normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 NCHW -> float in [0, 1] -> (x - mean) / std, in place to keep peak memory low."""
    x = x.float().div_(255.0)
    x.sub_(torch.tensor(mean).view(1, -1, 1, 1)).div_(torch.tensor(std).view(1, -1, 1, 1))
    return x


def load_mnist(split: str, root: str, download: bool = False) -> torch.utils.data.TensorDataset:
    ds = _torchvision("mnist", split, root, download)
    raw = ds.data.unsqueeze(1)                                   # uint8 [N, 1, 28, 28]
    out = torch.empty(len(raw), 1, 32, 32)
    for i in range(0, len(raw), 10000):                           # bilinear 28 -> 32, like T.Resize((32, 32))
        out[i:i + 10000] = F.interpolate(raw[i:i + 10000].float() / 255.0, size=(32, 32), mode="bilinear",
                                         align_corners=False, antialias=True)
    out.sub_(MNIST_MEAN[0]).div_(MNIST_STD[0])
    return torch.utils.data.TensorDataset(out, torch.as_tensor(ds.targets, dtype=torch.long))


def load_svhn(split: str, root: str, download: bool = False) -> torch.utils.data.TensorDataset:
    ds = _torchvision("svhn", split, root, download)            # .data: uint8 [N, 3, 32, 32], labels 0..9
    x = _normalise(torch.from_numpy(np.ascontiguousarray(ds.data)), SVHN_MEAN, SVHN_STD)
    return torch.utils.data.TensorDataset(x, torch.as_tensor(np.asarray(ds.labels), dtype=torch.long))


def _cifar_loader(name: str, mean, std):
    def load(split: str, root: str, download: bool = False) -> torch.utils.data.TensorDataset:
        ds = _torchvision(name, split, root, download)          # .data: uint8 [N, 32, 32, 3]
        x = _normalise(torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2), mean, std)
        return torch.utils.data.TensorDataset(x.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long))

    load.__name__ = f"load_{name}"
    return load


load_cifar10 = _cifar_loader("cifar10", CIFAR10_MEAN, CIFAR10_STD)
load_cifar100 = _cifar_loader("cifar100", CIFAR100_MEAN, CIFAR100_STD)

# CMI's train_scratch.py recipe (200 epochs, batch 128, lr 0.1, wd 5e-4, random crop (pad 4) + flip),
# with the harness's cosine decay.
CIFAR_RECIPE = TeacherRecipe(epochs=200, batch_size=128, lr=0.1, weight_decay=5e-4, augment="crop+flip")

register_dataset(DatasetSpec(
    name="mnist", num_classes=10, image_shape=(1, 32, 32), mean=MNIST_MEAN, std=MNIST_STD, loader=load_mnist,
    # DAFL-style LeNet-5 teacher; no augmentation (as in DataFree's MNIST transform). lr 0.05: lenet5 has no
    # BN. Default pair: the BatchNorm variants, on which every method but spaceshipnet runs (DAFL's paper pair is
    # lenet5 -> lenet5_half: --teacher lenet5 --student lenet5_half).
    teacher_recipe=TeacherRecipe(epochs=20, batch_size=128, lr=0.05, weight_decay=5e-4, augment="none"),
    default_teacher="lenet5_bn", default_student="lenet5_half_bn", how_to_get=HOW_TO_GET,
))
register_dataset(DatasetSpec(
    name="svhn", num_classes=10, image_shape=(3, 32, 32), mean=SVHN_MEAN, std=SVHN_STD, loader=load_svhn,
    # digits: translation only, no flips
    teacher_recipe=TeacherRecipe(epochs=50, batch_size=128, lr=0.1, weight_decay=5e-4, augment="crop"),
    default_teacher="resnet34", default_student="resnet18", how_to_get=HOW_TO_GET,
))
register_dataset(DatasetSpec(
    name="cifar10", num_classes=10, image_shape=(3, 32, 32), mean=CIFAR10_MEAN, std=CIFAR10_STD,
    loader=load_cifar10, teacher_recipe=CIFAR_RECIPE, default_teacher="resnet34", default_student="resnet18",
    how_to_get=HOW_TO_GET,
))
register_dataset(DatasetSpec(
    name="cifar100", num_classes=100, image_shape=(3, 32, 32), mean=CIFAR100_MEAN, std=CIFAR100_STD,
    loader=load_cifar100, teacher_recipe=CIFAR_RECIPE, default_teacher="resnet34", default_student="resnet18",
    how_to_get=HOW_TO_GET,
))
