"""``run --table``, ``list tables`` and ``--set`` sweeps on the command line."""
from __future__ import annotations

import json

import pytest

from benchmark.cli import build_parser, cells_from_args, main


def run_main(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def parse(argv):
    return build_parser().parse_args(["run", *argv])


def test_list_tables_shows_every_table_with_its_description(capsys):
    code, out, _ = run_main(["list", "tables"], capsys)
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert {"cmi-cifar10", "cmi-cifar100", "fast-cost", "dafl-mnist", "cpsc-ablation", "cpsc-sensitivity",
            "digits-reference"} <= set(names)
    assert all(len(line.split(None, 1)) == 2 for line in out.splitlines())


def test_dry_run_plans_a_cifar_table_without_the_data(tmp_path, capsys):
    code, out, err = run_main(["run", "--table", "cmi-cifar100", "--dry-run", "--out", tmp_path / "o"], capsys)
    assert code == 0, err
    assert "165 cell(s)" in out and "warning: cifar100" in err and "--data-root" in err
    assert out.count("  run   [missing] ") == 11 * 5 * 3
    assert "recipe cmi (paper) on every column: " in out
    assert not (tmp_path / "o").exists()                 # a dry run writes nothing


def test_slurm_dry_run_lists_cells_and_resources(tmp_path, capsys):
    code, out, err = run_main(["run", "--table", "cmi-cifar100", "--seeds", "0", "--launcher", "slurm",
                               "--slurm-profile", "local", "--dry-run", "--out", tmp_path / "o"], capsys)
    assert code == 0, err
    assert out.count("  run   [missing] ") == 11 * 5
    assert "resources per cell:" in out


def test_missing_budgets_are_listed_by_a_dry_run_and_refused_by_a_run(tmp_path, capsys):
    from benchmark.config import ConfigError
    from benchmark.registry import METHODS

    def has(m):
        try:
            METHODS.get(m).budget_overrides("paper", "mnist", "lenet5", "lenet5_half")
            return True
        except ConfigError:
            return False

    rows = ["teacher", "student-real", "kd-real", "dafl", "dfad", "zskt"]
    missing = [m for m in rows if not has(m)]
    code, out, err = run_main(["run", "--table", "dafl-mnist", "--dry-run", "--out", tmp_path / "o"], capsys)
    assert code == 0
    for m in missing:
        assert f"no budget: row '{m}' on mnist lenet5→lenet5_half" in out
    assert out.count("  run   [missing] ") == 3 * (len(rows) - len(missing))
    if missing:
        code, out, err = run_main(["run", "--table", "dafl-mnist", "--out", tmp_path / "o"], capsys)
        assert code == 2 and err.startswith("error: table dafl-mnist: no 'paper' budget for ")
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra,message", [
    (["--teacher", "cnn_wide"], "--teacher cannot be combined with --table"),
    (["--dataset", "digits", "--datasets", "digits"], "give --dataset or --datasets, not both"),
    (["--pairs", "cnn_wide"], "teacher:student"),
    (["--table-typo"], None),
    (["--set", "gamma=1,2"], "sets it already"),
    (["--methods", "dafl"], "matches no row"),
])
def test_table_flags_errors(tmp_path, capsys, extra, message):
    if message is None:
        with pytest.raises(SystemExit) as info:
            main(["run", "--table", "cpsc-ablation", *extra])
        assert info.value.code == 2
        return
    code, _, err = run_main(["run", "--table", "cpsc-ablation", *extra, "--dry-run", "--out", tmp_path / "o"], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_unknown_table(capsys, tmp_path):
    code, _, err = run_main(["run", "--table", "cmi-cifar", "--out", tmp_path], capsys)
    assert code == 2 and "unknown table 'cmi-cifar'" in err and "cmi-cifar10" in err


def test_set_sweeps_expand_into_the_product_without_a_table():
    cells = cells_from_args(parse(["--methods", "cpsc-dfkd", "--seeds", "0,1", "--budget", "smoke",
                                   "--set", "gamma=0,0.7", "--set", "temperature=0.05,0.1,0.2",
                                   "--set", "iterations=3"]))
    assert len(cells) == 2 * 3 * 2
    combos = {(dict(c.overrides)["gamma"], dict(c.overrides)["temperature"]) for c in cells}
    assert combos == {(g, t) for g in ("0", "0.7") for t in ("0.05", "0.1", "0.2")}
    assert all(dict(c.overrides)["iterations"] == "3" for c in cells)
    # a bracketed value is one value, not a sweep
    one = cells_from_args(parse(["--methods", "cpsc-dfkd", "--budget", "smoke", "--set", "ngf=8"]))
    assert len(one) == 1


def test_table_run_fills_the_cells_and_skips_them_on_a_rerun(tmp_path, capsys, teacher_cache):
    """A two-row slice of the ablation at a tiny budget, inline: one record per cell, then all skipped."""
    out = tmp_path / "o"
    args = ["run", "--table", "cpsc-ablation", "--seeds", "0", "--budget", "smoke", "--set", "iterations=2",
            "--set", "eval_every=1", "--set", "quality_samples=0", "--set", "batch_size=16", "--out", out,
            "--teacher-cache", teacher_cache, "--no-progress", "--device", "cpu"]
    code, text, err = run_main(args, capsys)
    assert code == 0, err
    records = [json.loads(p.read_text()) for p in out.glob("*/record.json")]
    assert len(records) == 6 and {r["status"] for r in records} == {"done"}
    assert sorted(json.dumps(r["overrides"], sort_keys=True) for r in records) == sorted(
        json.dumps({"iterations": "2", "eval_every": "1", "quality_samples": "0", "batch_size": "16", **o},
                   sort_keys=True)
        for o in ({}, {"adv": "0.0"}, {"alpha": "0.0"}, {"beta": "0.0"}, {"gamma": "0.0"}, {"eta": "0.0"}))
    code, text, err = run_main(args, capsys)
    assert code == 0 and text.count("(skipped)") == 6
    # the report finds them at the budget they ran at, every row with n = 1
    code, text, err = run_main(["report", out, "--table", "cpsc-ablation", "--budget", "smoke"], capsys)
    assert code == 0, err
    rows = [line for line in text.splitlines() if line.startswith("| ") and "| 1 |" in line]
    assert len(rows) == 6, text
    assert "--set batch_size=16 eval_every=1 iterations=2 quality_samples=0" in text


def test_dataset_and_pairs_replace_the_table_columns(tmp_path, capsys):
    code, out, err = run_main(["run", "--table", "cpsc-ablation", "--dataset", "cifar10", "--budget", "paper",
                               "--seeds", "0", "--dry-run", "--out", tmp_path / "o"], capsys)
    assert code == 0, err
    assert "columns: cifar10 resnet34→resnet18" in out and out.count("  run   [missing] ") == 6
    assert "(paper) on cifar10 resnet34→resnet18: " in out and "warning: cifar10" in err
    code, out, err = run_main(["run", "--table", "cpsc-ablation", "--datasets", "cifar10,cifar100",
                               "--pairs", "wrn40_2:wrn16_1,wrn40_2:wrn16_2", "--budget", "paper", "--seeds", "0",
                               "--dry-run", "--out", tmp_path / "o"], capsys)
    assert code == 0, err
    assert out.count("  run   [missing] ") == 6 * 4
