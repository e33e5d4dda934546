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

    poll_s = poll_s if poll_s is not None else float(os.environ.get("DFKD_WAIT_POLL_S", "3"))
    start, last = time.time(), None
    try:
        while True:
            states = status_mod.collect(options.out, cells=cells, include_grid=False)
            counts = status_mod.count(states)
            line = ", ".join(f"{counts[k]} {k}" for k in status_mod.STATES if counts.get(k))
            if line != last:
                print(f"[{time.time() - start:6.0f} s] {line}", flush=True)
                last = line
            if not any(s.state in ("pending", "running") for s in states):
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        print(f"stopped waiting; the jobs go on (python -m benchmark status {options.out})", file=sys.stderr)
        raise
    records = []
    by_id = {s.cell_id: s for s in states}
    skipped_ids = {c.cell_id for c in skipped}
    for cell in cells:
        rec = existing_record(options.out, cell)
        if rec is not None and cell.cell_id in skipped_ids:
            rec["skipped"] = True
        if rec is None:
            st = by_id.get(cell.cell_id)
            rec = Record.failure(cell, st.error if st and st.error else "no record written").to_dict()
        records.append(rec)
    return records
