"""Declared value ranges for config fields, checked when a cell is resolved (before anything runs).

Each numeric field of a config dataclass declares its range, either in the field's metadata
(``field(default=..., metadata={"range": POSITIVE})``) or, for a whole class, with the ``@ranges(...)``
decorator (``@ranges(alpha=NONNEG, lr_g=POSITIVE)``; declarations are inherited and a subclass may refine
them). ``check_ranges(cfg)`` then rejects NaN and infinities everywhere, a value outside its range, and an
integer outside its bounds, each with a one-line ``ConfigError``; ``tests/test_checks.py`` walks every
registered method's fields with bad values and checks that each numeric field has a declaration.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

INT_MAX = 2**31 - 1          # counts: sizes and steps fit a C int
SEED_MAX = 2**31 - 1         # seeds: cell seed + 1 and derived seeds still fit numpy's 32-bit seeds

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad config key or value; the message is one line. (Re-exported by ``benchmark.config``.)"""


@dataclass(frozen=True)
class Range:
    """``low <= value <= high`` (``<`` where open); ``integer`` adds the integer bounds; ``choices`` for strings.
    Tuples and lists are checked element by element."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None
    what: str = ""

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        if self.what:
            return self.what
        lo = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        hi = "" if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
        return " and ".join(p for p in (lo, hi) if p) or "finite"

    def check(self, name: str, value: Any) -> None:
        if isinstance(value, (tuple, list)):
            for item in value:
                self.check(name, item)
            return
        if self.choices is not None:
            if value not in self.choices:
                raise ConfigError(f"{name} must be {self.describe()}, got {value!r}")
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        bad = isinstance(value, float) and not math.isfinite(value)
        if not bad and self.low is not None:
            bad = value <= self.low if self.low_open else value < self.low
        if not bad and self.high is not None:
            bad = value >= self.high if self.high_open else value > self.high
        if bad:
            raise ConfigError(f"{name} must be {self.describe()}, got {value!r}")


def between(low: float, high: float, what: str = "") -> Range:
    return Range(low, high, what=what)


def choice(*values: Any) -> Range:
    return Range(choices=tuple(values))


FINITE = Range(what="finite")
POSITIVE = Range(0, None, low_open=True, what="> 0 and finite")                 # learning rates, temperatures
NONNEG = Range(0, None, what=">= 0 and finite")                                   # loss weights, decays
FRACTION = Range(0, 1, what="in [0, 1]")                                          # momenta, probabilities, ratios
BETA = Range(0, 1, high_open=True, what="in [0, 1)")                              # Adam betas, SGD momentum
COUNT = Range(0, INT_MAX, what=f"an integer in [0, {INT_MAX}]")                   # may be 0 (off)
POS_COUNT = Range(1, INT_MAX, what=f"an integer in [1, {INT_MAX}]")               # sizes, steps, divisors
SEED = Range(0, SEED_MAX, what=f"an integer in [0, {SEED_MAX}]")


def ranges(**declared: Range) -> Callable[[T], T]:
    """Class decorator: declare the ranges of named fields (merged with those of the base classes)."""
    def apply(cls: T) -> T:
        merged: dict[str, Range] = {}
        for base in reversed(cls.__mro__[1:]):
            merged.update(getattr(base, "__ranges__", {}) or {})
        merged.update(declared)
        cls.__ranges__ = merged
        return cls
    return apply


def declared_range(cfg_cls: type, f: dataclasses.Field) -> Range | None:
    return f.metadata.get("range") or (getattr(cfg_cls, "__ranges__", {}) or {}).get(f.name)


def check_ranges(cfg: Any) -> None:
    """Check every field of config dataclass ``cfg``: finite numbers, declared ranges, integer bounds."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        rng = declared_range(type(cfg), f)
        if rng is not None:
            rng.check(f.name, value)
        else:
            FINITE.check(f.name, value)
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, int) and not isinstance(item, bool) and not -INT_MAX <= item <= INT_MAX:
                raise ConfigError(f"{f.name} must be an integer of at most {INT_MAX}, got {item!r}")
