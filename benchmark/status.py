"""``python -m benchmark status OUT``: where every cell of a grid stands.

States, from the most to the least certain source:

* ``done``    - ``<out>/<cell_id>/record.json`` says done.
* ``running`` / ``pending`` - the cell's last job is alive: SLURM's own word (``squeue``, then ``sacct``) for
  the slurm launcher; the worker process for the local launcher (its current cell is running, the cells
  queued behind it are pending). A cell whose earlier attempt failed and that was resubmitted shows the
  new job's state.
* ``failed``  - a ``failed`` record (its error line), or a job that ended (FAILED, TIMEOUT, CANCELLED,
  OUT_OF_MEMORY, NODE_FAIL, a killed worker, ...) without writing a record (the last error line of its log).
* ``missing`` - in the grid (``<out>/grid.json``, written by every launch) but neither recorded nor
  submitted, or submitted where the scheduler can no longer be asked (shown with the job id).

Each failed cell is listed with its error line and the log file to read. ``--json`` prints the same as a list
of objects. Exit status 0; 2 when OUT holds no grid and no record.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .progress import describe, read_progress, writer_alive
from .records import Cell, OutputLayout, iter_records, read_record

STATES = ("done", "running", "pending", "failed", "missing")

# SLURM job states (squeue / sacct long names) -> our view of a job
_SLURM_LIVE_PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESV_DEL_HOLD",
                       "SUSPENDED", "RESIZING", "SPECIAL_EXIT", "STAGE_OUT", "SIGNALING"}
_SLURM_LIVE_RUNNING = {"RUNNING", "COMPLETING"}


@dataclass
class CellStatus:
    cell_id: str
    state: str                        # one of STATES
    method: str | None = None
    dataset: str | None = None
    seed: int | None = None
    launcher: str | None = None
    job_id: str | None = None
    job_state: str | None = None      # the scheduler's word: RUNNING, PENDING, COMPLETED, FAILED, KILLED (local), ...
    error: str | None = None
    log: str | None = None
    record: str | None = None
    progress: dict | None = None      # the cell's progress.json (benchmark.progress) while it runs, or its last point

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- reading the output folder ----------------------------------------------------------------------------

def load_grid(out: Path) -> dict[str, dict]:
    path = OutputLayout(out).grid
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()).get("cells") or {})
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}


def load_submissions(out: Path) -> dict[str, dict]:
    """The latest submission of each cell: ``cell_id -> {launcher, job_id, stdout, stderr, submitted_at}``."""
    path = OutputLayout(out).submissions
    latest: dict[str, dict] = {}
    if not path.is_file():
        return latest
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue           # a line cut short by a crash
        for cell_id, task in (entry.get("tasks") or {}).items():
            latest[cell_id] = {"launcher": entry.get("launcher"), "submitted_at": entry.get("submitted_at"), **task}
    return latest


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ---- asking the scheduler ---------------------------------------------------------------------------------

def _run(cmd: list[str]) -> str | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _expand_ids(job_id: str) -> list[str]:
    """``'12_[3-5,7%2]'`` -> ``['12_3', '12_4', '12_5', '12_7']``; other ids unchanged."""
    m = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(?:%\d+)?\]", job_id)
    if not m:
        return [job_id]
    ids = []
    for part in m.group(2).split(","):
        lo, _, hi = part.partition("-")
        ids += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return ids


def slurm_states(job_ids: Iterable[str]) -> dict[str, str] | None:
    """Scheduler state of each job (``'123'`` or array task ``'123_4'``); ``None`` when SLURM cannot be asked.

    ``sacct`` (what submitit reads) knows finished jobs; ``squeue`` is the authority on live ones; a job that has
    just ended can be in neither (the accounting database lags), so ``scontrol`` is asked for those.
    """
    job_ids = sorted(set(job_ids))
    if not job_ids:
        return {}
    roots = sorted({j.split("_")[0] for j in job_ids})
    states: dict[str, str] = {}
    asked = False
    out = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(roots)])
    if out is not None:
        asked = True
        for line in out.splitlines():
            jid, _, state = line.partition("|")
            for one in _expand_ids(jid.strip()):
                states[one] = state.split()[0] if state.strip() else "UNKNOWN"
    out = _run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(roots)])
    if out is None:   # squeue -j fails when one id is too old; ask for everything instead
        out = _run(["squeue", "-h", "-r", "-o", "%i|%T"])
    if out is not None:
        asked = True
        for line in out.splitlines():
            jid, _, state = line.partition("|")
            for one in _expand_ids(jid.strip()):
                states[one] = state.strip()
    missing = sorted({j.split("_")[0] for j in job_ids if j not in states})
    for root in missing:   # ended, but not yet in the accounting database (slurmdbd lags): slurmctld knows it
        out = _run(["scontrol", "show", "job", "-o", root])     # (one id per call; fails once the job is purged)
        if out is not None:
            asked = True
            states.update({k: v for k, v in _scontrol_states(out).items() if k not in states})
    if not asked:
        return None
    return states


def _scontrol_states(text: str) -> dict[str, str]:
    """``scontrol show job -o`` lines -> ``{'123': 'FAILED', '124_0': ...}`` (array tasks by their array id)."""
    states = {}
    for line in text.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "JobId" not in fields or "JobState" not in fields:
            continue
        task = fields.get("ArrayTaskId")
        if fields.get("ArrayJobId") and task and task.isdigit():
            states[f"{fields['ArrayJobId']}_{task}"] = fields["JobState"]
        else:
            states[fields["JobId"]] = fields["JobState"]
    return states


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError, PermissionError):
        return False
    try:   # a recycled pid is not our worker
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        return b"submitit" in cmdline
    except OSError:
        return True


def _local_outcome(result_pickle: str | None) -> str:
    """How a finished local worker ended: COMPLETED, FAILED (it raised) or KILLED (no result file)."""
    if not result_pickle or not Path(result_pickle).is_file():
        return "KILLED"
    try:
        import pickle

        with open(result_pickle, "rb") as handle:
            outcome = pickle.load(handle)[0]    # ("success", result) or ("error", traceback), written by submitit
    except Exception:  # noqa: BLE001 - a truncated file
        return "UNKNOWN"
    return "COMPLETED" if outcome == "success" else "FAILED"


# ---- classification ---------------------------------------------------------------------------------------

def _error_line_from_log(path: str | None) -> str | None:
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64_000))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    exception = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)|[\w.]*Error)(:.*)?$")
    other = re.compile(r".*(error|CANCELLED|killed|Killed|DUE TO TIME LIMIT|oom).*")
    for pattern in (exception, other):
        for line in reversed(lines):
            line = line.strip()
            if line and pattern.match(line):
                return line[:300]
    return None


def collect(out: Path, cells: Iterable[Cell] | None = None, include_grid: bool = True,
            query_scheduler: bool = True) -> list[CellStatus]:
    """The state of every cell of ``cells`` (default: the grid plus every record under ``out``)."""
    out = Path(out)
    layout = OutputLayout(out)
    wanted: dict[str, dict] = {}
    if include_grid:
        wanted.update(load_grid(out))
    if cells is not None:
        for cell in cells:
            wanted[cell.cell_id] = cell.as_dict()
    records: dict[str, tuple[Path, dict | None, str | None]] = {}
    if cells is None:
        for path, rec, err in iter_records(out):
            cell_id = (rec or {}).get("cell_id") or path.parent.name
            records[cell_id] = (path, rec, err)
            if rec is not None:
                wanted.setdefault(cell_id, {k: rec.get(k) for k in ("method", "dataset", "seed")})
    for cell_id in wanted:
        if cell_id not in records:
            path = layout.record(cell_id)
            if path.is_file():
                try:
                    records[cell_id] = (path, read_record(path), None)
                except (OSError, ValueError) as exc:
                    records[cell_id] = (path, None, str(exc))

    submissions = load_submissions(out)
    job_infos = {cid: _read_json(layout.job_info(cid)) for cid in wanted}

    def settled(cid: str) -> bool:
        """Done, and not older than the cell's latest submission (which ``--force`` makes over a done cell)."""
        rec, sub = records.get(cid, (None, None, None))[1] or {}, submissions.get(cid) or {}
        if rec.get("status") != "done":
            return False
        return not (rec.get("started_at") and sub.get("submitted_at") and rec["started_at"] < sub["submitted_at"])

    undone = [cid for cid in wanted if not settled(cid)]
    slurm_ids = [submissions[c]["job_id"] for c in undone if c in submissions and submissions[c]["launcher"] == "slurm"]
    states = slurm_states(slurm_ids) if (query_scheduler and slurm_ids) else ({} if not slurm_ids else None)
    scheduler_known = states is not None

    result = []
    for cell_id, cell in wanted.items():
        st = CellStatus(cell_id=cell_id, state="missing", method=cell.get("method"), dataset=cell.get("dataset"),
                        seed=cell.get("seed"))
        path, rec, err = records.get(cell_id, (None, None, None))
        sub = submissions.get(cell_id)
        info = job_infos.get(cell_id) or {}
        if sub:
            st.launcher, st.job_id = sub.get("launcher"), sub.get("job_id")
            st.log = sub.get("stderr")
        if path is not None:
            st.record = str(path)
        if settled(cell_id):
            st.state = "done"
            result.append(st)
            continue
        # the latest job's word
        job_state, live = None, None
        if sub and sub.get("launcher") == "slurm":
            job_state = (states or {}).get(st.job_id) if scheduler_known else None
            if job_state in _SLURM_LIVE_RUNNING:
                live = "running"
            elif job_state in _SLURM_LIVE_PENDING:
                live = "pending"
        elif sub and sub.get("launcher") == "local":
            alive = _pid_alive(st.job_id or "")
            job_state = "RUNNING" if alive else _local_outcome(sub.get("result"))
            if alive:   # a worker runs its cells one after another: the started one runs, later ones wait
                started = (info.get("job_id") == st.job_id
                           and (info.get("started_at") or "") >= (sub.get("submitted_at") or ""))
                ended = started and rec is not None and (rec.get("started_at") or "") >= info["started_at"]
                live = None if ended else ("running" if started else "pending")
        prog = read_progress(layout.progress(cell_id))
        if prog is not None and not (rec is not None and (rec.get("started_at") or "") > (prog.get("started_at") or "")):
            st.progress = prog        # (a progress file older than the cell's record belongs to an earlier run)
            if sub is None and prog.get("state") == "running":      # inline runs: only the progress file knows
                alive = writer_alive(prog)
                if alive or (alive is None and _recent(prog.get("updated_at"))):
                    live, job_state = "running", f"RUNNING (pid {prog.get('pid')} on {prog.get('host')})"
                elif rec is None and alive is False:
                    st.state, st.job_state = "failed", "ENDED"
                    st.error = (f"process {prog.get('pid')} ended without a record; last progress: "
                                f"{describe(prog)}")
                    result.append(st)
                    continue
        st.job_state = job_state
        if info.get("stderr") and (not sub or info.get("job_id") == st.job_id):
            st.log = info["stderr"]
        if live:
            st.state = live
        elif rec is not None and rec.get("status") == "done":    # a forced rerun that has ended
            st.state = "done"
        elif rec is not None:                       # a failed record (or running: a crash while writing)
            st.state = "failed"
            st.error = rec.get("error") or f"record status {rec.get('status')!r}"
        elif err is not None:
            st.state = "failed"
            st.error = err
        elif job_state == "COMPLETED":              # the job ended well, yet its record is gone
            st.state = "missing"
            st.error = f"job {st.job_id} completed, but the record is not there (removed?)"
        elif sub and sub.get("launcher") in ("slurm", "local") and job_state not in (None, "UNKNOWN"):
            st.state = "failed"
            line = _error_line_from_log(st.log)
            st.error = f"job {st.job_id} ended ({job_state}) without a record" + (f": {line}" if line else "")
        elif sub and sub.get("launcher") == "slurm" and not scheduler_known:
            st.state = "pending"
            st.error = "SLURM cannot be asked here (no sacct/squeue); submitted, no record yet"
        else:
            st.state = "missing"
            if sub:
                st.error = f"job {st.job_id} is unknown to the scheduler and wrote no record"
        result.append(st)
    return sorted(result, key=lambda s: (STATES.index(s.state), s.cell_id))


def _recent(stamp: str | None, within_s: float = 3600.0) -> bool:
    """Whether an ISO time stamp (``env.now()``) lies within the last ``within_s`` seconds."""
    import datetime

    try:
        then = datetime.datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        return False
    return (datetime.datetime.now(datetime.timezone.utc) - then).total_seconds() < within_s


def count(states: Iterable[CellStatus]) -> Counter:
    return Counter(s.state for s in states)


# ---- command ----------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="the output folder given to `run --out`")
    parser.add_argument("--json", action="store_true", help="print one JSON object per cell (a list)")
    parser.add_argument("--all", action="store_true", help="list done cells too (default: only the others)")
    parser.add_argument("--no-scheduler", action="store_true", help="do not ask SLURM for job states")


def command(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not out.is_dir():
        print(f"error: {out} is not a folder", file=sys.stderr)
        return 2
    states = collect(out, query_scheduler=not args.no_scheduler)
    if not states:
        print(f"error: {out} holds no grid.json and no record (was it the --out of a run?)", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([s.as_dict() for s in states], indent=2))
        return 0
    counts = count(states)
    print(f"{out}: {len(states)} cells: " + ", ".join(f"{counts.get(k, 0)} {k}" for k in STATES))
    rows = [s for s in states if args.all or s.state != "done"]
    if rows:
        header = ("state", "cell", "job", "job state", "progress")
        table = [header] + [(s.state, s.cell_id, s.job_id or "-", s.job_state or "-",
                             describe(s.progress) if s.progress else "-") for s in rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        for i, row in enumerate(table):
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
            if i == 0:
                print("  ".join("-" * w for w in widths))
    failed = [s for s in states if s.state == "failed"]
    for s in failed:
        print(f"failed {s.cell_id}: {s.error}")
        print(f"    log: {s.log or '-'}" + (f"\n    record: {s.record}" if s.record else ""))
    todo = counts.get("failed", 0) + counts.get("missing", 0)
    if todo:
        print(f"{todo} cell(s) to fill: run the same `run` command again (only missing and failed cells are submitted)")
    return 0
