"""The inline launcher: the cells of a grid in this process, or in ``--jobs N`` worker processes on this machine.

Why worker processes: the digits cells are small (16x16 images, batch 128), and one cell does not keep
several cores busy, so on a machine with ``C`` cores ``C`` cells with one thread each finish sooner than one
cell after another with ``C`` threads each (docs/performance.md has the measurements). ``--jobs auto`` (the
default) takes one worker per core, at most one per cell, and gives each ``cores // workers`` torch threads,
so the total never oversubscribes the cores; ``--jobs 1`` is the old one-after-another run.

The teachers the cells need are trained (or found in the cache) first, in this process with every core, so
that no worker waits on another's teacher lock. Workers start with ``spawn`` (a fresh interpreter: no
forked OpenMP state) and take cells from one queue, the longest first when earlier records tell how long a
cell of that method took (longest-processing-time-first keeps the last worker from running alone). Each
finished cell's result is printed as it lands, with the grid's progress (``benchmark.progress.GridProgress``).
A cell that fails writes its failed record and the others go on, as in the sequential run.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import multiprocessing
import os
import traceback
from pathlib import Path
from typing import Any

from .progress import GridProgress
from .records import Cell, existing_record, iter_records
from .runner import RunOptions, run_cell


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_jobs(jobs: str | int | None, n_cells: int, cores: int | None = None) -> tuple[int, int]:
    """``(workers, threads per worker)`` for ``--jobs`` (``auto`` or a positive integer)."""
    cores = cores or available_cores()
    if jobs in (None, "auto"):
        workers = min(cores, max(1, n_cells))
    else:
        try:
            workers = int(jobs)
        except (TypeError, ValueError):
            raise ValueError(f"--jobs expects auto or a positive integer, got {jobs!r}") from None
        if workers < 1:
            raise ValueError(f"--jobs expects auto or a positive integer, got {jobs!r}")
        workers = min(workers, max(1, n_cells))
    return workers, max(1, cores // workers)


def expected_seconds(cells: list[Cell], roots: list[Path]) -> dict[str, float]:
    """Seconds a cell of the same method, dataset, pair and budget took in earlier records under ``roots``
    (the mean over those found); cells without such a record are absent."""
    want = {(c.method, c.dataset, c.teacher, c.student, c.budget) for c in cells}
    seen: dict[tuple, list[float]] = {}
    for root in roots:
        if not Path(root).is_dir():
            continue
        for _, rec, _ in iter_records(root):
            if not rec or rec.get("status") != "done" or not rec.get("wall_time_s"):
                continue
            key = (rec.get("method"), rec.get("dataset"), rec.get("teacher"), rec.get("student"), rec.get("budget"))
            if key in want:
                seen.setdefault(key, []).append(float(rec["wall_time_s"]))
    out = {}
    for c in cells:
        times = seen.get((c.method, c.dataset, c.teacher, c.student, c.budget))
        if times:
            out[c.cell_id] = sum(times) / len(times)
    return out


def _worker_init(threads: int) -> None:
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    import methods  # noqa: F401  (registers every method, as the command line does)


def _run_one(cell_dict: dict, options: RunOptions) -> dict:
    cell = Cell.from_dict(cell_dict)
    try:
        return run_cell(cell, options)
    except Exception as exc:  # noqa: BLE001 - run_cell records its own failures; this is for what precedes them
        return {**cell.as_dict(), "cell_id": cell.cell_id, "status": "failed",
                "error": f"{type(exc).__name__}: {exc}".splitlines()[0], "traceback": traceback.format_exc()}


def _prepare_teachers(cells: list[Cell], options: RunOptions) -> None:
    """Train or load each teacher the cells need, once, with every core."""
    import torch

    from .env import resolve_device
    from .registry import DATASETS
    from .teachers import get_teacher

    device = resolve_device(options.device)
    for dataset, arch, seed in sorted({(c.dataset, c.teacher, c.seed) for c in cells if not c.teacher_ckpt}):
        spec = DATASETS.get(dataset)
        print(f"teacher {dataset}/{arch} seed {seed}: from the cache, or trained first", flush=True)
        before = torch.get_num_threads()
        torch.set_num_threads(available_cores())
        try:
            get_teacher(spec, arch, seed, device, options.cache_dir(), options.data_root, options.download,
                        progress=options.progress)
        finally:
            torch.set_num_threads(before)


def run_inline(cells: list[Cell], options: RunOptions, jobs: str | int | None = "auto",
               history: list[Path] | None = None) -> list[dict[str, Any]]:
    """Run ``cells`` here (``jobs`` worker processes, see the module doc); their records, in ``cells`` order."""
    records: dict[str, dict] = {}
    todo = []
    for cell in cells:
        rec = existing_record(options.out, cell)
        if rec and rec.get("status") == "done" and not options.force:
            records[cell.cell_id] = {**rec, "skipped": True}
        else:
            todo.append(cell)
    workers, threads = resolve_jobs(jobs, len(todo))
    grid = GridProgress(todo, options.out, parallel=workers, skipped=len(cells) - len(todo))
    if len(cells) > len(todo):
        print(f"{len(cells) - len(todo)} cell(s) already done (--force reruns them)", flush=True)
    if not todo:
        return [records[c.cell_id] for c in cells]
    if workers == 1:
        print(f"running {len(todo)} cell(s) one after another; records -> {options.out}", flush=True)
        for cell in todo:
            grid.started(cell)
            records[cell.cell_id] = run_cell(cell, options)
            grid.finished(cell, records[cell.cell_id])
        return [records[c.cell_id] for c in cells]

    _prepare_teachers(todo, options)
    expected = expected_seconds(todo, [Path(options.out)] + list(history or []))
    order = sorted(todo, key=lambda c: -expected.get(c.cell_id, float("inf")))   # unknown first, then longest
    print(f"running {len(todo)} cell(s) in {workers} worker processes, {threads} thread(s) each; "
          f"records -> {options.out}", flush=True)
    worker_options = dataclasses.replace(options, progress=False)
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                                initargs=(threads,)) as pool:
        pending: dict[cf.Future, Cell] = {}
        queue = list(order)

        def feed() -> None:
            while queue and len(pending) < workers:
                cell = queue.pop(0)
                grid.started(cell)
                try:
                    pending[pool.submit(_run_one, cell.to_job(), worker_options)] = cell
                except cf.process.BrokenProcessPool as exc:     # a worker died earlier; the pool is closed
                    records[cell.cell_id] = {**cell.as_dict(), "cell_id": cell.cell_id, "status": "failed",
                                             "error": f"not run: the worker pool broke ({exc})".splitlines()[0]}
                    grid.finished(cell, records[cell.cell_id])

        feed()
        while pending:
            finished, _ = cf.wait(pending, timeout=15, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                cell = pending.pop(future)
                try:
                    rec = future.result()
                except Exception as exc:  # noqa: BLE001 - a worker that died (killed, out of memory)
                    rec = {**cell.as_dict(), "cell_id": cell.cell_id, "status": "failed",
                           "error": f"worker process died: {type(exc).__name__}: {exc}".splitlines()[0]}
                records[cell.cell_id] = rec
                grid.finished(cell, rec)
            feed()
            grid.heartbeat()
    return [records[c.cell_id] for c in cells]
