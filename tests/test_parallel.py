"""The inline launcher's worker processes (``--jobs``) and the grid-level progress view of ``run``."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

import methods  # noqa: F401  (registers every method)
from benchmark.cli import main
from benchmark.parallel import resolve_jobs
from benchmark.progress import GridProgress
from benchmark.records import Cell, atomic_write_json, read_record

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--budget", "smoke", "--set", "iterations=4", "--set", "eval_every=2", "--set", "quality_samples=0"]


@pytest.fixture(scope="module")
def digits_teacher(teacher_cache):
    from benchmark.registry import DATASETS
    from benchmark.teachers import cache_path

    spec = DATASETS.get("digits")
    if not cache_path(teacher_cache, spec, spec.default_teacher, 0).exists():
        subprocess.run([sys.executable, "-m", "benchmark", "teacher", "--seed", "0", "--teacher-cache",
                        str(teacher_cache), "--no-progress"], cwd=ROOT, check=True)
    return teacher_cache


@pytest.mark.parametrize("jobs,cells,cores,expected", [
    ("auto", 14, 2, (2, 1)), ("auto", 3, 8, (3, 2)), ("auto", 1, 2, (1, 2)), ("auto", 20, 16, (16, 1)),
    ("1", 14, 2, (1, 2)), (4, 14, 2, (4, 1)), ("3", 2, 6, (2, 3)),
])
def test_workers_and_threads_never_oversubscribe(jobs, cells, cores, expected):
    workers, threads = resolve_jobs(jobs, cells, cores)
    assert (workers, threads) == expected
    assert workers * threads <= max(cores, workers)


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5"])
def test_bad_jobs_is_a_one_line_error_before_anything_is_written(bad, tmp_path, capsys):
    code = main(["run", "--methods", "dafl", "--out", str(tmp_path / "o"), "--jobs", bad, *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "--jobs" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_grid_progress_prints_each_result_and_an_estimate(tmp_path):
    cells = [Cell(m, "digits", "cnn_wide", "cnn_narrow") for m in ("dafl", "dfad", "zskt")]
    stream = io.StringIO()
    grid = GridProgress(cells, tmp_path, parallel=2, stream=stream)
    grid.started(cells[0])
    grid.started(cells[1])
    assert grid.remaining_s() is None            # nothing finished, no progress file: unknown
    atomic_write_json(tmp_path / cells[1].cell_id / "progress.json",
                      {"iteration": 30, "iterations": 60, "eta_s": 10.0})
    grid.finished(cells[0], {"status": "done", "final_acc": 97.5, "best_acc": 98.0, "wall_time_s": 20.0})
    first = stream.getvalue().splitlines()[-1]
    assert "dafl digits seed 0: 97.50 %" in first and "1/3 done" in first
    assert "running: dfad s0 it 30/60" in first and "(estimate)" in first
    left = grid.remaining_s()
    assert left is not None and left > 0
    grid.started(cells[2])
    grid.finished(cells[2], {"status": "failed", "error": "RuntimeError: boom"})
    grid.finished(cells[1], {"status": "done", "final_acc": 90.0, "best_acc": 91.0, "wall_time_s": 5.0})
    lines = stream.getvalue().splitlines()
    assert "zskt digits seed 0: failed: RuntimeError: boom" in lines[1] and "2/3 done (1 failed)" in lines[1]
    assert "3/3 done (1 failed)" in lines[2] and "left" not in lines[2]


def test_worker_processes_give_the_records_of_the_sequential_run(tmp_path, digits_teacher, capsys):
    """Two cells in two worker processes (one thread each) end with the same curves as one after another in
    this process with one thread; the grid view prints both results as they land."""
    seq, par = tmp_path / "seq", tmp_path / "par"
    common = ["run", "--methods", "dafl,dfad", "--teacher-cache", str(digits_teacher), "--no-progress", *TINY]
    assert main([*common, "--out", str(seq), "--jobs", "1"]) == 0
    capsys.readouterr()
    assert main([*common, "--out", str(par), "--jobs", "2"]) == 0
    text = capsys.readouterr().out
    assert "2 worker processes, 1 thread(s) each" in text
    assert "1/2 done" in text and "2/2 done" in text
    for folder in seq.iterdir():
        if not (folder / "record.json").exists():
            continue
        a, b = read_record(folder / "record.json"), read_record(par / folder.name / "record.json")
        assert a["status"] == b["status"] == "done"
        assert [(c["iteration"], c["acc"]) for c in a["curve"]] == [(c["iteration"], c["acc"]) for c in b["curve"]]
        assert a["loss_curve"] == b["loss_curve"]
        assert not (par / folder.name / "progress.json").exists()
    # a second run finds both done and runs nothing
    assert main([*common, "--out", str(par), "--jobs", "2"]) == 0
    assert "2 cell(s) already done" in capsys.readouterr().out
