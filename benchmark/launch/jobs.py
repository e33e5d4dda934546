"""The callables that run inside the jobs: one or more cells (``CellTask``) or one teacher (``TeacherTask``).

Both are ``submitit.helpers.Checkpointable``: on preemption or time-out submitit calls ``checkpoint()``, which
resubmits the same callable with the same arguments and requeues the task.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable

from ..records import Cell, OutputLayout, Record, atomic_write_json, write_record
from ..registry import load_plugins
from ..runner import RunOptions, run_cell
from .plan import _now


class CellsFailedError(RuntimeError):
    """Raised by a task after its cells ran when some of them failed, so the scheduler marks it failed."""


def _job_identity() -> dict[str, Any]:
    env = os.environ
    info: dict[str, Any] = {"host": os.uname().nodename, "pid": os.getpid()}
    try:
        import submitit

        job_env = submitit.JobEnvironment()
        info["job_id"] = job_env.job_id
        paths = job_env.paths
        info["stdout"], info["stderr"] = str(paths.stdout), str(paths.stderr)
    except RuntimeError:      # not inside a submitit job
        pass
    if env.get("SLURM_JOB_ID"):
        info["slurm_job_id"] = env["SLURM_JOB_ID"]
        info["restart_count"] = int(env.get("SLURM_RESTART_COUNT", "0") or 0)
    return info


@dataclass
class _JobSettings:
    threads: int | None
    snapshot: str | None
    commit: str | None

    def apply(self) -> None:
        if self.commit:
            os.environ.setdefault("DFKD_GIT_COMMIT", self.commit)
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        if self.snapshot:
            import benchmark

            here = Path(benchmark.__file__).resolve().parent.parent
            if here != Path(self.snapshot).resolve():
                raise RuntimeError(f"this job imported the benchmark from {here}, not from its snapshot "
                                   f"{self.snapshot}; is the package installed in site-packages?")


class CellTask(Checkpointable):
    """Runs a list of cells (one for a SLURM array task, a share of the grid for a local worker).

    Checkpointable: on preemption or time-out submitit calls ``checkpoint()`` (inherited), which resubmits
    this callable with the same cells; the requeued job calls ``run_cell`` again, which skips finished cells
    and resumes the interrupted one from its ``checkpoint.pt``.
    """

    def __init__(self, options: RunOptions, settings: _JobSettings) -> None:
        self.options = options
        self.settings = settings

    def __call__(self, cells: list[dict]) -> list[dict]:
        self.settings.apply()
        load_plugins()      # registers every method, as the command line does

        ident = _job_identity()
        statuses = []
        for cell_dict in cells:
            cell = Cell.from_dict(cell_dict)
            atomic_write_json(OutputLayout(self.options.out).job_info(cell),
                              {**ident, "cell_id": cell.cell_id, "started_at": _now()})
            try:
                record = run_cell(cell, self.options)
            except Exception as exc:    # run_cell records failures itself; this is for what precedes them
                record = _failed_record(cell, self.options, exc)
            statuses.append({"cell_id": cell.cell_id, "status": record.get("status"), "error": record.get("error")})
        failed = [s for s in statuses if s["status"] != "done"]
        if failed:
            raise CellsFailedError("; ".join(f"{s['cell_id']}: {s['error']}" for s in failed))
        return statuses


def _failed_record(cell: Cell, options: RunOptions, exc: Exception) -> dict:
    """A ``failed`` record for an exception raised outside ``run_cell``'s own handling (never over a done one)."""
    import traceback

    record = Record.failure(cell, f"{type(exc).__name__}: {exc}", traceback.format_exc(), finished_at=_now())
    write_record(options.out, record)
    return record.to_dict()


class TeacherTask(Checkpointable):
    """Trains (or finds in the cache) one teacher, before the cells that need it start."""

    def __init__(self, options: RunOptions, settings: _JobSettings) -> None:
        self.options = options
        self.settings = settings

    def __call__(self, key: tuple[str, str, int]) -> dict:
        self.settings.apply()
        from ..env import resolve_device
        from ..registry import DATASETS
        from ..teachers import get_teacher

        dataset, arch, seed = key
        spec = DATASETS.get(dataset)
        _, info = get_teacher(spec, arch, seed, resolve_device(self.options.device), self.options.cache_dir(),
                              self.options.data_root, self.options.download, progress=False)
        print(f"teacher {dataset}/{arch} seed {seed}: {info['test_acc']:.2f}% ({info['source']}) -> "
              f"{info['checkpoint']}", flush=True)
        return {k: v for k, v in info.items() if k != "recipe"}
