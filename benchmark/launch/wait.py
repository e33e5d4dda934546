"""``--wait``: block until the submitted cells have ended, then return their records."""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable

from ..records import Cell, Record, existing_record
from ..runner import RunOptions


def _wait(cells: list[Cell], options: RunOptions, skipped: Iterable[Cell] = (), poll_s: float | None = None) -> list[dict]:
    """Block until no cell of ``cells`` is pending or running; print a line whenever the counts change.
    Returns the cells' records (``skipped`` ones marked so, as the inline launcher does)."""
    from .. import status as status_mod

    from ..progress import GridProgress

    poll_s = poll_s if poll_s is not None else float(os.environ.get("DFKD_WAIT_POLL_S", "3"))
    start, last = time.time(), None
    skipped_ids = {c.cell_id for c in skipped}
    by_cell = {c.cell_id: c for c in cells}
    todo = [c for c in cells if c.cell_id not in skipped_ids]
    grid = GridProgress(todo, options.out, parallel=len(todo) or 1, skipped=len(cells) - len(todo))
    ended: set[str] = set(skipped_ids)
    try:
        while True:
            states = status_mod.collect(options.out, cells=cells, include_grid=False)
            counts = status_mod.count(states)
            line = ", ".join(f"{counts[k]} {k}" for k in status_mod.STATES if counts.get(k))
            if line != last:
                print(f"[{time.time() - start:6.0f} s] {line}", flush=True)
                last = line
            grid.parallel = max(1, counts.get("running", 0))
            for st in states:       # each finished cell's result as it lands, with the grid's progress
                cell = by_cell.get(st.cell_id)
                if cell is None or st.cell_id in ended:
                    continue
                if st.state == "running" and st.cell_id not in grid.running:
                    grid.started(cell)
                elif st.state in ("done", "failed"):
                    ended.add(st.cell_id)
                    grid.finished(cell, existing_record(options.out, cell) or {"status": st.state, "error": st.error})
            if not any(s.state in ("pending", "running") for s in states):
                break
            grid.heartbeat()
            time.sleep(poll_s)
    except KeyboardInterrupt:
        print(f"stopped waiting; the jobs go on (python -m benchmark status {options.out})", file=sys.stderr)
        raise
    records = []
    by_id = {s.cell_id: s for s in states}
    for cell in cells:
        rec = existing_record(options.out, cell)
        if rec is not None and cell.cell_id in skipped_ids:
            rec["skipped"] = True
        if rec is None:
            st = by_id.get(cell.cell_id)
            rec = Record.failure(cell, st.error if st and st.error else "no record written").to_dict()
        records.append(rec)
    return records
