"""Tiny ImageNet (200 classes, 64x64 RGB) read from the standard ``tiny-imagenet-200/`` folder.

Layout as unzipped from http://cs231n.stanford.edu/tiny-imagenet-200.zip: ``wnids.txt``,
``train/<wnid>/images/*.JPEG`` and the flat ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt``
(the labelled val split is our test split; the unlabelled ``test/`` folder is not used). Class index =
position in sorted ``wnids.txt``. ``--data-root`` may be the folder holding ``tiny-imagenet-200/`` or that
folder itself. Images are decoded on access (100k JPEGs do not fit in memory as floats), converted to RGB
(a few are greyscale) and normalised with the DataFree library's constants (mean = std = 0.5).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from . import DataError, DatasetSpec, TeacherRecipe, register_dataset

FOLDER = "tiny-imagenet-200"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
ZIP_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
SIZE = 64
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
HOW_TO_GET = f"download and unzip {URL} into --data-root (or pass --download)"


def _fail(expected: Path, what: str = "") -> DataError:
    return DataError(f"dataset 'tiny-imagenet': expected {expected}{what}; {HOW_TO_GET}")


def find_folder(root: str | os.PathLike) -> Path:
    """The ``tiny-imagenet-200`` folder under (or at) ``root``; ``DataError`` if there is none."""
    root = Path(root).expanduser()
    for cand in (root / FOLDER, root):
        if (cand / "wnids.txt").is_file():
            return cand
    raise _fail((root / FOLDER / "wnids.txt").resolve())


def _images(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if e.name.lower().endswith((".jpeg", ".jpg")))
    except (FileNotFoundError, NotADirectoryError):
        return []


def index(root: str | os.PathLike, split: str) -> tuple[list[tuple[str, int]], list[str]]:
    """``([(image path, label)], wnids)`` for a split, after checking that the split is complete."""
    base = find_folder(root).resolve()
    wnids = sorted({ln.strip() for ln in (base / "wnids.txt").read_text().splitlines() if ln.strip()})
    if not wnids:
        raise _fail(base / "wnids.txt", " to list the class ids (it is empty)")
    label = {w: i for i, w in enumerate(wnids)}
    samples: list[tuple[str, int]] = []
    if split == "train":
        for w in wnids:
            folder = base / "train" / w / "images"
            files = _images(folder)
            if not files:
                raise _fail(folder, " to hold this class's training JPEGs")
            samples += [(str(folder / f), label[w]) for f in files]
    else:
        ann, folder = base / "val" / "val_annotations.txt", base / "val" / "images"
        if not ann.is_file():
            raise _fail(ann)
        present = set(_images(folder))
        if not present:
            raise _fail(folder, " to hold the validation JPEGs")
        for n, line in enumerate(ann.read_text().splitlines(), 1):
            parts = line.split("\t") if "\t" in line else line.split()
            if not line.strip():
                continue
            if len(parts) < 2 or parts[1] not in label:
                raise DataError(f"dataset 'tiny-imagenet': {ann} line {n} names no class from wnids.txt; {HOW_TO_GET}")
            if parts[0] not in present:
                raise _fail(folder / parts[0], f" (listed in {ann.name} line {n})")
            samples.append((str(folder / parts[0]), label[parts[1]]))
        if not samples:
            raise _fail(ann, " to label the validation images (it is empty)")
    return samples, wnids


class TinyImageNet(torch.utils.data.Dataset):
    """``(normalised 3x64x64 float tensor, int label)`` pairs, decoded from JPEG on access."""

    def __init__(self, root: str | os.PathLike, split: str = "train"):
        self.split = split
        self.samples, self.classes = index(root, split)
        self._mean = torch.tensor(MEAN).view(3, 1, 1)
        self._std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor

        path, y = self.samples[i]
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (SIZE, SIZE):
                img = img.resize((SIZE, SIZE), Image.BILINEAR)
            x = pil_to_tensor(img).float().div_(255.0)
        return (x - self._mean) / self._std, y


def load(split: str, root: str, download: bool = False) -> TinyImageNet:
    base = Path(root).expanduser()
    if download and not ((base / FOLDER / "wnids.txt").is_file() or (base / "wnids.txt").is_file()):
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(URL, str(base), md5=ZIP_MD5, remove_finished=True)
        except Exception as exc:  # network, disk or checksum failure
            raise DataError(f"dataset 'tiny-imagenet': downloading {URL} into {base.resolve()} failed "
                            f"({' '.join(str(exc).split())}); download and unzip it by hand") from None
    return TinyImageNet(base, split)


register_dataset(DatasetSpec(
    name="tiny-imagenet",
    num_classes=200,
    image_shape=(3, SIZE, SIZE),
    mean=MEAN,
    std=STD,
    loader=load,
    # as the CIFAR recipe (random crop with 4 px padding + flip, like DataFree's tiny_imagenet transform)
    teacher_recipe=TeacherRecipe(epochs=100, batch_size=128, lr=0.1, weight_decay=5e-4, augment="crop+flip"),
    default_teacher="resnet34",
    default_student="resnet18",
    how_to_get=HOW_TO_GET,
))
