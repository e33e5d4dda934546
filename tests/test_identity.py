"""A cell's id comes from the resolved, typed configs (issue 11): equal settings give one id, a changed budget
a new one; ids stay readable, and jobs write where the submitter looks."""
from __future__ import annotations

import re

import pytest

from benchmark.config import ConfigError
from benchmark.identity import identity, legacy_cell_id
from benchmark.records import Cell
from benchmark.registry import METHODS, load_plugins

load_plugins()


def cell(method="cpsc-dfkd", budget="default", seed=0, teacher_ckpt=None, **overrides) -> Cell:
    return Cell(method, "digits", "cnn_wide", "cnn_narrow", seed=seed, budget=budget,
                overrides=tuple(sorted((k, str(v)) for k, v in overrides.items())), teacher_ckpt=teacher_ckpt)


def test_equal_values_spelled_differently_are_one_cell():
    assert cell(alpha="5").cell_id == cell(alpha="5.0").cell_id == cell(alpha="5e0").cell_id
    assert cell(alpha="5").cell_id != cell(alpha="6").cell_id
    # a --set that repeats the default is the default cell
    default_alpha = METHODS.get("cpsc-dfkd").Config().alpha
    assert cell(alpha=str(default_alpha)).cell_id == cell().cell_id
    assert cell(iterations="7").cell_id == cell(iterations="07").cell_id != cell(iterations="8").cell_id


def test_a_changed_default_budget_is_a_new_cell(monkeypatch):
    before = cell("dafl").cell_id
    cls = METHODS.get("dafl")
    budgets = {k: dict(v) for k, v in cls.budgets.items()}
    budgets["default"]["iterations"] = int(budgets["default"].get("iterations", 1)) + 1
    monkeypatch.setattr(cls, "budgets", budgets)
    after = cell("dafl").cell_id
    assert after != before
    assert after.rsplit("-", 1)[0] == before.rsplit("-", 1)[0]       # same readable part, new hash


def test_ids_are_readable_and_separate_seeds_budgets_and_methods():
    cid = cell(seed=3).cell_id
    assert re.fullmatch(r"digits-cnn_wide-cnn_narrow-cpsc-dfkd-default-s3-[0-9a-f]{8}", cid)
    ids = {cell(seed=s, budget=b).cell_id for s in (0, 1) for b in ("smoke", "default")} | {cell("dafl").cell_id}
    assert len(ids) == 5


def test_the_external_teacher_file_counts_by_content(tmp_path):
    ckpt = tmp_path / "teacher.pt"
    ckpt.write_bytes(b"one")
    first = cell(teacher_ckpt=str(ckpt)).cell_id
    assert cell(teacher_ckpt=str(ckpt)).cell_id == first
    ckpt.write_bytes(b"two, longer")               # same path, other weights: another cell
    assert cell(teacher_ckpt=str(ckpt)).cell_id != first
    copy = tmp_path / "copy.pt"
    copy.write_bytes(b"two, longer")               # same weights elsewhere: the same cell
    assert cell(teacher_ckpt=str(copy)).cell_id == cell(teacher_ckpt=str(ckpt)).cell_id


def test_identity_holds_the_typed_resolved_configs():
    ident = identity(cell(alpha="5"))
    assert ident["method_config"]["alpha"] == 5.0 and isinstance(ident["method_config"]["alpha"], float)
    assert ident["run"]["iterations"] == METHODS.get("cpsc-dfkd").budgets["default"]["iterations"]


def test_a_job_keeps_the_submitters_id_and_bad_cells_fail_on_resolution():
    c = cell(seed=2)
    pinned = Cell.from_dict({**c.as_dict(), "cell_id": "digits-x-pinned"})
    assert pinned.cell_id == "digits-x-pinned" and pinned == c
    assert Cell.from_dict(c.to_job()).cell_id == c.cell_id
    assert Cell.from_dict(c.as_dict()).cell_id == c.cell_id
    assert legacy_cell_id(c) != c.cell_id
    with pytest.raises(ConfigError):
        cell(alpha="five").cell_id


def test_records_under_the_old_ids_are_still_found_by_status_and_report(tmp_path):
    from benchmark import status
    from benchmark.records import Record, write_record
    from benchmark.report.load import load_records

    c = cell(seed=1)
    old = Record.for_cell(c, status="done", final_acc=90.0, best_acc=91.0, curve=[{"iteration": 0, "acc": 9.0}])
    old.cell_id = legacy_cell_id(c)
    write_record(tmp_path, old)
    states = status.collect(tmp_path, query_scheduler=False)
    assert [(s.cell_id, s.state) for s in states] == [(legacy_cell_id(c), "done")]
    df, problems = load_records([tmp_path])
    assert not problems and list(df["cell_id"]) == [legacy_cell_id(c)] and list(df["final_acc"]) == [90.0]


def test_changed_dataset_inputs_are_a_new_cell_and_a_new_teacher(monkeypatch, tmp_path):
    """Models with global pooling accept any input size, so a cell or cached teacher computed on other inputs
    (e.g. digits resized to another size) would load silently: the dataset's fingerprint keeps them apart."""
    import dataclasses

    from benchmark import data as data_mod
    from benchmark.teachers import cache_path

    spec = data_mod.get_dataset("digits")
    before_id, before_teacher = cell().cell_id, cache_path(tmp_path, spec, "cnn_wide", 0)
    other = dataclasses.replace(spec, image_shape=(1, 8, 8), std=(0.3761,))
    monkeypatch.setitem(data_mod.DATASETS._entries, "digits", other)
    assert data_mod.get_dataset("digits") is other
    assert cell().cell_id != before_id
    assert cache_path(tmp_path, other, "cnn_wide", 0) != before_teacher
