"""Published figures (``benchmark/reference_data/published_results.csv``) and the choice among sources.

Where several sources give a figure for the same dataset / pair / method, one is printed: the best ``status``
(reported, then reproduction, then unverified), then the source listed first in the file. The others are
kept as *alternatives* so that the table notes can say what they give.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

PUBLISHED_CSV = Path(__file__).resolve().parent.parent / "reference_data" / "published_results.csv"

STATUS_RANK = {"reported": 0, "reproduction": 1, "unverified": 2}

#: Our registry name -> the published method whose settings it runs.
PUBLISHED_ALIASES = {"fast": "fast-5"}


@dataclass(frozen=True)
class Figure:
    top1: float
    source: str
    status: str
    hours: float | None = None      # the training time the source reports (``train_hours``), if any


@dataclass
class Published:
    """Published figures keyed by ``(dataset, teacher, student, method)``: the printed one first."""

    figures: dict[tuple[str, str, str, str], list[Figure]] = field(default_factory=dict)

    def lookup(self, dataset: str, teacher: str, student: str, method: str) -> tuple[list[Figure], str | None]:
        """``(figures, alias)``: the printed figure first, then the others; ``alias`` is the published
        method name used when it differs from ``method`` (e.g. ``fast`` -> ``fast-5``)."""
        key = (dataset, teacher, student, method)
        if key in self.figures:
            return self.figures[key], None
        alias = PUBLISHED_ALIASES.get(method)
        if alias is not None and (dataset, teacher, student, alias) in self.figures:
            return self.figures[(dataset, teacher, student, alias)], alias
        return [], None

    def methods(self, dataset: str) -> list[str]:
        return sorted({k[3] for k in self.figures if k[0] == dataset})

    def __len__(self) -> int:
        return len(self.figures)


def load_published(path: str | Path | None = None) -> Published:
    frame = pd.read_csv(path or PUBLISHED_CSV, dtype={"top1": float}, keep_default_na=False, na_values={"top1": [""]})
    source_order = {s: i for i, s in enumerate(dict.fromkeys(frame["source"]))}
    grouped: dict[tuple[str, str, str, str], list[Figure]] = {}
    for row in frame.itertuples(index=False):
        if pd.isna(row.top1):
            continue
        key = (row.dataset, row.teacher, row.student, row.method)
        hours = getattr(row, "train_hours", None)
        hours = None if hours is None or hours == "" or pd.isna(hours) else float(hours)
        grouped.setdefault(key, []).append(Figure(float(row.top1), row.source, row.status, hours))
    for figs in grouped.values():
        figs.sort(key=lambda f: (STATUS_RANK.get(f.status, len(STATUS_RANK)), source_order[f.source]))
    return Published(grouped)


def empty_published() -> Published:
    return Published({})
