"""The report: golden tables from hand-made fixture records, LaTeX shape, figures, bad input.

Fixture: ``tests/fixtures/records/runs`` (written by ``tests/fixtures/records/make_records.py``; its docstring
lists the numbers). Expected text: ``tests/fixtures/records/expected``. After an intended change of the
output, rewrite the expected files with ``UPDATE_GOLDEN=1 python -m pytest tests/test_report.py`` and review
the diff.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from scipy import stats

from benchmark.report import (ReportError, accuracy_table, add_arguments, command, cost_table, equal_cost,
                              equal_cost_table, load_published, load_records, quality_table, render_csv,
                              render_latex, render_markdown, write_figures)
from benchmark.report.load import mixed_runs
from benchmark.report.published import PUBLISHED_CSV
from benchmark.report.columns import Column
from benchmark.report.stats import fmt_num

FIXTURES = Path(__file__).parent / "fixtures" / "records"
RUNS = FIXTURES / "runs"
EXPECTED = FIXTURES / "expected"
DIGITS = Column("digits", "cnn_wide", "cnn_narrow")
C10 = Column("cifar10", "resnet34", "resnet18")


@pytest.fixture(scope="module")
def loaded():
    return load_records([RUNS])


@pytest.fixture(scope="module")
def df(loaded):
    return loaded[0]


def _golden(name: str, text: str) -> None:
    path = EXPECTED / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from the golden file"


def _row(frame, method, col):
    sel = frame[(frame["method"] == method) & (frame["dataset"] == col.dataset) & (frame["teacher"] == col.teacher)]
    assert len(sel) == 1
    return sel.iloc[0]


# ---- loading ---------------------------------------------------------------------------------------------

def test_load_reports_the_corrupt_record_and_reads_the_rest(loaded):
    df, problems = loaded
    assert len(problems) == 1
    assert "corrupt record" in problems[0] and "kd-real-default-s0" in problems[0]
    assert len(df) == 26                      # 27 files, one corrupt
    assert (df["status"] == "failed").sum() == 2
    assert set(df.loc[~df["data_free"], "method"]) == {"teacher", "kd-real"}
    assert df.loc[df["method"] == "cpsc-dfkd", "quality_label_agreement"].notna().sum() == 3


def test_partial_and_corrupt_records_are_reported_and_skipped(tmp_path):
    good = sorted(RUNS.glob("digits-*-cmi-*"))
    for d in good:
        shutil.copytree(d, tmp_path / d.name)
    rec = json.loads((good[0] / "record.json").read_text())
    no_status = {k: v for k, v in rec.items() if k != "status"}
    no_acc = dict(rec, cell_id="x-no-acc", final_acc=None)
    bad_curve = dict(rec, cell_id="x-bad-curve", curve="not a list")
    for name, text in [("partial", json.dumps(no_status)), ("no-acc", json.dumps(no_acc)),
                       ("bad-curve", json.dumps(bad_curve)), ("garbage", '{"status": "done", "meth'),
                       ("not-a-dict", "[1, 2, 3]")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "record.json").write_text(text)
    df, problems = load_records([tmp_path])
    assert len(df) == 3 and set(df["method"]) == {"cmi"}
    assert len(problems) == 5
    joined = "\n".join(problems)
    for name in ("partial", "no-acc", "bad-curve", "garbage", "not-a-dict"):
        assert f"{name}/record.json" in joined
    assert "without final_acc" in joined and "missing status" in joined


def test_a_cell_found_twice_is_counted_once(tmp_path):
    src = next(RUNS.glob("digits-*-cmi-*-s0-*"))
    for out in ("a", "b"):
        shutil.copytree(src, tmp_path / out / src.name)
    df, problems = load_records([tmp_path / "a", tmp_path / "b"])
    assert len(df) == 1
    assert len(problems) == 1 and problems[0].startswith("duplicate cell")


def test_missing_folder_raises(tmp_path):
    with pytest.raises(ReportError, match="no such folder"):
        load_records([tmp_path / "nope"])


def test_overrides_and_budgets_are_separate_rows(tmp_path):
    for d in RUNS.glob("digits-*-cmi-*"):
        shutil.copytree(d, tmp_path / d.name)
    rec = json.loads(next(RUNS.glob("digits-*-cmi-*-s0-*")).joinpath("record.json").read_text())
    rec.update(cell_id="other", overrides={"lr": "0.1"}, budget="smoke", final_acc=50.0)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "record.json").write_text(json.dumps(rec))
    df, _ = load_records([tmp_path])
    assert sorted(set(df["variant"])) == ["cmi (default)", "cmi [lr=0.1] (smoke)"]
    table = accuracy_table(df, published=False)
    assert [r.label for r in table.rows] == ["cmi (default)", "cmi [lr=0.1] (smoke)"]
    assert table.cells[("cmi (default)", DIGITS)].stat.mean == 90.0


def test_settings_every_record_shares_stay_out_of_the_labels(tmp_path):
    for d in RUNS.glob("digits-*-cmi-*"):
        rec = json.loads((d / "record.json").read_text())
        rec["overrides"] = {"quality_samples": "200", **({"lr": "0.1"} if rec["seed"] == 2 else {})}
        (tmp_path / d.name).mkdir()
        (tmp_path / d.name / "record.json").write_text(json.dumps(rec))
    df, _ = load_records([tmp_path])
    assert sorted(set(df["variant"])) == ["cmi", "cmi [lr=0.1]"]
    notes = accuracy_table(df, published=False).notes()
    assert notes[0] == "Every run: budget default; --set quality_samples=200."


# ---- the accuracy table ----------------------------------------------------------------------------------

def test_golden_markdown_and_csv(df):
    table = accuracy_table(df)
    _golden("accuracy.md", render_markdown(table))
    _golden("accuracy.csv", render_csv(table))


def test_golden_cifar10_layout_with_best_accuracy(df):
    _golden("accuracy-cifar10-best.md", render_markdown(accuracy_table(df, table="cifar10", metric="best")))


def test_accuracy_cells_by_hand(df):
    frame = accuracy_table(df).to_frame()
    cmi = _row(frame, "cmi", C10)
    assert (cmi["mean"], cmi["std"], cmi["n"]) == (94.0, 1.0, 3)
    assert cmi["best"] and cmi["significant"] and cmi["runner_up"] == "dafl"
    p = stats.ttest_ind([93.0, 94.0, 95.0], [90.0, 91.0], equal_var=False).pvalue
    assert cmi["p_value"] == pytest.approx(p) and p < 0.05
    assert cmi["paper"] == 94.84 and cmi["diff"] == pytest.approx(-0.84)

    dafl = _row(frame, "dafl", C10)
    assert (dafl["n"], dafl["failed"], dafl["mean"]) == (2, 1, 90.5)
    assert dafl["std"] == pytest.approx(math.sqrt(0.5))
    assert dafl["paper"] == 92.22          # Fast-Datafree's figure, not mmrazor's 93.27

    cpsc = _row(frame, "cpsc-dfkd", DIGITS)
    assert cpsc["best"] and not cpsc["significant"] and cpsc["runner_up"] == "cmi"
    assert cpsc["p_value"] == pytest.approx(stats.ttest_ind([91, 91.5, 92], [88, 90, 92], equal_var=False).pvalue)
    assert _row(frame, "cpsc-dfkd", C10)["status"] == "failed"

    fast = _row(frame, "fast", C10)
    assert fast["status"] == "missing" and fast["paper"] == 93.63 and fast["paper_method"] == "fast-5"
    assert pd.isna(fast["diff"])
    # reference rows come first and are never bold
    assert list(frame["method"].drop_duplicates()) == ["teacher", "kd-real", "cmi", "dafl", "fast", "cpsc-dfkd"]
    assert not frame.loc[~frame["data_free"], "best"].any()


def test_metric_best_is_used_and_stated(df):
    table = accuracy_table(df, metric="best")
    assert table.cells[("cmi", DIGITS)].stat.mean == 91.0      # the curves peak 1 point above the end
    assert table.cells[("fast", DIGITS)].stat.mean == 86.0
    assert "best accuracy" in table.caption()
    assert "final accuracy" in accuracy_table(df).caption()


def test_cifar_layout_has_the_five_pairs_and_the_published_rows(df):
    table = accuracy_table(df, table="cifar10")
    assert [(c.teacher, c.student) for c in table.columns] == [
        ("resnet34", "resnet18"), ("vgg11", "resnet18"), ("wrn40_2", "wrn16_1"), ("wrn40_2", "wrn40_1"),
        ("wrn40_2", "wrn16_2")]
    labels = [r.label for r in table.rows]
    assert labels[:2] == ["teacher", "student-real"]
    for m in ("deepinv", "cmi", "dafl", "zskt", "dfq", "dfad", "fast-2", "fast-5", "fast-10", "cpsc-dfkd"):
        assert m in labels
    vgg = Column("cifar10", "vgg11", "resnet18")
    assert table.cells[("teacher", vgg)].stat is None and table.cells[("teacher", vgg)].paper.top1 == 92.25
    md = render_markdown(table)
    assert md.count("| cifar10 ") == 5 and "| deepinv | — | — | 93.26 [1] |" in md


def test_disagreeing_sources_say_which_is_printed(tmp_path):
    rec = json.loads(next(RUNS.glob("digits-*-dafl-*-s0-*")).joinpath("record.json").read_text())
    rec.update(dataset="cifar100", teacher="vgg11", student="resnet18", cell_id="c100")
    (tmp_path / "c100").mkdir()
    (tmp_path / "c100" / "record.json").write_text(json.dumps(rec))
    df, _ = load_records([tmp_path])
    table = accuracy_table(df)
    cell = table.cells[("dafl", Column("cifar100", "vgg11", "resnet18"))]
    assert cell.paper.top1 == 54.16 and "Fast-Datafree" in cell.paper.source
    assert [f.top1 for f in cell.published[1:]] == [57.29]
    notes = " ".join(table.notes())
    assert "[1] 54.16 printed, [2] gives 57.29" in notes and "zju-vipa/CMI README" in notes


def test_published_copy_matches_its_sources():
    pub = load_published()
    assert len(pub) > 100
    figs, alias = pub.lookup("cifar100", "wrn40_2", "wrn16_1", "zskt")
    assert [f.top1 for f in figs] == [36.66, 30.15]
    assert pub.lookup("cifar10", "resnet34", "resnet18", "fast") [1] == "fast-5"
    header = PUBLISHED_CSV.read_text().splitlines()[0]
    assert header == "dataset,teacher,student,method,top1,train_hours,source,status"


def test_unknown_table_and_metric(df):
    with pytest.raises(ReportError, match="unknown table 'imagenet'.*cifar100.*digits"):
        accuracy_table(df, table="imagenet")
    with pytest.raises(ReportError, match="unknown metric"):
        accuracy_table(df, metric="median")


def test_latex_is_balanced_booktabs(df):
    for table in (accuracy_table(df), accuracy_table(df, table="cifar10"), cost_table(df), equal_cost_table(df),
                  quality_table(df)):
        tex = render_latex(table)
        begins = re.findall(r"\\begin\{(\w+)\}", tex)
        ends = re.findall(r"\\end\{(\w+)\}", tex)
        assert sorted(begins) == sorted(ends) and "tabular" in begins and "table" in begins
        assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
        assert tex.count(r"\toprule") == 1 and tex.count(r"\bottomrule") == 1
        body = tex[tex.index(r"\begin{tabular}"):tex.index(r"\end{tabular}")]
        assert body.count("{") - body.count(r"\{") == body.count("}") - body.count(r"\}")
        ncols = len(re.search(r"\\begin\{tabular\}\{(\w+)\}", tex).group(1))
        for line in body.splitlines():
            if line.endswith(r"\\") and "multicolumn" not in line:
                assert line.count(" & ") == ncols - 1, line
        assert "±" not in tex and "→" not in tex and "—" not in tex and "†" not in tex


# ---- the other tables ------------------------------------------------------------------------------------

def test_equal_cost_by_hand(df):
    fwd = equal_cost(df, DIGITS, "teacher_forwards")
    assert fwd.budget == 1000                  # fast reaches 10 x 100 forwards, the least of all methods
    assert {k: s.mean for k, s in fwd.stats.items()} == {"cmi": 70.0, "dafl": 77.0, "fast": 86.0,
                                                        "cpsc-dfkd": 71.5}
    wall = equal_cost(df, DIGITS, "wall_time_s")
    assert wall.budget == 20.0
    assert wall.stats["cmi"].values == (10.0, 10.0, 10.0)   # 2 s/iteration: only the iteration-0 evaluation
    c10 = equal_cost(df, C10, "teacher_forwards")
    assert c10.budget == 2000 and c10.stats["cmi"].mean == 89.0 and c10.stats["dafl"].mean == 90.5
    table = equal_cost_table(df)
    _golden("equal-cost.md", render_markdown(table))
    _golden("equal-cost.csv", render_csv(table))


def test_cost_table(df):
    frame = cost_table(df).frame
    cmi = _row(frame, "cmi", C10)
    assert cmi["wall_time_s"] == 200.0 and cmi["teacher_forwards"] == 4000 and cmi["images_per_s"] == 20.0
    assert cmi["gpu_hours"] == pytest.approx(200 / 3600) and cmi["device"] == "NVIDIA H100"
    assert pd.isna(_row(frame, "cmi", DIGITS)["gpu_hours"])        # CPU: no GPU-hours
    assert _row(frame, "dafl", C10)["failed"] == 1
    md = render_markdown(cost_table(df))
    assert "| cifar10 resnet34→resnet18 | cpsc-dfkd | 0 (1 failed) | — |" in md
    assert fmt_num(0.3) == "0.300" and fmt_num(12345.6) == "12,346" and fmt_num(None) == "—"


def test_quality_table(df):
    frame = quality_table(df).frame
    cpsc = _row(frame, "cpsc-dfkd", DIGITS)
    assert cpsc["label_agreement"] == pytest.approx(0.96) and cpsc["feature_fid"] == pytest.approx(8.01)
    assert cpsc["class_balance_normalized"] == pytest.approx(0.998882)
    assert pd.isna(_row(frame, "cmi", DIGITS)["label_agreement"])
    assert "kd-real" not in set(frame["method"])                 # no quality for reference rows
    assert "| digits cnn_wide→cnn_narrow | dafl | 3 | 0.651 |" in render_markdown(quality_table(df))


# ---- figures and the command -----------------------------------------------------------------------------

def _with_samples(tmp_path: Path) -> Path:
    from benchmark.data import get_dataset
    from benchmark.quality import save_sample_grid

    out = tmp_path / "out"
    shutil.copytree(RUNS, out)
    spec = get_dataset("digits")
    gen = torch.Generator().manual_seed(0)
    for folder in out.glob("digits-*-s0-*"):
        labels = torch.arange(20) % 10 if "cpsc" in folder.name else None
        save_sample_grid(torch.randn(20, 1, 16, 16, generator=gen), labels, spec, folder / "samples.png")
    return out


def test_figures_are_written(tmp_path, df):
    out = _with_samples(tmp_path)
    frame, _ = load_records([out])
    paths = write_figures(frame, tmp_path / "figs")
    names = {p.name for p in paths}
    for stem in ("acc_vs_time", "learning_curves", "accuracy_bars", "samples_digits_cnn_wide-cnn_narrow"):
        for ext in ("png", "pdf"):
            assert f"{stem}.{ext}" in names
    for p in paths:
        assert p.stat().st_size > 1000
        assert p.read_bytes()[:4] in (b"\x89PNG", b"%PDF")
    assert "samples_cifar10_resnet34-resnet18.png" not in names      # no sample grids there
    assert not list((tmp_path / "figs").glob(".*"))                 # no temporary files left


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_command_writes_the_report(tmp_path, capsys):
    out = _with_samples(tmp_path)
    assert command(_parse([str(out)])) == 0
    captured = capsys.readouterr()
    assert "| cpsc-dfkd | 3 | **91.50 ± 0.50** | failed (1) | — | — |" in captured.out
    assert "corrupt record" in captured.err
    report = out / "report"
    for name in ("accuracy", "cost", "equal-cost", "quality"):
        for ext in ("md", "tex", "csv"):
            assert (report / f"{name}.{ext}").stat().st_size > 0
    assert (report / "accuracy.md").read_text() == (EXPECTED / "accuracy.md").read_text()
    assert (report / "accuracy.csv").read_text() == (EXPECTED / "accuracy.csv").read_text()
    assert (report / "figures" / "learning_curves.pdf").stat().st_size > 1000
    assert (report / "figures" / "samples_digits_cnn_wide-cnn_narrow.png").stat().st_size > 1000
    page = (report / "report.md").read_text()
    assert "## Accuracy (all columns, final accuracy)" in page and "![acc_vs_time](figures/acc_vs_time.png)" in page
    assert "corrupt record" in page
    assert "records.csv" in {p.name for p in report.iterdir()}


def test_command_options(tmp_path, capsys):
    report = tmp_path / "rep"
    argv = [str(RUNS), "--format", "csv", "--table", "cifar10", "--metric", "best", "--report-dir", str(report),
            "--no-figures"]
    assert command(_parse(argv)) == 0
    names = sorted(p.name for p in report.iterdir())
    assert names == ["accuracy-cifar10-best.csv", "cost.csv", "equal-cost.csv", "quality.csv", "records.csv",
                     "report.md"]
    assert "Accuracy (cifar10, best accuracy)" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing", "empty", "only-corrupt", "bad-table"])
def test_command_bad_input_fails_with_one_line(tmp_path, capsys, case):
    argv = [str(tmp_path / "nope")]
    if case == "empty":
        argv = [str(tmp_path)]
    elif case == "only-corrupt":
        (tmp_path / "c").mkdir()
        (tmp_path / "c" / "record.json").write_text("{")
        argv = [str(tmp_path)]
    elif case == "bad-table":
        argv = [str(RUNS), "--table", "imagenet", "--report-dir", str(tmp_path / "r")]
    assert command(_parse(argv)) != 0
    err_lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
    assert len(err_lines) == 1
    assert not (tmp_path / "report").exists() and not (tmp_path / "r").exists()


# ---- runs kept apart (issue 11) ---------------------------------------------------------------------------

def test_the_same_cell_under_two_ids_is_never_averaged_with_itself(tmp_path):
    for d in RUNS.glob("digits-*-cmi-*"):
        shutil.copytree(d, tmp_path / d.name)
    src = next(RUNS.glob("digits-*-cmi-*-s0-*"))
    rec = json.loads((src / "record.json").read_text())
    rec.update(cell_id="digits-new-id-s0", final_acc=10.0, finished_at="2999-01-01T00:00:00+00:00")
    (tmp_path / "digits-new-id-s0").mkdir()
    (tmp_path / "digits-new-id-s0" / "record.json").write_text(json.dumps(rec))
    df, problems = load_records([tmp_path])
    assert sorted(df["seed"]) == [0, 1, 2]
    assert [p for p in problems if p.startswith("the same cell twice")] and len(problems) == 1
    assert float(df[df["seed"] == 0]["final_acc"].iloc[0]) == 10.0          # the later of the two


def test_rows_mixing_precision_device_or_commit_are_named(tmp_path, capsys):
    for d in RUNS.glob("digits-*-cmi-*"):
        rec = json.loads((d / "record.json").read_text())
        if rec["seed"] == 2:
            rec.setdefault("config", {}).setdefault("run", {})["precision_resolved"] = "fp32"
            rec.setdefault("env", {})["git_commit"] = "fedcba9876543210"
        else:
            rec.setdefault("config", {}).setdefault("run", {})["precision_resolved"] = "bf16"
        (tmp_path / d.name).mkdir()
        (tmp_path / d.name / "record.json").write_text(json.dumps(rec))
    df, _ = load_records([tmp_path])
    (line,) = mixed_runs(df)
    assert line.startswith("cmi on digits") and "precision bf16 (seeds 0, 1), fp32 (seed 2)" in line
    assert "commit " in line and "device" not in line
    notes = accuracy_table(df, published=False).notes()
    assert any(n.startswith("Rows whose runs differ") and "precision bf16" in n for n in notes)
    assert mixed_runs(load_records([RUNS])[0]) == []


def test_run_does_not_write_next_to_the_committed_reference_records():
    from benchmark.cli import DEFAULT_OUT, build_parser

    out = Path(build_parser().parse_args(["run"]).out).resolve()
    reference = (Path(__file__).resolve().parent.parent / "results" / "reference")
    assert out.name == DEFAULT_OUT == "runs"
    assert out != reference and out not in reference.parents
