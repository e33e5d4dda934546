"""Small training utilities shared by teacher training, the reference rows and evaluation."""
from __future__ import annotations

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


def augment_batch(x: torch.Tensor, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random translation (zero-padded crop, pad 4 px, 2 px below 32 px) and optional horizontal flip,
    done on a whole batch at once."""
    if mode == "none":
        return x
    b, c, h, w = x.shape
    pad = 4 if min(h, w) >= 32 else 2
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (torch.arange(h)[None, :] + dy[:, None]).to(x.device)      # [b, h]
    cols = (torch.arange(w)[None, :] + dx[:, None]).to(x.device)      # [b, w]
    bidx = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if "flip" in mode:
        flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out.contiguous()


def cosine_lr(optimizer: torch.optim.Optimizer, total_steps: int, eta_min: float = 0.0):
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1), eta_min=eta_min)
