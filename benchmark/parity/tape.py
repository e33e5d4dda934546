"""Random draws: recorded on our side, replayed to the reference side."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from .problem import ParityError

DRAW_FUNCTIONS = ("randn", "rand", "randint", "randperm", "randn_like", "rand_like", "randint_like", "bernoulli")


class Tape:
    """Records every draw of ``torch.randn / rand / randint / randperm`` (and ``*_like``) made while
    :meth:`recording` is active, and hands the same values back, in the same order per function, while
    :meth:`replaying`. A replayed draw still calls the original function (to learn the shape, dtype and device
    the caller asked for) and fails with :class:`ParityError` when that shape differs from the recorded one:
    the two sides then do not draw the same things in the same order, and an adapter has to inject the draws
    itself."""

    def __init__(self):
        self.draws: dict[str, list[torch.Tensor]] = {}
        self.replayed: dict[str, int] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self.draws.values())

    @contextlib.contextmanager
    def _patched(self, wrap: Callable[[str, Callable], Callable]) -> Iterator["Tape"]:
        originals = {name: getattr(torch, name) for name in DRAW_FUNCTIONS}
        for name, fn in originals.items():
            setattr(torch, name, wrap(name, fn))
        try:
            yield self
        finally:
            for name, fn in originals.items():
                setattr(torch, name, fn)

    def recording(self):
        def wrap(name, fn):
            def draw(*args, **kwargs):
                out = fn(*args, **kwargs)
                self.draws.setdefault(name, []).append(out.detach().clone())
                return out
            return draw
        return self._patched(wrap)

    def replaying(self):
        def wrap(name, fn):
            def draw(*args, **kwargs):
                fresh = fn(*args, **kwargs)
                queue, i = self.draws.get(name, []), self.replayed.get(name, 0)
                if i >= len(queue):
                    raise ParityError(f"the reference drew torch.{name}{tuple(fresh.shape)} #{i + 1}, "
                                      f"but ours drew only {len(queue)}")
                if queue[i].shape != fresh.shape:
                    raise ParityError(f"draw torch.{name} #{i + 1}: the reference asked for shape "
                                      f"{tuple(fresh.shape)}, ours drew {tuple(queue[i].shape)}")
                self.replayed[name] = i + 1
                return queue[i].to(dtype=fresh.dtype, device=fresh.device).requires_grad_(fresh.requires_grad)
            return draw
        return self._patched(wrap)

    def take(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The next recorded draw of ``torch.<name>`` (for adapters that hand our draws to reference code that
        draws differently, e.g. from Python's ``random``); its shape must be ``shape``."""
        queue, i = self.draws.get(name, []), self.replayed.get(name, 0)
        if i >= len(queue) or tuple(queue[i].shape) != tuple(shape):
            got = tuple(queue[i].shape) if i < len(queue) else "nothing"
            raise ParityError(f"the reference needs torch.{name}{tuple(shape)} #{i + 1}, ours drew {got}")
        self.replayed[name] = i + 1
        return queue[i]

    def unused(self) -> dict[str, int]:
        return {k: len(v) - self.replayed.get(k, 0) for k, v in self.draws.items() if len(v) > self.replayed.get(k, 0)}
