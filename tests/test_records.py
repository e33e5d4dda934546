"""The record schema: the output folder's layout, typed records with a schema version, the one write rule."""
from __future__ import annotations

import json

from benchmark.records import (SCHEMA_VERSION, Cell, OutputLayout, Record, iter_records, load_record, read_record,
                               write_record)

CELL = Cell("dafl", "digits", "cnn_wide", "cnn_narrow", seed=1, budget="smoke", overrides=(("oh", "5"),))


def test_layout_names_every_file_of_an_output_folder(tmp_path):
    layout = OutputLayout(tmp_path)
    d = tmp_path / CELL.cell_id
    assert [layout.record(CELL), layout.checkpoint(CELL), layout.last_failure(CELL), layout.job_info(CELL),
            layout.progress(CELL), layout.samples(CELL)] == [
        d / "record.json", d / "checkpoint.pt", d / "last_failure.json", d / "job.json", d / "progress.json",
        d / "samples.png"]
    assert layout.record(CELL.cell_id) == layout.record(CELL)
    assert (layout.grid, layout.submissions, layout.snapshots, layout.logs, layout.teachers) == (
        tmp_path / "grid.json", tmp_path / ".launch" / "submissions.jsonl", tmp_path / ".launch" / "snapshots",
        tmp_path / "logs", tmp_path / "teachers")


def test_every_written_record_carries_the_schema_version_and_round_trips(tmp_path):
    rec = Record.for_cell(CELL, status="done", final_acc=97.5, best_acc=98.0)
    rec.update(student_steps=10, some_new_counter=3)        # an undeclared name is kept, not lost
    path = write_record(tmp_path, rec)
    assert path == OutputLayout(tmp_path).record(CELL)
    raw = json.loads(path.read_text())
    assert raw["schema_version"] == SCHEMA_VERSION == 2
    assert raw["some_new_counter"] == 3 and raw["overrides"] == {"oh": "5"} and raw["cell_id"] == CELL.cell_id
    back = load_record(path)
    assert back is not None and back.to_dict() == rec.to_dict()
    assert "resumed_from" not in raw                          # present only when a run resumed


def test_records_without_a_version_still_load(tmp_path):
    old = {**CELL.as_dict(), "cell_id": CELL.cell_id, "status": "done", "final_acc": 90.0, "best_acc": 91.0}
    path = tmp_path / CELL.cell_id / "record.json"
    path.parent.mkdir()
    path.write_text(json.dumps(old))
    assert read_record(path)["schema_version"] == 1
    rec = load_record(path)
    assert rec is not None and rec.schema_version == 1 and rec.final_acc == 90.0 and rec.done
    assert [(p, r["final_acc"], e) for p, r, e in iter_records(tmp_path)] == [(path, 90.0, None)]


def test_a_failure_never_replaces_a_done_record(tmp_path):
    layout = OutputLayout(tmp_path)
    first_failure = write_record(tmp_path, Record.failure(CELL, "RuntimeError: first\nmore"))
    assert first_failure == layout.record(CELL) and read_record(first_failure)["error"] == "RuntimeError: first"
    write_record(tmp_path, Record.for_cell(CELL, status="done", final_acc=1.0, best_acc=1.0))   # done replaces failed
    kept = write_record(tmp_path, Record.failure(CELL, "RuntimeError: later"))
    assert kept == layout.last_failure(CELL)
    assert read_record(layout.record(CELL))["status"] == "done"
    assert read_record(layout.last_failure(CELL))["error"] == "RuntimeError: later"


def test_iter_records_leaves_out_the_launchers_bookkeeping(tmp_path):
    write_record(tmp_path, Record.for_cell(CELL, status="done"))
    fixture = OutputLayout(tmp_path).snapshots / "abc" / "tests" / "fixtures" / "x" / "record.json"
    fixture.parent.mkdir(parents=True)
    fixture.write_text(json.dumps({"method": "m", "status": "done"}))
    assert [p for p, _, _ in iter_records(tmp_path)] == [OutputLayout(tmp_path).record(CELL)]
