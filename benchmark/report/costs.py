"""The cost, equal-cost and synthetic-data quality tables: wall-clock, time per iteration, images per
second, teacher forwards, GPU-hours and memory; accuracy read off the curves at the same teacher-forward
count or wall time; the quality metrics stored in the records."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import pandas as pd

from .columns import _in_column, _variants, Column, columns_of, EPS, method_key, MISSING, Table, Txt
from .stats import _mode_n, fmt_acc, fmt_count, fmt_num, Stat, stat_text

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
