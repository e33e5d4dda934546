"""The report's figures (seaborn on matplotlib's Agg canvas; each written as PNG and PDF).

* ``acc_vs_time``: per column, student accuracy against distillation wall-clock time, one point per seed and
  the mean ± std per method, with the Pareto front of the method means (faster and more accurate) and the
  reference rows as horizontal lines.
* ``learning_curves``: per column, accuracy against iterations, mean and a ±1 std band over seeds.
* ``accuracy_bars``: per column, one bar per method (mean) with ±1 std error bars over seeds.
* ``samples_<column>``: per column, each method's sample grid (the first finished seed's ``samples.png``,
  already de-normalised with the dataset's statistics by :func:`benchmark.quality.save_sample_grid`).

Figures are drawn on ``matplotlib.figure.Figure`` objects with an Agg canvas, never through pyplot, so the
report neither needs a display nor changes the caller's backend or style.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .columns import METRICS, Column, _in_column, _variants, columns_of

PDF_METADATA = {"CreationDate": None}     # no timestamp: the same records give the same PDF


def _figure(n_panels: int, width: float = 4.6, height: float = 3.6, max_cols: int = 3):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = max(1, min(n_panels, max_cols))
    nrows = max(1, math.ceil(n_panels / ncols))
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n_panels)]
    return fig, axes


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = out_dir / f"{name}.{ext}"
        tmp = out_dir / f".{name}.tmp.{ext}"
        if ext == "png":
            fig.savefig(tmp, format="png", dpi=150)
        else:
            fig.savefig(tmp, format="pdf", metadata=PDF_METADATA)
        tmp.replace(path)
        paths.append(path)
    return paths


def slug(col: Column) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{col.dataset}_{col.teacher}-{col.student}")


def palette(df: pd.DataFrame) -> dict[str, tuple]:
    """One colour per variant, the same in every figure."""
    import seaborn as sns

    labels = [v for v, _, _ in _variants(df)]
    colors = sns.color_palette("tab10" if len(labels) <= 10 else "husl", max(len(labels), 1))
    return {label: tuple(colors[i]) for i, label in enumerate(labels)}


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten by one both faster and more accurate, by increasing time."""
    front, best = [], -math.inf
    for t, a in sorted(points, key=lambda p: (p[0], -p[1])):
        if a > best:
            front.append((t, a))
            best = a
    return front


def _done_columns(df: pd.DataFrame, columns: list[Column]) -> tuple[pd.DataFrame, list[Column]]:
    """The finished runs, and those of ``columns`` that hold any."""
    done = df[df["status"] == "done"]
    return done, [c for c in columns if not _in_column(done, c).empty]


def acc_vs_time(df: pd.DataFrame, out_dir: Path, metric: str, columns: list[Column], colors: dict) -> list[Path]:
    import seaborn as sns

    value = METRICS[metric][0]
    done, cols = _done_columns(df, columns)
    if not cols:
        return []
    with sns.axes_style("whitegrid"):
        fig, axes = _figure(len(cols))
        for ax, col in zip(axes, cols):
            part = _in_column(done, col)
            means = []
            for label, _, data_free in _variants(part):
                sub = part[part["variant"] == label]
                if not data_free:
                    ax.axhline(sub[value].mean(), color=colors[label], ls="--", lw=1, label=f"{label} (real data)")
                    continue
                sub = sub[sub["wall_time_s"].notna()]
                if sub.empty:
                    continue
                ax.scatter(sub["wall_time_s"], sub[value], color=colors[label], alpha=0.35, s=18)
                t, a = float(sub["wall_time_s"].mean()), float(sub[value].mean())
                ts = float(sub["wall_time_s"].std(ddof=1)) if len(sub) > 1 else 0.0
                as_ = float(sub[value].std(ddof=1)) if len(sub) > 1 else 0.0
                ax.errorbar([t], [a], xerr=[ts], yerr=[as_], fmt="o", ms=7, color=colors[label], capsize=3,
                            label=label)
                means.append((t, a))
            front = _pareto(means)
            if len(front) > 1:
                xs, ys = zip(*front)
                ax.plot(xs, ys, color="0.3", lw=1, ls=":", drawstyle="steps-post", label="Pareto front")
            times = [t for t, _ in means if t > 0]
            if times and max(times) / min(times) > 20:
                ax.set_xscale("log")
            ax.set_title(col.label)
            ax.set_xlabel("distillation wall-clock (s)")
            ax.set_ylabel(f"{metric} accuracy (%)")
            ax.legend(fontsize=7, loc="best")
        return _save(fig, out_dir, "acc_vs_time")


def _curve_frame(part: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for label, seed, curve in part[["variant", "seed", "curve"]].itertuples(index=False, name=None):
        for p in curve:
            if p.get("iteration") is not None and p.get("acc") is not None:
                rows.append({"method": label, "seed": seed, "iteration": p["iteration"], "acc": p["acc"]})
    return pd.DataFrame(rows, columns=["method", "seed", "iteration", "acc"])


def learning_curves(df: pd.DataFrame, out_dir: Path, columns: list[Column], colors: dict) -> list[Path]:
    import seaborn as sns

    done = df[df["status"] == "done"]
    frames = [(c, _curve_frame(_in_column(done, c))) for c in columns]
    frames = [(c, f[f.groupby("method")["iteration"].transform("nunique") > 1]) for c, f in frames]
    frames = [(c, f) for c, f in frames if not f.empty]
    if not frames:
        return []
    with sns.axes_style("whitegrid"):
        fig, axes = _figure(len(frames))
        for ax, (col, frame) in zip(axes, frames):
            order = [m for m in colors if m in set(frame["method"])]
            sns.lineplot(data=frame, x="iteration", y="acc", hue="method", hue_order=order, palette=colors,
                         errorbar="sd", ax=ax)
            ax.set_title(col.label)
            ax.set_xlabel("iteration")
            ax.set_ylabel("test accuracy (%)")
            ax.legend(fontsize=7, loc="best")
        return _save(fig, out_dir, "learning_curves")


def accuracy_bars(df: pd.DataFrame, out_dir: Path, metric: str, columns: list[Column], colors: dict) -> list[Path]:
    import seaborn as sns

    value = METRICS[metric][0]
    done, cols = _done_columns(df, columns)
    if not cols:
        return []
    with sns.axes_style("whitegrid"):
        fig, axes = _figure(len(cols), width=max(4.6, 0.5 * len(colors) + 1.5))
        for ax, col in zip(axes, cols):
            part = _in_column(done, col)
            order = [m for m in colors if m in set(part["variant"])]
            sns.barplot(data=part, x="variant", y=value, order=order, hue="variant", hue_order=order,
                        palette=colors, errorbar="sd", capsize=0.2, legend=False, ax=ax)
            bottom = max(0.0, math.floor((float(np.nanmin(part[value])) - 10.0) / 10.0) * 10.0)
            ax.set_ylim(bottom, min(100.0, float(np.nanmax(part[value])) + 3.0))
            ax.set_title(col.label)
            ax.set_xlabel("")
            ax.set_ylabel(f"{metric} accuracy (%), mean ± std" + (" (axis from {bottom:g})".format(bottom=bottom) if bottom else ""))
            ax.tick_params(axis="x", labelrotation=45)
        return _save(fig, out_dir, "accuracy_bars")


def sample_grids(df: pd.DataFrame, out_dir: Path, columns: list[Column]) -> list[Path]:
    from matplotlib.image import imread

    paths: list[Path] = []
    done = df[(df["status"] == "done") & df["samples_png"].notna()]
    for col in columns:
        part = _in_column(done, col).sort_values("seed", kind="stable")
        panels = []
        for label, _, _ in _variants(part):
            sub = part[part["variant"] == label]
            conditional = "quality_label_agreement" in sub and sub["quality_label_agreement"].notna().any()
            for png in sub["samples_png"]:
                if Path(png).is_file():
                    panels.append((label + ("\n(one row per class)" if conditional else ""), imread(png)))
                    break
        if not panels:
            continue
        fig, axes = _figure(len(panels), width=3.4, height=3.8, max_cols=4)
        for ax, (label, img) in zip(axes, panels):
            if img.ndim == 2:
                ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(img, interpolation="nearest")
            ax.set_title(label, fontsize=10)
            ax.set_axis_off()
        fig.suptitle(f"Synthetic samples, {col.label}")
        paths += _save(fig, out_dir, f"samples_{slug(col)}")
    return paths


def write_figures(df: pd.DataFrame, out_dir: str | Path, metric: str = "final",
                  columns: list[Column] | None = None, on_error=None) -> list[Path]:
    """Write every figure into ``out_dir``; returns the files written (PNG and PDF of each).

    ``on_error(name, exc)``, when given, is called for a figure that fails and the others are still drawn;
    without it the error propagates.
    """
    out_dir = Path(out_dir)
    columns = columns_of(df) if columns is None else columns
    colors = palette(df)
    jobs = [
        ("acc_vs_time", lambda: acc_vs_time(df, out_dir, metric, columns, colors)),
        ("learning_curves", lambda: learning_curves(df, out_dir, columns, colors)),
        ("accuracy_bars", lambda: accuracy_bars(df, out_dir, metric, columns, colors)),
        ("samples", lambda: sample_grids(df, out_dir, columns)),
    ]
    paths: list[Path] = []
    for name, job in jobs:
        try:
            paths += job()
        except Exception as exc:  # noqa: BLE001 - reported through on_error
            if on_error is None:
                raise
            on_error(name, exc)
    return paths
