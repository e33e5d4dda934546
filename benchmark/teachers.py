"""Teachers: train from scratch with the dataset's documented recipe, cache, or load an external checkpoint.

Cached checkpoints are keyed by dataset, architecture, seed and a hash of the recipe, so changing the
recipe never reuses a stale teacher. A file lock makes concurrent jobs (SLURM array tasks) wait for one
training instead of training the same teacher twice or reading a half-written file; writes are atomic.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import DatasetSpec
from .env import seed_everything
from .models import create_model
from .records import atomic_torch_save
from .training import augment_batch, batches, cosine_lr, evaluate


def recipe_hash(spec: DatasetSpec) -> str:
    """The training recipe and the inputs it sees (a teacher with global pooling loads at any input size)."""
    blob = json.dumps({**dataclasses.asdict(spec.teacher_recipe), "data": spec.fingerprint()}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:8]


def cache_path(cache_dir: Path, spec: DatasetSpec, arch: str, seed: int) -> Path:
    return Path(cache_dir) / f"{spec.name}-{arch}-s{seed}-{recipe_hash(spec)}.pt"


@contextlib.contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def train_teacher(spec: DatasetSpec, arch: str, seed: int, device: torch.device, data_root: str | None = None,
                  download: bool = False, progress: bool = True) -> tuple[nn.Module, float]:
    """Train ``arch`` on ``spec``'s training split: SGD + momentum, cosine decay to 0, cross-entropy."""
    recipe = spec.teacher_recipe
    train_set = spec.load("train", data_root, download)
    test_set = spec.load("test", data_root, download)
    seed_everything(seed)
    model = create_model(arch, spec.num_classes, spec.image_shape).to(device)
    channels_last = device.type == "cpu"      # speed only (oneDNN; see RunConfig.channels_last)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    steps_per_epoch = -(-len(train_set) // recipe.batch_size)
    sched = cosine_lr(opt, recipe.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(range(recipe.epochs), desc=f"teacher {spec.name}/{arch}", disable=not progress, leave=False)
    acc = 0.0
    for epoch in bar:
        model.train()
        for x, y in batches(train_set, recipe.batch_size, shuffle=True, generator=gen):
            x = augment_batch(x.to(device), recipe.augment, gen)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if epoch == recipe.epochs - 1 or epoch % 5 == 4:
            acc = evaluate(model, test_set, device, channels_last=channels_last)
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.1f}")
    bar.close()
    return model.to(memory_format=torch.contiguous_format), acc


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode, no parameter gradients (and none left over from training)."""
    model.zero_grad(set_to_none=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def get_teacher(spec: DatasetSpec, arch: str, seed: int, device: torch.device, cache_dir: Path,
                data_root: str | None = None, download: bool = False, teacher_ckpt: str | None = None,
                progress: bool = True) -> tuple[nn.Module, dict]:
    """A frozen teacher and facts about it (source, checkpoint path, test accuracy, seconds spent)."""
    start = time.perf_counter()
    if teacher_ckpt:
        from .checkpoints import load_teacher_checkpoint

        model = create_model(arch, spec.num_classes, spec.image_shape)
        load_teacher_checkpoint(model, teacher_ckpt)
        model.to(device)
        acc = evaluate(model, spec.load("test", data_root, download), device)
        info = {"source": "external", "checkpoint": str(teacher_ckpt), "test_acc": acc}
    else:
        path = cache_path(cache_dir, spec, arch, seed)
        with file_lock(path.with_suffix(".lock")):
            if path.exists():
                blob = torch.load(path, map_location="cpu", weights_only=True)
                model = create_model(arch, spec.num_classes, spec.image_shape)
                model.load_state_dict(blob["state_dict"])
                model.to(device)
                acc = float(blob["test_acc"])
                info = {"source": "cache", "checkpoint": str(path), "test_acc": acc}
            else:
                model, acc = train_teacher(spec, arch, seed, device, data_root, download, progress)
                atomic_torch_save(path, {
                    "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                    "test_acc": acc, "dataset": spec.name, "arch": arch, "seed": seed,
                    "recipe": dataclasses.asdict(spec.teacher_recipe),
                })
                info = {"source": "trained", "checkpoint": str(path), "test_acc": acc}
    info["recipe"] = dataclasses.asdict(spec.teacher_recipe)
    info["time_s"] = time.perf_counter() - start
    return freeze(model), info
