"""``report OUT --table NAME``: golden renderings of every shipped table from fixture records, the matching of
records to rows (most specific row, canonical overrides, sweeps split into labelled rows), and the markers.

The fixture records are made from each table's own expansion by a fixed rule (some cells missing, some failed,
a sweep's extra records on one row), so a change of a spec or of the renderer shows up as a diff of the golden
files in tests/fixtures/tables/. Regenerate them with ``DFKD_REGEN_GOLDEN=1 python -m pytest tests/test_tables_report.py``
and read the diff before committing it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import methods  # noqa: F401
from benchmark.cli import main
from benchmark.records import Cell, atomic_write_json
from benchmark.registry import METHODS
from benchmark.report.load import load_records
from benchmark.report.published import load_published
from benchmark.report.render import render_csv, render_latex, render_markdown
from benchmark.tables import load_spec, spec_names
from benchmark.tables.expand import expand
from benchmark.tables.report import NO_BUDGET, build

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "tables"
PUBLISHED = GOLDEN / "published.csv"
REGEN = os.environ.get("DFKD_REGEN_GOLDEN") == "1"


def _record(cell: Cell, i: int) -> dict:
    """A record for the ``i``-th cell: done, with an accuracy and cost derived from ``i``, or failed."""
    failed = i % 13 == 7
    acc = 60 + ((i * 37) % 400) / 10
    return {
        **cell.as_dict(), "cell_id": f"{cell.cell_id}-fx{i}", "status": "failed" if failed else "done",
        "error": "RuntimeError: losses became non-finite" if failed else None,
        "final_acc": None if failed else acc, "best_acc": None if failed else acc + 0.5,
        "teacher_acc": 95.0, "iterations": 10, "wall_time_s": 3600.0 + 60 * (i % 9),
        "gpu_hours": None if failed else round(0.5 + (i % 5) * 0.25, 2),
        "env": {"device": "cuda", "device_name": "fixture GPU", "git_commit": "f" * 40}, "curve": [],
        "data_free": METHODS.get(cell.method).data_free,
    }


def write_fixture_records(name: str, out: Path) -> None:
    """Every runnable cell of the table except every 11th (missing); every 13th failed; for the tables with
    a first row without overrides, two more records of that row with ``--set iterations=50`` (a sweep)."""
    exp = expand(load_spec(name))
    cells = exp.cells()
    for i, cell in enumerate(cells):
        if i % 11 == 5:
            continue
        atomic_write_json(out / f"c{i:04d}" / "record.json", _record(cell, i))
    first = exp.rows[0]
    if not first.overrides:
        extra = [c for c in cells if c.method == first.method and c.overrides == ()][:2]
        for j, cell in enumerate(extra):
            swept = Cell(cell.method, cell.dataset, cell.teacher, cell.student, cell.seed, cell.budget,
                         (("iterations", "50"),))
            atomic_write_json(out / f"sweep{j}" / "record.json", _record(swept, 1000 + j))


@pytest.fixture
def mnist_budgets(monkeypatch):
    """dafl-mnist's markers must not depend on which paper:mnist presets exist today: dafl, student-real and
    kd-real get one, dfad and zskt none."""
    for name in ("dafl", "student-real", "kd-real", "dfad", "zskt"):
        cls = METHODS.get(name)
        budgets = {k: v for k, v in cls.budgets.items() if not k.startswith("paper:mnist") and k != "paper"}
        if name in ("dafl", "student-real", "kd-real"):
            budgets["paper:mnist"] = {"iterations": 10}
        monkeypatch.setattr(cls, "budgets", budgets)


@pytest.mark.parametrize("name", spec_names())
def test_golden(name, tmp_path, mnist_budgets):
    out = tmp_path / "out"
    write_fixture_records(name, out)
    df, problems = load_records([out])
    assert problems == []
    table, more = build(expand(load_spec(name)), df, load_spec(name).metric, load_published(PUBLISHED))
    assert more == []
    for fmt, render in (("md", render_markdown), ("tex", render_latex), ("csv", render_csv)):
        text = render(table)
        path = GOLDEN / f"{name}.{fmt}"
        if REGEN:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        assert text == path.read_text(encoding="utf-8"), f"{path} differs (DFKD_REGEN_GOLDEN=1 regenerates it)"


def _md_row(text: str, label: str) -> list[str]:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == label:
            return cells
    raise AssertionError(f"no row {label!r}")


def test_ablation_rows_take_the_most_specific_records_and_sweeps_split_rows(tmp_path):
    out = tmp_path / "out"
    rows = {"": (97.0, 98.0), "adv": (90.0, 92.0)}
    base = dict(method="cpsc-dfkd", dataset="digits", teacher="cnn_wide", student="cnn_narrow", budget="default")
    i = 0
    for key, accs in rows.items():
        for seed, acc in enumerate(accs):
            over = {key: "0"} if key else {}          # "0", not "0.0": matched by value, not by text
            rec = {**base, "seed": seed, "overrides": over, "status": "done", "final_acc": acc, "best_acc": acc,
                   "cell_id": f"x{i}", "env": {"device": "cpu"}, "curve": []}
            atomic_write_json(out / f"x{i}" / "record.json", rec)
            i += 1
    # a record run with the default value spelled out belongs to the all-terms row
    atomic_write_json(out / "y" / "record.json", {**base, "seed": 2, "overrides": {"gamma": "0.70"},
                                                  "status": "done", "final_acc": 99.0, "best_acc": 99.0,
                                                  "cell_id": "y", "env": {"device": "cpu"}, "curve": []})
    # another budget does not belong to the table
    atomic_write_json(out / "z" / "record.json", {**base, "budget": "smoke", "seed": 0, "overrides": {},
                                                  "status": "done", "final_acc": 10.0, "best_acc": 10.0,
                                                  "cell_id": "z", "env": {"device": "cpu"}, "curve": []})
    df, _ = load_records([out])
    table, _ = build(expand(load_spec("cpsc-ablation")), df, "final")
    text = render_markdown(table)
    assert _md_row(text, "all terms")[1:] == ["3", "**98.00 ± 1.00**†"]   # Welch: 97,98,99 vs 90,92
    assert _md_row(text, "w/o adv")[1:] == ["2", "91.00 ± 1.41"]
    assert _md_row(text, "w/o SCL")[1:] == ["—", "—"]

    # a sweep over iterations on every row splits the rows, labelled by the differing key only
    for j, (iters, acc) in enumerate([("50", 80.0), ("100", 85.0)]):
        atomic_write_json(out / f"s{j}" / "record.json", {
            **base, "seed": 0, "overrides": {"iterations": iters, "eval_every": "5"}, "status": "done",
            "final_acc": acc, "best_acc": acc, "cell_id": f"s{j}", "env": {"device": "cpu"}, "curve": []})
    df, _ = load_records([out])
    table, _ = build(expand(load_spec("cpsc-ablation")), df, "final")
    text = render_markdown(table)
    assert _md_row(text, "all terms [eval_every=5, iterations=50]")[1:] == ["1", "80.00"]
    assert _md_row(text, "all terms [eval_every=5, iterations=100]")[1:] == ["1", "85.00"]
    assert _md_row(text, "all terms")[1:] == ["3", "**98.00 ± 1.00**†"]


def test_markers_for_failed_missing_and_no_budget(tmp_path, mnist_budgets):
    out = tmp_path / "out"
    base = dict(dataset="mnist", teacher="lenet5", student="lenet5_half", budget="paper", overrides={},
                env={"device": "cpu"}, curve=[])
    atomic_write_json(out / "a" / "record.json", {**base, "method": "dafl", "seed": 0, "status": "failed",
                                                  "error": "boom\nmore", "final_acc": None, "cell_id": "a"})
    atomic_write_json(out / "b" / "record.json", {**base, "method": "teacher", "seed": 0, "status": "done",
                                                  "final_acc": 98.9, "best_acc": 98.9, "cell_id": "b"})
    df, _ = load_records([out])
    table, _ = build(expand(load_spec("dafl-mnist")), df, "final", load_published(PUBLISHED))
    text = render_markdown(table)
    assert _md_row(text, "dafl")[2] == "failed (1)"
    assert _md_row(text, "dfad")[2] == NO_BUDGET and _md_row(text, "zskt")[2] == NO_BUDGET
    assert _md_row(text, "kd-real")[2] == "—"
    assert _md_row(text, "teacher")[2:] == ["98.90", "98.91", "-0.01"]
    assert "dafl on mnist lenet5→lenet5_half seed 0: boom" in text


def test_report_cli_writes_the_three_formats(tmp_path, capsys):
    out = tmp_path / "out"
    write_fixture_records("cpsc-ablation", out)
    code = main(["report", str(out), "--table", "cpsc-ablation"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "| all terms |" in captured.out
    for suffix in (".md", ".tex", ".csv"):
        assert (out / "report" / f"table-cpsc-ablation{suffix}").is_file()
    code = main(["report", str(out), "--table", "cpsc-ablation", "--format", "csv", "--report-dir",
                 str(tmp_path / "r")])
    capsys.readouterr()
    assert code == 0 and [p.name for p in (tmp_path / "r").iterdir()] == ["table-cpsc-ablation.csv"]
    code = main(["report", str(tmp_path / "empty-does-not-exist"), "--table", "cpsc-ablation"])
    assert code == 2 and "no such folder" in capsys.readouterr().err


def test_fixture_published_csv_names_rows_of_the_project_csv():
    """The golden tests read a frozen excerpt of published_results.csv (so that new published rows do not
    change them); every (dataset, pair, method) in it is one the project's file has."""
    ours = load_published()
    fixture = load_published(PUBLISHED)
    assert len(fixture) > 0
    assert set(fixture.figures) <= set(ours.figures)


def test_report_on_other_columns_and_budget(tmp_path, capsys):
    out = tmp_path / "out"
    atomic_write_json(out / "a" / "record.json", {
        "method": "cpsc-dfkd", "dataset": "cifar10", "teacher": "resnet34", "student": "resnet18", "budget": "paper",
        "seed": 0, "overrides": {"beta": "0"}, "status": "done", "final_acc": 91.5, "best_acc": 92.0,
        "cell_id": "a", "env": {"device": "cuda"}, "curve": []})
    code = main(["report", str(out), "--table", "cpsc-ablation", "--datasets", "cifar10", "--budget", "paper"])
    text = capsys.readouterr().out
    assert code == 0
    assert _md_row(text, "w/o BN")[1:] == ["1", "**91.50**"] and _md_row(text, "all terms")[1:] == ["—", "—"]
    assert "cifar10 resnet34→resnet18" in text
