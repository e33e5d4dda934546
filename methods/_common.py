"""Pieces shared by several methods: schedules, sampling helpers, temporarily frozen modules, the DCGAN
initialisation and the alternating generator / student step loop."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn as nn

from benchmark.registry import METHODS
from benchmark.training import cosine_schedule as warmup_cosine  # noqa: F401  (the one cosine schedule)


def register_method(name: str):
    """Class decorator: register a ``DFKDMethod`` subclass under ``name`` and set its ``name``."""

    def add(cls):
        cls.name = name
        return METHODS.add(name, cls)

    return add


@contextlib.contextmanager
def no_param_grad(module: nn.Module):
    """Gradients still flow *through* ``module`` to its input, but none are computed for its parameters."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@contextlib.contextmanager
def eval_mode(*modules: nn.Module):
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


@contextlib.contextmanager
def batch_statistics(module: nn.Module):
    """Run ``module`` in train mode (BatchNorm normalises with the batch's statistics, as on training steps)
    without changing it: every buffer (BN running mean/var, ``num_batches_tracked``) and every submodule's
    ``training`` flag are restored on exit. For drawing samples the way a student sees them during training."""
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    modes = [(m, m.training) for m in module.modules()]
    module.train()
    try:
        yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for m, mode in modes:
            m.training = mode


def balanced_labels(n: int, num_classes: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, device=device) % num_classes


@torch.no_grad()
def dcgan_init(module: nn.Module) -> None:
    """The DataFree library's ``reset_model`` (DCGAN init): conv / linear weights N(0, 0.02), biases 0, BN
    weights N(1, 0.02), biases 0; running statistics are left alone. CMI's per-round re-initialisation, and
    CuDFKD's and AdaDFKD's generator init."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def alternate_steps(*phases: tuple[int, Callable[[], dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """Run each phase's step (e.g. the generator's, then the student's) its count of times, phase after phase,
    and return each logged term averaged over the steps of its phase."""
    logs: dict[str, torch.Tensor] = {}
    for steps, step in phases:
        for _ in range(steps):
            for k, v in step().items():
                logs[k] = logs[k] + v / steps if k in logs else v / steps
    return logs
