"""Live progress of running cells (``benchmark.progress``): ``progress.json`` at every evaluation, ``status``
showing a running cell's iteration and accuracy, TensorBoard curves (skipped without tensorboard)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import methods  # noqa: F401  (registers every method)

from benchmark import status
from benchmark.cli import main
from benchmark.progress import PROGRESS_NAME, CellProgress, read_progress, tensorboard_available
from benchmark.records import Cell, read_record
from benchmark.runner import RunOptions, run_cell

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def digits_teacher(teacher_cache):
    """The session's digits teacher cache, with the seed-0 teacher trained once."""
    from benchmark.registry import DATASETS
    from benchmark.teachers import cache_path

    spec = DATASETS.get("digits")
    if not cache_path(teacher_cache, spec, spec.default_teacher, 0).exists():
        subprocess.run([sys.executable, "-m", "benchmark", "teacher", "--seed", "0", "--teacher-cache",
                        str(teacher_cache), "--no-progress"], cwd=ROOT, check=True, env=_env())
    return teacher_cache


def test_cell_progress_writes_points_and_is_removed_when_done(tmp_path):
    path = tmp_path / PROGRESS_NAME
    live = CellProgress(path, {"cell_id": "c", "method": "m"}, iterations=100)
    live.start()
    live.evaluated(0, 10.0)
    assert read_progress(path)["acc"] == 10.0 and read_progress(path)["eta_s"] is None
    live.logged(20, {"kd": 0.5})
    live.evaluated(20, 55.5, {"student_steps": 100})
    point = read_progress(path)
    assert (point["iteration"], point["acc"], point["best_acc"], point["losses"]) == (20, 55.5, 55.5, {"kd": 0.5})
    assert point["student_steps"] == 100 and point["eta_s"] >= 0 and point["state"] == "running"
    assert point["pid"] == os.getpid()
    live.evaluated(40, 50.0)
    assert read_progress(path)["best_acc"] == 55.5
    live.close("failed")
    assert read_progress(path)["state"] == "failed" and read_progress(path)["iteration"] == 40
    live.close("done")
    assert not path.exists()


def test_status_shows_a_running_inline_cells_iteration_and_accuracy(tmp_path, digits_teacher, capsys):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "benchmark", "run", "--methods", "dafl", "--budget", "smoke", "--out", str(out),
            "--teacher-cache", str(digits_teacher), "--no-progress", "--set", "iterations=100000",
            "--set", "eval_every=3", "--set", "quality_samples=0"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        point = None
        while time.time() < deadline and proc.poll() is None:
            found = list(out.glob(f"*/{PROGRESS_NAME}"))
            point = read_progress(found[0]) if found else None
            if point and point["iteration"] >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()
        assert point and point["iteration"] >= 3, "no progress point after 3 iterations"
        (cell,) = status.collect(out)
        assert cell.state == "running" and cell.progress["iteration"] >= 3
        code = main(["status", str(out)])
        text = capsys.readouterr().out
        assert code == 0
        assert "1 running" in text
        line = next(ln for ln in text.splitlines() if ln.startswith("running"))
        assert "/100000" in line and "it " in line and "acc " in line
        shown = int(line.split("it ")[1].split("/")[0])
        assert shown >= 3 and shown % 3 == 0          # an evaluation point
        assert f"{cell.progress['acc']:.2f}%" in line
        code = main(["status", str(out), "--json"])
        (entry,) = json.loads(capsys.readouterr().out)
        assert entry["state"] == "running" and entry["progress"]["acc"] is not None
    finally:
        proc.kill()
        proc.wait()
    # the process is gone and wrote no record: the cell failed, and status says how far it got
    (cell,) = status.collect(out)
    assert cell.state == "failed" and "ended without a record" in cell.error and "it " in cell.error


def test_a_finished_cell_leaves_no_progress_file(tmp_path, digits_teacher):
    cell = Cell("dafl", "digits", "cnn_wide", "cnn_narrow", 0, "smoke",
                (("iterations", "4"), ("eval_every", "2"), ("quality_samples", "0")))
    rec = run_cell(cell, RunOptions(out=tmp_path, teacher_cache=digits_teacher, progress=False))
    assert rec["status"] == "done"
    assert not (tmp_path / cell.cell_id / PROGRESS_NAME).exists()
    assert read_record(tmp_path / cell.cell_id / "record.json")["status"] == "done"


@pytest.mark.skipif(not tensorboard_available(), reason="the optional tensorboard package is not installed")
def test_tensorboard_curves(tmp_path, digits_teacher):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cell = Cell("dafl", "digits", "cnn_wide", "cnn_narrow", 0, "smoke",
                (("iterations", "4"), ("eval_every", "2"), ("log_every", "2"), ("quality_samples", "0")))
    rec = run_cell(cell, RunOptions(out=tmp_path, teacher_cache=digits_teacher, progress=False, tensorboard=True))
    assert rec["status"] == "done"
    acc = EventAccumulator(str(tmp_path / cell.cell_id / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("acc/test")] == [0, 2, 4]
    assert [e.value for e in acc.Scalars("acc/test")] == pytest.approx([c["acc"] for c in rec["curve"]])
    loss_tags = [t for t in acc.Tags()["scalars"] if t.startswith("loss/")]
    assert loss_tags and all([e.step for e in acc.Scalars(t)] == [2, 4] for t in loss_tags)


def test_tensorboard_flag_without_the_package_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    import benchmark.progress as progress

    monkeypatch.setattr(progress, "tensorboard_available", lambda: False)
    code = main(["run", "--methods", "dafl", "--budget", "smoke", "--out", str(tmp_path / "o"), "--tensorboard"])
    err = capsys.readouterr().err
    assert code == 2 and "tensorboard" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
