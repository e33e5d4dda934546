"""Synthetic-data quality metrics on hand-made teachers, and the sample-grid PNG."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from benchmark.quality import QUALITY_KEYS, frechet_distance, quality_metrics, save_sample_grid

K = 10


class OneClassTeacher(nn.Module):
    """Always predicts class 3, whatever the input; features are the flattened image."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x, return_features=False):
        logits = torch.zeros(x.shape[0], K, device=x.device)
        logits[:, 3] = 5.0 * self.scale
        feats = torch.flatten(x, 1)
        return (logits, feats) if return_features else logits


class ValueTeacher(nn.Module):
    """Predicts class round(mean pixel value): an image filled with c is class c; features: 4 pixel stats."""

    def __init__(self):
        super().__init__()
        self.register_buffer("classes", torch.arange(K, dtype=torch.float32))
        self.seen_training = []

    def forward(self, x, return_features=False):
        self.seen_training.append(self.training)
        m = x.flatten(1).mean(1, keepdim=True)
        logits = -10.0 * (m - self.classes) ** 2
        flat = x.flatten(1)
        feats = torch.stack([flat.mean(1), flat.std(1), flat.amax(1), flat.amin(1)], 1)
        return (logits, feats) if return_features else logits


def _filled(labels: torch.Tensor, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = labels.float().view(-1, 1, 1, 1).expand(-1, 1, 6, 6).clone()
    return x + noise * torch.randn(x.shape, generator=g)


def test_one_class_generator_has_zero_class_balance_entropy():
    images = torch.randn(50, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    real = torch.randn(40, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    q = quality_metrics(OneClassTeacher(), images, None, real, K)
    assert set(q) == set(QUALITY_KEYS)
    assert q["class_balance_entropy"] == 0.0 and q["class_balance_normalized"] == 0.0
    assert q["label_agreement"] is None
    expected_conf = math.exp(5) / (math.exp(5) + 9)
    assert q["teacher_confidence"] == pytest.approx(expected_conf)
    assert q["feature_fid"] > 0


def test_label_agreement_is_one_when_the_teacher_predicts_the_requested_class():
    labels = torch.arange(K).repeat(6)                        # balanced: 6 per class
    images = _filled(labels, noise=0.05)
    q = quality_metrics(ValueTeacher(), images, labels, _filled(labels, 0.05, seed=1), K, batch_size=7)
    assert q["label_agreement"] == 1.0
    assert q["class_balance_entropy"] == pytest.approx(math.log(K))
    assert q["class_balance_normalized"] == pytest.approx(1.0)
    shifted = (labels + 1) % K                                # asked for the next class each time
    assert quality_metrics(ValueTeacher(), images, shifted, images, K)["label_agreement"] == 0.0


def test_half_agreement_and_entropy_by_hand():
    labels = torch.tensor([0, 0, 1, 1])
    images = _filled(torch.tensor([0, 0, 0, 0]))             # the teacher sees class 0 four times
    q = quality_metrics(ValueTeacher(), images, labels, images, K)
    assert q["label_agreement"] == 0.5 and q["class_balance_entropy"] == 0.0
    images = _filled(torch.tensor([0, 0, 1, 1]))
    assert quality_metrics(ValueTeacher(), images, None, images, K)["class_balance_entropy"] == pytest.approx(math.log(2))


def test_feature_fid_is_zero_for_identical_sets_even_with_fewer_samples_than_dimensions():
    x = torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(0))   # 20 samples, 64-dim features
    q = quality_metrics(OneClassTeacher(), x, None, x.clone(), K)
    assert q["feature_fid"] == pytest.approx(0.0, abs=1e-6)
    # a constant shift of every feature by 1 moves only the mean: FID = 64 * 1^2
    q = quality_metrics(OneClassTeacher(), x + 1.0, None, x, K)
    assert q["feature_fid"] == pytest.approx(64.0, rel=1e-6)


def test_frechet_distance_matches_the_closed_form_and_sqrtm():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 5)), rng.normal(size=(200, 5)) * 2 + 1
    mu1, c1, mu2, c2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    ref = float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * np.real(sqrtm(c1 @ c2))))
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(ref, rel=1e-8)
    # one-dimensional Gaussians: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance(np.array([0.0]), np.array([[4.0]]), np.array([3.0]), np.array([[1.0]])) == pytest.approx(10.0)
    # rank-deficient covariances are fine
    z = np.zeros((3, 3))
    assert frechet_distance(np.zeros(3), z, np.ones(3), z) == pytest.approx(3.0)


def test_intra_class_diversity_by_hand():
    class FeatTeacher(nn.Module):
        def forward(self, x, return_features=False):
            feats = x.flatten(1)[:, :2]
            logits = torch.zeros(x.shape[0], K)
            logits[:, 0] = 1.0
            return logits, feats

    # two orthogonal unit features in the single predicted class: distance sqrt(2)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 1, 1, 2)
    assert quality_metrics(FeatTeacher(), x, None, x, K)["intra_class_diversity"] == pytest.approx(math.sqrt(2))
    # identical directions (any length): zero after L2 normalisation
    x = torch.tensor([[1.0, 1.0], [3.0, 3.0], [0.5, 0.5]]).view(3, 1, 1, 2)
    assert quality_metrics(FeatTeacher(), x, None, x, K)["intra_class_diversity"] == pytest.approx(0.0, abs=1e-7)
    # classes with a single sample do not count; none with two: undefined
    images = _filled(torch.tensor([0, 1, 2]))
    assert quality_metrics(ValueTeacher(), images, None, images, K)["intra_class_diversity"] is None


def test_teacher_runs_in_eval_mode_and_its_mode_is_restored():
    teacher = ValueTeacher().train()
    images = _filled(torch.arange(K))
    quality_metrics(teacher, images, None, images, K, batch_size=3)
    assert teacher.seen_training and not any(teacher.seen_training)
    assert teacher.training
    assert len(teacher.seen_training) == 8                 # 4 batches of synthetic + 4 of real images


def test_batch_size_does_not_change_the_result():
    x = torch.randn(37, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    real = torch.randn(23, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    a = quality_metrics(OneClassTeacher(), x, None, real, K, batch_size=5)
    b = quality_metrics(OneClassTeacher(), x, None, real, K, batch_size=256)
    for key in QUALITY_KEYS:
        assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9) if a[key] is not None else b[key] is None


def test_label_count_mismatch_is_an_error():
    with pytest.raises(ValueError, match="requested labels"):
        quality_metrics(OneClassTeacher(), torch.zeros(4, 1, 2, 2), torch.zeros(3, dtype=torch.long),
                        torch.zeros(2, 1, 2, 2), K)


# ---- sample grids ----------------------------------------------------------------------------------------

def _spec(channels: int, num_classes: int = 3, mean: float = 0.5, std: float = 0.25):
    def denormalize(x):
        return (x * std + mean).clamp(0, 1)

    return SimpleNamespace(num_classes=num_classes, image_shape=(channels, 16, 16), denormalize=denormalize)


def test_conditional_grid_has_one_row_per_class(tmp_path):
    labels = torch.tensor([0, 0, 0, 2, 2, 0])                 # class 1 has no samples: a blank row
    images = torch.full((6, 1, 16, 16), -2.0)                 # de-normalises to 0 (black)
    path = save_sample_grid(images, labels, _spec(1), tmp_path / "samples.png", per_class=2)
    img = Image.open(path)
    tile, pad = 32, 2                                         # 16x16 upscaled twice to stay visible
    assert img.mode == "L"
    assert img.size == (pad + 2 * (tile + pad), pad + 3 * (tile + pad))
    px = np.asarray(img)
    assert px[pad, pad] == 0 and px[0, 0] == 255              # a sample, and the white border
    row1 = pad + (tile + pad)
    assert (px[row1:row1 + tile, pad:pad + tile] == 255).all()    # class 1: blank
    assert px[pad + 2 * (tile + pad), pad] == 0                   # class 2: filled
    assert [p.name for p in tmp_path.iterdir()] == ["samples.png"]   # atomic: no temporary file left


def test_plain_grid_and_rgb(tmp_path):
    images = torch.zeros(10, 3, 16, 16)
    path = save_sample_grid(images, None, _spec(3, num_classes=2), tmp_path / "grid.png", per_class=4)
    img = Image.open(path)
    assert img.mode == "RGB"
    assert img.size == (2 + 4 * 34, 2 + 2 * 34)               # 8 = per_class x classes shown, 4 to a row
    assert tuple(np.asarray(img)[2, 2]) == (128, 128, 128)    # the mean colour: x = 0 de-normalises to 0.5


def test_grid_uses_the_dataset_statistics(tmp_path):
    from benchmark.data import get_dataset

    spec = get_dataset("digits")
    black = torch.full((1, 1, 16, 16), (0.0 - spec.mean[0]) / spec.std[0])    # pixel value 0 once de-normalised
    grey = torch.full((1, 1, 16, 16), (0.5 - spec.mean[0]) / spec.std[0])
    path = save_sample_grid(torch.cat([black, grey]), torch.tensor([4, 7]), spec, tmp_path / "s.png")
    px = np.asarray(Image.open(path))
    assert px.shape == (2 + spec.num_classes * 34, 2 + 8 * 34)
    assert px[2 + 4 * 34 + 5, 2 + 5] == 0 and px[2 + 7 * 34 + 5, 2 + 5] == 128   # rows 4 and 7
    assert px[2 + 5, 2 + 5] == 255                                               # row 0: blank
