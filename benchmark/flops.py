"""Count the floating-point operations a piece of code runs, with torch's own FLOP formulas
(``torch.utils.flop_counter.flop_registry``: convolutions and their backward passes, matmuls, attention).

Element-wise operations, BatchNorm, pooling and optimiser updates are not counted: on the models here they are a
few per cent of the arithmetic (and a larger share of the time; see docs/performance.md).

``torch.utils.flop_counter.FlopCounterMode`` is not used because its module tracker fails on
``torch.autograd.grad`` with respect to a leaf input (PRE-DFKD's replay step does that).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import flop_registry


def _shape(x: Any) -> Any:
    return x.shape if isinstance(x, torch.Tensor) else x


class FlopCount(TorchDispatchMode):
    """``with FlopCount() as c: ...`` adds the FLOPs of every counted operator run inside to ``c.flops``."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += int(formula(*tree_map(_shape, args), **tree_map(_shape, kwargs), out_val=tree_map(_shape, out)))
        return out


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn()`` (a multiply-add counts as two)."""
    with FlopCount() as counter:
        fn()
    return counter.flops
