"""Dataset registry entries: the embedded digits set, and the data-root sets read from tiny fake copies
written here in their on-disk formats (no downloads).

CIFAR and SVHN go through torchvision, which checks every file's MD5 against the real data set's; the
fixtures patch torchvision's MD5 tables (``CIFAR10.train_list`` / ``test_list`` / ``meta``,
``SVHN.split_list``) with the MD5s of the fake files, so the real integrity check still runs (and a file
that does not match is reported as a ``DataError``).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets as tvd

from benchmark.data import DataError, get_dataset
from benchmark.data import digits
from benchmark.data.torchvision_sets import (CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, MNIST_MEAN,
                                             MNIST_STD)
from benchmark.models import check_model_fits
from benchmark.registry import DATASETS

ROOT_SETS = ("mnist", "svhn", "cifar10", "cifar100", "tiny-imagenet")


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _tree(path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# ---- registry entries --------------------------------------------------------------------------------

def test_registered_specs_are_consistent():
    assert set(ROOT_SETS) | {"digits"} <= set(DATASETS.list())
    expected = {"mnist": (10, (1, 32, 32), "lenet5_bn", "lenet5_half_bn"),
                "svhn": (10, (3, 32, 32), "resnet34", "resnet18"),
                "cifar10": (10, (3, 32, 32), "resnet34", "resnet18"),
                "cifar100": (100, (3, 32, 32), "resnet34", "resnet18"),
                "tiny-imagenet": (200, (3, 64, 64), "resnet34", "resnet18")}
    for name, (classes, shape, teacher, student) in expected.items():
        spec = get_dataset(name)
        assert (spec.num_classes, spec.image_shape, spec.default_teacher, spec.default_student) == \
            (classes, shape, teacher, student)
        assert len(spec.mean) == len(spec.std) == shape[0] and spec.needs_root and spec.how_to_get
        check_model_fits(spec.default_teacher, spec.image_shape)
        check_model_fits(spec.default_student, spec.image_shape)
    for name in ("cifar10", "cifar100"):
        r = get_dataset(name).teacher_recipe
        assert (r.epochs, r.batch_size, r.lr, r.weight_decay, r.augment) == (200, 128, 0.1, 5e-4, "crop+flip")
    assert get_dataset("cifar10").mean == (0.4914, 0.4822, 0.4465)


def test_digits_split_shape_and_constants():
    spec = get_dataset("digits")
    train, test = spec.load("train"), spec.load("test")
    assert (len(train), len(test)) == (1437, 360)
    x, y = train[0]
    assert x.shape == (1, 16, 16) == spec.image_shape and 0 <= int(y) < 10
    raw, _ = digits.raw_split("train")
    assert abs(raw.mean().item() - digits.MEAN) < 5e-4
    assert abs(raw.std().item() - digits.STD) < 5e-4
    normalised = train.tensors[0]
    assert abs(normalised.mean().item()) < 2e-3 and abs(normalised.std().item() - 1) < 2e-3


# ---- missing and incomplete roots --------------------------------------------------------------------

@pytest.mark.parametrize("name", ROOT_SETS)
@pytest.mark.parametrize("split", ("train", "test"))
def test_missing_root_raises_and_creates_nothing(tmp_path, name, split):
    absent = tmp_path / "absent"
    with pytest.raises(DataError) as excinfo:
        get_dataset(name).load(split, str(absent))
    msg = str(excinfo.value)
    assert "\n" not in msg and str(absent) in msg
    assert ("--download" in msg) and (name != "tiny-imagenet" or "tiny-imagenet-200.zip" in msg)
    assert not absent.exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError):
        get_dataset(name).load(split, str(empty))
    assert list(empty.iterdir()) == []


@pytest.mark.parametrize("name", ROOT_SETS)
def test_no_root_at_all(name):
    with pytest.raises(DataError, match="--data-root"):
        get_dataset(name).load("train", None)


# ---- MNIST: raw IDX files ----------------------------------------------------------------------------

def _write_idx(raw, prefix, images, labels):
    n, h, w = images.shape
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x0803, n, h, w) + images.tobytes())
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x0801, n) + labels.tobytes())


@pytest.fixture
def mnist_root(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    levels = np.array([0, 51, 102, 204, 255, 10], dtype=np.uint8)
    train = np.repeat(levels[:, None, None], 28, 1).repeat(28, 2)          # constant images
    _write_idx(raw, "train", train, np.array([0, 1, 2, 3, 4, 9], dtype=np.uint8))
    test = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    _write_idx(raw, "t10k", test, np.array([5, 6, 7, 8], dtype=np.uint8))
    return tmp_path, levels


def test_mnist_from_idx_files(mnist_root):
    root, levels = mnist_root
    before = _tree(root)
    spec = get_dataset("mnist")
    train, test = spec.load("train", str(root)), spec.load("test", str(root))
    assert (len(train), len(test)) == (6, 4)
    x, y = train[3]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and int(y) == 3
    assert train.tensors[1].tolist() == [0, 1, 2, 3, 4, 9] and test.tensors[1].tolist() == [5, 6, 7, 8]
    want = (torch.tensor(levels, dtype=torch.float32) / 255 - MNIST_MEAN[0]) / MNIST_STD[0]
    assert torch.allclose(train.tensors[0].mean(dim=(1, 2, 3)), want, atol=1e-5)
    assert torch.allclose(train.tensors[0].amax(dim=(1, 2, 3)), train.tensors[0].amin(dim=(1, 2, 3)), atol=1e-5)
    assert test.tensors[0].shape == (4, 1, 32, 32)
    assert _tree(root) == before          # nothing written next to the data


def test_mnist_incomplete(mnist_root):
    root, _ = mnist_root
    (root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*--download"):
        get_dataset("mnist").load("train", str(root))


# ---- CIFAR-10 / CIFAR-100: python pickle batches -----------------------------------------------------

def _cifar_images(n, rng):
    """n images, each a constant colour; returned flat in the CIFAR layout (R plane, G plane, B plane)."""
    colours = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    return colours, np.repeat(colours, 1024, axis=1)


def _pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.fixture
def cifar10_root(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    colours = {}
    for i in range(1, 6):
        c, data = _cifar_images(2, rng)
        colours[f"data_batch_{i}"] = c
        _pickle(folder / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5", "data": data,
                                              "labels": [i, (i + 1) % 10], "filenames": ["a.png", "b.png"]})
    c, data = _cifar_images(3, rng)
    colours["test_batch"] = c
    _pickle(folder / "test_batch", {"data": data, "labels": [7, 8, 9]})
    _pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072})
    monkeypatch.setattr(tvd.CIFAR10, "train_list", [[f"data_batch_{i}", _md5(folder / f"data_batch_{i}")]
                                                    for i in range(1, 6)])
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", _md5(folder / "test_batch")]])
    monkeypatch.setattr(tvd.CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names",
                                              "md5": _md5(folder / "batches.meta")})
    return tmp_path, colours


def _expected(colours, mean, std):
    return (torch.tensor(colours, dtype=torch.float32) / 255 - torch.tensor(mean)) / torch.tensor(std)


def test_cifar10_from_pickle_batches(cifar10_root):
    root, colours = cifar10_root
    before = _tree(root)
    spec = get_dataset("cifar10")
    train, test = spec.load("train", str(root)), spec.load("test", str(root))
    assert (len(train), len(test)) == (10, 3)
    x, y = test[1]
    assert x.shape == (3, 32, 32) and int(y) == 8
    assert train.tensors[1].tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6]
    train_colours = np.concatenate([colours[f"data_batch_{i}"] for i in range(1, 6)])
    assert torch.allclose(train.tensors[0].mean(dim=(2, 3)), _expected(train_colours, CIFAR10_MEAN, CIFAR10_STD),
                          atol=1e-5)
    assert torch.allclose(test.tensors[0][:, :, 5, 7], _expected(colours["test_batch"], CIFAR10_MEAN, CIFAR10_STD),
                          atol=1e-5)
    assert _tree(root) == before


def test_cifar10_incomplete_and_corrupt(cifar10_root):
    root, _ = cifar10_root
    batch = root / "cifar-10-batches-py" / "data_batch_4"
    good = batch.read_bytes()
    batch.write_bytes(good[:-10])                       # fails torchvision's MD5 check
    with pytest.raises(DataError, match="could not be loaded.*corrupted.*--download") as excinfo:
        get_dataset("cifar10").load("test", str(root))
    assert "\n" not in str(excinfo.value)
    batch.unlink()
    with pytest.raises(DataError, match=r"expected .*cifar-10-batches-py/data_batch_4; pass --download"):
        get_dataset("cifar10").load("test", str(root))


def test_cifar100_from_pickle_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train_colours, train_data = _cifar_images(4, rng)
    _pickle(folder / "train", {"data": train_data, "fine_labels": [0, 99, 50, 3], "coarse_labels": [0, 1, 2, 3]})
    _, test_data = _cifar_images(2, rng)
    _pickle(folder / "test", {"data": test_data, "fine_labels": [42, 7], "coarse_labels": [1, 2]})
    _pickle(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": []})
    monkeypatch.setattr(tvd.CIFAR100, "train_list", [["train", _md5(folder / "train")]])
    monkeypatch.setattr(tvd.CIFAR100, "test_list", [["test", _md5(folder / "test")]])
    monkeypatch.setattr(tvd.CIFAR100, "meta", {"filename": "meta", "key": "fine_label_names",
                                               "md5": _md5(folder / "meta")})
    spec = get_dataset("cifar100")
    train, test = spec.load("train", str(tmp_path)), spec.load("test", str(tmp_path))
    assert train.tensors[1].tolist() == [0, 99, 50, 3] and test.tensors[1].tolist() == [42, 7]
    assert train.tensors[0].shape == (4, 3, 32, 32)
    assert torch.allclose(train.tensors[0][:, :, 0, 0], _expected(train_colours, CIFAR100_MEAN, CIFAR100_STD),
                          atol=1e-5)


# ---- SVHN: MATLAB files ------------------------------------------------------------------------------

def test_svhn_from_mat_files(tmp_path, monkeypatch):
    from scipy.io import savemat

    rng = np.random.default_rng(2)
    md5s = {}
    for split, labels in (("train", [1, 10, 5]), ("test", [10, 2])):
        x = rng.integers(0, 256, (32, 32, 3, len(labels)), dtype=np.uint8)    # SVHN's H, W, C, N layout
        savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": np.array(labels, dtype=np.uint8)[:, None]})
        md5s[split] = _md5(tmp_path / f"{split}_32x32.mat")
    monkeypatch.setattr(tvd.SVHN, "split_list", {s: ["http://invalid/", f"{s}_32x32.mat", m] for s, m in md5s.items()})
    spec = get_dataset("svhn")
    train, test = spec.load("train", str(tmp_path)), spec.load("test", str(tmp_path))
    assert train.tensors[1].tolist() == [1, 0, 5] and test.tensors[1].tolist() == [0, 2]   # label 10 is digit 0
    assert train.tensors[0].shape == (3, 3, 32, 32)
    assert train.tensors[0].min() >= -1 and train.tensors[0].max() <= 1     # mean = std = 0.5
    (tmp_path / "test_32x32.mat").unlink()
    spec.load("train", str(tmp_path))                                       # each split stands alone
    with pytest.raises(DataError, match="test_32x32.mat"):
        spec.load("test", str(tmp_path))


# ---- Tiny ImageNet: the standard folder, flat val/ -------------------------------------------------

WNIDS = ("n03", "n01", "n02")           # deliberately unsorted in wnids.txt


@pytest.fixture
def tiny_root(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    colours = {"n01": (255, 0, 0), "n02": (0, 255, 0), "n03": (0, 0, 255)}
    for w in WNIDS:
        folder = base / "train" / w / "images"
        folder.mkdir(parents=True)
        (base / "train" / w / f"{w}_boxes.txt").write_text(f"{w}_0.JPEG\t0\t0\t63\t63\n")
        for i in range(2):
            Image.new("RGB", (64, 64), colours[w]).save(folder / f"{w}_{i}.JPEG", quality=95)
    Image.new("L", (64, 64), 128).save(base / "train" / "n02" / "images" / "n02_2.JPEG")   # a greyscale one
    val = [("val_0.JPEG", "n02"), ("val_1.JPEG", "n03"), ("val_2.JPEG", "n01"), ("val_3.JPEG", "n02")]
    for name, w in val:
        Image.new("RGB", (64, 64), colours[w]).save(base / "val" / "images" / name, quality=95)
    (base / "val" / "val_annotations.txt").write_text("".join(f"{n}\t{w}\t0\t0\t63\t63\n" for n, w in val))
    return tmp_path


def test_tiny_imagenet_train_and_val(tiny_root):
    before = _tree(tiny_root)
    spec = get_dataset("tiny-imagenet")
    train, test = spec.load("train", str(tiny_root)), spec.load("test", str(tiny_root))
    assert (len(train), len(test)) == (7, 4)
    assert train.classes == ["n01", "n02", "n03"]                   # class index = sorted wnids
    assert sorted(y for _, y in train.samples) == [0, 0, 1, 1, 1, 2, 2]
    assert [y for _, y in test.samples] == [1, 2, 0, 1]
    for ds in (train, test):
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and isinstance(y, int)
            assert x.min() >= -1 - 1e-6 and x.max() <= 1 + 1e-6
    x, y = test[2]                                                   # pure red, normalised with 0.5 / 0.5
    assert y == 0 and torch.allclose(x.mean(dim=(1, 2)), torch.tensor([1.0, -1.0, -1.0]), atol=0.03)
    grey = next(i for i, (p, _) in enumerate(train.samples) if p.endswith("n02_2.JPEG"))
    x, _ = train[grey]
    assert torch.allclose(x[0], x[1]) and torch.allclose(x[1], x[2])
    xb, yb = torch.utils.data.default_collate([test[i] for i in range(4)])
    assert xb.shape == (4, 3, 64, 64) and yb.tolist() == [1, 2, 0, 1]
    # the tiny-imagenet-200 folder itself also works as the root; download=True with the data present is a no-op
    assert len(spec.load("test", str(tiny_root / "tiny-imagenet-200"), download=True)) == 4
    assert _tree(tiny_root) == before


def test_tiny_imagenet_incomplete(tiny_root):
    base = tiny_root / "tiny-imagenet-200"
    spec = get_dataset("tiny-imagenet")
    for f in (base / "train" / "n03" / "images").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"expected .*train/n03/images to hold"):
        spec.load("train", str(tiny_root))
    spec.load("test", str(tiny_root))                                # the val split is still complete
    (base / "val" / "images" / "val_3.JPEG").unlink()
    with pytest.raises(DataError, match=r"val/images/val_3.JPEG \(listed in val_annotations.txt line 4\)"):
        spec.load("test", str(tiny_root))
    os.remove(base / "val" / "val_annotations.txt")
    with pytest.raises(DataError, match=r"val_annotations.txt; download and unzip http"):
        spec.load("test", str(tiny_root))
    assert not (base / "val" / "val_annotations.txt").exists()
