"""The rounding floor of a comparison: how far this project's side drifts from *itself* when its initial
weights are perturbed by a relative ``EPS`` (a few ulps in float64), with the same random draws.

Adversarial synthesis on a random teacher is sensitive to its initial conditions: rounding differences of
1e-16 can grow by a factor 10-30 per optimiser step (measured: cpsc-dfkd and fast-5 against themselves reach
relative differences of 1e-2 to 1e-1 by the fifth iteration). Two correct implementations that only order
their floating-point operations differently then drift apart just as much, so a parity difference is judged
against this floor: a term or group whose difference from the reference stays within ``MARGIN`` times the
floor (or within the tolerance) is equal up to rounding.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

from .core import Problem, Sides, Tape, compare_states, value_diff

EPS = 1e-15       # relative perturbation of our initial weights (float64; see eps_for for float32)
MARGIN = 10.0     # a parity difference within MARGIN x the floor counts as rounding


def eps_for(dtype: torch.dtype) -> float:
    """The relative perturbation for a comparison in ``dtype``: ``EPS``, or 4 ulps of ``dtype`` where ``EPS``
    is below its resolution (float32: 1e-15 would leave the weights unchanged and the floor at 0)."""
    return max(EPS, 4 * torch.finfo(dtype).eps)


def _perturb(module: nn.Module, eps: float) -> None:
    with torch.no_grad():
        for p in module.parameters():
            if p.is_floating_point():
                p.mul_(1 + eps)


class _Renamed:
    def __init__(self, module, rename):
        self.module, self.rename = module, rename

    def state_dict(self):
        return {self.rename(k): v for k, v in self.module.state_dict().items()}


def measure(adapter: Any, problem: Problem, path, build_seed: int = 0) -> dict[str, Any]:
    """Run our side twice, the second copy with its compared modules' weights times (1 + eps_for(dtype)), the draws of
    the first replayed to the second; per term the largest relative difference over the steps, per group the
    relative difference after K iterations. Call inside the reference-code context of ``core.run``."""
    twin = copy.deepcopy(problem)
    torch.manual_seed(build_seed)
    a: Sides = adapter.build(problem, path)
    torch.manual_seed(build_seed)
    b: Sides = adapter.build(twin, path)
    eps = eps_for(problem.dtype)
    for name, spec in b.modules.items():
        if isinstance(spec[0], nn.Module):
            _perturb(spec[0], eps)
    if b.perturb is not None:
        b.perturb(eps)
    tape = Tape()
    terms: dict[str, float] = {}
    try:
        for i in range(problem.steps):
            with tape.recording():
                rows_a = a.ours_iteration(i)
            with tape.replaying():
                rows_b = b.ours_iteration(i)
            for ra, rb in zip(rows_a, rows_b):
                for k in ra.keys() & rb.keys():
                    terms[k] = max(terms.get(k, 0.0), value_diff(ra[k], rb[k]).rel)
        params: dict[str, float] = {}
        for name, spec in a.modules.items():
            rename = spec[2] if len(spec) > 2 else (lambda k: k)
            twin_state = _Renamed(b.modules[name][0], rename)        # group names as in the parity table
            params.update({g: d.rel for g, d in compare_states(spec[0], twin_state, name, rename).items()})
    finally:
        for s in (a, b):
            if s.cleanup is not None:
                s.cleanup()
    return {"eps": eps, "margin": MARGIN, "terms": terms, "params": params}


def within(rel: float, floor: float | None) -> bool:
    """A parity difference ``rel`` is rounding when within the tolerance or within MARGIN x its floor."""
    from .core import TOLERANCE

    return rel <= TOLERANCE or (floor is not None and rel <= MARGIN * floor)
