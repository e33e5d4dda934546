"""Weights across the two sides (copy, group) and the comparison of values, tensors and state dicts."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from .problem import ParityError

TOLERANCE = 1e-4      # the target: relative difference on every loss term and parameter group
ABS_FLOOR = 1e-9      # below this absolute difference a value counts as equal (terms that are exactly 0)


class StateView:
    """Comparable state that is not a module (a queue, a bank, a pool, a generator the reference replaces):
    ``state_dict()`` calls ``fn`` when the comparison runs and returns ``{name: fn()}``, or ``fn()`` itself when
    no name is given."""

    def __init__(self, fn: Callable[[], object], name: str | None = None):
        self.fn, self.name = fn, name

    def state_dict(self) -> dict:
        value = self.fn()
        return value if self.name is None else {self.name: value}


def copy_state(source: nn.Module, target: nn.Module, rename: Callable[[str], str] = lambda k: k) -> None:
    """Load ``source``'s state dict into ``target`` (names mapped by ``rename``), requiring the same keys and
    shapes on both sides; values keep ``target``'s dtype."""
    src = {rename(k): v for k, v in source.state_dict().items()}
    dst = target.state_dict()
    missing, extra = sorted(set(dst) - set(src)), sorted(set(src) - set(dst))
    if missing or extra:
        raise ParityError(f"{type(source).__name__} -> {type(target).__name__}: keys differ "
                          f"(missing {missing[:5]}, unexpected {extra[:5]})")
    for k, v in src.items():
        if tuple(v.shape) != tuple(dst[k].shape):
            raise ParityError(f"{k}: shape {tuple(v.shape)} vs {tuple(dst[k].shape)}")
    target.load_state_dict(src)


def group_of(name: str) -> str:
    """Parameter group of a state-dict key: its top-level module, with BatchNorm running statistics apart."""
    head = name.split(".")[0]
    tail = name.rsplit(".", 1)[-1]
    return f"{head} (running stats)" if tail in ("running_mean", "running_var") else head


# ---------------------------------------------------------------------------------------------------------
# comparison
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Diff:
    abs: float
    rel: float

    @property
    def ok(self) -> bool:
        return self.abs <= ABS_FLOOR or self.rel <= TOLERANCE


def value_diff(ours: float, ref: float) -> Diff:
    """abs = |ours - ref|; rel = abs / max(|ours|, |ref|) (0 when both are 0)."""
    a = abs(ours - ref)
    scale = max(abs(ours), abs(ref))
    if math.isnan(ours) or math.isnan(ref):
        return Diff(math.inf, math.inf)
    return Diff(a, a / scale if scale else 0.0)


def tensor_diff(ours: torch.Tensor, ref: torch.Tensor) -> Diff:
    """abs = max |ours - ref|; rel = abs / max |ref| (the group's largest magnitude)."""
    o, r = ours.detach().double(), ref.detach().double()
    a = float((o - r).abs().max()) if o.numel() else 0.0
    scale = float(torch.maximum(o.abs().max(), r.abs().max())) if o.numel() else 0.0
    return Diff(a, a / scale if scale else 0.0)


def compare_states(ours: nn.Module, ref: nn.Module, prefix: str,
                   rename: Callable[[str], str] = lambda k: k) -> dict[str, Diff]:
    """Per group (see :func:`group_of`), the largest difference over its floating-point tensors."""
    o_state = {rename(k): v for k, v in ours.state_dict().items()}
    r_state = ref.state_dict()
    groups: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for k, v in o_state.items():
        if not v.is_floating_point():
            continue
        if k not in r_state:
            raise ParityError(f"{prefix}: {k} has no counterpart in the reference")
        groups.setdefault(f"{prefix}.{group_of(k)}", []).append((v, r_state[k]))
    out = {}
    for g, pairs in groups.items():
        o = torch.cat([a.reshape(-1).double() for a, _ in pairs])
        r = torch.cat([b.reshape(-1).double() for _, b in pairs])
        out[g] = tensor_diff(o, r)
    return out
