"""Expanding a table spec (and ``--set`` sweeps) into cells.

A table is rows x columns x seeds: each spec row (a method and its overrides) on each column (a dataset and
a teacher:student pair) for each seed is one :class:`~benchmark.records.Cell`. Overrides are stored in their
*canonical* form: typed by the config field they set (``5`` and ``5.0`` are one value), and dropped where they
equal what the cell's budget gives anyway (the sensitivity table's ``gamma=0.7`` row and its
``temperature=0.07`` row are both the default cell, run once). Records are matched to rows the same way
(:func:`record_key`), so a record written with ``--set gamma=0.7`` or with no ``--set`` at all fills that row.

A cell whose method has no budget of the table's name for its dataset (e.g. no ``paper:mnist`` preset) is kept
in the plan with its problem, so that a dry run can list it; ``run`` refuses to start while any is left.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import typing
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..config import ConfigError, RunConfig, apply_overrides, coerce, split_overrides
from ..records import Cell, Column
from .spec import RowSpec, SpecError, TableSpec, format_value

# ---- --set sweeps ------------------------------------------------------------------------------------------


def split_values(text: str) -> list[str]:
    """``'0,0.35,0.7'`` -> ``['0', '0.35', '0.7']``; commas inside brackets or quotes do not split
    (``'[0.5,0.999]'`` is one value, ``'[0.5,0.9],[0.9,0.99]'`` two)."""
    values, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(text[start:i].strip())
            start = i + 1
    values.append(text[start:].strip())
    if any(v == "" for v in values):
        raise ConfigError(f"empty value in {text!r} (a sweep is key=v1,v2,...)")
    return values


def parse_sweeps(items: Iterable[str] | None) -> list[tuple[str, list[str]]]:
    """``--set`` items -> ``[(key, [values])]`` in the order given; ``key=v1,v2`` sweeps over its values.
    A key given twice is an error."""
    out: dict[str, list[str]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value or key=v1,v2,..., got {item!r}")
        if key in out:
            raise ConfigError(f"--set {key} given twice (sweep over values with {key}=v1,v2,...)")
        out[key] = list(dict.fromkeys(split_values(value.strip())))
    return list(out.items())


def sweep_combinations(sweeps: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    """The product of the swept values: one dict of overrides per combination (``[{}]`` without sweeps)."""
    if not sweeps:
        return [{}]
    keys = [k for k, _ in sweeps]
    return [dict(zip(keys, combo)) for combo in itertools.product(*[vs for _, vs in sweeps])]


def swept_keys(sweeps: list[tuple[str, list[str]]]) -> list[str]:
    """The keys that take more than one value: the ones that tell rows apart."""
    return [k for k, vs in sweeps if len(vs) > 1]


# ---- canonical overrides -----------------------------------------------------------------------------------

def _typed(cfg: Any, key: str, value: Any) -> Any:
    hint = typing.get_type_hints(type(cfg))[key]
    if isinstance(hint, str):
        hint = {"int": int, "float": float, "bool": bool, "str": str}.get(hint, hint)
    origin = typing.get_origin(hint)
    if isinstance(value, list) and (origin is tuple or hint is tuple):
        value = tuple(value)
    typed = coerce(value, hint, key)
    if hint is int and (isinstance(typed, bool) or not isinstance(typed, int)):
        raise ConfigError(f"bad value for {key}: {value!r} (expected int)")
    if hint is float and (isinstance(typed, bool) or not isinstance(typed, (int, float))):
        raise ConfigError(f"bad value for {key}: {value!r} (expected float)")
    if hint is bool and not isinstance(typed, bool):
        raise ConfigError(f"bad value for {key}: {value!r} (expected bool)")
    return typed


def canonical_overrides(method_cls: type, budget: str, dataset: str, teacher: str, student: str,
                        overrides: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """``overrides`` typed by their config fields, without those equal to what the budget gives; sorted
    ``(key, text)`` pairs as a :class:`Cell` holds them. Raises ``ConfigError`` for an unknown key, a bad
    value, or a missing budget."""
    preset = method_cls.budget_overrides(budget, dataset, teacher, student)
    run_pre, method_pre = split_overrides(preset, method_cls.Config)
    bases = (apply_overrides(RunConfig(), run_pre), apply_overrides(method_cls.Config(), method_pre))
    out = []
    for base, part in zip(bases, split_overrides(overrides, method_cls.Config)):
        for key, value in part.items():
            typed = _typed(base, key, value)
            if typed != getattr(base, key):
                out.append((key, format_value(typed)))
    return tuple(sorted(out))


def _raw_overrides(overrides: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v if isinstance(v, str) else format_value(v)) for k, v in overrides.items()))


# ---- expansion ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PlannedCell:
    row: RowSpec
    column: Column
    seed: int
    cell: Cell
    problem: str | None = None        # e.g. no budget of the table's name for this dataset


@dataclass
class Expansion:
    spec: TableSpec
    rows: list[RowSpec]
    columns: list[Column]
    seeds: list[int]
    planned: list[PlannedCell]
    common: dict[str, str] = field(default_factory=dict)    # --set values every row shares

    def cells(self) -> list[Cell]:
        """The runnable cells, each once (two rows that resolve to the same settings share their cells), seed
        by seed: every row and column of the first seed before the second seed's, so that a table cut short
        has every row at a smaller n rather than rows missing."""
        order = {s: i for i, s in enumerate(self.seeds)}
        ready = sorted((p for p in self.planned if p.problem is None), key=lambda p: order[p.seed])
        return list(dict.fromkeys(p.cell for p in ready))

    def problems(self) -> list[str]:
        return list(dict.fromkeys(p.problem for p in self.planned if p.problem))

    def unresolved(self) -> list[PlannedCell]:
        return [p for p in self.planned if p.problem]


def table_columns(spec: TableSpec) -> list[Column]:
    from ..registry import DATASETS, MODELS
    from ..launch.grid import PAIR_PRESETS

    cols = []
    for name in spec.datasets:
        ds = DATASETS.get(name)
        if spec.pairs == "default":
            pairs = [(ds.default_teacher, ds.default_student)]
        elif isinstance(spec.pairs, str):
            pairs = list(PAIR_PRESETS[spec.pairs])
        else:
            pairs = list(spec.pairs)
        for teacher, student in pairs:
            MODELS.get(teacher), MODELS.get(student)
            cols.append(Column(ds.name, teacher, student))
    return list(dict.fromkeys(cols))


def _select_rows(rows: Iterable[RowSpec], methods: str | None) -> list[RowSpec]:
    rows = list(rows)
    if not methods or methods == "all":
        return rows
    patterns = [p.strip() for p in methods.split(",") if p.strip()]
    chosen = [r for r in rows if any(fnmatch.fnmatchcase(r.method, p) for p in patterns)]
    if not chosen:
        raise SpecError(f"--methods {methods!r} matches no row (rows' methods: "
                        f"{', '.join(dict.fromkeys(r.method for r in rows))})")
    return chosen


def _sweep_rows(rows: list[RowSpec], sweeps: list[tuple[str, list[str]]]) -> tuple[list[RowSpec], dict[str, str]]:
    """Each row x each combination of the swept --set values; the single-valued ones go to every row and
    are returned apart (they do not tell rows apart)."""
    common = {k: vs[0] for k, vs in sweeps if len(vs) == 1}
    multi = [(k, vs) for k, vs in sweeps if len(vs) > 1]
    out = []
    for row in rows:
        clash = sorted(set(row.settings()) & {k for k, _ in sweeps})
        if clash:
            raise SpecError(f"--set {', '.join(clash)}: row {row.label!r} sets it already")
        for combo in sweep_combinations(multi):
            if not combo:
                out.append(row)
                continue
            tag = ", ".join(f"{k}={v}" for k, v in combo.items())
            out.append(RowSpec(f"{row.label} [{tag}]", row.method, row.overrides + tuple(combo.items()),
                               row.published if not combo else None))
    return out, common


def expand(spec: TableSpec, seeds: Iterable[int] | None = None, sets: list[str] | None = None,
           methods: str | None = None, budget: str | None = None, datasets: list[str] | None = None,
           pairs: str | None = None) -> Expansion:
    """The cells of ``spec``: its rows (filtered by ``methods``, multiplied by the ``--set`` sweeps) x its
    columns x ``seeds`` (default: the spec's). ``budget``, ``datasets`` and ``pairs`` (``--pairs`` syntax)
    replace the spec's (the ablation on another dataset). Unknown names and bad values raise; a missing
    budget is kept as the cell's ``problem``."""
    from ..registry import METHODS, load_plugins
    from ..resolve import resolve_cell
    from .spec import parse_pairs

    load_plugins()
    if datasets:
        spec = dataclasses.replace(spec, datasets=tuple(dict.fromkeys(datasets)))
    if pairs:
        spec = dataclasses.replace(spec, pairs=parse_pairs(pairs, "--pairs"))

    seeds = list(dict.fromkeys(seeds)) if seeds is not None else list(spec.seeds)
    budget = budget or spec.budget
    rows, common = _sweep_rows(_select_rows(spec.rows, methods), parse_sweeps(sets))
    columns = table_columns(spec)
    planned = []
    for row in rows:
        cls = METHODS.get(row.method)
        overrides = {**row.settings(), **common}
        for col in columns:
            try:
                cls.budget_overrides(budget, col.dataset, col.teacher, col.student)
                problem = None
            except ConfigError as exc:     # no such budget for this dataset / pair: listed, not fatal here
                problem = str(exc)
            if problem is None:
                canon = canonical_overrides(cls, budget, col.dataset, col.teacher, col.student, overrides)
            else:
                canon = _raw_overrides(overrides)
            for seed in seeds:
                cell = Cell(row.method, col.dataset, col.teacher, col.student, seed, budget, canon)
                if problem is None:
                    resolve_cell(cell)
                planned.append(PlannedCell(row, col, seed, cell, problem))
    return Expansion(spec, rows, columns, seeds, planned, common)


def budget_preset(cell: Cell) -> dict[str, Any]:
    """The budget's overrides for a cell (its recipe at a glance: iterations, batch size, steps, ...)."""
    from ..registry import METHODS

    return dict(METHODS.get(cell.method).budget_overrides(cell.budget, cell.dataset, cell.teacher, cell.student))


# ---- matching records to rows ------------------------------------------------------------------------------

def record_key(method: str, dataset: str, teacher: str, student: str, budget: str,
               overrides: dict[str, Any]) -> tuple | None:
    """The (row, column) identity of a record or cell: names, budget and canonical overrides (``None`` when
    the method is unknown or its overrides no longer resolve)."""
    from ..registry import METHODS, UnknownNameError

    try:
        cls = METHODS.get(method)
        canon = canonical_overrides(cls, budget, dataset, teacher, student, overrides)
    except (ConfigError, UnknownNameError):
        return None
    return (method, dataset, teacher, student, budget, canon)


def cell_key(cell: Cell) -> tuple:
    return (cell.method, cell.dataset, cell.teacher, cell.student, cell.budget, tuple(cell.overrides))


__all__ = ["Column", "Expansion", "PlannedCell", "budget_preset", "canonical_overrides", "cell_key", "expand",
           "parse_sweeps", "record_key", "split_values", "sweep_combinations", "swept_keys", "table_columns"]
