"""Live progress of a running cell: ``<out>/<cell_id>/progress.json`` and, optionally, TensorBoard curves.

A cell's record is written once, when it ends; on long runs (hours per cell on a cluster) nothing would show
a running cell's accuracy until then. So at every evaluation the runner writes the cell's latest point next
to where its record will be, atomically (temporary file, then rename):

* ``iteration`` / ``iterations``, ``acc`` (test accuracy, percent) and ``best_acc``, the latest logged
  ``losses``, ``elapsed_s`` and ``eta_s`` (the iterations left at the rate of this run since it started or
  resumed; evaluations included), ``host``, ``pid``, ``started_at``, ``updated_at``, ``state`` (``running``,
  or ``failed`` once a failing run has ended).

When the cell ends well the file is removed (the record holds the whole curve); after a failure it stays with
``state: failed``; a killed process leaves it as it was (``status`` then sees that its pid is gone). ``python
-m benchmark status OUT`` reads it for every cell that is not done, whatever the launcher: for inline runs,
which no scheduler knows about, a progress file whose writer is alive (same host) marks the cell running.

``--tensorboard`` also writes the loss terms (every ``log_every``) and the test accuracy (every evaluation)
as TensorBoard event files under ``<out>/<cell_id>/tensorboard/``. It needs the optional ``tensorboard``
package (``pip install -e '.[tensorboard]'``); without the flag nothing imports it.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from .records import OutputLayout, atomic_write_json

PROGRESS_NAME = OutputLayout.PROGRESS
TENSORBOARD_DIR = "tensorboard"          # beside the progress file, in the cell's folder


def tensorboard_available() -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


class CellProgress:
    """Writes one running cell's latest point; the runner calls ``evaluated`` and ``logged``, then ``close``."""

    def __init__(self, path: Path, cell_info: dict[str, Any], iterations: int, tensorboard: bool = False):
        """``path``: the cell's progress file (``OutputLayout.progress(cell)``)."""
        self.path = Path(path)
        self.folder = self.path.parent
        self.iterations = iterations
        self.tensorboard = tensorboard
        self.start_iteration, self.elapsed_before, self.t0 = 0, 0.0, time.perf_counter()
        self.state: dict[str, Any] = {
            **cell_info, "state": "running", "host": socket.gethostname(), "pid": os.getpid(),
            "started_at": _now(), "iterations": iterations, "iteration": 0,
            "acc": None, "best_acc": None, "losses": {}, "elapsed_s": 0.0, "eta_s": None,
        }
        self.writer = None

    def start(self, start_iteration: int = 0, elapsed_before: float = 0.0) -> None:
        """The training loop begins (at ``start_iteration`` when resumed from a checkpoint)."""
        self.start_iteration, self.elapsed_before, self.t0 = start_iteration, elapsed_before, time.perf_counter()
        self.state.update({"iteration": start_iteration, "elapsed_s": elapsed_before})
        if self.tensorboard and self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.folder / TENSORBOARD_DIR))

    def _eta(self, iteration: int) -> float | None:
        done_here = iteration - self.start_iteration
        if done_here <= 0:
            return None
        return (time.perf_counter() - self.t0) / done_here * (self.iterations - iteration)

    def logged(self, iteration: int, losses: dict[str, float]) -> None:
        """Loss means of the last logging interval (kept for the next write; TensorBoard gets them now)."""
        self.state["losses"] = dict(losses)
        if self.writer is not None:
            for name, value in losses.items():
                self.writer.add_scalar(f"loss/{name}", value, iteration)

    def evaluated(self, iteration: int, acc: float, counters: dict[str, int] | None = None) -> None:
        best = self.state["best_acc"]
        self.state.update({
            "iteration": iteration, "acc": acc, "best_acc": acc if best is None else max(best, acc),
            "elapsed_s": self.elapsed_before + time.perf_counter() - self.t0, "eta_s": self._eta(iteration),
            "updated_at": _now(), **(counters or {}),
        })
        atomic_write_json(self.path, self.state)
        if self.writer is not None:
            self.writer.add_scalar("acc/test", acc, iteration)
            self.writer.flush()

    def close(self, status: str) -> None:
        """``done``: remove the file (the record supersedes it); otherwise keep the last point, marked."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if status == "done":
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            atomic_write_json(self.path, {**self.state, "state": status, "updated_at": _now()})


def read_progress(path: Path) -> dict[str, Any] | None:
    """The progress point in ``path`` (``OutputLayout.progress(cell)``), or ``None`` when there is none or it
    is unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def writer_alive(progress: dict[str, Any]) -> bool | None:
    """Whether the process that wrote ``progress`` still runs: ``None`` when it ran on another host."""
    if progress.get("host") != socket.gethostname():
        return None
    try:
        os.kill(int(progress.get("pid")), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def describe(progress: dict[str, Any]) -> str:
    """One short line: ``it 150/600 (25%), acc 91.4 % (best 92.0), 45 s, ~2 min left``."""
    it, total = progress.get("iteration") or 0, progress.get("iterations") or 0
    parts = [f"it {it}/{total}" + (f" ({100 * it / total:.0f}%)" if total else "")]
    if progress.get("acc") is not None:
        parts.append(f"acc {progress['acc']:.2f}% (best {progress.get('best_acc', progress['acc']):.2f})")
    if progress.get("elapsed_s") is not None:
        parts.append(format_seconds(progress["elapsed_s"]))
    if progress.get("eta_s") is not None and progress.get("state", "running") == "running":
        parts.append(f"~{format_seconds(progress['eta_s'])} left")
    return ", ".join(parts)


def format_seconds(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _now() -> str:
    from .env import now

    return now()


class GridProgress:
    """The grid-level view of ``run``: cells done / total, which run, elapsed time, an estimate of what remains,
    and each finished cell's result as it lands (one line per event, so it reads the same in a log file).

    The estimate: each running cell's own ``eta_s`` (its progress file), plus the cells still queued at the
    mean time of the cells finished so far, shared among ``parallel`` workers. It is an estimate: cells of
    different methods differ by 10x in cost.
    """

    def __init__(self, cells: list, out: Path, parallel: int = 1, skipped: int = 0, stream=None):
        import sys

        self.layout = OutputLayout(out)
        self.total = len(cells) + skipped
        self.done = skipped
        self.failed = 0
        self.parallel = max(1, parallel)
        self.queued = {c.cell_id: c for c in cells}
        self.running: dict[str, Any] = {}
        self.durations: list[float] = []
        self.t0 = time.perf_counter()
        self.stream = stream if stream is not None else sys.stdout
        self.last_heartbeat = self.t0

    def _say(self, text: str) -> None:
        print(f"[{format_seconds(time.perf_counter() - self.t0):>8s}] {text}", file=self.stream, flush=True)

    def started(self, cell) -> None:
        self.queued.pop(cell.cell_id, None)
        self.running[cell.cell_id] = (cell, time.perf_counter())

    def remaining_s(self) -> float | None:
        """The estimate of the time left (``None`` before the first cell has finished and nothing is known)."""
        mean = sum(self.durations) / len(self.durations) if self.durations else None
        left = 0.0
        for cell_id, (_, since) in self.running.items():
            point = read_progress(self.layout.progress(cell_id))
            eta = point.get("eta_s") if point else None
            if eta is None:
                if mean is None:
                    return None
                eta = max(0.0, mean - (time.perf_counter() - since))
            left += eta
        if self.queued:
            if mean is None:
                return None
            left += mean * len(self.queued)
        return left / min(self.parallel, max(1, len(self.running) + len(self.queued)))

    def _summary(self) -> str:
        parts = [f"{self.done}/{self.total} done" + (f" ({self.failed} failed)" if self.failed else "")]
        if self.running:
            names = []
            for cell_id, (cell, _) in self.running.items():
                point = read_progress(self.layout.progress(cell_id))
                extra = f" it {point['iteration']}/{point['iterations']}" if point else ""
                names.append(f"{cell.method} s{cell.seed}{extra}")
            parts.append("running: " + ", ".join(names))
        left = self.remaining_s()
        if self.running or self.queued:
            parts.append("left: " + (f"~{format_seconds(left)} (estimate)" if left is not None else "?"))
        return " | ".join(parts)

    def finished(self, cell, record: dict[str, Any]) -> None:
        _, since = self.running.pop(cell.cell_id, (None, time.perf_counter()))
        self.queued.pop(cell.cell_id, None)
        self.done += 1
        status = record.get("status", "?")
        if status != "done":
            self.failed += 1
        elif not record.get("skipped"):
            self.durations.append(time.perf_counter() - since)
        if status == "done":
            acc = record.get("final_acc")
            result = (f"{acc:.2f} %" if acc is not None else "done") + (
                f" (best {record['best_acc']:.2f}, {format_seconds(record.get('wall_time_s') or 0)})"
                if record.get("best_acc") is not None else "")
            if record.get("skipped"):
                result += " (already done)"
        else:
            result = f"{status}: {record.get('error')}"
        self._say(f"{cell.method} {cell.dataset} seed {cell.seed}: {result} -- {self._summary()}")

    def heartbeat(self, every_s: float = 60.0) -> None:
        """A status line at most every ``every_s`` seconds while cells run (for long cells)."""
        now = time.perf_counter()
        if now - self.last_heartbeat >= every_s and self.running:
            self.last_heartbeat = now
            self._say(self._summary())
