"""Planning and bookkeeping: which cells to submit, the grid file, the submissions log, the printed plan."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from ..records import Cell, OutputLayout, atomic_write_json, existing_record
from ..runner import RunOptions

if TYPE_CHECKING:
    from .resources import Resources


@dataclass
class Plan:
    submit: list[tuple[Cell, str]]          # (cell, why: missing | failed | forced)
    done: list[Cell]
    live: list[tuple[Cell, str, str]]       # (cell, state, job id): already pending or running


def plan_cells(cells: list[Cell], options: RunOptions, force: bool, check_jobs: bool = True) -> Plan:
    """Which cells to submit (missing or failed, or done ones with ``force``) and which to leave alone."""
    from .. import status as status_mod

    plan = Plan([], [], [])
    if not check_jobs:      # the inline launcher: records only
        for cell in cells:
            rec = existing_record(options.out, cell)
            if rec and rec.get("status") == "done":
                (plan.submit.append((cell, "forced")) if force else plan.done.append(cell))
            else:
                plan.submit.append((cell, "failed" if rec else "missing"))
        return plan
    states = {st.cell_id: st for st in status_mod.collect(options.out, cells=cells, include_grid=False)}
    for cell in cells:
        st = states[cell.cell_id]
        if st.state in ("pending", "running"):
            plan.live.append((cell, st.state, st.job_id or "?"))
        elif st.state == "done":
            (plan.submit.append((cell, "forced")) if force else plan.done.append(cell))
        else:
            plan.submit.append((cell, st.state))
    return plan


def missing_teachers(cells: Iterable[Cell], options: RunOptions) -> list[tuple[str, str, int]]:
    from ..registry import DATASETS
    from ..teachers import cache_path

    keys = sorted({(c.dataset, c.teacher, c.seed) for c in cells if not c.teacher_ckpt})
    return [k for k in keys if not cache_path(options.cache_dir(), DATASETS.get(k[0]), k[1], k[2]).exists()]


def _now() -> str:
    from ..env import now

    return now()


def update_grid(out: Path, cells: list[Cell]) -> None:
    path = OutputLayout(out).grid
    grid: dict[str, Any] = {}
    if path.is_file():
        try:
            grid = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            grid = {}
    entries = dict(grid.get("cells") or {})
    for cell in cells:
        entries[cell.cell_id] = cell.as_dict()
    atomic_write_json(path, {"version": 1, "updated_at": _now(), "cells": entries})


def append_submission(out: Path, entry: dict) -> None:
    path = OutputLayout(out).submissions
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())



def _cell_label(cell: Cell) -> str:
    extra = f" {dict(cell.overrides)}" if cell.overrides else ""
    return f"{cell.method} {cell.dataset} {cell.teacher}->{cell.student} seed {cell.seed} ({cell.budget}){extra}"


def print_plan(plan: Plan, launcher: str, resources: Resources | None, teachers: list, out: Path,
               limit: int | None = None) -> None:
    """The cells to run and to skip (at most ``limit`` lines of each; a dry run lists them all)."""
    print(f"launcher {launcher}: {len(plan.submit)} cell(s) to run, {len(plan.done)} already done, "
          f"{len(plan.live)} already pending/running; records -> {out}")
    lines = [f"  run   [{why:7s}] {cell.cell_id}  {_cell_label(cell)}" for cell, why in plan.submit]
    skips = [f"  skip  [done   ] {cell.cell_id}" for cell in plan.done]
    skips += [f"  skip  [{state:7s}] {cell.cell_id}  job {job}" for cell, state, job in plan.live]
    for group in (lines, skips):
        shown = group if limit is None else group[:limit]
        for line in shown:
            print(line)
        if len(group) > len(shown):
            print(f"  ... and {len(group) - len(shown)} more (--dry-run lists them all)")
    for dataset, arch, seed in teachers:
        print(f"  teacher to train first: {dataset}/{arch} seed {seed}")
    if resources is not None:
        print(f"  resources per cell: {resources.summary()}")
