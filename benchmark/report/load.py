"""Read every ``record.json`` under one or more output folders into one tidy DataFrame.

One row per record (per cell). A corrupt or partial record is named in the returned ``problems`` and
skipped; the rest are read. A cell is never averaged with itself: a record found twice (the same ``cell_id``
under two folders, e.g. a copied results folder), or two records of the same method, dataset, pair, seed,
budget and ``--set`` values under different ids (e.g. one written before the ids hashed the resolved
config), count once (a finished one before a failed one, then the latest), and the duplicate is reported.
``mixed_runs`` names the rows whose records differ in precision, device or code commit.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from ..records import iter_records

REFERENCE_METHODS = ("teacher", "student-real", "kd-real")

#: Scalar record fields copied into the frame (missing ones become NaN / None).
NUMERIC_FIELDS = (
    "teacher_acc", "final_acc", "best_acc", "best_iteration", "iterations", "wall_time_s", "teacher_time_s",
    "time_per_iteration_s", "student_steps", "teacher_forwards", "synthetic_images", "images_per_s",
    "peak_memory_mb", "gpu_hours",
)
QUALITY_PREFIX = "quality_"

BASE_COLUMNS = [
    "cell_id", "method", "variant", "data_free", "dataset", "teacher", "student", "seed", "budget", "overrides",
    "teacher_ckpt", "status", "error", *NUMERIC_FIELDS, "precision", "device", "device_name", "git_commit",
    "started_at",
    "finished_at", "samples_png", "curve", "path",
]


class ReportError(Exception):
    """Bad input for the report (a missing folder, no records, an unknown table); one-line message."""


def _number(value: Any, key: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} is {value!r}, not a number")
    return float(value)


def _row(path: Path, rec: dict[str, Any]) -> dict[str, Any]:
    """One frame row; raises ``ValueError`` naming what is missing or malformed."""
    missing = [k for k in ("dataset", "teacher", "student", "seed") if rec.get(k) in (None, "")]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    status = rec["status"]
    if status not in ("done", "failed"):
        raise ValueError(f"status is {status!r}, not 'done' or 'failed'")
    try:
        seed = int(rec["seed"])
    except (TypeError, ValueError):
        raise ValueError(f"seed is {rec['seed']!r}, not an integer") from None
    row: dict[str, Any] = {
        "cell_id": str(rec.get("cell_id") or path.parent.name),
        "method": str(rec["method"]),
        "dataset": str(rec["dataset"]),
        "teacher": str(rec["teacher"]),
        "student": str(rec["student"]),
        "seed": seed,
        "budget": str(rec.get("budget") or "default"),
        "overrides": ",".join(f"{k}={v}" for k, v in sorted(dict(rec.get("overrides") or {}).items())),
        "teacher_ckpt": rec.get("teacher_ckpt"),
        "status": status,
        "error": rec.get("error"),
        "path": str(path),
    }
    data_free = rec.get("data_free")
    row["data_free"] = bool(data_free) if data_free is not None else row["method"] not in REFERENCE_METHODS
    for key in NUMERIC_FIELDS:
        row[key] = _number(rec.get(key), key)
    if status == "done":
        for key in ("final_acc", "best_acc"):
            if not math.isfinite(row[key]):
                raise ValueError(f"status 'done' without {key}")
    env = rec.get("env") or {}
    row["device"] = env.get("device")
    row["device_name"] = env.get("device_name")
    run_cfg = (rec.get("config") or {}).get("run") or {}
    row["precision"] = run_cfg.get("precision_resolved") or run_cfg.get("precision")
    row["git_commit"] = env.get("git_commit")
    row["started_at"] = rec.get("started_at")
    row["finished_at"] = rec.get("finished_at")
    png = rec.get("samples_png")
    row["samples_png"] = str(path.parent / png) if png else None
    curve = rec.get("curve") or []
    if not isinstance(curve, list) or not all(isinstance(p, dict) for p in curve):
        raise ValueError("curve is not a list of points")
    row["curve"] = curve
    quality = rec.get("quality") or {}
    if not isinstance(quality, dict):
        raise ValueError("quality is not a dict")
    for key, value in quality.items():
        row[QUALITY_PREFIX + key] = _number(value, f"quality.{key}")
    return row


def _pairs(overrides: str) -> list[str]:
    return [p for p in overrides.split(",") if p]


def _variant(row: pd.Series, several_budgets: bool, common: set[str]) -> str:
    label = row["method"]
    own = [p for p in _pairs(row["overrides"]) if p not in common]
    if own:
        label += f" [{','.join(own)}]"
    if several_budgets:
        label += f" ({row['budget']})"
    return label


def common_settings(df: pd.DataFrame) -> list[str]:
    """The budget and ``--set`` overrides shared by every record (left out of the row labels)."""
    if df.empty:
        return []
    out = []
    budgets = sorted(set(df["budget"]))
    if len(budgets) == 1:
        out.append(f"budget {budgets[0]}")
    sets = [set(_pairs(o)) for o in df["overrides"]]
    common = sorted(set.intersection(*sets)) if sets else []
    if common:
        out.append("--set " + " ".join(common))
    return out


def load_records(paths: Iterable[str | Path]) -> tuple[pd.DataFrame, list[str]]:
    """Every record under ``paths`` as one tidy DataFrame, and the problems met on the way.

    Raises :class:`ReportError` when a path is not a folder. Columns: :data:`BASE_COLUMNS` plus one
    ``quality_<key>`` column per quality metric found. ``variant`` is the row label the tables use: the method
    name, with its ``--set`` overrides and, when the records mix budgets, its budget appended, so that cells
    run with different settings are never averaged together.
    """
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    seen: dict[Any, int] = {}
    for root in paths:
        root = Path(root)
        if not root.is_dir():
            raise ReportError(f"no such folder: {root}")
        for path, rec, err in iter_records(root):
            if err is not None:
                problems.append(err)
                continue
            try:
                row = _row(path, rec)
            except ValueError as exc:
                problems.append(f"incomplete record {path}: {exc}")
                continue
            prev = seen.get(row["cell_id"], seen.get(_same_cell(row)))
            if prev is not None:
                kept = rows[prev]
                what = (f"duplicate cell {row['cell_id']}" if kept["cell_id"] == row["cell_id"] else
                        f"the same cell twice ({kept['cell_id']}, {row['cell_id']})")
                if _preferred(row, kept):
                    rows[prev] = row
                    seen[row["cell_id"]] = prev
                    problems.append(f"{what}: using {path}, not the {'failed ' * (kept['status'] != 'done')}"
                                    f"{'older ' * (kept['status'] == 'done')}{kept['path']}")
                else:
                    problems.append(f"{what}: using {kept['path']}, not {path}")
                continue
            seen[row["cell_id"]] = seen[_same_cell(row)] = len(rows)
            rows.append(row)
    quality_cols = sorted({k for r in rows for k in r if k.startswith(QUALITY_PREFIX)})
    df = pd.DataFrame(rows, columns=[c for c in BASE_COLUMNS if c != "variant"] + quality_cols)
    several_budgets = df["budget"].nunique() > 1
    common = set.intersection(*[set(_pairs(o)) for o in df["overrides"]]) if len(df) else set()
    df.insert(2, "variant", [_variant(r, several_budgets, common) for _, r in df.iterrows()] if len(df) else [])
    df = df.sort_values(["dataset", "teacher", "student", "method", "variant", "seed", "cell_id"], kind="stable")
    return df.reset_index(drop=True), problems


def _same_cell(row: dict[str, Any]) -> tuple:
    """What makes two records one cell of a table (and one seed of its mean)."""
    return ("cell", row["method"], row["dataset"], row["teacher"], row["student"], row["seed"], row["budget"],
            row["overrides"], row["teacher_ckpt"])


def _preferred(new: dict[str, Any], kept: dict[str, Any]) -> bool:
    """A finished record before a failed one; between two of one status, the one that finished later."""
    if (new["status"] == "done") != (kept["status"] == "done"):
        return new["status"] == "done"
    return str(new.get("finished_at") or "") > str(kept.get("finished_at") or "")


#: Record properties that must agree across the seeds of one row for its mean to compare like with like.
RUN_PROPERTIES = (("precision", "precision"), ("device", "device_name"), ("commit", "git_commit"))


def mixed_runs(df: pd.DataFrame) -> list[str]:
    """One line per table row (variant x dataset x pair) whose finished records differ in precision, device
    or code commit, e.g. ``dafl on digits cnn_wide→cnn_narrow: precision bf16 (seeds 0, 1), fp32 (seed 2)``."""
    lines = []
    done = df[df["status"] == "done"] if len(df) else df
    for (variant, dataset, teacher, student), group in done.groupby(["variant", "dataset", "teacher", "student"],
                                                                    sort=True):
        parts = []
        for label, column in RUN_PROPERTIES:
            values = group[column].map(lambda v: "?" if v is None or v != v else str(v)[:12 if label == "commit"
                                                                                         else None])
            if values.nunique() > 1:
                seeds = {v: sorted(group["seed"][values == v]) for v in sorted(values.unique())}
                parts.append(f"{label} " + ", ".join(f"{v} (seed{'s' * (len(s) > 1)} {', '.join(map(str, s))})"
                                                     for v, s in seeds.items()))
        if parts:
            lines.append(f"{variant} on {dataset} {teacher}→{student}: " + "; ".join(parts))
    return lines


def records_csv_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The frame without its nested columns, for ``records.csv``."""
    return df.drop(columns=["curve"])
