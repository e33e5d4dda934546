"""``run --table NAME`` and ``list tables``: a table spec as the grid of ``python -m benchmark run``.

``run --table NAME [--seeds ...] [--methods ...] [--set key=v1,v2 ...] [--budget B]`` runs (or, with
``--launcher local|slurm``, submits) the table's cells through the ordinary launchers, so the usual rules
hold: finished cells are skipped, failed and missing ones run, ``--force`` reruns. ``--seeds`` replaces the
spec's seeds, ``--methods`` keeps the rows whose method matches, ``--set`` applies to every row (a key with
several values multiplies the rows), ``--budget`` replaces the spec's budget (e.g. ``smoke`` to try a table),
``--dataset``/``--datasets`` and ``--pairs`` replace its columns (the ablation on CIFAR-10:
``--dataset cifar10 --budget paper``; ``report`` takes the same flags). ``--teacher``/``--student`` and
``--teacher-ckpt`` are refused with ``--table``.
"""
from __future__ import annotations

import argparse
import sys

from ..config import parse_seeds
from ..records import Cell
from .expand import Expansion, budget_preset, expand
from .spec import SpecError, load_spec, spec_names

#: Grid flags that do not combine with a table (attribute name -> flag): the table's columns are pairs.
SPEC_FLAGS = {"teacher": "--teacher", "student": "--student", "teacher_ckpt": "--teacher-ckpt"}


def table_datasets(args: argparse.Namespace) -> list[str] | None:
    """``--dataset`` / ``--datasets``: the datasets that replace the table's (None: the table's own)."""
    dataset, datasets = getattr(args, "dataset", None), getattr(args, "datasets", None)
    if dataset and datasets:
        raise SpecError("give --dataset or --datasets, not both")
    text = datasets or dataset
    return [d.strip() for d in text.split(",") if d.strip()] if text else None


def _seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    return parse_seeds(text)


def table_expansion(args: argparse.Namespace) -> Expansion:
    """The expansion of ``--table`` with the command line's seeds, methods, sweeps and budget."""
    given = [flag for attr, flag in SPEC_FLAGS.items() if getattr(args, attr, None)]
    if given:
        raise SpecError(f"{', '.join(given)} cannot be combined with --table (its columns are teacher:student "
                        f"pairs: use --pairs)")
    spec = load_spec(args.table)
    methods = getattr(args, "methods", None)
    return expand(spec, seeds=_seeds(getattr(args, "seeds", None)), sets=list(getattr(args, "overrides", []) or []),
                  methods=None if methods in (None, "all") else methods, budget=getattr(args, "budget", None),
                  datasets=table_datasets(args), pairs=getattr(args, "pairs", None))


def print_table_plan(exp: Expansion, file=None) -> None:
    """The table's shape, the recipe of each (method, column) and every cell that cannot run."""
    file = file or sys.stdout
    spec = exp.spec
    cells = exp.cells()
    print(f"table {spec.name}: {len(exp.rows)} row(s) x {len(exp.columns)} column(s) x {len(exp.seeds)} seed(s) "
          f"= {len(exp.planned)} cell(s), {len(cells)} distinct runnable, {len(exp.unresolved())} without a budget",
          file=file)
    print(f"  {spec.description}", file=file)
    if exp.common:
        print(f"  every row: --set {' '.join(f'{k}={v}' for k, v in exp.common.items())}", file=file)
    print("  columns: " + "; ".join(c.label for c in exp.columns), file=file)
    recipes: dict[tuple[str, str, str], list[str]] = {}
    for p in exp.planned:
        if p.problem is None:
            preset = ", ".join(f"{k}={v}" for k, v in budget_preset(p.cell).items()) or "the method's defaults"
            where = recipes.setdefault((p.cell.method, p.cell.budget, preset), [])
            if p.column.label not in where:
                where.append(p.column.label)
    for (method, budget, preset), where in recipes.items():
        on = "every column" if len(where) == len(exp.columns) > 1 else "; ".join(where)
        print(f"  recipe {method} ({budget}) on {on}: {preset}", file=file)
    for row in exp.rows:
        if row.overrides:
            print(f"  row {row.label!r}: {row.method} --set "
                  + " ".join(f"{k}={v}" for k, v in row.overrides), file=file)
    shown = set()
    for p in exp.unresolved():
        key = (p.row.label, p.column)
        if key in shown:
            continue
        shown.add(key)
        print(f"  no budget: row {p.row.label!r} on {p.column.label} ({len(exp.seeds)} seed(s)): {p.problem}",
              file=file)


def table_cells(args: argparse.Namespace, dry_run: bool) -> list[Cell]:
    """The runnable cells of ``--table`` (printing the plan); outside a dry run a cell without a budget is
    an error naming every such row."""
    exp = table_expansion(args)
    if exp.unresolved() and not dry_run:
        budget = exp.unresolved()[0].cell.budget
        rows = sorted({f"{p.row.method} on {p.column.label}" for p in exp.unresolved()})
        raise SpecError(f"table {exp.spec.name}: no {budget!r} budget for {'; '.join(rows)} (run the others with "
                        f"--methods, or add the budgets)")
    print_table_plan(exp)
    return exp.cells()


def list_tables(pattern: str = "*") -> int:
    import fnmatch

    for name in spec_names():
        if fnmatch.fnmatchcase(name, pattern):
            print(f"{name:18s} {load_spec(name).description}")
    return 0
