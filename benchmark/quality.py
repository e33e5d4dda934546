"""Synthetic-data quality: what the teacher makes of a method's samples, and a sample-grid PNG.

The runner calls :func:`quality_metrics` once at the end of a cell (on ``method.sample(n)``) and stores the
dict in the record's ``quality``; :func:`save_sample_grid` writes ``<cell_dir>/samples.png``. The metrics are
the properties the CPSC-DFKD paper argues about (category-specific, diverse samples), measured the same way
for every method:

``class_balance_entropy``
    Entropy (nats) of the histogram of the teacher's argmax classes over the samples; 0 when every sample
    falls in one class, ``log(num_classes)`` when the classes are perfectly balanced.
``class_balance_normalized``
    The same divided by ``log(num_classes)`` (0..1).
``teacher_confidence``
    Mean over samples of the teacher's largest softmax probability.
``label_agreement``
    Conditional generators only: fraction of samples whose teacher argmax is the requested class
    (``None`` when the method does not request labels).
``intra_class_diversity``
    Mean pairwise L2 distance between L2-normalised teacher features of samples the teacher puts in the
    same class, averaged over the classes that hold at least two samples (0..2; ``None`` when no class does).
``feature_fid``
    Fréchet distance between Gaussian fits of the teacher's penultimate features of the synthetic samples
    and of the real test images (the FID formula with the teacher in place of Inception).

The samples are the ones a student trains on: ``method.sample`` draws them as the student's batches are
drawn (for a generator, its BatchNorm in the training loop's mode: CPSC-DFKD in train mode on batch
statistics, the DataFree baselines in their ``sample_mode``), without changing the method's state.

The Fréchet distance needs ``tr(sqrt(C1 C2))``. Rather than ``scipy.linalg.sqrtm`` of a product that is
singular whenever there are fewer samples than feature dimensions (and that sqrtm returns with complex
noise), it uses ``tr(sqrt(C1 C2)) = tr(sqrt(S C2 S))`` with ``S = C1^(1/2)``: ``S C2 S`` is symmetric
positive semi-definite, so two symmetric eigen-decompositions with eigenvalues clipped at zero give the
trace exactly and stably for any rank.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["quality_metrics", "frechet_distance", "save_sample_grid", "QUALITY_KEYS"]

QUALITY_KEYS = (
    "class_balance_entropy",
    "class_balance_normalized",
    "teacher_confidence",
    "label_agreement",
    "intra_class_diversity",
    "feature_fid",
)


def _module_device(module: nn.Module, fallback: torch.device) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return fallback


def _teacher_outputs(teacher: nn.Module, images: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and flattened penultimate features, in float32 on the CPU, computed in batches."""
    device = _module_device(teacher, images.device)
    logits, feats = [], []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(device, non_blocking=True)
        out, feat = teacher(x, return_features=True)
        logits.append(out.float().cpu())
        feats.append(torch.flatten(feat, 1).float().cpu())
    if not logits:
        raise ValueError("quality metrics need at least one image")
    return torch.cat(logits), torch.cat(feats)


def _entropy(counts: torch.Tensor) -> float:
    p = counts.double() / counts.sum()
    p = p[p > 0]
    return float(-(p * p.log()).sum()) + 0.0   # + 0.0 turns -0.0 into 0.0


def _intra_class_diversity(features: torch.Tensor, preds: torch.Tensor) -> float | None:
    z = F.normalize(features.double(), dim=1)
    per_class = []
    for c in torch.unique(preds).tolist():
        zc = z[preds == c]
        m = zc.shape[0]
        if m < 2:
            continue
        total = sum(float(torch.cdist(zc[i:i + 1024], zc).sum()) for i in range(0, m, 1024))   # bounded memory
        per_class.append(total / (m * (m - 1)))   # the diagonal is zero: mean over distinct pairs
    return float(np.mean(per_class)) if per_class else None


def _gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = features.mean(axis=0)
    if features.shape[0] < 2:
        return mu, np.zeros((features.shape[1], features.shape[1]))
    return mu, np.cov(features, rowvar=False, ddof=1).reshape(features.shape[1], features.shape[1])


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    c = (c + c.T) / 2
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, c1: np.ndarray, mu2: np.ndarray, c2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + tr(C1) + tr(C2) - 2 tr((C1 C2)^(1/2))`` for PSD covariances of any rank."""
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    c1, c2 = np.asarray(c1, dtype=np.float64), np.asarray(c2, dtype=np.float64)
    s1 = _psd_sqrt(c1)
    m = s1 @ c2 @ s1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    fd = float(diff @ diff + np.trace(c1) + np.trace(c2) - 2.0 * tr_sqrt)
    return max(fd, 0.0)


def quality_metrics(
    teacher: nn.Module,
    images: torch.Tensor,
    requested_labels: torch.Tensor | None,
    real_images: torch.Tensor,
    num_classes: int,
    batch_size: int = 256,
) -> dict[str, float | None]:
    """Quality of synthetic ``images`` as seen by ``teacher`` (keys: :data:`QUALITY_KEYS`).

    ``images`` and ``real_images`` are normalised like the dataset; ``requested_labels`` are the classes a
    conditional generator was asked for (``None`` for unconditional methods, and then ``label_agreement`` is
    ``None``). The teacher is put in eval mode for the duration and restored afterwards.
    """
    if images.ndim != 4 or real_images.ndim != 4:
        raise ValueError("images and real_images must be [N, C, H, W] tensors")
    if requested_labels is not None and requested_labels.shape[0] != images.shape[0]:
        raise ValueError(f"{requested_labels.shape[0]} requested labels for {images.shape[0]} images")
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.inference_mode():
            logits, feats = _teacher_outputs(teacher, images, batch_size)
            _, real_feats = _teacher_outputs(teacher, real_images, batch_size)
    finally:
        teacher.train(was_training)

    probs = logits.double().softmax(dim=1)
    preds = probs.argmax(dim=1)
    counts = torch.bincount(preds, minlength=num_classes)
    entropy = _entropy(counts)
    out: dict[str, float | None] = {
        "class_balance_entropy": entropy,
        "class_balance_normalized": entropy / math.log(num_classes) if num_classes > 1 else 0.0,
        "teacher_confidence": float(probs.max(dim=1).values.mean()),
        "label_agreement": None,
        "intra_class_diversity": _intra_class_diversity(feats, preds),
    }
    if requested_labels is not None:
        out["label_agreement"] = float((preds == requested_labels.detach().cpu().long()).double().mean())
    mu1, c1 = _gaussian_fit(feats.double().numpy())
    mu2, c2 = _gaussian_fit(real_feats.double().numpy())
    out["feature_fid"] = frechet_distance(mu1, c1, mu2, c2)
    return out


# ---- sample grids -----------------------------------------------------------------------------------

def _tile_scale(height: int, width: int, target: int = 32) -> int:
    """Integer nearest-neighbour upscaling so that tiny images (8x8, 16x16) stay visible."""
    return max(1, -(-target // max(1, min(height, width))))


def _grid_array(tiles: list[list[np.ndarray | None]], h: int, w: int, channels: int, pad: int,
                cols: int | None = None) -> np.ndarray:
    rows = len(tiles)
    cols = max((len(r) for r in tiles), default=0) if cols is None else cols
    canvas = np.ones((pad + rows * (h + pad), pad + max(cols, 1) * (w + pad), channels), dtype=np.float32)
    for i, row in enumerate(tiles):
        for j, tile in enumerate(row):
            if tile is None:
                continue
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y:y + h, x:x + w] = tile
    return canvas


def save_sample_grid(images: torch.Tensor, labels: torch.Tensor | None, dataset_spec: Any, path: str | Path,
                     per_class: int = 8) -> Path:
    """Write a PNG of de-normalised samples to ``path`` (atomically) and return the path.

    With ``labels`` (conditional generators): one row per class ``0 .. num_classes - 1`` holding up to
    ``per_class`` samples requested for that class (a row stays blank when a class has none). Without: a
    plain grid of up to ``per_class * num_classes`` samples, ``per_class`` to a row.
    """
    from PIL import Image

    from .records import atomic_write_bytes

    if images.ndim != 4:
        raise ValueError("images must be an [N, C, H, W] tensor")
    x = dataset_spec.denormalize(images.detach().float().cpu())
    n, c, h, w = x.shape
    if c not in (1, 3):
        x = x[:, :1] if c < 3 else x[:, :3]
        c = x.shape[1]
    scale = _tile_scale(h, w)
    if scale > 1:
        x = F.interpolate(x, scale_factor=scale, mode="nearest")
    arr = x.permute(0, 2, 3, 1).numpy()                          # N, H, W, C in [0, 1]
    th, tw = arr.shape[1], arr.shape[2]
    num_classes = int(getattr(dataset_spec, "num_classes", 0) or 0)

    if labels is not None:
        labels = labels.detach().cpu().long()
        k = max(num_classes, int(labels.max()) + 1 if n else 0)
        tiles = []
        for cls in range(k):
            idx = (labels == cls).nonzero().flatten()[:per_class].tolist()
            tiles.append([arr[i] for i in idx])
    else:
        limit = min(n, per_class * max(num_classes, 1))
        tiles = [[arr[i] for i in range(s, min(s + per_class, limit))] for s in range(0, limit, per_class)]
    canvas = _grid_array(tiles or [[]], th, tw, c, pad=2, cols=per_class if labels is not None else None)
    pixels = (canvas * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels[..., 0] if c == 1 else pixels)   # uint8 HxW -> "L", HxWx3 -> "RGB"
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
