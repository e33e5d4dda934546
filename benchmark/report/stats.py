"""Seed statistics of one table cell (:class:`Stat`), their formatting, and Welch's t-test between rows."""
from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .columns import ALPHA, EPS, MISSING, Txt

@dataclass
class Stat:
    """The finished seeds' values of one (row, column), and how many runs failed there."""

    values: tuple[float, ...]
    seeds: tuple[int, ...]
    n_failed: int = 0

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None

    @property
    def std(self) -> float | None:
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else None


def _stat(sub: pd.DataFrame, value_col: str) -> Stat | None:
    if sub.empty:
        return None
    done = sub[sub["status"] == "done"].sort_values("seed", kind="stable")
    return Stat(tuple(float(v) for v in done[value_col]), tuple(int(s) for s in done["seed"]),
                int((sub["status"] != "done").sum()))


def fmt_acc(x: float) -> str:
    return f"{x:.2f}"


def fmt_diff(x: float) -> str:
    return "0.00" if abs(x) < 0.005 else f"{x:+.2f}"


def fmt_num(x: float | None) -> str:
    """Compact, deterministic formatting for costs."""
    if x is None or not math.isfinite(x):
        return MISSING
    a = abs(x)
    if a == 0:
        return "0"
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:#.3g}"


def fmt_count(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return MISSING
    return f"{int(round(x)):,}"


def stat_text(stat: Stat | None, usual_n: int | None = None) -> Txt:
    """``mean ± std`` (just the mean for one seed), ``(n=k)`` when k differs from the row's usual n, the
    count of failed runs, ``failed (k)`` when nothing finished, ``—`` when nothing ran."""
    if stat is None:
        return Txt(MISSING)
    if stat.n == 0:
        return Txt(f"failed ({stat.n_failed})")
    text = fmt_acc(stat.mean) if stat.std is None else f"{fmt_acc(stat.mean)} ± {fmt_acc(stat.std)}"
    extra = []
    if usual_n is not None and stat.n != usual_n:
        extra.append(f"n={stat.n}")
    if stat.n_failed:
        extra.append(f"{stat.n_failed} failed")
    return Txt(text, suffix=f"({', '.join(extra)})" if extra else "")


def _mode_n(ns: Iterable[int]) -> int:
    counts = Counter(n for n in ns if n > 0)
    if not counts:
        return 0
    top = max(counts.values())
    return max(n for n, c in counts.items() if c == top)


# ---- significance --------------------------------------------------------------------------------------

@dataclass
class Significance:
    best: list[str]
    runner_up: str | None
    p_value: float | None
    significant: bool
    reason: str                 # one line for the notes


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of Welch's t-test; ``None`` when either side has < 2 values or no variance."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(stats.ttest_ind(np.asarray(a, float), np.asarray(b, float), equal_var=False).pvalue)
    return p if math.isfinite(p) else None


def column_significance(stats_by_row: dict[str, Stat], alpha: float = ALPHA) -> Significance | None:
    """Best data-free row(s) by mean and whether the lead over the runner-up holds across seeds."""
    ranked = sorted(((s.mean, r) for r, s in stats_by_row.items() if s is not None and s.n > 0),
                    key=lambda t: -t[0])
    if not ranked:
        return None
    top = ranked[0][0]
    best = [r for m, r in ranked if m >= top - EPS]
    rest = [(m, r) for m, r in ranked if m < top - EPS]
    if len(best) > 1:
        return Significance(best, None, None, False, f"{' and '.join(best)} tie")
    if not rest:
        return Significance(best, None, None, False, f"{best[0]} is the only data-free method")
    runner = rest[0][1]
    p = welch_p(stats_by_row[best[0]].values, stats_by_row[runner].values)
    if p is None:
        why = ("fewer than 2 seeds" if min(stats_by_row[best[0]].n, stats_by_row[runner].n) < 2
               else "no variance across seeds")
        return Significance(best, runner, None, False, f"{best[0]} vs {runner}: not tested ({why})")
    sig = p < alpha
    return Significance(best, runner, p, sig,
                        f"{best[0]} vs {runner}: p = {p:.3g}, {'significant' if sig else 'not significant'}")


# ---- the accuracy table ---------------------------------------------------------------------------------
