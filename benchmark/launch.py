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
* **Resources** come from a cluster profile (``--slurm-profile NAME``: ``slurm/profiles/NAME.toml``, or a
  path) and flags, flags winning. See ``slurm/profiles/example.toml`` for every key.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from submitit.helpers import Checkpointable

from .records import RECORD_NAME, Cell, atomic_write_json, cell_dir, existing_record
from .runner import RunOptions, run_cell
from .status import GRID_NAME, JOB_INFO_NAME, LAUNCH_DIR, SUBMISSIONS  # the files that status reads

LAUNCHERS = ("inline", "local", "slurm")
PROFILE_DIR = Path(__file__).resolve().parent.parent / "slurm" / "profiles"
DEFAULT_TIME_MIN = 120

#: Named teacher:student pair presets for ``--pairs``.
PAIR_PRESETS: dict[str, tuple[tuple[str, str], ...]] = {
    # the five teacher -> student pairs of the CMI / Fast-Datafree CIFAR tables
    "standard": (("resnet34", "resnet18"), ("vgg11", "resnet18"), ("wrn40_2", "wrn16_1"),
                 ("wrn40_2", "wrn40_1"), ("wrn40_2", "wrn16_2")),
}


class LaunchError(ValueError):
    """A bad launcher flag, profile or environment; the message is one line."""


# ---- grid expansion helpers (used by cli.cells_from_args) -----------------------------------------------

def split_list(text: str, flag: str) -> list[str]:
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise LaunchError(f"{flag} is empty")
    return list(dict.fromkeys(items))


def expand_pairs(text: str, spec) -> list[tuple[str, str]]:
    """``'t1:s1,t2:s2'``, ``'default'`` (the dataset's own pair) or a preset name -> [(teacher, student)]."""
    text = text.strip()
    if text == "default":
        return [(spec.default_teacher, spec.default_student)]
    if text in PAIR_PRESETS:
        return list(PAIR_PRESETS[text])
    pairs = []
    for item in split_list(text, "--pairs"):
        teacher, sep, student = item.partition(":")
        if not sep or not teacher.strip() or not student.strip():
            raise LaunchError(f"--pairs expects teacher:student items or one of default, "
                              f"{', '.join(PAIR_PRESETS)}; got {item!r}")
        pairs.append((teacher.strip(), student.strip()))
    return list(dict.fromkeys(pairs))


# ---- command line -----------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("launcher")
    g.add_argument("--launcher", choices=LAUNCHERS, default="inline",
                   help="inline: one after another in this process (default); local: parallel subprocesses "
                        "(submitit LocalExecutor); slurm: SLURM job arrays, one task per cell")
    g.add_argument("--jobs", default="auto", metavar="N|auto",
                   help="inline launcher: run the cells in N worker processes on this machine (auto: one per core, "
                        "cores // N torch threads each; 1: one after another in this process)")
    g.add_argument("--array-parallelism", type=int, default=None, metavar="N",
                   help="at most N cells run at once (slurm: the array's %%N; local: N worker processes)")
    g.add_argument("--wait", action="store_true", help="block until every submitted cell has ended, showing progress")
    g.add_argument("--dry-run", action="store_true", help="print the cells and resources; submit nothing")
    g.add_argument("--log-dir", default=None, help="job logs and submitit files (default: OUT/logs; must be "
                                                   "shared between the nodes, like OUT)")
    g.add_argument("--no-snapshot", action="store_true",
                   help="jobs run the working tree itself instead of a snapshot taken at submission")
    r = parser.add_argument_group("SLURM resources (override the profile)")
    r.add_argument("--slurm-profile", default=os.environ.get("DFKD_SLURM_PROFILE"), metavar="NAME|PATH",
                   help="cluster profile: slurm/profiles/NAME.toml or a .toml path (default: $DFKD_SLURM_PROFILE)")
    r.add_argument("--partition", default=None)
    r.add_argument("--account", default=None)
    r.add_argument("--qos", default=None)
    r.add_argument("--time", default=None, metavar="MIN|[D-]HH:MM[:SS]",
                   help=f"time limit per cell (default: the profile's, else {DEFAULT_TIME_MIN} min)")
    r.add_argument("--gpus", type=int, default=None, help="GPUs per cell")
    r.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per cell (also its torch threads)")
    r.add_argument("--mem", default=None, help="memory per cell, e.g. 16G or 4000M")
    r.add_argument("--constraint", default=None, help="node feature constraint")
    r.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                   help="extra sbatch option (repeatable), e.g. --sbatch exclude=node3 --sbatch nice=10")
    r.add_argument("--max-requeues", type=int, default=None,
                   help="requeues after time limits before a cell gives up (default: 3)")


# ---- resources and profiles -------------------------------------------------------------------------------

@dataclass
class Resources:
    """What one cell asks the scheduler for. Every field can be set in a profile and by a flag."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: int = DEFAULT_TIME_MIN             # minutes
    gpus: int = 0
    cpus_per_task: int = 1
    mem: str | None = None                   # sbatch syntax, e.g. 16G
    constraint: str | None = None
    array_parallelism: int | None = None
    signal_delay_s: int = 90                 # USR2 this long before the time limit (submitit's checkpoint)
    max_requeues: int = 3
    setup: list[str] = field(default_factory=list)       # shell lines run before the job (module load ...)
    sbatch: dict[str, Any] = field(default_factory=dict)  # any other sbatch option

    def summary(self) -> str:
        parts = [f"{k.replace('_', '-')}={v}" for k, v in dataclasses.asdict(self).items()
                 if v not in (None, [], {}) and k not in ("sbatch", "setup")]
        parts += [f"sbatch:{k}={v}" for k, v in self.sbatch.items()]
        parts += [f"setup:{line!r}" for line in self.setup]
        return " ".join(parts)


def parse_time(value: Any) -> int:
    """Minutes from ``90``, ``'90'``, ``'1:30:00'``, ``'2-00:00:00'`` or ``'30:00'`` (MM:SS), rounded up."""
    if isinstance(value, bool):
        raise LaunchError(f"bad time limit {value!r}")
    if isinstance(value, (int, float)):
        minutes = float(value)
    else:
        text = str(value).strip()
        m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
        if not m:
            raise LaunchError(f"bad time limit {value!r} (minutes, or [D-]HH:MM[:SS])")
        days, a, b, c = m.groups()
        if days is None and b is None:
            minutes = float(a)
        elif c is not None:
            minutes = int(days or 0) * 1440 + int(a) * 60 + int(b) + int(c) / 60
        elif days is not None:
            minutes = int(days) * 1440 + int(a) * 60 + int(b)
        else:
            minutes = int(a) + int(b) / 60            # MM:SS, as sbatch reads it
    if minutes <= 0:
        raise LaunchError(f"time limit must be positive, got {value!r}")
    return int(math.ceil(minutes))


def parse_mem_gb(mem: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", str(mem), flags=re.I)
    if not m:
        raise LaunchError(f"bad memory {mem!r} (e.g. 16G or 4000M)")
    scale = {"K": 1 / 2**20, "M": 1 / 1024, "G": 1, "T": 1024, "": 1 / 1024}[m.group(2).upper()]  # sbatch: MB
    return float(m.group(1)) * scale


def _load_toml(path: Path) -> dict:
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore
        except ModuleNotFoundError:
            raise LaunchError("reading a SLURM profile on Python 3.10 needs the 'tomli' package") from None
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LaunchError(f"cannot read SLURM profile {path}: {exc}") from None


def profile_path(name: str) -> Path:
    path = Path(name).expanduser()
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise LaunchError(f"SLURM profile {path} does not exist")
        return path
    path = PROFILE_DIR / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))
        raise LaunchError(f"unknown SLURM profile {name!r} (known: {', '.join(known) or 'none'}; or give a path)")
    return path


def load_profile(name: str | None) -> dict[str, Any]:
    if not name:
        return {}
    path = profile_path(name)
    data = _load_toml(path)
    known = {f.name for f in dataclasses.fields(Resources)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise LaunchError(f"SLURM profile {path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return data


def parse_sbatch_options(items: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise LaunchError(f"--sbatch expects KEY=VALUE (or a bare flag such as exclusive), got {item!r}")
        out[key] = value.strip() if sep else True
    return out


def resolve_resources(args: argparse.Namespace) -> Resources:
    """Profile values, then flags; checked here so that a bad value fails before anything is submitted."""
    values: dict[str, Any] = load_profile(getattr(args, "slurm_profile", None))
    for key in ("partition", "account", "qos", "time", "gpus", "cpus_per_task", "mem", "constraint",
                "array_parallelism", "max_requeues"):
        flag = getattr(args, key, None)
        if flag is not None:
            values[key] = flag
    sbatch = {str(k): v for k, v in dict(values.get("sbatch") or {}).items()}
    sbatch.update(parse_sbatch_options(getattr(args, "sbatch", None) or []))
    values["sbatch"] = sbatch
    values["setup"] = [str(line) for line in values.get("setup") or []]
    if "time" in values:
        values["time"] = parse_time(values["time"])
    res = Resources(**values)
    for key in ("gpus", "max_requeues", "signal_delay_s"):
        if not isinstance(getattr(res, key), int) or getattr(res, key) < 0:
            raise LaunchError(f"{key.replace('_', '-')} must be an integer >= 0, got {getattr(res, key)!r}")
    for key in ("cpus_per_task", "array_parallelism"):
        value = getattr(res, key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise LaunchError(f"{key.replace('_', '-')} must be an integer >= 1, got {value!r}")
    if res.mem is not None:
        parse_mem_gb(res.mem)
    return res


# ---- the callables that run in the jobs ------------------------------------------------------------------

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
        import methods  # noqa: F401  (registers every method, as the command line does)

        ident = _job_identity()
        statuses = []
        for cell_dict in cells:
            cell = Cell.from_dict(cell_dict)
            atomic_write_json(cell_dir(self.options.out, cell) / JOB_INFO_NAME,
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

    record = {**cell.as_dict(), "cell_id": cell.cell_id, "status": "failed",
              "error": f"{type(exc).__name__}: {exc}".splitlines()[0], "traceback": traceback.format_exc(),
              "finished_at": _now()}
    previous = existing_record(options.out, cell)
    name = "last_failure.json" if previous and previous.get("status") == "done" else RECORD_NAME
    atomic_write_json(cell_dir(options.out, cell) / name, record)
    return record


class TeacherTask(Checkpointable):
    """Trains (or finds in the cache) one teacher, before the cells that need it start."""

    def __init__(self, options: RunOptions, settings: _JobSettings) -> None:
        self.options = options
        self.settings = settings

    def __call__(self, key: tuple[str, str, int]) -> dict:
        self.settings.apply()
        from .env import resolve_device
        from .registry import DATASETS
        from .teachers import get_teacher

        dataset, arch, seed = key
        spec = DATASETS.get(dataset)
        _, info = get_teacher(spec, arch, seed, resolve_device(self.options.device), self.options.cache_dir(),
                              self.options.data_root, self.options.download, progress=False)
        print(f"teacher {dataset}/{arch} seed {seed}: {info['test_acc']:.2f}% ({info['source']}) -> "
              f"{info['checkpoint']}", flush=True)
        return {k: v for k, v in info.items() if k != "recipe"}


# ---- snapshot ---------------------------------------------------------------------------------------------

def _git(root: Path, *args: str, check: bool = True) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=check,
                          timeout=120).stdout


@dataclass
class Snapshot:
    path: Path
    commit: str | None
    dirty: bool | None


def make_snapshot(dest: Path, exclude: Iterable[Path] = ()) -> Snapshot:
    """Copy the code as it is now (tracked + untracked-not-ignored files) into ``dest/<commit>-<hash>/``."""
    from .env import REPO_ROOT

    root = REPO_ROOT
    try:
        top = Path(_git(root, "rev-parse", "--show-toplevel").strip()).resolve()
    except (OSError, subprocess.SubprocessError):
        raise LaunchError(f"{root} is not a git checkout (or git is missing): cannot snapshot the code; "
                          "pass --no-snapshot to run the working tree itself") from None
    excluded = [Path(p).resolve() for p in exclude]
    names = _git(top, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    files = []
    for name in sorted(set(n for n in names if n)):
        path = (top / name)
        if not path.is_file() or path.is_symlink():
            continue            # deleted in the work tree, a submodule, or a link
        if path.name == RECORD_NAME:
            continue            # record fixtures are data, and would be found by anything reading OUT's records
        real = path.resolve()
        if any(real == ex or ex in real.parents for ex in excluded):
            continue
        files.append(name)
    digest = hashlib.sha1()
    for name in files:
        digest.update(name.encode() + b"\0" + hashlib.sha1((top / name).read_bytes()).digest())
    commit = _git(top, "rev-parse", "--verify", "-q", "HEAD", check=False).strip() or None
    dirty = bool(_git(top, "status", "--porcelain", "--untracked-files=no").strip()) if commit else None
    target = Path(dest) / f"{(commit or 'nocommit')[:12]}-{digest.hexdigest()[:12]}"
    if (target / ".snapshot.json").is_file():
        return Snapshot(target, commit, dirty)
    tmp = Path(dest) / f".{target.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if commit:
            # a one-commit repository at HEAD, so that git inside the snapshot reports the commit and whether
            # the copied files differ from it (env.git_state reads both into every record)
            _git(tmp, "init", "-q")
            try:
                _git(tmp, "fetch", "-q", "--depth", "1", f"file://{top}", commit)
            except subprocess.CalledProcessError:      # an old git that fetches named refs only
                _git(tmp, "fetch", "-q", "--depth", "1", f"file://{top}", "HEAD")
                if _git(tmp, "rev-parse", "FETCH_HEAD").strip() != commit:
                    raise LaunchError("HEAD moved while the snapshot was being taken; submit again") from None
            _git(tmp, "update-ref", "HEAD", "FETCH_HEAD")
            _git(tmp, "read-tree", "HEAD")
        for name in files:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(top / name, tmp / name)
        if commit:
            _git(tmp, "update-index", "-q", "--refresh", check=False)   # so jobs' `git status` writes nothing
        atomic_write_json(tmp / ".snapshot.json", {"commit": commit, "dirty": dirty, "source": str(top),
                                                   "files": len(files), "created_at": _now()})
        try:
            tmp.rename(target)
        except OSError:          # another launch made the same snapshot meanwhile
            if not (target / ".snapshot.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Snapshot(target, commit, dirty)


class _chdir:
    """Submit from the snapshot: sbatch and the local executor start jobs in the submitting directory, and
    ``python -m`` puts that directory first on ``sys.path``."""

    def __init__(self, path: Path | None):
        self.path, self.old = path, None

    def __enter__(self):
        if self.path is not None:
            self.old = os.getcwd()
            os.chdir(self.path)

    def __exit__(self, *exc):
        if self.old is not None:
            os.chdir(self.old)


# ---- planning ---------------------------------------------------------------------------------------------

@dataclass
class Plan:
    submit: list[tuple[Cell, str]]          # (cell, why: missing | failed | forced)
    done: list[Cell]
    live: list[tuple[Cell, str, str]]       # (cell, state, job id): already pending or running


def plan_cells(cells: list[Cell], options: RunOptions, force: bool, check_jobs: bool = True) -> Plan:
    """Which cells to submit (missing or failed, or done ones with ``force``) and which to leave alone."""
    from . import status as status_mod

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
    from .registry import DATASETS
    from .teachers import cache_path

    keys = sorted({(c.dataset, c.teacher, c.seed) for c in cells if not c.teacher_ckpt})
    return [k for k in keys if not cache_path(options.cache_dir(), DATASETS.get(k[0]), k[1], k[2]).exists()]


def _now() -> str:
    from .env import now

    return now()


def update_grid(out: Path, cells: list[Cell]) -> None:
    path = Path(out) / GRID_NAME
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
    path = Path(out) / SUBMISSIONS
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


# ---- launching --------------------------------------------------------------------------------------------

def _absolute_options(options: RunOptions) -> RunOptions:
    return dataclasses.replace(
        options, out=Path(options.out).resolve(), progress=False,
        data_root=str(Path(options.data_root).resolve()) if options.data_root else None,
        teacher_cache=Path(options.teacher_cache).resolve() if options.teacher_cache else None)


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


def launch(cells: list[Cell], options: RunOptions, args: argparse.Namespace) -> list[dict]:
    """Run or submit ``cells``; returns their records when they were waited for, else ``[]``."""
    launcher = getattr(args, "launcher", "inline") or "inline"
    dry_run, wait = getattr(args, "dry_run", False), getattr(args, "wait", False)
    force = getattr(args, "force", False)
    if launcher == "inline":
        from .parallel import resolve_jobs, run_inline

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

    log_dir = Path(getattr(args, "log_dir", None) or Path(options.out) / "logs").resolve()
    snapshot = None
    if not getattr(args, "no_snapshot", False):
        snapshot = make_snapshot(Path(options.out) / LAUNCH_DIR / "snapshots",
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


def _reference_records() -> list[Path]:
    """Folders of committed records whose times order the inline launcher's cells (longest first)."""
    from .env import REPO_ROOT

    return [p for p in (REPO_ROOT / "results" / "reference",) if p.is_dir()]


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


def _code_dir(snapshot: Snapshot | None) -> Path:
    """Where the jobs import the benchmark from: the snapshot, or (``--no-snapshot``) this checkout."""
    from .env import REPO_ROOT

    return snapshot.path if snapshot else REPO_ROOT


def _slurm_setup_lines(snapshot: Snapshot | None) -> list[str]:
    lines = [f"export PYTHONPATH={_shq(str(_code_dir(snapshot)))}${{PYTHONPATH:+:$PYTHONPATH}}"]
    if snapshot and snapshot.commit:
        lines.append(f"export DFKD_GIT_COMMIT={snapshot.commit}")
    return lines


def _shq(text: str) -> str:
    import shlex

    return shlex.quote(text)


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
            jobs = ex.map_array(CellTask(options, settings), [[c.as_dict()] for c in group])
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
        jobs = ex.map_array(CellTask(options, settings), [[c.as_dict() for c in chunk] for chunk in chunks])
    for chunk, job in zip(chunks, jobs):
        for cell in chunk:
            entry["tasks"][cell.cell_id] = _job_entry(job)
    print(f"started {len(jobs)} local worker(s) (pids {', '.join(str(j.job_id) for j in jobs)}) for {len(cells)} cell(s)")
    return entry, jobs


def _wait(cells: list[Cell], options: RunOptions, skipped: Iterable[Cell] = (), poll_s: float | None = None) -> list[dict]:
    """Block until no cell of ``cells`` is pending or running; print a line whenever the counts change.
    Returns the cells' records (``skipped`` ones marked so, as the inline launcher does)."""
    from . import status as status_mod

    from .progress import GridProgress

    poll_s = poll_s if poll_s is not None else float(os.environ.get("DFKD_WAIT_POLL_S", "3"))
    start, last = time.time(), None
    skipped_ids = {c.cell_id for c in skipped}
    by_cell = {c.cell_id: c for c in cells}
    todo = [c for c in cells if c.cell_id not in skipped_ids]
    grid = GridProgress(todo, options.out, parallel=len(todo) or 1, skipped=len(cells) - len(todo))
    ended: set[str] = set(skipped_ids)
    try:
        while True:
            states = status_mod.collect(options.out, cells=cells, include_grid=False)
            counts = status_mod.count(states)
            line = ", ".join(f"{counts[k]} {k}" for k in status_mod.STATES if counts.get(k))
            if line != last:
                print(f"[{time.time() - start:6.0f} s] {line}", flush=True)
                last = line
            grid.parallel = max(1, counts.get("running", 0))
            for st in states:       # each finished cell's result as it lands
                cell = by_cell.get(st.cell_id)
                if cell is None or st.cell_id in ended:
                    continue
                if st.state == "running" and st.cell_id not in grid.running:
                    grid.started(cell)
                elif st.state in ("done", "failed"):
                    ended.add(st.cell_id)
                    rec = existing_record(options.out, cell) or {"status": st.state, "error": st.error}
                    grid.finished(cell, rec)
            if not any(s.state in ("pending", "running") for s in states):
                break
            grid.heartbeat()
            time.sleep(poll_s)
    except KeyboardInterrupt:
        print(f"stopped waiting; the jobs go on (python -m benchmark status {options.out})", file=sys.stderr)
        raise
    records = []
    by_id = {s.cell_id: s for s in states}
    for cell in cells:
        rec = existing_record(options.out, cell)
        if rec is not None and cell.cell_id in skipped_ids:
            rec["skipped"] = True
        if rec is None:
            st = by_id.get(cell.cell_id)
            rec = {**cell.as_dict(), "cell_id": cell.cell_id, "status": "failed",
                   "error": (st.error if st and st.error else "no record written")}
        records.append(rec)
    return records


__all__ = ["LAUNCHERS", "PAIR_PRESETS", "CellTask", "TeacherTask", "Resources", "add_arguments", "launch",
           "expand_pairs", "split_list", "make_snapshot", "plan_cells", "resolve_resources", "RECORD_NAME"]
