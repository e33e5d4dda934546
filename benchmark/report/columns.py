"""The report's table model (:class:`Txt`, :class:`Table`; its :class:`Column` is
:class:`benchmark.records.Column`) and the row / column orders every table and figure shares."""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from ..launch.grid import PAIR_PRESETS
from ..records import Column
from .load import REFERENCE_METHODS, ReportError

# ---- orders and layouts --------------------------------------------------------------------------------

DATA_FREE_ORDER = ("deepinv", "cmi", "dafl", "zskt", "dfq", "dfad", "fast-2", "fast", "fast-5", "fast-10",
                   "cpsc-dfkd")
METHOD_ORDER = REFERENCE_METHODS + DATA_FREE_ORDER
DATASET_ORDER = ("digits", "mnist", "svhn", "cifar10", "cifar100", "tiny_imagenet", "tiny-imagenet")

#: The five teacher→student pairs of the CMI / Fast-Datafree CIFAR tables, in their order.
STANDARD_PAIRS = PAIR_PRESETS["standard"]
LAYOUTS = {"cifar10": STANDARD_PAIRS, "cifar100": STANDARD_PAIRS}

METRICS = {
    "final": ("final_acc", "final accuracy (at the last iteration)"),
    "best": ("best_acc", "best accuracy (the highest of all evaluations during training; optimistic, since it "
                         "is selected on the test split)"),
}
ALPHA = 0.05
TEST_NAME = "Welch's two-sided t-test over seeds"
MISSING = "—"
EPS = 1e-9


@dataclass
class Txt:
    """One table cell: ``text`` (may hold ±, —, †, →, Δ; the LaTeX renderer translates them), emphasis,
    a significance marker and a plain suffix such as ``(n=2)``."""

    text: str
    bold: bool = False
    marker: bool = False
    suffix: str = ""

    def plain(self) -> str:
        return self.text + ("†" if self.marker else "") + (f" {self.suffix}" if self.suffix else "")


@dataclass
class Table:
    name: str
    title: str
    caption: str
    header: list[str]
    align: list[str]                       # "l" or "r" per column
    rows: list[list[Txt]]
    frame: pd.DataFrame                    # tidy, for CSV
    notes: list[str] = field(default_factory=list)
    groups: list[tuple[str, int]] | None = None   # LaTeX: spanning labels over the header
    rules: list[int] = field(default_factory=list)  # row indices before which a \midrule goes


# ---- helpers -------------------------------------------------------------------------------------------

def method_key(method: str, data_free: bool) -> tuple:
    known = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return (int(bool(data_free)), known, method)


def _dataset_key(name: str) -> tuple:
    return (DATASET_ORDER.index(name) if name in DATASET_ORDER else len(DATASET_ORDER), name)


def column_key(col: Column) -> tuple:
    pair = (col.teacher, col.student)
    std = STANDARD_PAIRS.index(pair) if pair in STANDARD_PAIRS else len(STANDARD_PAIRS)
    return (_dataset_key(col.dataset), std, col.teacher, col.student)


def columns_of(df: pd.DataFrame) -> list[Column]:
    cols = {Column(*t) for t in df[["dataset", "teacher", "student"]].itertuples(index=False, name=None)}
    return sorted(cols, key=column_key)


def table_columns(df: pd.DataFrame, name: str = "all") -> list[Column]:
    """The columns of a named table: ``all`` (every pair in the records), ``cifar10`` / ``cifar100`` (the five
    standard pairs, measured or not), or any dataset in the records (its pairs)."""
    if name == "all":
        return columns_of(df)
    if name in LAYOUTS:
        return [Column(name, t, s) for t, s in LAYOUTS[name]]
    datasets = sorted(set(df["dataset"]), key=_dataset_key)
    if name in datasets:
        return columns_of(df[df["dataset"] == name])
    choices = ", ".join(dict.fromkeys(["all", *LAYOUTS, *datasets]))
    raise ReportError(f"unknown table {name!r} (choices: {choices})")


def _in_column(df: pd.DataFrame, col: Column) -> pd.DataFrame:
    return df[(df["dataset"] == col.dataset) & (df["teacher"] == col.teacher) & (df["student"] == col.student)]


def _variants(df: pd.DataFrame) -> list[tuple[str, str, bool]]:
    """``(variant, method, data_free)`` in table order: reference rows first, then data-free methods."""
    seen = {}
    for v, m, d in df[["variant", "method", "data_free"]].itertuples(index=False, name=None):
        seen.setdefault(v, (v, m, bool(d)))
    return sorted(seen.values(), key=lambda r: (*method_key(r[1], r[2]), r[0]))
