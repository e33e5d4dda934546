"""Small training utilities shared by teacher training, the reference rows and evaluation."""
from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F


def batches(dataset, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
            num_workers: int = 2) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of ``(images, labels)``. In-memory ``TensorDataset``s are sliced directly; other datasets go
    through a DataLoader. Never draws from the global RNG (an explicit generator shuffles), so evaluating
    does not change what a seeded run does next."""
    if isinstance(dataset, torch.utils.data.TensorDataset):
        x, y = dataset.tensors
        order = torch.randperm(len(y), generator=generator) if shuffle else None
        for i in range(0, len(y), batch_size):
            idx = order[i:i + batch_size] if order is not None else slice(i, i + batch_size)
            yield x[idx], y[idx]
        return
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
        generator=generator if generator is not None else torch.Generator().manual_seed(0),
        persistent_workers=False, pin_memory=torch.cuda.is_available(),
    )
    yield from loader


@torch.inference_mode()
def evaluate(model: nn.Module, dataset, device: torch.device, batch_size: int = 512,
             channels_last: bool = False) -> float:
    """Top-1 accuracy in percent on ``dataset``; the model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in batches(dataset, batch_size):
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        pred = model(x).argmax(1).cpu()
        correct += (pred == y).sum().item()
        total += y.numel()
    model.train(was_training)
    return 100.0 * correct / max(total, 1)


def crop_padding(image_shape: tuple[int, ...]) -> int:
    """Padding of the random-crop augmentation: 4 px (the released CIFAR transforms), 2 px below 32 px."""
    return 4 if min(image_shape[-2:]) >= 32 else 2


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator | None = None,
                     rng_device: torch.device | str | None = None) -> torch.Tensor:
    """Per-sample random crop from a zero-padded image (torchvision ``RandomCrop(size, padding)`` / kornia
    ``RandomCrop``) and, if ``flip``, a per-sample horizontal flip with probability 1/2; batched and
    differentiable (the one crop-and-flip of the project: teachers, reference rows and the methods).

    The offsets and flips are drawn from ``generator`` (on its device), else from the default generator of
    ``rng_device`` (default: ``x``'s device)."""
    b, c, h, w = x.shape
    dev = generator.device if generator is not None else torch.device(rng_device or x.device)
    out = x
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))
        wp = w + 2 * pad
        dy = torch.randint(0, 2 * pad + 1, (b, 1, 1), generator=generator, device=dev).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (b, 1, 1), generator=generator, device=dev).to(x.device)
        rows = torch.arange(h, device=x.device).view(1, h, 1) + dy
        cols = torch.arange(w, device=x.device).view(1, 1, w) + dx
        index = (rows * wp + cols).view(b, 1, h * w).expand(b, c, h * w)
        out = padded.flatten(2).gather(2, index).view(b, c, h, w)
    if flip:
        mask = (torch.rand(b, 1, 1, 1, generator=generator, device=dev) < 0.5).to(x.device)
        out = torch.where(mask, out.flip(3), out)
    return out


def augment_batch(x: torch.Tensor, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """The datasets' training augmentation by name (``none``, ``crop``, ``crop+flip``): ``random_crop_flip``
    with the dataset's padding; without a generator the draws come from the CPU's default generator."""
    if mode == "none":
        return x
    return random_crop_flip(x, crop_padding(x.shape), "flip" in mode, generator, rng_device="cpu").contiguous()


def cosine_schedule(optimizer: torch.optim.Optimizer, total: int, warmup: int = 0, eta_min_ratio: float = 0.0):
    """The one cosine schedule: linear warm-up over ``warmup`` steps, then cosine decay to ``eta_min_ratio`` x
    the base LR at step ``total`` (``CosineAnnealingLR(T_max=total, eta_min)`` in closed form, then flat)."""
    total = max(total, 1)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(total - warmup, 1))
        return eta_min_ratio + (1 - eta_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def cosine_lr(optimizer: torch.optim.Optimizer, total_steps: int, eta_min: float = 0.0):
    """Cosine decay to the absolute learning rate ``eta_min`` over ``total_steps`` (``cosine_schedule``)."""
    base = optimizer.param_groups[0]["lr"]
    return cosine_schedule(optimizer, total_steps, 0, eta_min / base if base else 0.0)
