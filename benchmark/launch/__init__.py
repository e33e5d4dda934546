"""Launchers: how a grid of cells is executed.

``--launcher inline`` (default) runs the cells one after another in this process. ``--launcher local`` runs
them in parallel subprocesses on this machine (submitit's ``LocalExecutor``); ``--launcher slurm`` submits
them as SLURM job arrays, one array task per cell (submitit's ``AutoExecutor`` and ``map_array``). Both
return as soon as the jobs are submitted (``--wait`` blocks and shows progress); ``--dry-run`` prints the
cells and the resources and submits nothing.

Design choices (the "why" lives here, next to the code):

* **Grid spec and bookkeeping.** Every launch merges its cells into ``<out>/grid.json`` and appends what it
  submitted (job ids, log files) to ``<out>/.launch/submissions.jsonl``; each task writes
  ``<out>/<cell_id>/job.json`` when it starts. ``python -m benchmark status OUT`` reads these, the records,
  and the scheduler (``sacct`` / ``squeue``) to tell done / running / pending / failed / missing cells.
* **Only the holes.** A cell with a ``done`` record is skipped (``--force`` reruns it); a cell whose last job
  is still pending or running is skipped too (two jobs never write one cell). Missing and failed cells are
  submitted, so re-running the same command fills the grid.
* **Code snapshot.** Jobs may start hours after submission, and the tree may have changed by then. So the
  local and SLURM launchers copy the code into ``<out>/.launch/snapshots/<commit>-<content hash>/`` and the
  jobs import it from there (their working directory). We take the git-tracked files *and* the untracked
  files that git does not ignore, as they are in the working tree, laid over a depth-1 git clone of ``HEAD``:
  inside the snapshot ``git rev-parse HEAD`` is the submitting commit and ``git status`` shows whether the
  tree was dirty, which is what every record's ``env.git_commit`` / ``env.git_dirty`` then says (the
  commit is also exported as ``DFKD_GIT_COMMIT``). We prefer this to refusing a dirty tree (several people
  share one tree here, and trying uncommitted changes on the cluster is the common case) and to submitit's
  ``RsyncSnapshot`` (it needs rsync and copies only tracked files, so a new, not yet added method module
  would silently be missing from the jobs). Snapshots are content-addressed: the same code is copied once.
  Files named ``record.json`` (test fixtures) are left out, so nothing that reads OUT's records finds them.
  ``--no-snapshot`` runs the working tree itself (e.g. outside a git checkout).
* **Teachers.** With SLURM, teachers missing from the cache (one per dataset, architecture and seed) are
  trained first by their own job array: array tasks queueing on one file lock would each hold a GPU for
  hours. The cells that need one of them form an array that depends on it with ``afterany``; the cells
  whose teacher is cached form another that starts at once (each array has its own ``--array-parallelism``
  limit). ``afterany`` rather than ``afterok``: a failed teacher job must not leave cells pending forever
  (``DependencyNeverSatisfied``); a cell whose teacher is still missing then trains it itself under the
  cache's file lock, or fails with a record that says why. The local launcher relies on that lock alone
  (tasks that need the same teacher wait for the one that trains it; no task reads a half-written file).
* **Preemption and time limits.** The submitted callable is a ``submitit.helpers.Checkpointable``: when
  SLURM sends USR2 (preemption, or ``signal_delay_s`` before the time limit), submitit calls its
  ``checkpoint()``, which resubmits the same callable with the same cells, and requeues the task. The cell's
  training state is in ``<out>/<cell_id>/checkpoint.pt``, which the runner writes atomically every
  ``checkpoint_every`` iterations (``--set checkpoint_every=N``), so the requeued task resumes from the last
  one and its record says ``resumed_from``. Without ``checkpoint_every`` a requeued cell restarts from
  scratch. Requeues after time limits are capped by ``max_requeues`` (submitit takes a signal for a time-out
  once the job has run min(80 %, limit - 10 min) of its limit, else for a preemption, which is not capped).
* **Failures.** ``run_cell`` turns an exception into a ``failed`` record with its traceback; the task then
  raises so that SLURM marks it FAILED (hydra's launcher reports such jobs as completed, which hides them).
  Other array tasks are independent and go on.
* **Resources** come from a cluster profile (``--slurm-profile NAME``: ``slurm/profiles/NAME.toml`` in this
  package, or a path) and flags, flags winning. See ``slurm/profiles/example.toml`` for every key.
"""
from __future__ import annotations

# The package, one job per module: ``grid`` (comma lists, pairs, the pair presets), ``flags`` (command-line
# flags), ``resources`` (profiles and resources), ``snapshot`` (the code snapshot), ``jobs`` (the callables
# that run in the jobs), ``plan`` (what to submit; the grid and submission files), ``submit`` (run or
# submit), ``wait`` (``--wait``). The names below load their module on first use, so that e.g. the report
# can read the pair presets without importing torch.
import importlib

_EXPORTS = {
    "LaunchError": "errors",
    "PAIR_PRESETS": "grid", "split_list": "grid", "expand_pairs": "grid",
    "LAUNCHERS": "flags", "add_arguments": "flags",
    "Resources": "resources", "parse_time": "resources", "parse_mem_gb": "resources", "load_profile": "resources",
    "profile_path": "resources", "resolve_resources": "resources", "PROFILE_DIR": "resources",
    "DEFAULT_TIME_MIN": "resources",
    "Snapshot": "snapshot", "make_snapshot": "snapshot",
    "CellTask": "jobs", "TeacherTask": "jobs", "CellsFailedError": "jobs",
    "Plan": "plan", "plan_cells": "plan", "missing_teachers": "plan", "update_grid": "plan",
    "append_submission": "plan", "print_plan": "plan",
    "launch": "submit",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
