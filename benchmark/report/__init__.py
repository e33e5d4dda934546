"""Reporting: paper-style tables, cost, accuracy at equal cost, quality and figures from the records.

``python -m benchmark report OUT [OUT ...] [--format md|latex|csv|all] [--table NAME] [--metric final|best]
[--report-dir DIR]`` reads every ``record.json`` under the output folders into one tidy DataFrame
(:func:`load_records`) and writes ``OUT/report/``:

* ``accuracy[-NAME][-best].{md,tex,csv}``: methods (reference rows first) x (dataset, teacher→student) columns,
  mean ± std over seeds, the published figure and the difference beside each measured cell, the best
  data-free method per column in bold with a significance marker (Welch's t-test against the runner-up);
* ``equal-cost.*``: accuracy at the same teacher-forward count and at the same wall time, read off the curves;
* ``cost.*``: wall-clock, time per iteration, images per second, teacher forwards, GPU-hours, peak memory;
* ``quality.*``: the synthetic-data quality metrics of :mod:`benchmark.quality`;
* ``figures/*.{png,pdf}``: accuracy vs wall-clock, learning curves, bar chart, sample grids;
* ``records.csv`` (the tidy frame) and ``report.md`` (everything on one page);

and prints the main table to the terminal.
"""
from .cli import add_arguments, command
from .load import ReportError, load_records
from .published import Published, load_published
from .render import render_csv, render_latex, render_markdown, render_text
from .accuracy import AccuracyTable, accuracy_table
from .columns import Column, Table, table_columns
from .costs import cost_table, equal_cost, equal_cost_table, quality_table

__all__ = [
    "add_arguments", "command", "ReportError", "load_records", "Published", "load_published",
    "render_csv", "render_latex", "render_markdown", "render_text", "AccuracyTable", "Column", "Table",
    "accuracy_table", "cost_table", "equal_cost", "equal_cost_table", "quality_table", "table_columns",
    "write_figures",
]


def write_figures(*args, **kwargs):
    """See :func:`benchmark.report.figures.write_figures` (imported lazily: seaborn is slow to import)."""
    from .figures import write_figures as _write_figures

    return _write_figures(*args, **kwargs)
