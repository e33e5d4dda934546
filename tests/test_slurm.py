"""The SLURM launcher against a real controller (``bash slurm/start_local_slurm.sh``; CI starts it).

Skipped when ``sinfo`` cannot reach a controller. Covers: a 2 x 2 grid as one job array ends with four done
records; a task interrupted through SLURM (USR2, as on preemption) is requeued by submitit and ends with the
same result as the uninterrupted run; a failing cell does not stop the others, and the next run resubmits
it; teachers missing from the cache are trained first, by their own job; ``status`` tells each state.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _controller_up() -> bool:
    if not shutil.which("sinfo") or not shutil.which("sbatch"):
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(not _controller_up(), reason="no SLURM controller (bash slurm/start_local_slurm.sh)")]

# the overrides every cell of this module uses: long enough to be interrupted after its first checkpoint
SMALL = ["--budget", "smoke", "--set", "iterations=16", "--set", "eval_every=4", "--set", "log_every=2",
         "--set", "checkpoint_every=2", "--set", "quality_samples=0"]
TINY = ["--budget", "smoke", "--set", "iterations=4", "--set", "eval_every=2", "--set", "quality_samples=0"]


def bench(*args, check=True, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DFKD_WAIT_POLL_S": "1"}
    proc = subprocess.run([sys.executable, "-m", "benchmark", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"benchmark {' '.join(map(str, args))} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def status_of(out: Path) -> dict[str, dict]:
    """What `python -m benchmark status OUT --json` prints (asked in this process: no interpreter start-up)."""
    from benchmark import status

    return {s.cell_id: s.as_dict() for s in status.collect(out)}


def records(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/record.json")}


def second_method() -> str | None:
    """A second registered data-free method with a smoke budget (dafl if there), for the 2 x 2 grid."""
    import methods  # noqa: F401
    from benchmark.registry import METHODS

    names = [n for n in METHODS.list("*") if n != "cpsc-dfkd" and METHODS.get(n).data_free
             and "smoke" in getattr(METHODS.get(n), "budgets", {})]
    return "dafl" if "dafl" in names else (names[0] if names else None)


def head_commit() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, teacher_cache):
    """Digits teachers for seeds 0 and 1 (the seed-0 teacher, copied), trained once; the jobs read this path."""
    from benchmark.registry import DATASETS
    from benchmark.teachers import cache_path

    spec = DATASETS.get("digits")
    shared = cache_path(teacher_cache, spec, spec.default_teacher, 0)
    if not shared.exists():
        bench("teacher", "--seed", 0, "--teacher-cache", teacher_cache, "--no-progress")
    cache = tmp_path_factory.mktemp("slurm-teachers")
    for seed in (0, 1):
        shutil.copy(shared, cache_path(cache, spec, spec.default_teacher, seed))
    return cache


@pytest.fixture(scope="module")
def grid(tmp_path_factory, teachers):
    """2 methods x 2 seeds on digits (smoke budget, shortened), waited for. Only the seed-0 teacher is cached:
    a teacher job trains the seed-1 one while the seed-0 cells run, and the seed-1 cells wait for it."""
    from benchmark.registry import DATASETS
    from benchmark.teachers import cache_path

    spec = DATASETS.get("digits")
    out = tmp_path_factory.mktemp("grid") / "out"
    cache = out.parent / "teachers"
    cache.mkdir()
    shutil.copy(cache_path(teachers, spec, "cnn_wide", 0), cache_path(cache, spec, "cnn_wide", 0))
    other = second_method()
    variants = [["--methods", f"cpsc-dfkd,{other}"]] if other else \
        [["--methods", "cpsc-dfkd"], ["--methods", "cpsc-dfkd", "--set", "lr_s=0.05"]]
    start = time.time()
    procs = [bench("run", *v, "--seeds", "0,1", *SMALL, "--out", out, "--teacher-cache", cache,
                   "--launcher", "slurm", "--slurm-profile", "local", "--wait") for v in variants]
    wall = time.time() - start
    print(f"\n2 x 2 grid on the local SLURM cluster, one teacher trained first: {wall:.1f} s wall "
          f"(submission to the last record)")
    return out, procs, wall, cache_path(cache, spec, "cnn_wide", 1)


def test_grid_as_job_array_ends_with_four_done_records(grid):
    out, procs, wall, seed1_teacher = grid
    recs = records(out)
    assert len(recs) == 4 and all(r["status"] == "done" for r in recs.values())
    assert all("as SLURM job array" in p.stdout for p in procs)
    # the seed-1 teacher was trained once, by its own job, before the cells that need it
    assert "submitted 1 teacher job(s)" in procs[0].stdout and "(after afterany:" in procs[0].stdout
    assert seed1_teacher.exists() and {r["teacher_info"]["source"] for r in recs.values()} == {"cache"}
    head = head_commit()
    for rec in recs.values():
        assert rec["env"]["slurm_job_id"]                       # ran under SLURM
        assert rec["env"]["git_commit"] == head                 # the submitting commit, read in the snapshot
        assert rec["env"]["cpu_threads"] == 1                   # --cpus-per-task of the local profile
    states = json.loads(bench("status", out, "--json").stdout)
    assert len(states) == 4 and {s["state"] for s in states} == {"done"}
    # the same command again submits nothing
    again = bench("run", "--methods", ",".join(sorted({r["method"] for r in recs.values()})), "--seeds", "0,1", *SMALL,
                  "--out", out, "--teacher-cache", seed1_teacher.parent, "--launcher", "slurm", "--slurm-profile", "local")
    if len({r["method"] for r in recs.values()}) == 2:
        assert "nothing to submit" in again.stdout


def test_requeued_task_resumes_and_matches_the_uninterrupted_run(grid, teachers, tmp_path):
    out_ref = grid[0]
    out = tmp_path / "out"
    bench("run", "--methods", "cpsc-dfkd", "--seeds", 0, *SMALL, "--out", out, "--teacher-cache", teachers,
          "--launcher", "slurm", "--slurm-profile", "local")
    deadline = time.time() + 300
    while not list(out.glob("*/checkpoint.pt")) and time.time() < deadline:
        time.sleep(0.05)
    (ckpt,) = list(out.glob("*/checkpoint.pt"))
    cell_dir = ckpt.parent
    job_id = json.loads((cell_dir / "job.json").read_text())["job_id"]
    # what a preemption does: submitit catches USR2, checkpoints the callable and requeues the task
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    assert not (cell_dir / "record.json").exists(), "the cell ended before it could be interrupted"

    seen = set()
    deadline = time.time() + 400
    while time.time() < deadline:
        state = status_of(out)[cell_dir.name]
        seen.add(state["state"])
        if state["state"] in ("done", "failed"):
            break
        time.sleep(1)
    rec = json.loads((cell_dir / "record.json").read_text())
    assert rec["status"] == "done", rec.get("traceback")
    assert rec["resumed_from"] >= 2
    assert json.loads((cell_dir / "job.json").read_text())["restart_count"] >= 1
    deadline = time.time() + 60
    while True:   # the record is written a moment before the job step ends
        sacct = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-o", "State", "-j", job_id.split("_")[0]],
                               capture_output=True, text=True).stdout.split()
        if sacct[-1:] == ["COMPLETED"] or time.time() > deadline:
            break
        time.sleep(1)
    assert "REQUEUED" in sacct and sacct[-1] == "COMPLETED"
    assert {"pending", "running"} & seen
    ref = json.loads((out_ref / cell_dir.name / "record.json").read_text())
    assert "resumed_from" not in ref
    assert rec["final_acc"] == ref["final_acc"] and rec["best_acc"] == ref["best_acc"]
    assert [(c["iteration"], c["acc"]) for c in rec["curve"]] == [(c["iteration"], c["acc"]) for c in ref["curve"]]
    assert rec["loss_curve"] == ref["loss_curve"]


def test_failing_cell_does_not_stop_the_others_and_is_resubmitted(teachers, tmp_path):
    from benchmark.registry import DATASETS
    from benchmark.teachers import cache_path

    spec = DATASETS.get("digits")
    cache = tmp_path / "teachers"
    cache.mkdir()
    shutil.copy(cache_path(teachers, spec, "cnn_wide", 0), cache_path(cache, spec, "cnn_wide", 0))
    broken = cache_path(cache, spec, "cnn_wide", 1)
    broken.write_bytes(b"not a checkpoint")       # seed 1 fails when it loads its teacher, at run time
    out = tmp_path / "out"
    argv = ["run", "--methods", "cpsc-dfkd", "--seeds", "0,1", *TINY, "--out", out, "--teacher-cache", cache,
            "--launcher", "slurm", "--slurm-profile", "local"]
    first = bench(*argv, "--wait", check=False)
    assert first.returncode == 1, first.stdout + first.stderr
    by_seed = {r["seed"]: r for r in records(out).values()}
    assert by_seed[0]["status"] == "done"
    assert by_seed[1]["status"] == "failed" and by_seed[1]["traceback"]
    states = {s["seed"]: s for s in status_of(out).values()}
    assert states[0]["state"] == "done" and states[1]["state"] == "failed"
    assert states[1]["error"] == by_seed[1]["error"] and Path(states[1]["log"]).is_file()
    assert states[1]["job_state"] == "FAILED"           # the task raised, so SLURM knows it failed
    text = bench("status", out).stdout
    assert "1 done, 0 running, 0 pending, 1 failed, 0 missing" in text and f"log: {states[1]['log']}" in text

    # fix the cause; the same command resubmits only the failed cell
    shutil.copy(cache_path(teachers, spec, "cnn_wide", 1), broken)
    dry = bench(*argv, "--dry-run").stdout
    assert "run   [failed ]" in dry and dry.count("run   [") == 1 and "teacher to train" not in dry
    second = bench(*argv, "--sbatch", "hold")          # held, so that it is surely still queued below
    assert "submitted 1 cell(s)" in second.stdout
    states = {s["seed"]: s for s in status_of(out).values()}
    assert states[0]["state"] == "done" and states[1]["state"] == "pending"
    # while it is queued, running the command again does not submit it twice
    third = bench(*argv).stdout
    assert "1 already pending/running" in third and "nothing to submit" in third
    subprocess.run(["scontrol", "release", states[1]["job_id"]], check=True)
    bench(*argv, "--wait")
    by_seed = {r["seed"]: r for r in records(out).values()}
    assert by_seed[1]["status"] == "done"
    assert {s["state"] for s in status_of(out).values()} == {"done"}


def test_status_shows_pending_jobs_and_cancelled_ones_as_failed(teachers, tmp_path):
    out = tmp_path / "out"
    argv = ["run", "--methods", "cpsc-dfkd", "--seeds", 0, *TINY, "--out", out, "--teacher-cache", teachers,
            "--launcher", "slurm", "--slurm-profile", "local"]
    bench(*argv, "--sbatch", "begin=now+3600")          # held back by SLURM for an hour
    (state,) = status_of(out).values()
    assert state["state"] == "pending" and state["job_state"] == "PENDING"
    subprocess.run(["scancel", state["job_id"]], check=True)
    deadline = time.time() + 60
    while status_of(out)[state["cell_id"]]["state"] == "pending" and time.time() < deadline:
        time.sleep(1)
    state = status_of(out)[state["cell_id"]]
    assert state["state"] == "failed" and state["job_state"] == "CANCELLED" and "CANCELLED" in state["error"]
    assert "run   [failed ]" in bench(*argv, "--dry-run").stdout      # to be submitted again
