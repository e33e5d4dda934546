"""``python -m benchmark report OUT --table NAME``: a table spec rendered from the records, in the paper's layout.

Records are matched to the spec's rows and columns by method, dataset, pair, budget and *canonical*
overrides (:func:`benchmark.tables.expand.record_key`), never by cell id, so records written by any command
that ran the same settings fill the table. A record belongs to the most specific row whose overrides it
carries (a ``gamma=0`` record fills the ``w/o SCL`` row, not the all-terms row); where the records of a row
differ in further overrides (a ``--set`` sweep), the row is split into one row per setting, labelled by the
keys that differ, and the settings every record shares go to the notes. All seeds found are used.

Layouts: ``accuracy`` (mean ± std, n, the published figure and the difference, best data-free row in bold with
Welch's test, as :func:`benchmark.report.accuracy.accuracy_table`) and ``cost`` (accuracy and training hours
beside the published ones). Markers: ``—`` not run, ``failed (k)``, ``no budget`` (the method has no budget
of that name for the column's dataset).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..report.load import ReportError, load_records
from ..report.published import Published, load_published
from ..report.accuracy import AccCell, AccRow, AccuracyTable, summarize_cells
from ..report.columns import ALPHA, METRICS, MISSING, Column, Table, Txt
from ..report.stats import _stat, fmt_acc, fmt_num, stat_text
from .expand import Expansion, expand, record_key
from .spec import SpecError, TableSpec, load_spec

NO_BUDGET = "no budget"


@dataclass
class Row:
    label: str
    method: str
    data_free: bool
    published: str | None
    spec_label: str


def _parse_overrides(text: str) -> dict[str, str]:
    out = {}
    for part in (p for p in str(text).split(",") if p):
        key, _, value = part.partition("=")
        out[key] = value
    return out


def _row_fit(row_canon: tuple, rec_canon: tuple) -> bool:
    return set(row_canon) <= set(rec_canon)


def assign_records(exp: Expansion, df: pd.DataFrame) -> tuple[pd.DataFrame, list[Row], list[str]]:
    """The records of ``df`` that belong to the table, one line per (record, table row), with the table row's
    label in ``row``; the rows in table order; and the problems met (records whose overrides no longer
    resolve)."""
    from ..registry import METHODS

    budget = exp.planned[0].cell.budget if exp.planned else exp.spec.budget
    columns = {(c.dataset, c.teacher, c.student) for c in exp.columns}
    # each spec row's canonical overrides per column (from the expansion; raw for cells without a budget)
    row_canon: dict[tuple[str, tuple], tuple] = {}
    for p in exp.planned:
        row_canon[(p.row.label, (p.column.dataset, p.column.teacher, p.column.student))] = tuple(p.cell.overrides)
    problems: list[str] = []
    keys: dict[tuple, tuple | None] = {}
    lines = []
    for rec in df.itertuples(index=False):
        col = (rec.dataset, rec.teacher, rec.student)
        if col not in columns or rec.budget != budget:
            continue
        ident = (rec.method, *col, rec.budget, rec.overrides)
        if ident not in keys:
            keys[ident] = record_key(rec.method, *col, rec.budget, _parse_overrides(rec.overrides))
            if keys[ident] is None:
                problems.append(f"{rec.path}: its overrides ({rec.overrides}) no longer resolve; left out")
        key = keys[ident]
        if key is None:
            continue
        canon = key[-1]
        fits = [r for r in exp.rows if r.method == rec.method and _row_fit(row_canon.get((r.label, col), ()), canon)]
        if not fits:
            continue
        most = max(len(row_canon.get((r.label, col), ())) for r in fits)
        for r in fits:
            own = row_canon.get((r.label, col), ())
            if len(own) == most:
                extra = tuple(sorted(set(canon) - set(own)))
                lines.append({**rec._asdict(), "row": r.label, "extra": extra})
    frame = pd.DataFrame(lines, columns=[*df.columns, "row", "extra"])
    # split rows by the extra overrides that differ between their records; shared ones are common settings
    all_extras = [set(e) for e in frame["extra"]] if len(frame) else []
    common = set.intersection(*all_extras) if all_extras else set()
    rows: list[Row] = []
    for r in exp.rows:
        sub = frame[frame["row"] == r.label]
        variants = sorted({tuple(sorted(set(e) - common)) for e in sub["extra"]}) or [()]
        data_free = bool(METHODS.get(r.method).data_free)
        for v in variants:
            label = r.label if not v else f"{r.label} [{', '.join(f'{k}={x}' for k, x in v)}]"
            rows.append(Row(label, r.method, data_free, r.published if not v else None, r.label))
    if len(frame):
        frame["label"] = [
            r if not (v := tuple(sorted(set(e) - common))) else f"{r} [{', '.join(f'{k}={x}' for k, x in v)}]"
            for r, e in zip(frame["row"], frame["extra"])]
    else:
        frame["label"] = []
    frame.attrs["common"] = sorted(common)
    return frame, rows, problems


def _variety(sub: pd.DataFrame, field: str) -> list[str]:
    return sorted({str(v) for v in sub[field] if isinstance(v, str) and v})


def build(exp: Expansion, df: pd.DataFrame, metric: str, published: Published | None = None) -> tuple[Table, list[str]]:
    """The table of ``exp`` from the record frame ``df`` (:func:`benchmark.report.load.load_records`)."""
    published = load_published() if published is None else published
    frame, rows, problems = assign_records(exp, df)
    columns = list(exp.columns)
    no_budget = {(p.row.label, p.column) for p in exp.unresolved()}
    value_col = METRICS[metric][0]
    cells: dict[tuple[str, Column], AccCell] = {}
    failures: list[str] = []
    for col in columns:
        in_col = frame[(frame["dataset"] == col.dataset) & (frame["teacher"] == col.teacher)
                       & (frame["student"] == col.student)]
        for row in rows:
            part = in_col[in_col["label"] == row.label]
            stat = _stat(part, value_col)
            figs, alias = (published.lookup(col.dataset, col.teacher, col.student, row.published)
                           if row.published else ([], None))
            cells[(row.label, col)] = AccCell(stat, list(figs), alias)
            for f in part[part["status"] != "done"].itertuples(index=False):
                err = f.error.splitlines()[0] if isinstance(f.error, str) and f.error else "no error message"
                failures.append(f"{row.label} on {col.label} seed {f.seed}: {err[:160]}")
    acc_rows = [AccRow(r.label, r.method, r.data_free) for r in rows]
    with_published, significance = summarize_cells(acc_rows, columns, cells, ALPHA)
    settings = [f"budget {exp.planned[0].cell.budget if exp.planned else exp.spec.budget}"]
    if frame.attrs.get("common"):
        settings.append("--set " + " ".join(f"{k}={v}" for k, v in frame.attrs["common"]))
    acc = AccuracyTable(exp.spec.name, metric, columns, acc_rows, cells, with_published, significance, failures,
                        ALPHA, settings)
    table = acc.to_table() if exp.spec.layout == "accuracy" else _cost_table(acc, frame, rows, columns)
    _mark_no_budget(table, acc_rows, columns, with_published, no_budget, exp.spec.layout)
    if no_budget and "status" in table.frame:
        for label, col in no_budget:
            hit = ((table.frame["method"] == label) & (table.frame["dataset"] == col.dataset)
                   & (table.frame["teacher"] == col.teacher) & (table.frame["student"] == col.student))
            table.frame.loc[hit & (table.frame["status"] == "missing"), "status"] = NO_BUDGET
    table.name = f"table-{exp.spec.name}" + ("" if metric == exp.spec.metric else f"-{metric}")
    table.title = f"{exp.spec.name}: {exp.spec.description}"
    table.caption = f"Reproduces: {exp.spec.source}. " + table.caption
    notes = list(exp.spec.notes) + list(table.notes)
    notes += _mixed_notes(frame, rows)
    if no_budget:
        names = sorted({f"{label} on {col.label}" for label, col in no_budget})
        notes.append(f"{NO_BUDGET}: the method has no {exp.planned[0].cell.budget!r} budget there ({'; '.join(names)}).")
    table.notes = notes
    return table, problems


def _mixed_notes(frame: pd.DataFrame, rows: list[Row]) -> list[str]:
    """Rows whose records come from different devices, precisions or commits (said, not hidden)."""
    out = []
    for row in rows:
        sub = frame[(frame["label"] == row.label) & (frame["status"] == "done")]
        for field, what in (("device", "devices"), ("device_name", "device models"), ("precision", "precisions"),
                            ("git_commit", "code commits")):
            if field not in sub:
                continue
            values = _variety(sub, field)
            if len(values) > 1:
                shown = ", ".join(v[:12] for v in values)
                out.append(f"{row.label}: records from {len(values)} {what} ({shown}).")
    return out


def _mark_no_budget(table: Table, rows: list[AccRow], columns: list[Column], with_published: dict,
                    no_budget: set, layout: str) -> None:
    if not no_budget:
        return
    for i, row in enumerate(rows):
        pos = 2
        for col in columns:
            width = (3 if with_published[col] else 1) if layout == "accuracy" else 4
            if (row.label, col) in no_budget and table.rows[i][pos].text == MISSING:
                table.rows[i][pos] = Txt(NO_BUDGET)
            pos += width


def _hours(sub: pd.DataFrame) -> tuple[float | None, bool]:
    """Mean training hours over the finished seeds: GPU-hours where the records have them, else wall-clock."""
    done = sub[sub["status"] == "done"]
    if done.empty:
        return None, False
    gpu = pd.to_numeric(done["gpu_hours"], errors="coerce")
    if gpu.notna().all() and len(gpu):
        return float(gpu.mean()), True
    wall = pd.to_numeric(done["wall_time_s"], errors="coerce").dropna()
    return (float(wall.mean()) / 3600.0, False) if len(wall) else (None, False)


def _cost_table(acc: AccuracyTable, frame: pd.DataFrame, rows: list[Row], columns: list[Column]) -> Table:
    header, align, groups = ["Method", "n"], ["l", "r"], [("", 1), ("", 1)]
    for col in columns:
        header += [col.label, "paper", "hours", "paper h"]
        align += ["r"] * 4
        groups.append((col.label, 4))
    out_rows, recs = [], []
    sources = acc.sources()
    index = {f.source: i + 1 for i, f in enumerate(sources)}
    cpu_hours = False
    for row in acc.rows:
        line = [Txt(row.label), Txt(str(row.usual_n) if row.usual_n else MISSING)]
        for col in columns:
            cell = acc.cells[(row.label, col)]
            txt = stat_text(cell.stat, row.usual_n)
            txt.bold, txt.marker = cell.best, cell.significant
            sub = frame[(frame["label"] == row.label) & (frame["dataset"] == col.dataset)
                        & (frame["teacher"] == col.teacher) & (frame["student"] == col.student)]
            hours, on_gpu = _hours(sub)
            cpu_hours |= hours is not None and not on_gpu
            paper = cell.paper
            line += [txt, Txt(MISSING if paper is None else fmt_acc(paper.top1)),
                     Txt(MISSING if hours is None else fmt_num(hours) + ("" if on_gpu else " (wall)")),
                     Txt(MISSING if paper is None or paper.hours is None else fmt_num(paper.hours))]
            st = cell.stat
            status = "missing" if st is None else "failed" if st.n == 0 else "done"
            recs.append({"method": row.label, "status": status, "dataset": col.dataset, "teacher": col.teacher, "student": col.student,
                         "n": 0 if st is None else st.n, "failed": 0 if st is None else st.n_failed,
                         "mean": None if st is None else st.mean, "std": None if st is None else st.std,
                         "paper": None if paper is None else paper.top1, "hours": hours, "gpu_hours": on_gpu,
                         "paper_hours": None if paper is None else paper.hours,
                         "paper_source": None if paper is None else index[paper.source]})
        out_rows.append(line)
    rules = [i for i, r in enumerate(acc.rows) if i and r.data_free and not acc.rows[i - 1].data_free]
    caption = (f"Top-1 accuracy (%, {METRICS[acc.metric][1]}; mean ± std over seeds, n seeds) and training hours "
               f"(mean over the finished seeds: GPU-hours of GPU runs, else wall-clock hours marked (wall)), beside "
               f"the published accuracy and hours. {MISSING}: not run; failed (k): k failed runs and none finished.")
    notes = [n for n in acc.notes()]
    if cpu_hours:
        notes.append("(wall): a run without a GPU; its wall-clock hours are not GPU-hours.")
    frame_out = pd.DataFrame(recs, columns=["method", "status", "dataset", "teacher", "student", "n", "failed", "mean", "std",
                                            "paper", "hours", "gpu_hours", "paper_hours", "paper_source"])
    return Table("cost", "", caption, header, align, out_rows, frame_out, notes, groups, rules)


def table_report(name: str, outs: list[str | Path], metric: str | None = None,
                 published: Published | None = None, budget: str | None = None, datasets: list[str] | None = None,
                 pairs: str | None = None) -> tuple[Table, list[str]]:
    """Load the records under ``outs`` and build the table ``name`` (at ``budget``, default the spec's);
    raises ``ReportError`` on bad input."""
    spec: TableSpec = load_spec(name)
    df, problems = load_records(outs)
    if df.empty:
        raise ReportError(f"no records under {', '.join(map(str, outs))}")
    exp = expand(spec, budget=budget, datasets=datasets, pairs=pairs)
    table, more = build(exp, df, metric or spec.metric, published)
    return table, problems + more


def command(args: argparse.Namespace) -> int:
    """``report OUT --table NAME``: write ``table-NAME.{md,tex,csv}`` (``--format``) under the report folder
    and print the Markdown table."""
    from ..records import atomic_write_bytes
    from ..report.render import render_csv, render_latex, render_markdown

    metric = "best" if getattr(args, "metric", None) == "best" else None
    try:
        datasets = getattr(args, "datasets", None)
        table, problems = table_report(args.table, args.outs, metric, budget=getattr(args, "budget", None),
                                       datasets=[d.strip() for d in datasets.split(",") if d.strip()] if datasets
                                       else None, pairs=getattr(args, "pairs", None))
    except (ReportError, SpecError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    report_dir = Path(args.report_dir) if getattr(args, "report_dir", None) else Path(args.outs[0]) / "report"
    formats = {"md": (".md", render_markdown), "latex": (".tex", render_latex), "csv": (".csv", render_csv)}
    chosen = list(formats) if getattr(args, "format", "all") == "all" else [args.format]
    written = []
    for fmt in chosen:
        suffix, render = formats[fmt]
        path = report_dir / f"{table.name}{suffix}"
        atomic_write_bytes(path, render(table).encode("utf-8"))
        written.append(path)
    print(render_markdown(table, heading="##"), end="")
    print(f"\nreport: {', '.join(str(p) for p in written)}")
    return 0


__all__ = ["NO_BUDGET", "assign_records", "build", "command", "table_report"]
