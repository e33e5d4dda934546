"""Run or submit a grid: inline, as local subprocesses, or as SLURM job arrays (submitit)."""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..records import Cell, OutputLayout
from ..runner import RunOptions
from .errors import LaunchError
from .jobs import CellTask, TeacherTask, _JobSettings
from .plan import Plan, _now, append_submission, missing_teachers, plan_cells, print_plan, update_grid
from .resources import Resources, parse_mem_gb, resolve_resources
from .snapshot import Snapshot, _chdir, _code_dir, _slurm_setup_lines, make_snapshot
from .wait import _wait


def _absolute_options(options: RunOptions) -> RunOptions:
    return dataclasses.replace(
        options, out=Path(options.out).resolve(), progress=False,
        data_root=str(Path(options.data_root).resolve()) if options.data_root else None,
        teacher_cache=Path(options.teacher_cache).resolve() if options.teacher_cache else None)



def _reference_records() -> list[Path]:
    """Folders of committed records whose times order the inline launcher's cells (longest first)."""
    from ..env import REPO_ROOT

    return [p for p in (REPO_ROOT / "results" / "reference",) if p.is_dir()]


def launch(cells: list[Cell], options: RunOptions, args: argparse.Namespace) -> list[dict]:
    """Run or submit ``cells``; returns their records when they were waited for, else ``[]``."""
    launcher = getattr(args, "launcher", "inline") or "inline"
    dry_run, wait = getattr(args, "dry_run", False), getattr(args, "wait", False)
    force = getattr(args, "force", False)
    if launcher == "inline":
        from ..parallel import resolve_jobs, run_inline

        jobs = getattr(args, "jobs", "auto")
        resolve_jobs(jobs, len(cells))          # a bad --jobs fails before anything is written
        if dry_run:
            print_plan(plan_cells(cells, options, force, check_jobs=False), launcher, None, [], options.out)
            return []
        update_grid(options.out, cells)
        return run_inline(cells, options, jobs, history=_reference_records())

    resources = resolve_resources(args)
    options = _absolute_options(options)
    plan = plan_cells(cells, options, force)
    to_run = [c for c, _ in plan.submit]
    teachers = missing_teachers(to_run, options) if launcher == "slurm" else []
    if dry_run:
        print_plan(plan, launcher, resources, teachers, options.out)
        return []
    if launcher == "slurm" and not shutil.which("sbatch"):
        raise LaunchError("--launcher slurm needs sbatch on PATH (no SLURM here; try --launcher local)")
    update_grid(options.out, cells)
    print_plan(plan, launcher, None, [], options.out, limit=20)
    if not to_run:
        print("nothing to submit")
        return _wait(cells, options, skipped=plan.done) if wait else []

    log_dir = Path(getattr(args, "log_dir", None) or OutputLayout(options.out).logs).resolve()
    snapshot = None
    if not getattr(args, "no_snapshot", False):
        snapshot = make_snapshot(OutputLayout(options.out).snapshots,
                                 exclude=[options.out, log_dir, options.cache_dir()])
        print(f"code snapshot: {snapshot.path} (commit {snapshot.commit or '?'}"
              f"{', dirty tree' if snapshot.dirty else ''})")
    settings = _JobSettings(threads=resources.cpus_per_task, snapshot=str(snapshot.path) if snapshot else None,
                            commit=snapshot.commit if snapshot else None)
    try:
        if launcher == "slurm":
            entry, jobs = _submit_slurm(plan, teachers, options, resources, settings, log_dir, snapshot)
        else:
            entry, jobs = _submit_local(plan, options, resources, settings, log_dir, snapshot)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:   # e.g. sbatch refusing a partition
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else type(exc).__name__)
        raise LaunchError(f"submission failed: {detail}") from None
    append_submission(options.out, entry)
    print(f"logs: {log_dir}")
    print(f"status: {sys.executable} -m benchmark status {options.out}")
    if wait:
        records = _wait(cells, options, skipped=plan.done)
        if launcher == "local":      # let the workers exit, so that nothing looks alive afterwards
            deadline = time.time() + 60
            while not all(job.done() for job in jobs) and time.time() < deadline:
                time.sleep(0.2)
        return records
    return []


def _executor(cluster: str, log_dir: Path, resources: Resources, name: str):
    import submitit

    executor = submitit.AutoExecutor(folder=log_dir, cluster=cluster, slurm_max_num_timeout=resources.max_requeues)
    params: dict[str, Any] = {"timeout_min": resources.time, "cpus_per_task": resources.cpus_per_task, "name": name}
    if resources.gpus:
        params["gpus_per_node"] = resources.gpus
    if resources.mem:
        params["mem_gb"] = parse_mem_gb(resources.mem)
    if cluster == "slurm":
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(resources, key):
                params[f"slurm_{key}"] = getattr(resources, key)
        params["slurm_signal_delay_s"] = resources.signal_delay_s
        params["slurm_additional_parameters"] = {"requeue": True, **resources.sbatch}
        if resources.setup:
            params["slurm_setup"] = list(resources.setup)
        if resources.array_parallelism:
            params["slurm_array_parallelism"] = resources.array_parallelism
    else:
        if resources.setup:
            params["local_setup"] = list(resources.setup)
    executor.update_parameters(**params)
    return executor


def _submit_slurm(plan: Plan, teachers: list, options: RunOptions, resources: Resources, settings: _JobSettings,
                  log_dir: Path, snapshot: Snapshot | None) -> tuple[dict, list]:
    """Teachers to train as one array; the cells whose teacher is cached as a second array that starts at once;
    the cells that wait for a teacher as a third, ``afterany`` the teacher array."""
    res = dataclasses.replace(resources, setup=_slurm_setup_lines(snapshot) + list(resources.setup))
    entry: dict[str, Any] = {"launcher": "slurm", "submitted_at": _now(), "log_dir": str(log_dir),
                             "snapshot": str(snapshot.path) if snapshot else None,
                             "resources": dataclasses.asdict(resources), "tasks": {}, "teachers": {}}
    cells = [c for c, _ in plan.submit]
    needed = set(teachers)
    waiting = [c for c in cells if not c.teacher_ckpt and (c.dataset, c.teacher, c.seed) in needed]
    ready = [c for c in cells if c not in waiting]
    all_jobs = []
    with _chdir(_code_dir(snapshot)):
        dependency = None
        if teachers:
            ex = _executor("slurm", log_dir, res, "dfkd-teacher")
            jobs = ex.map_array(TeacherTask(options, settings), teachers)
            entry["teachers"] = {f"{d}/{a}/s{s}": _job_entry(j) for (d, a, s), j in zip(teachers, jobs)}
            dependency = "afterany:" + ":".join(sorted({str(j.job_id).split("_")[0] for j in jobs}))
            print(f"submitted {len(jobs)} teacher job(s): {', '.join(str(j.job_id) for j in jobs)}")
        for group, dep in ((ready, None), (waiting, dependency)):
            if not group:
                continue
            ex = _executor("slurm", log_dir, res, f"dfkd-{Path(options.out).name}")
            if dep:
                ex.update_parameters(slurm_dependency=dep)
            jobs = ex.map_array(CellTask(options, settings), [[c.to_job()] for c in group])
            for cell, job in zip(group, jobs):
                entry["tasks"][cell.cell_id] = _job_entry(job)
            all_jobs += jobs
            array_ids = sorted({str(j.job_id).split("_")[0] for j in jobs})
            print(f"submitted {len(jobs)} cell(s) as SLURM job array {', '.join(array_ids)}"
                  f"{f' (after {dep}: their teachers)' if dep else ''}")
    return entry, all_jobs


def _job_entry(job) -> dict:
    paths = job.paths
    return {"job_id": str(job.job_id), "stdout": str(paths.stdout), "stderr": str(paths.stderr),
            "result": str(paths.result_pickle)}


def _submit_local(plan: Plan, options: RunOptions, resources: Resources, settings: _JobSettings, log_dir: Path,
                  snapshot: Snapshot | None) -> tuple[dict, list]:
    cells = [c for c, _ in plan.submit]
    workers = resources.array_parallelism or max(1, (os.cpu_count() or 1) // max(1, resources.cpus_per_task))
    workers = min(workers, len(cells))
    chunks = [cells[i::workers] for i in range(workers)]
    entry: dict[str, Any] = {"launcher": "local", "submitted_at": _now(), "log_dir": str(log_dir),
                             "snapshot": str(snapshot.path) if snapshot else None, "tasks": {}}
    # a worker runs its cells one after another, so its time limit is the cells' limit times their number; at
    # the limit submitit's local controller signals, the callable checkpoints and the worker starts again
    per_worker = dataclasses.replace(resources, time=resources.time * max(len(c) for c in chunks))
    with _chdir(_code_dir(snapshot)):
        ex = _executor("local", log_dir, per_worker, f"dfkd-{Path(options.out).name}")
        jobs = ex.map_array(CellTask(options, settings), [[c.to_job() for c in chunk] for chunk in chunks])
    for chunk, job in zip(chunks, jobs):
        for cell in chunk:
            entry["tasks"][cell.cell_id] = _job_entry(job)
    print(f"started {len(jobs)} local worker(s) (pids {', '.join(str(j.job_id) for j in jobs)}) for {len(cells)} cell(s)")
    return entry, jobs
