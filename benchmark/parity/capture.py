"""Capturing loss terms: from the released functions' locals at optimizer.step(), or from our methods' returns."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .problem import ParityError


def _scalar(v: Any) -> float:
    if isinstance(v, torch.Tensor):
        return float(v.detach().reshape(-1)[0]) if v.numel() else 0.0
    return float(v)


_TORCH_DIR = str(Path(torch.__file__).resolve().parent)


def caller_locals() -> dict[str, Any]:
    """The local variables of the nearest calling frame outside torch and this module (skipping torch's
    optimizer wrappers) above the function that calls this one: the released function that called
    ``optimizer.step()``."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith(_TORCH_DIR)
                                 or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    if frame is None:
        raise ParityError("no calling frame outside torch")
    return frame.f_locals


@contextlib.contextmanager
def locals_at_step(optimizer: torch.optim.Optimizer, names: dict[str, Callable[[dict], float] | str],
                   sink: list[dict[str, float]]) -> Iterator[None]:
    """While active, each ``optimizer.step()`` appends to ``sink`` the loss terms read from the local
    variables of the function that called it (the reference code computes its terms as locals and returns
    none of them). ``names`` maps our term name to a local's name or to a function of the locals dict."""
    original = optimizer.step

    def step(*args, **kwargs):
        frame_locals = caller_locals()
        row = {}
        for ours, how in names.items():
            value = how(frame_locals) if callable(how) else frame_locals[how]
            if value is not None:
                row[ours] = _scalar(value)
        sink.append(row)
        return original(*args, **kwargs)

    optimizer.step = step                                      # type: ignore[method-assign]
    try:
        yield
    finally:
        del optimizer.step


@contextlib.contextmanager
def locals_at_each_step(cls: type, hook: Callable[[Any, dict[str, Any]], None]) -> Iterator[None]:
    """While active, every ``cls.step()`` of any instance (the released synthesizers create their optimizers
    inside ``synthesize()``, out of reach) first calls ``hook(optimizer, locals)`` with the local variables
    of the function that called it."""
    original = cls.step

    def step(self, *args, **kwargs):
        hook(self, caller_locals())
        return original(self, *args, **kwargs)

    cls.step = step
    try:
        yield
    finally:
        cls.step = original


@contextlib.contextmanager
def returns_of(obj: Any, attr: str, sink: list[dict[str, float]],
               keep: Callable[[str], bool] = lambda k: True) -> Iterator[None]:
    """While active, every call of ``obj.attr()`` appends the float values of the dict it returns to ``sink``
    (our methods return their weighted loss terms by name from each step)."""
    original = getattr(obj, attr)

    def call(*args, **kwargs):
        out = original(*args, **kwargs)
        sink.append({k: _scalar(v) for k, v in out.items() if keep(k)})
        return out

    setattr(obj, attr, call)
    try:
        yield
    finally:
        delattr(obj, attr)


def pool_iteration_terms(ours: Any, i: int,
                         terms_of: Callable[[Any], dict[str, Any]] = lambda out: out) -> list[dict[str, float]]:
    """Run our method's ``train_iteration(i)`` and return its terms in execution order: a row per synthesis
    step (``g_<term>`` for each weighted term that ``ours.losses`` returns, read by ``terms_of`` from its
    return value, and their sum ``g_total``), then a row ``s_kd`` per student step (``ours.student_step``'s
    loss): the shape of the pool-based methods (deepinv, cmi, fast)."""
    g_rows: list[dict[str, float]] = []
    s_rows: list[dict[str, float]] = []
    original_losses, original_student_step = ours.losses, ours.student_step

    def losses(*args, **kwargs):
        out = original_losses(*args, **kwargs)
        row = {f"g_{k}": _scalar(v) for k, v in terms_of(out).items()}
        g_rows.append(row | {"g_total": sum(row.values())})
        return out

    def student_step():
        loss = original_student_step()
        s_rows.append({"s_kd": _scalar(loss)})
        return loss

    ours.losses, ours.student_step = losses, student_step
    try:
        ours.train_iteration(i)
    finally:
        del ours.losses, ours.student_step
    return g_rows + s_rows
