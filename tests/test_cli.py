"""The command line: bad input exits non-zero in one line and writes nothing; reruns skip finished cells."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmark.cli import main
from benchmark.records import Cell, read_record
from benchmark.runner import RunOptions, run_cell

ROOT = Path(__file__).resolve().parent.parent


def run_main(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("what", ["methods", "models", "datasets"])
def test_list(what, capsys):
    code, out, _ = run_main(["list", what], capsys)
    assert code == 0 and out.strip()
    if what == "methods":
        assert "cpsc-dfkd" in out


BAD = [
    (["--methods", "no-such-method"], "unknown method"),
    (["--methods", "zz*"], "no method matches"),
    (["--dataset", "imagenet-21k"], "unknown dataset"),
    (["--teacher", "resnet1000"], "unknown model"),
    (["--student", "lenet5"], "needs inputs of at least"),
    (["--seeds", "0,x"], "--seeds"),
    (["--set", "no_such_key=1"], "unknown config key"),
    (["--set", "iterations=many"], "bad value for iterations"),
    (["--set", "iterations"], "key=value"),
    (["--set", "iterations=-3"], "iterations must be"),
    (["--set", "ikd_form=cubic"], "ikd_form"),
    (["--budget", "paper"], "no 'paper' budget"),
    (["--budget", "huge"], "invalid choice"),
    (["--device", "tpu"], "--device"),
    (["--teacher-ckpt", "/no/such/file.pt"], "no such file"),
    (["--no-such-flag"], "unrecognized arguments"),
]


@pytest.mark.parametrize("extra,message", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_exits_nonzero_with_one_line_and_writes_nothing(extra, message, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) if extra[0] in ("--budget", "--no-such-flag") and message != "no 'paper' budget" else _nullctx() as exit_info:
        code, _, err = run_main(["run", "--methods", "cpsc-dfkd", "--out", str(out), "--no-progress", *extra], capsys)
    if exit_info is not None and getattr(exit_info, "value", None) is not None:
        code = exit_info.value.code
        err = capsys.readouterr().err
    assert code != 0
    assert message in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists(), "a rejected command wrote something"


class _nullctx:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_missing_data_root_is_one_line_error(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_main(["run", "--methods", "cpsc-dfkd", "--dataset", "cifar10", "--data-root",
                             str(tmp_path / "nowhere"), "--out", str(out)], capsys)
    assert code == 2 and "nowhere" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    code, _, err = run_main(["run", "--methods", "cpsc-dfkd", "--dataset", "cifar10", "--out", str(out)], capsys)
    assert code == 2 and "--data-root" in err and not out.exists()


def test_impossible_model_dataset_combination(tmp_path, capsys):
    code, _, err = run_main(["run", "--methods", "cpsc-dfkd", "--dataset", "cifar10", "--teacher", "lenet5",
                             "--data-root", str(tmp_path), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "channel" in err


def test_end_to_end_run_learns_records_and_skips_on_rerun(tmp_path, teacher_cache):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "benchmark", "run", "--methods", "cpsc-dfkd", "--budget", "smoke",
           "--set", "iterations=60", "--out", str(out), "--teacher-cache", str(teacher_cache), "--no-progress"]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    [path] = list(out.glob("*/record.json"))
    rec = read_record(path)
    assert rec["status"] == "done"
    assert rec["final_acc"] >= 60.0, rec["curve"]
    assert rec["teacher_acc"] >= 95.0
    for key in ("method", "dataset", "teacher", "student", "seed", "teacher_acc", "final_acc", "best_acc",
                "wall_time_s", "iterations", "synthetic_images", "images_per_s", "curve", "config", "env",
                "student_steps", "teacher_forwards", "loss_curve", "quality"):
        assert key in rec, key
    for key in ("torch", "git_commit", "device", "host", "python"):
        assert key in rec["env"]
    assert rec["config"]["run"]["iterations"] == 60 and rec["config"]["method"]["batch_size"] == 64
    assert "cpsc-dfkd" in first.stdout and "done" in first.stdout
    before = path.read_bytes()
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and "skipped" in second.stdout
    assert path.read_bytes() == before


def test_failing_rerun_never_overwrites_a_finished_record(tmp_path, teacher_cache, monkeypatch):
    cell = Cell("cpsc-dfkd", "digits", "cnn_wide", "cnn_narrow", seed=0, budget="smoke", overrides=(("iterations", "2"),))
    opts = RunOptions(out=tmp_path, teacher_cache=teacher_cache, progress=False, device="cpu")
    rec = run_cell(cell, opts)
    assert rec["status"] == "done"
    path = tmp_path / cell.cell_id / "record.json"
    before = path.read_bytes()
    from methods.cpsc_dfkd import CPSCDFKD

    def boom(self, iteration):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(CPSCDFKD, "train_iteration", boom)
    opts.force = True
    failed = run_cell(cell, opts)
    assert failed["status"] == "failed" and "injected failure" in failed["error"]
    assert path.read_bytes() == before
    assert json.loads((tmp_path / cell.cell_id / "last_failure.json").read_text())["status"] == "failed"


def test_non_finite_losses_end_in_a_failed_record(tmp_path, teacher_cache, monkeypatch):
    from methods.cpsc_dfkd import CPSCDFKD

    monkeypatch.setattr(CPSCDFKD, "train_iteration", lambda self, it: {"g_total": torch.tensor(float("nan"))})
    cell = Cell("cpsc-dfkd", "digits", "cnn_wide", "cnn_narrow", budget="smoke")
    rec = run_cell(cell, RunOptions(out=tmp_path, teacher_cache=teacher_cache, progress=False, device="cpu"))
    assert rec["status"] == "failed" and "non-finite loss g_total" in rec["error"]
    assert read_record(tmp_path / cell.cell_id / "record.json")["status"] == "failed"


def test_teacher_checkpoint_round_trip_and_mismatch(tmp_path, teacher_cache, capsys):
    code, out, _ = run_main(["teacher", "--teacher-cache", str(teacher_cache), "--no-progress"], capsys)
    assert code == 0
    [ckpt] = list(Path(teacher_cache).glob("digits-cnn_wide-s0-*.pt"))
    blob = torch.load(ckpt, weights_only=True)
    bare = tmp_path / "bare.pt"
    torch.save(blob["state_dict"], bare)
    cell = Cell("cpsc-dfkd", "digits", "cnn_wide", "cnn_narrow", budget="smoke",
                overrides=(("iterations", "1"),), teacher_ckpt=str(bare))
    rec = run_cell(cell, RunOptions(out=tmp_path / "o", progress=False, device="cpu"))
    assert rec["status"] == "done" and rec["teacher_acc"] == pytest.approx(blob["test_acc"])
    assert rec["teacher_info"]["source"] == "external"
    code, _, err = run_main(["run", "--methods", "cpsc-dfkd", "--teacher", "cnn_narrow", "--teacher-ckpt", str(bare),
                             "--out", str(tmp_path / "o2")], capsys)
    assert code == 2 and "does not fit" in err and not (tmp_path / "o2").exists()
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    code, _, err = run_main(["run", "--methods", "cpsc-dfkd", "--teacher-ckpt", str(corrupt), "--out", str(tmp_path / "o3")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "o3").exists()


# ---- a method that cannot run with the teacher (BatchNorm statistics) ----------------------------------------

def test_bn_method_with_a_bn_free_teacher_fails_before_any_teacher_or_write(tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "teachers"
    code, _, err = run_main(["run", "--methods", "cpsc-dfkd", "--dataset", "mnist", "--teacher", "lenet5",
                             "--student", "lenet5_half", "--data-root", str(tmp_path / "nowhere"), "--out", str(out),
                             "--teacher-cache", str(cache)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "BatchNorm" in err and "lenet5" in err
    assert not out.exists() and not cache.exists()


def test_methods_all_leaves_out_the_not_applicable_ones_with_a_note(capsys):
    from benchmark.cli import build_parser, cells_from_args
    from benchmark.registry import METHODS

    args = build_parser().parse_args(["run", "--methods", "all", "--dataset", "mnist", "--teacher", "lenet5",
                                      "--student", "lenet5_half"])
    cells = cells_from_args(args)
    err = capsys.readouterr().err
    needs_bn = {n for n in METHODS.list() if METHODS.get(n).requires_bn}
    assert needs_bn and {"dafl", "kd-real", "teacher"} <= {c.method for c in cells}
    assert not needs_bn & {c.method for c in cells}
    notes = [line for line in err.splitlines() if line.startswith("note: not applicable")]
    assert len(notes) == len(needs_bn) and all(any(f"'{n}'" in line for line in notes) for n in needs_bn)
    # a pattern behaves like 'all'; a plain name is an error
    args = build_parser().parse_args(["run", "--methods", "dafl,fast*", "--dataset", "mnist", "--teacher", "lenet5",
                                      "--student", "lenet5_half"])
    assert [c.method for c in cells_from_args(args)] == ["dafl"]


def test_spaceshipnet_is_not_applicable_to_lenet_before_any_teacher(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_main(["run", "--methods", "spaceshipnet", "--dataset", "mnist", "--data-root",
                             str(tmp_path / "nowhere"), "--out", str(out)], capsys)
    assert code == 2 and "LeNet5 has a 1x1 last map and a two-layer head, so no CAM" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
