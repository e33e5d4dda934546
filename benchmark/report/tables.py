"""The report's tables, computed from the tidy record frame (:func:`benchmark.report.load.load_records`).

Each builder returns a :class:`Table` (a caption, a header, rows of :class:`Txt` cells, notes, and a tidy
``frame`` for CSV); the renderers in :mod:`benchmark.report.render` turn it into Markdown, LaTeX or CSV.

* :func:`accuracy_table`: methods x (dataset, teacher→student) columns, mean ± std over seeds, the published
  figure and the difference beside each measured cell, the best data-free method per column in bold, and a
  significance marker from Welch's t-test of the best against the runner-up.
* :func:`cost_table`: wall-clock, time per iteration, images per second, teacher forwards, GPU-hours, memory.
* :func:`equal_cost_table`: accuracy read off the curves at the same teacher-forward count / wall time.
* :func:`quality_table`: the synthetic-data quality metrics stored in the records.
"""
from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..launch.grid import PAIR_PRESETS
from .load import REFERENCE_METHODS, ReportError, common_settings, mixed_runs
from .published import Figure, Published, load_published

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


@dataclass(frozen=True, order=True)
class Column:
    dataset: str
    teacher: str
    student: str

    @property
    def pair(self) -> str:
        return f"{self.teacher}→{self.student}"

    @property
    def label(self) -> str:
        return f"{self.dataset} {self.pair}"


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

@dataclass
class AccRow:
    label: str
    method: str
    data_free: bool
    usual_n: int = 0


@dataclass
class AccCell:
    stat: Stat | None
    published: list[Figure] = field(default_factory=list)    # printed figure first
    alias: str | None = None
    best: bool = False
    significant: bool = False

    @property
    def paper(self) -> Figure | None:
        return self.published[0] if self.published else None

    @property
    def diff(self) -> float | None:
        if self.paper is None or self.stat is None or self.stat.n == 0:
            return None
        return self.stat.mean - self.paper.top1


@dataclass
class AccuracyTable:
    name: str
    metric: str
    columns: list[Column]
    rows: list[AccRow]
    cells: dict[tuple[str, Column], AccCell]
    with_published: dict[Column, bool]
    significance: dict[Column, Significance | None]
    failures: list[str]
    alpha: float = ALPHA
    settings: list[str] = field(default_factory=list)   # shared by every record, left out of the row labels
    mixed: list[str] = field(default_factory=list)      # rows whose records differ in precision/device/commit

    # -- sources: numbered in the order the printed figures appear, then the alternatives
    def sources(self) -> list[Figure]:
        order: dict[str, Figure] = {}
        for alt in (False, True):
            for col in self.columns:
                for row in self.rows:
                    cell = self.cells[(row.label, col)]
                    figs = cell.published[1:] if alt else cell.published[:1]
                    for f in figs:
                        order.setdefault(f.source, f)
        return list(order.values())

    def caption(self) -> str:
        what = METRICS[self.metric][1]
        text = (f"Top-1 accuracy (%) of the student on the real test split, {what}; mean ± std (sample std) "
                f"over seeds. n: seeds per row, (n=k) where a cell has another number. Bold: the best data-free "
                f"method per column; † its lead over the runner-up is significant ({TEST_NAME}, "
                f"p < {self.alpha:g}). {MISSING}: not run; failed (k): k failed runs and none finished.")
        if any(self.with_published.values()):
            text += " paper: the published figure (sources in the notes); Δ = ours − paper."
        return text

    def notes(self) -> list[str]:
        notes = []
        if self.settings:
            notes.append(f"Every run: {'; '.join(self.settings)}.")
        if self.mixed:
            notes.append("Rows whose runs differ (their mean mixes them): " + "; ".join(self.mixed) + ".")
        sig = [f"{c.label}: {s.reason}" for c, s in self.significance.items() if s is not None]
        if sig:
            notes.append(f"Significance ({TEST_NAME}, α = {self.alpha:g}): " + "; ".join(sig) + ".")
        sources = self.sources()
        index = {f.source: i + 1 for i, f in enumerate(sources)}
        if sources:
            notes.append("Published figures: " + "; ".join(f"[{index[f.source]}] {f.source} ({f.status})"
                                                          for f in sources) + ".")
        disagree, aliases = [], {}
        for col in self.columns:
            for row in self.rows:
                cell = self.cells[(row.label, col)]
                if cell.alias:
                    aliases[row.method] = cell.alias
                if len(cell.published) > 1:
                    printed = cell.published[0]
                    others = [f for f in cell.published[1:] if abs(f.top1 - printed.top1) > EPS]
                    if others:
                        disagree.append(f"{col.label} {row.label}: [{index[printed.source]}] {printed.top1:g} "
                                        f"printed, " + ", ".join(f"[{index[f.source]}] gives {f.top1:g}"
                                                                 for f in others))
        if disagree:
            notes.append("Where sources disagree, the printed figure is the one with the better status "
                         "(reported > reproduction > unverified), then the source listed first: "
                         + "; ".join(disagree) + ".")
        for ours, theirs in sorted(aliases.items()):
            notes.append(f"{ours} is compared with the published {theirs} (it runs {theirs}'s settings).")
        if self.failures:
            shown = self.failures[:20]
            more = f"; and {len(self.failures) - 20} more" if len(self.failures) > 20 else ""
            notes.append("Failed runs: " + "; ".join(shown) + more + ".")
        return notes

    def to_table(self) -> Table:
        sources = self.sources()
        index = {f.source: i + 1 for i, f in enumerate(sources)}
        mark_sources = len({c.paper.source for c in self.cells.values() if c.paper is not None}) > 1
        header, align, groups = ["Method", "n"], ["l", "r"], [("", 1), ("", 1)]
        for col in self.columns:
            if self.with_published[col]:
                header += [col.label, "paper", "Δ"]
                align += ["r", "r", "r"]
                groups.append((col.label, 3))
            else:
                header.append(col.label)
                align.append("r")
                groups.append((col.label, 1))
        rows, rules = [], []
        for i, row in enumerate(self.rows):
            if i and row.data_free and not self.rows[i - 1].data_free:
                rules.append(i)
            line = [Txt(row.label), Txt(str(row.usual_n) if row.usual_n else MISSING)]
            for col in self.columns:
                cell = self.cells[(row.label, col)]
                txt = stat_text(cell.stat, row.usual_n)
                txt.bold, txt.marker = cell.best, cell.significant
                line.append(txt)
                if self.with_published[col]:
                    paper = cell.paper
                    if paper is None:
                        line.append(Txt(MISSING))
                    else:
                        line.append(Txt(f"{paper.top1:.2f}", suffix=f"[{index[paper.source]}]" if mark_sources else ""))
                    line.append(Txt(MISSING if cell.diff is None else fmt_diff(cell.diff)))
            rows.append(line)
        title = f"Accuracy ({'all columns' if self.name == 'all' else self.name}, {self.metric} accuracy)"
        return Table(self.table_name, title, self.caption(), header, align, rows, self.to_frame(),
                     self.notes(), groups, rules)

    @property
    def table_name(self) -> str:
        return "accuracy" + ("" if self.name == "all" else f"-{self.name}") + ("" if self.metric == "final" else f"-{self.metric}")

    def to_frame(self) -> pd.DataFrame:
        sources = self.sources()
        index = {f.source: i + 1 for i, f in enumerate(sources)}
        recs = []
        for row in self.rows:
            for col in self.columns:
                cell = self.cells[(row.label, col)]
                st, sig = cell.stat, self.significance.get(col)
                recs.append({
                    "method": row.label, "data_free": row.data_free, "dataset": col.dataset,
                    "teacher": col.teacher, "student": col.student, "metric": self.metric,
                    "n": 0 if st is None else st.n, "failed": 0 if st is None else st.n_failed,
                    "mean": None if st is None else st.mean, "std": None if st is None else st.std,
                    "values": "" if st is None else " ".join(fmt_acc(v) for v in st.values),
                    "seeds": "" if st is None else " ".join(str(s) for s in st.seeds),
                    "status": ("missing" if st is None else "failed" if st.n == 0 else "done"),
                    "best": cell.best, "significant": cell.significant,
                    "runner_up": sig.runner_up if (sig and cell.best) else None,
                    "p_value": sig.p_value if (sig and cell.best) else None,
                    "paper": None if cell.paper is None else cell.paper.top1,
                    "paper_method": cell.alias or (row.method if cell.paper else None),
                    "paper_source": None if cell.paper is None else index[cell.paper.source],
                    "diff": cell.diff,
                })
        frame = pd.DataFrame(recs, columns=["method", "data_free", "dataset", "teacher", "student", "metric", "n",
                                            "failed", "mean", "std", "values", "seeds", "status", "best",
                                            "significant", "runner_up", "p_value", "paper", "paper_method",
                                            "paper_source", "diff"])
        return frame


def accuracy_table(df: pd.DataFrame, metric: str = "final", table: str = "all",
                   published: Published | None | bool = None, alpha: float = ALPHA) -> AccuracyTable:
    """The main table. ``table``: see :func:`table_columns`; ``published``: ``None`` loads the project's
    published figures, ``False`` leaves the paper columns out."""
    if metric not in METRICS:
        raise ReportError(f"unknown metric {metric!r} (choices: {', '.join(METRICS)})")
    value_col = METRICS[metric][0]
    if published is None:
        published = load_published()
    elif published is False:
        published = Published({})
    columns = table_columns(df, table)
    sub = pd.concat([_in_column(df, c) for c in columns]) if columns else df.iloc[0:0]
    row_defs = _variants(sub)
    if table in LAYOUTS:        # the published layout: every published method gets its row
        have = {r[0] for r in row_defs}
        for m in published.methods(table):
            if m not in have:
                row_defs.append((m, m, m not in REFERENCE_METHODS))
        row_defs.sort(key=lambda r: (*method_key(r[1], r[2]), r[0]))
    rows = [AccRow(v, m, d) for v, m, d in row_defs]

    cells: dict[tuple[str, Column], AccCell] = {}
    failures: list[str] = []
    for col in columns:
        in_col = _in_column(sub, col)
        for row in rows:
            part = in_col[in_col["variant"] == row.label]
            stat = _stat(part, value_col)
            figs, alias = published.lookup(col.dataset, col.teacher, col.student, row.method)
            cells[(row.label, col)] = AccCell(stat, list(figs), alias)
            for f in part[part["status"] != "done"].itertuples(index=False):
                err = (f.error or "no error message").splitlines()[0] if isinstance(f.error, str) else "no error message"
                failures.append(f"{row.label} on {col.label} seed {f.seed}: {err[:160]}")
    for row in rows:
        row.usual_n = _mode_n(cells[(row.label, c)].stat.n for c in columns if cells[(row.label, c)].stat)
    with_published = {c: any(cells[(r.label, c)].paper is not None for r in rows) for c in columns}

    significance: dict[Column, Significance | None] = {}
    for col in columns:
        by_row = {r.label: cells[(r.label, col)].stat for r in rows if r.data_free and cells[(r.label, col)].stat}
        sig = column_significance(by_row, alpha)
        significance[col] = sig
        if sig is not None:
            for label in sig.best:
                cells[(label, col)].best = True
                cells[(label, col)].significant = sig.significant
    return AccuracyTable(table, metric, columns, rows, cells, with_published, significance, failures, alpha,
                         common_settings(df), mixed_runs(sub))


# ---- cost ------------------------------------------------------------------------------------------------

def _mean(series: pd.Series) -> float | None:
    vals = pd.to_numeric(series, errors="coerce").dropna()
    return float(vals.mean()) if len(vals) else None


def cost_table(df: pd.DataFrame, columns: list[Column] | None = None) -> Table:
    """Per (column, method): means over the finished seeds of the cost fields of the records."""
    columns = columns_of(df) if columns is None else columns
    header = ["Column", "Method", "n", "device", "iterations", "wall-clock (s)", "s / iteration", "images / s",
              "teacher forwards", "teacher (s)", "GPU-hours", "peak memory (MB)"]
    rows, recs, rules = [], [], []
    for col in columns:
        in_col = _in_column(df, col)
        if in_col.empty:
            continue
        if rows:
            rules.append(len(rows))
        for label, method, data_free in _variants(in_col):
            part = in_col[in_col["variant"] == label]
            done = part[part["status"] == "done"]
            failed = int((part["status"] != "done").sum())
            devices = sorted({str(d) for d in (done["device_name"].where(done["device_name"].notna(), done["device"]))
                              if d is not None and not (isinstance(d, float) and math.isnan(d))})
            gpu = done[done["device"] == "cuda"]
            vals = {
                "iterations": _mean(done["iterations"]), "wall_time_s": _mean(done["wall_time_s"]),
                "time_per_iteration_s": _mean(done["time_per_iteration_s"]), "images_per_s": _mean(done["images_per_s"]),
                "teacher_forwards": _mean(done["teacher_forwards"]), "teacher_time_s": _mean(done["teacher_time_s"]),
                "gpu_hours": _mean(gpu["gpu_hours"]) if len(gpu) else None,
                "peak_memory_mb": _mean(done["peak_memory_mb"]),
            }
            n_text = str(len(done)) + (f" ({failed} failed)" if failed else "")
            rows.append([Txt(col.label), Txt(label), Txt(n_text), Txt(" / ".join(devices) or MISSING),
                         Txt(fmt_count(vals["iterations"])), Txt(fmt_num(vals["wall_time_s"])),
                         Txt(fmt_num(vals["time_per_iteration_s"])), Txt(fmt_num(vals["images_per_s"])),
                         Txt(fmt_count(vals["teacher_forwards"])), Txt(fmt_num(vals["teacher_time_s"])),
                         Txt(fmt_num(vals["gpu_hours"])), Txt(fmt_num(vals["peak_memory_mb"]))])
            recs.append({"dataset": col.dataset, "teacher": col.teacher, "student": col.student, "method": label,
                         "data_free": data_free, "n": len(done), "failed": failed, "device": " / ".join(devices),
                         **vals})
    caption = ("Cost per cell, mean over the finished seeds: distillation wall-clock time including evaluation, "
               "training time per iteration, synthetic images per second, images passed through the teacher, "
               "time to get the teacher (training or loading), GPU-hours (GPU runs only), peak memory.")
    frame = pd.DataFrame(recs, columns=["dataset", "teacher", "student", "method", "data_free", "n", "failed",
                                        "device", "iterations", "wall_time_s", "time_per_iteration_s",
                                        "images_per_s", "teacher_forwards", "teacher_time_s", "gpu_hours",
                                        "peak_memory_mb"])
    return Table("cost", "Cost", caption, header, ["l", "l", "r", "l"] + ["r"] * 8, rows, frame, [], None, rules)


# ---- accuracy at equal cost ------------------------------------------------------------------------------

COST_AXES = {"teacher_forwards": "teacher forwards", "wall_time_s": "wall-clock s"}


def acc_at(curve: Sequence[dict], axis: str, budget: float) -> float | None:
    """Accuracy of the last evaluation whose ``axis`` value is within ``budget`` (no interpolation)."""
    best_x, acc = -math.inf, None
    for point in curve:
        x, a = point.get(axis), point.get("acc")
        if x is None or a is None:
            continue
        if x <= budget * (1 + EPS) + EPS and x >= best_x:
            best_x, acc = x, float(a)
    return acc


def _reach(curve: Sequence[dict], axis: str) -> float:
    xs = [p.get(axis) for p in curve if p.get(axis) is not None and p.get("acc") is not None]
    return float(max(xs)) if xs else 0.0


@dataclass
class EqualCost:
    column: Column
    axis: str
    budget: float | None
    stats: dict[str, Stat]         # variant -> accuracies at the budget
    excluded: list[str]            # variants without that cost in their curves


def equal_cost(df: pd.DataFrame, col: Column, axis: str) -> EqualCost:
    """The largest ``axis`` value every finished seed of every data-free method in ``col`` reached, and each
    method's accuracy there."""
    part = _in_column(df, col)
    part = part[(part["status"] == "done") & part["data_free"]]
    reach: dict[str, float] = {}
    excluded = []
    for label, _, _ in _variants(part):
        curves = part[part["variant"] == label]["curve"]
        r = min(_reach(c, axis) for c in curves)
        if r > 0:
            reach[label] = r
        else:
            excluded.append(label)
    if not reach:
        return EqualCost(col, axis, None, {}, excluded)
    budget = min(reach.values())
    stats = {}
    for label in reach:
        sub = part[part["variant"] == label].sort_values("seed", kind="stable")
        pairs = [(acc_at(c, axis, budget), int(s)) for c, s in zip(sub["curve"], sub["seed"])]
        pairs = [(a, s) for a, s in pairs if a is not None]
        stats[label] = Stat(tuple(a for a, _ in pairs), tuple(s for _, s in pairs))
    return EqualCost(col, axis, budget, stats, excluded)


def equal_cost_table(df: pd.DataFrame, columns: list[Column] | None = None) -> Table:
    """Accuracy at the same number of teacher forwards and at the same wall time, per column."""
    columns = columns_of(df) if columns is None else columns
    views = [(c, a, equal_cost(df, c, a)) for c in columns for a in COST_AXES]
    views = [v for v in views if v[2].budget is not None]
    labels = []
    for _, _, v in views:
        labels += [l for l in v.stats if l not in labels]
    labels.sort(key=lambda l: (*method_key(df.loc[df["variant"] == l, "method"].iloc[0], True), l))
    header = ["Method"]
    for col, axis, v in views:
        b = fmt_count(v.budget) if axis == "teacher_forwards" else fmt_num(v.budget)
        header.append(f"{col.label} @ {b} {COST_AXES[axis]}")
    rows, recs = [], []
    for label in labels:
        line = [Txt(label)]
        for col, axis, v in views:
            st = v.stats.get(label)
            usual = _mode_n(s.n for s in v.stats.values())
            txt = stat_text(st, usual)
            if st is not None and st.n:
                top = max(s.mean for s in v.stats.values() if s.n)
                txt.bold = st.mean >= top - EPS
                recs.append({"dataset": col.dataset, "teacher": col.teacher, "student": col.student,
                             "axis": axis, "budget": v.budget, "method": label, "n": st.n, "mean": st.mean,
                             "std": st.std, "values": " ".join(fmt_acc(x) for x in st.values),
                             "best": txt.bold})
            line.append(txt)
        rows.append(line)
    notes = []
    for col, axis, v in [(c, a, equal_cost(df, c, a)) for c in columns for a in COST_AXES]:
        if v.excluded:
            notes.append(f"{col.label}: {', '.join(v.excluded)} left out of the {COST_AXES[axis]} view "
                         f"(no such cost in the curve).")
    caption = ("Accuracy at equal cost: per column, top-1 accuracy (%) at the largest number of teacher forward "
               "passes (and, separately, of wall-clock seconds) that every finished seed of every data-free "
               "method in the column reached; each seed contributes its last evaluation within that budget (no "
               "interpolation); mean ± std over seeds; bold: the best.")
    frame = pd.DataFrame(recs, columns=["dataset", "teacher", "student", "axis", "budget", "method", "n", "mean",
                                        "std", "values", "best"])
    return Table("equal-cost", "Accuracy at equal cost", caption, header, ["l"] + ["r"] * len(views), rows,
                 frame, notes, None, [])


# ---- synthetic-data quality ------------------------------------------------------------------------------

QUALITY_COLUMNS = (
    ("class_balance_normalized", "class balance (H / log K)", 3),
    ("class_balance_entropy", "class entropy (nats)", 3),
    ("teacher_confidence", "teacher confidence", 3),
    ("label_agreement", "label agreement", 3),
    ("intra_class_diversity", "intra-class diversity", 3),
    ("feature_fid", "feature FID", None),
)


def quality_table(df: pd.DataFrame, columns: list[Column] | None = None) -> Table:
    """Per (column, method): the mean over finished seeds of each quality metric in the records."""
    columns = columns_of(df) if columns is None else columns
    header = ["Column", "Method", "n"] + [h for _, h, _ in QUALITY_COLUMNS]
    rows, recs, rules = [], [], []
    for col in columns:
        in_col = _in_column(df, col)
        in_col = in_col[in_col["status"] == "done"]
        first = True
        for label, method, data_free in _variants(in_col):
            part = in_col[in_col["variant"] == label]
            qcols = [f"quality_{k}" for k, _, _ in QUALITY_COLUMNS if f"quality_{k}" in part]
            if not qcols or part[qcols].notna().to_numpy().sum() == 0:
                continue
            n = int(part[qcols].notna().any(axis=1).sum())
            if first and rows:
                rules.append(len(rows))
            first = False
            vals = {k: (_mean(part[f"quality_{k}"]) if f"quality_{k}" in part else None) for k, _, _ in QUALITY_COLUMNS}
            line = [Txt(col.label), Txt(label), Txt(str(n))]
            for key, _, digits in QUALITY_COLUMNS:
                v = vals[key]
                line.append(Txt(MISSING if v is None else (f"{v:.{digits}f}" if digits else fmt_num(v))))
            rows.append(line)
            recs.append({"dataset": col.dataset, "teacher": col.teacher, "student": col.student, "method": label,
                         "n": n, **vals})
    caption = ("Synthetic-data quality (the teacher's view of each method's samples, mean over finished seeds): "
               "class balance = entropy of the teacher's predicted classes / log(classes); teacher confidence = "
               "mean top softmax probability; label agreement = fraction predicted as the requested class "
               "(conditional generators only); intra-class diversity = mean pairwise distance of L2-normalised "
               "teacher features within a predicted class; feature FID = Fréchet distance between the teacher "
               "features of the samples and of the real test split (lower is closer).")
    frame = pd.DataFrame(recs, columns=["dataset", "teacher", "student", "method", "n",
                                        *[k for k, _, _ in QUALITY_COLUMNS]])
    return Table("quality", "Synthetic-data quality", caption, header, ["l", "l", "r"] + ["r"] * len(QUALITY_COLUMNS),
                 rows, frame, [], None, rules)
