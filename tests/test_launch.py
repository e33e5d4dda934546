"""Launchers without SLURM: grid expansion, dry runs, profiles, the local launcher (submitit's LocalExecutor),
re-running fills only the holes, the code snapshot, ``status``, and interrupt-and-resume equality on CPU."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark import launch, status
from benchmark.cli import build_parser, cells_from_args, main
from benchmark.records import Cell, atomic_write_json, read_record

ROOT = Path(__file__).resolve().parent.parent
# tiny cells: the mechanics are under test, not the accuracy
TINY = ["--budget", "smoke", "--set", "iterations=4", "--set", "eval_every=2", "--set", "quality_samples=0"]


def run_main(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_thread_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, teacher_cache):
    """A teacher cache holding a digits teacher for seeds 0 and 1 (the seed-0 teacher, copied), trained once."""
    from benchmark.registry import DATASETS
    from benchmark.teachers import cache_path

    spec = DATASETS.get("digits")
    shared = cache_path(teacher_cache, spec, spec.default_teacher, 0)
    if not shared.exists():   # one thread: much faster than two on a busy 2-core machine
        subprocess.run([sys.executable, "-m", "benchmark", "teacher", "--seed", "0", "--teacher-cache",
                        str(teacher_cache), "--no-progress"], cwd=ROOT, check=True, env=one_thread_env())
    cache = tmp_path_factory.mktemp("launch-teachers")
    for seed in (0, 1):
        shutil.copy(shared, cache_path(cache, spec, spec.default_teacher, seed))
    return cache


def parse(argv):
    return build_parser().parse_args(["run", *argv])


# ---- grid expansion ---------------------------------------------------------------------------------------

def test_grid_expansion_datasets_pairs_methods_seeds():
    cells = cells_from_args(parse(["--methods", "cpsc-dfkd", "--datasets", "digits", "--seeds", "0,1",
                                   "--pairs", "cnn_wide:cnn_narrow,cnn_wide:cnn_wide"]))
    assert len(cells) == 4
    assert {(c.teacher, c.student) for c in cells} == {("cnn_wide", "cnn_narrow"), ("cnn_wide", "cnn_wide")}
    assert {c.seed for c in cells} == {0, 1}
    assert len({c.cell_id for c in cells}) == 4
    # the old single-value flags still work, and 'default' is the dataset's own pair
    old = cells_from_args(parse(["--methods", "cpsc-dfkd", "--dataset", "digits", "--teacher", "cnn_wide",
                                 "--student", "cnn_narrow"]))
    assert old == cells_from_args(parse(["--methods", "cpsc-dfkd", "--pairs", "default"]))
    assert old == cells_from_args(parse(["--methods", "cpsc-dfkd"]))
    # a pair given twice runs once
    assert len(cells_from_args(parse(["--methods", "cpsc-dfkd", "--pairs", "cnn_wide:cnn_narrow,cnn_wide:cnn_narrow"]))) == 1
    assert launch.expand_pairs("standard", None)[0] == ("resnet34", "resnet18")


@pytest.mark.parametrize("extra,message", [
    (["--dataset", "digits", "--datasets", "digits"], "not both"),
    (["--pairs", "cnn_wide:cnn_narrow", "--teacher", "cnn_wide"], "not both"),
    (["--pairs", "cnn_wide"], "teacher:student"),
    (["--pairs", "cnn_wide:no_such_net"], "unknown model"),
    (["--datasets", "digits,no_such_set"], "unknown dataset"),
    (["--launcher", "slurm", "--time", "soon", "--dry-run"], "bad time limit"),
    (["--launcher", "slurm", "--slurm-profile", "no-such-cluster", "--dry-run"], "unknown SLURM profile"),
    (["--launcher", "local", "--cpus-per-task", "0", "--dry-run"], "cpus-per-task"),
])
def test_bad_grid_or_launcher_input_fails_in_one_line(extra, message, tmp_path, capsys):
    code, out, err = run_main(["run", "--methods", "cpsc-dfkd", "--out", tmp_path / "out", *extra], capsys)
    assert code == 2
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


# ---- resources and dry runs -------------------------------------------------------------------------------

def test_profiles_and_flags():
    local = launch.resolve_resources(argparse.Namespace(slurm_profile="local"))
    assert local.partition == "debug" and local.cpus_per_task == 1
    example = launch.resolve_resources(argparse.Namespace(slurm_profile="example", time="2:00:00", gpus=2,
                                                          sbatch=["nice=10", "exclusive"]))
    assert example.time == 120 and example.gpus == 2 and example.account == "my-project"
    assert example.sbatch["nice"] == "10" and example.sbatch["exclusive"] is True
    assert example.sbatch["exclude"] == "node017,node018" and example.setup[0].startswith("module load")
    assert [launch.parse_time(t) for t in (90, "90", "1:30:00", "1-00:00:00", "30:30")] == [90, 90, 90, 1440, 31]
    assert launch.parse_mem_gb("4000M") == pytest.approx(4000 / 1024) and launch.parse_mem_gb("2G") == 2


def test_unknown_profile_key_is_an_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('partition = "x"\ngpu = 1\n')
    with pytest.raises(launch.LaunchError, match="unknown key"):
        launch.resolve_resources(argparse.Namespace(slurm_profile=str(bad)))


def test_dry_run_prints_cells_teachers_and_resources_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    code, text, _ = run_main(["run", "--methods", "cpsc-dfkd", "--seeds", "3,4", "--out", out, "--teacher-cache",
                              tmp_path / "empty-cache", "--launcher", "slurm", "--slurm-profile", "local",
                              "--time", "45", "--sbatch", "exclude=node9", "--array-parallelism", "2",
                              "--dry-run", *TINY], capsys)
    assert code == 0
    assert text.count("run   [missing]") == 2
    assert "teacher to train first: digits/cnn_wide seed 3" in text
    assert "partition=debug" in text and "time=45" in text and "sbatch:exclude=node9" in text
    assert "array-parallelism=2" in text
    assert not out.exists() and not (tmp_path / "empty-cache").exists()


# ---- the code snapshot ------------------------------------------------------------------------------------

def test_snapshot_holds_the_code_at_submission_and_its_commit(tmp_path):
    snap = launch.make_snapshot(tmp_path / "snaps")
    submit_py = Path("benchmark") / "launch" / "submit.py"
    assert (snap.path / submit_py).read_text() == (ROOT / submit_py).read_text()
    assert (snap.path / "methods" / "__init__.py").is_file()
    assert not list(snap.path.rglob("__pycache__")) and not list(snap.path.rglob("record.json"))
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    inside = subprocess.run(["git", "-C", str(snap.path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert snap.commit == head == inside
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True).stdout.strip())
    assert snap.dirty == dirty
    assert json.loads((snap.path / ".snapshot.json").read_text())["commit"] == head
    assert launch.make_snapshot(tmp_path / "snaps").path == snap.path      # content-addressed: made once


# ---- the local launcher, and re-running fills only the holes ----------------------------------------------

def test_local_launcher_runs_cells_and_rerun_submits_only_missing_and_failed(tmp_path, teachers, capsys):
    out = tmp_path / "out"
    argv = ["run", "--methods", "cpsc-dfkd", "--seeds", "0,1", "--out", out, "--teacher-cache", teachers,
            "--launcher", "local", "--array-parallelism", "2", "--no-progress", *TINY]
    code, text, err = run_main([*argv, "--wait"], capsys)
    assert code == 0, text + err
    cells = cells_from_args(parse([str(a) for a in argv[1:]]))
    records = {c.cell_id: read_record(out / c.cell_id / "record.json") for c in cells}
    assert all(r["status"] == "done" for r in records.values())
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    for cell in cells:
        rec = records[cell.cell_id]
        assert rec["env"]["git_commit"] == head
        job = json.loads((out / cell.cell_id / "job.json").read_text())
        assert Path(job["stderr"]).is_file()
    assert (out / "grid.json").is_file()
    assert [s.state for s in status.collect(out)] == ["done", "done"]

    # make a hole: one cell loses its record, the other one becomes failed; a third cell joins the grid
    gone, broken = cells
    shutil.rmtree(out / gone.cell_id)
    rec = records[broken.cell_id]
    atomic_write_json(out / broken.cell_id / "record.json", {**rec, "status": "failed", "error": "RuntimeError: boom"})
    states = {s.cell_id: s for s in status.collect(out)}
    assert states[gone.cell_id].state == "missing"
    assert states[broken.cell_id].state == "failed" and states[broken.cell_id].error == "RuntimeError: boom"

    code, text, _ = run_main([*argv[:4], "0,1,2", *argv[5:], "--dry-run"], capsys)
    assert code == 0
    assert text.count("run   [missing]") == 2 and text.count("run   [failed ]") == 1 and "skip" not in text
    code, text, _ = run_main(argv + ["--dry-run"], capsys)
    assert text.count("run   [") == 2

    code, text, err = run_main([*argv, "--wait", "--array-parallelism", "1"], capsys)   # one worker, both cells
    assert code == 0, text + err
    assert "started 1 local worker(s)" in text
    last = [json.loads(line) for line in (out / ".launch" / "submissions.jsonl").read_text().splitlines()][-1]
    assert set(last["tasks"]) == {gone.cell_id, broken.cell_id}
    assert all(read_record(out / c.cell_id / "record.json")["status"] == "done" for c in cells)
    # a third run has nothing to do
    code, text, _ = run_main(argv, capsys)
    assert code == 0 and "nothing to submit" in text


# ---- status ----------------------------------------------------------------------------------------------

def test_status_reports_each_state(tmp_path, capsys):
    out = tmp_path / "out"
    cells = [Cell("cpsc-dfkd", "digits", "cnn_wide", "cnn_narrow", seed) for seed in range(6)]
    done, failed, missing, running, pending, crashed = cells
    launch.update_grid(out, cells)
    atomic_write_json(out / done.cell_id / "record.json", {**done.as_dict(), "cell_id": done.cell_id, "status": "done"})
    atomic_write_json(out / failed.cell_id / "record.json",
                      {**failed.as_dict(), "cell_id": failed.cell_id, "status": "failed",
                       "error": "ValueError: precision fp16 needs CUDA"})
    # a live local worker (its command line names submitit) that runs `running` and has `pending` queued
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "submitit"])
    dead = subprocess.Popen([sys.executable, "-c", "pass", "submitit"])
    dead.wait()
    log = tmp_path / "worker_log.err"
    log.write_text("Traceback (most recent call last):\n  ...\nMemoryError: out of memory\n")
    try:
        launch.append_submission(out, {"launcher": "local", "submitted_at": "2026-01-01T00:00:00+00:00", "tasks": {
            running.cell_id: {"job_id": str(worker.pid), "stderr": str(log)},
            pending.cell_id: {"job_id": str(worker.pid), "stderr": str(log)},
            crashed.cell_id: {"job_id": str(dead.pid), "stderr": str(log)}}})
        atomic_write_json(out / running.cell_id / "job.json", {"job_id": str(worker.pid), "stderr": str(log),
                                                               "started_at": "2026-01-01T00:00:01+00:00"})
        got = {s.cell_id: s for s in status.collect(out)}
        assert {cid: s.state for cid, s in got.items()} == {
            done.cell_id: "done", failed.cell_id: "failed", missing.cell_id: "missing",
            running.cell_id: "running", pending.cell_id: "pending", crashed.cell_id: "failed"}
        assert got[failed.cell_id].error == "ValueError: precision fp16 needs CUDA"
        assert "MemoryError: out of memory" in got[crashed.cell_id].error and got[crashed.cell_id].log == str(log)

        code, text, _ = run_main(["status", out], capsys)
        assert code == 0
        assert "6 cells: 1 done, 1 running, 1 pending, 2 failed, 1 missing" in text
        assert f"failed {failed.cell_id}: ValueError: precision fp16 needs CUDA" in text
        assert f"log: {log}" in text
        code, text, _ = run_main(["status", out, "--json"], capsys)
        assert sorted(s["state"] for s in json.loads(text)) == sorted(["done", "failed", "missing", "running",
                                                                       "pending", "failed"])
    finally:
        worker.kill()
        worker.wait()
    code, _, err = run_main(["status", tmp_path / "nothing-here"], capsys)
    assert code == 2 and "error:" in err


def test_a_job_that_accounting_does_not_know_yet_is_asked_of_slurmctld(monkeypatch):
    """A job that has just ended is in neither sacct (slurmdbd lags) nor squeue; scontrol still knows it."""
    asked = []
    scontrol = {
        "41": "JobId=41 JobName=x UserId=root(0) JobState=FAILED Reason=NonZeroExitCode ExitCode=1:0\n",
        "50": ("JobId=51 ArrayJobId=50 ArrayTaskId=1 JobName=x JobState=COMPLETED Reason=None\n"
               "JobId=50 ArrayJobId=50 ArrayTaskId=0 JobName=x JobState=FAILED Reason=NonZeroExitCode\n"),
    }

    def fake_run(cmd):
        asked.append(cmd)
        if cmd[0] == "sacct":
            return "40|COMPLETED\n"
        if cmd[0] == "squeue":
            return ""
        return scontrol.get(cmd[-1])     # None: an unknown (purged) id, as scontrol fails on it

    monkeypatch.setattr(status, "_run", fake_run)
    got = status.slurm_states(["40", "41", "50_0", "50_1", "60"])
    assert got == {"40": "COMPLETED", "41": "FAILED", "50_0": "FAILED", "50_1": "COMPLETED"}
    assert [c[-1] for c in asked if c[0] == "scontrol"] == ["41", "50", "60"]    # only those sacct/squeue lack


# ---- interrupt and resume ---------------------------------------------------------------------------------

def test_killed_run_resumes_from_its_checkpoint_to_the_same_result(tmp_path, teachers):
    """SIGKILL a cell right after its first checkpoint, run it again: same curve and accuracies as a run that
    was never interrupted (same seed, same thread count)."""
    argv = [sys.executable, "-m", "benchmark", "run", "--methods", "cpsc-dfkd", "--seeds", "0", "--budget", "smoke",
            "--set", "iterations=10", "--set", "eval_every=2", "--set", "log_every=2", "--set", "checkpoint_every=2",
            "--set", "quality_samples=0", "--teacher-cache", str(teachers), "--no-progress"]
    ref_out, out = tmp_path / "ref", tmp_path / "out"
    ref = subprocess.Popen(argv + ["--out", str(ref_out)], cwd=ROOT, env=one_thread_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(argv + ["--out", str(out)], cwd=ROOT, env=one_thread_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list(out.glob("*/checkpoint.pt")) and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert victim.poll() is None, "the run ended before it could be interrupted"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    (cell_dir,) = [p for p in out.iterdir() if p.is_dir()]
    assert not (cell_dir / "record.json").exists() and (cell_dir / "checkpoint.pt").exists()
    assert ref.wait(timeout=300) == 0, ref.stderr.read()

    resumed = subprocess.run(argv + ["--out", str(out)], cwd=ROOT, env=one_thread_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a = read_record(ref_out / cell_dir.name / "record.json")
    b = read_record(cell_dir / "record.json")
    assert a["status"] == b["status"] == "done"
    assert "resumed_from" not in a and b["resumed_from"] >= 2
    assert b["final_acc"] == a["final_acc"] and b["best_acc"] == a["best_acc"]
    assert b["best_iteration"] == a["best_iteration"]
    assert [(c["iteration"], c["acc"]) for c in b["curve"]] == [(c["iteration"], c["acc"]) for c in a["curve"]]
    assert b["loss_curve"] == a["loss_curve"]
    assert not (cell_dir / "checkpoint.pt").exists()
