"""Curriculum pieces shared by the easy-to-hard DFKD methods of Li et al. (CuDFKD, AdaDFKD).

Both papers come from one code base (github.com/ljrprocc/DataFree, then github.com/ljrprocc/DFKD, forks of
the zju-vipa DataFree library): the student's distillation loss is weighted by a self-paced-learning
weight ``v`` whose threshold ``lambda`` grows with the student steps (easy samples first, harder ones as
``lambda`` grows), and the generator's adversarial weight is raised epoch by epoch inside a window of the
run. Read from that code (``datafree/datasets/utils.py``: ``curr_v``, ``lambda_scheduler``; the epoch loop of
``datafree_kd.py``), none of it copied.
"""
from __future__ import annotations

import math

import torch

from benchmark.config import ConfigError

CURRICULA = ("none", "hard", "soft", "log")


def check_curriculum(kind: str) -> None:
    if kind not in CURRICULA:
        raise ConfigError(f"curriculum must be one of {', '.join(CURRICULA)}, got {kind!r}")


def pace(lambda_0: float, growth: float, step: int) -> float:
    """The self-paced threshold after ``step`` student steps: ``lambda_0 + growth * step`` (the released
    ``lambda_scheduler``; its cap at 5e8 steps never binds)."""
    return lambda_0 + growth * step


@torch.no_grad()
def self_paced_weight(loss: torch.Tensor, lam: float, kind: str) -> torch.Tensor:
    """Weight of a loss value (or of each element of a loss tensor) under threshold ``lam``:

    - ``hard``: 1 where loss < lam, else 0;
    - ``soft``: (1 - loss / lam) where loss < lam, else 0 (linear);
    - ``log``:  (1 + e^-lam) / (1 + e^(loss - lam)) (logistic; 1 at loss 0, 1/2-ish at loss = lam);
    - ``none``: 1.

    No gradient flows through the weight (the released code computes it under ``no_grad``).
    """
    loss = loss.detach().float()
    if kind == "none":
        return torch.ones_like(loss)
    if kind == "hard":
        return (loss < lam).float()
    if kind == "soft":
        return (loss < lam).float() * (1 - loss / lam)
    if kind == "log":
        return (1 + math.exp(-lam)) / (1 + torch.exp(loss - lam))
    raise ConfigError(f"unknown curriculum {kind!r}")


def stepped_weight(iteration: int, start: float, step: float, begin: float, end: float,
                   epoch_iterations: int, total_iterations: int) -> float:
    """The adversarial weight at ``iteration``: ``start``, plus ``step`` for every finished epoch ``e`` with
    ``int(E * begin) < e < int(E * end)`` (E = the run's epochs of ``epoch_iterations`` iterations), as the
    released epoch loop raises ``synthesizer.adv`` after each epoch. A function of the iteration, so a
    resumed run continues on the same schedule."""
    epochs = max(1, total_iterations // epoch_iterations)
    first, last = int(epochs * begin) + 1, int(epochs * end) - 1     # epochs that raise the weight
    finished = iteration // epoch_iterations                          # epochs 0 .. finished-1 are over
    raised = max(0, min(finished - 1, last) - first + 1)
    return start + step * raised
