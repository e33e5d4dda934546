"""The accuracy table: methods x (dataset, teacher→student) columns, mean ± std over seeds, the published
figure and the difference beside each measured cell, the best data-free method per column in bold, and a
significance marker from Welch's t-test of the best against the runner-up."""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from .load import REFERENCE_METHODS, ReportError, common_settings, mixed_runs
from .published import Figure, Published, load_published
from .columns import _in_column, _variants, ALPHA, Column, EPS, LAYOUTS, method_key, METRICS, MISSING, Table, table_columns, TEST_NAME, Txt
from .stats import _mode_n, _stat, column_significance, fmt_acc, fmt_diff, Significance, Stat, stat_text

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


def summarize_cells(rows: list[AccRow], columns: list[Column], cells: dict[tuple[str, Column], AccCell],
                    alpha: float) -> tuple[dict[Column, bool], dict[Column, Significance | None]]:
    """Fill in each row's usual seed count and mark each column's best data-free cells (bold, † where the
    lead is significant); returns which columns show a published figure and each column's test."""
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
    return with_published, significance


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
    with_published, significance = summarize_cells(rows, columns, cells, alpha)
    return AccuracyTable(table, metric, columns, rows, cells, with_published, significance, failures, alpha,
                         common_settings(df), mixed_runs(sub))
