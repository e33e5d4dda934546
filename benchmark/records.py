"""The record schema: cells, the record of a cell, the layout of an output folder, and the one write rule.

A *cell* is one (method, dataset, teacher, student, seed, budget, config overrides[, external teacher])
combination. Everything the harness writes into an output folder OUT is named by ``OutputLayout`` (one
place, so the runner, the launchers, ``status`` and ``report`` cannot disagree about a file name):

* ``OUT/<cell_id>/record.json``   the cell's ``Record``, written once the cell has ended
* ``OUT/<cell_id>/checkpoint.pt``  training state while it runs (``--set checkpoint_every=N``)
* ``OUT/<cell_id>/last_failure.json`` a failed rerun of a done cell (never written over the done record)
* ``OUT/<cell_id>/job.json``      which job runs the cell (launchers), ``progress.json`` live progress,
  ``samples.png`` a grid of synthetic samples
* ``OUT/grid.json``, ``OUT/.launch/submissions.jsonl``, ``OUT/.launch/snapshots/``, ``OUT/logs/``,
  ``OUT/teachers/`` the launchers' bookkeeping, code snapshots, job logs, the teacher cache

Every file is written atomically (temporary file, fsync, rename). ``write_record`` holds the one rule
for records: a failed run never replaces a done record. Every record carries ``schema_version``; records
written before it existed (no version: schema 1) still load.

The cell id is readable and ends with a hash of the cell (DomainBed names job folders by such a hash), so
two cells never share a folder.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Union

SCHEMA_VERSION = 2
RECORD_NAME = "record.json"
CHECKPOINT_NAME = "checkpoint.pt"
STATUSES = ("running", "done", "failed")


@dataclass(frozen=True)
class Cell:
    method: str
    dataset: str
    teacher: str
    student: str
    seed: int = 0
    budget: str = "default"
    overrides: tuple[tuple[str, str], ...] = ()      # sorted (key, value) pairs from --set
    teacher_ckpt: str | None = None                  # an external teacher checkpoint, else trained and cached

    @functools.cached_property
    def cell_id(self) -> str:
        """Readable, ending in a hash of the resolved configs (``benchmark.identity``); resolving checks the
        cell, so a bad one raises here."""
        from .identity import cell_id

        return cell_id(self)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["overrides"] = dict(self.overrides)
        return d

    def to_job(self) -> dict[str, Any]:
        """What a job receives: the cell and its id, so that the job writes where the submitter looks even
        if resolving on the node would differ (e.g. an ``auto`` value that depends on installed packages)."""
        return {**self.as_dict(), "cell_id": self.cell_id}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Cell":
        """A cell from ``as_dict()`` or ``to_job()`` output (a given ``cell_id`` is kept, not recomputed)."""
        d = dict(d)
        d["overrides"] = tuple(sorted((str(k), str(v)) for k, v in dict(d.get("overrides") or {}).items()))
        cell = cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})
        if d.get("cell_id"):
            cell.__dict__["cell_id"] = str(d["cell_id"])     # the cached property's slot
        return cell


# ---- the output folder ------------------------------------------------------------------------------------

CellRef = Union[Cell, str]


def _cell_id(cell: CellRef) -> str:
    return cell if isinstance(cell, str) else cell.cell_id


@dataclass(frozen=True, order=True)
class Column:
    """A column of a results table: a dataset and a teacher→student pair (the report and the table specs
    share it; it lives here, beside :class:`Cell`, so that neither imports the other or pandas for it)."""

    dataset: str
    teacher: str
    student: str

    @property
    def pair(self) -> str:
        return f"{self.teacher}→{self.student}"

    @property
    def label(self) -> str:
        return f"{self.dataset} {self.pair}"


@dataclass(frozen=True)
class OutputLayout:
    """Every file name in an output folder; the writers and the readers take their paths from here."""

    root: Path

    RECORD: ClassVar[str] = RECORD_NAME
    CHECKPOINT: ClassVar[str] = CHECKPOINT_NAME
    LAST_FAILURE: ClassVar[str] = "last_failure.json"
    JOB_INFO: ClassVar[str] = "job.json"
    PROGRESS: ClassVar[str] = "progress.json"
    SAMPLES: ClassVar[str] = "samples.png"
    GRID: ClassVar[str] = "grid.json"
    LAUNCH_DIR: ClassVar[str] = ".launch"
    SUBMISSIONS: ClassVar[str] = ".launch/submissions.jsonl"
    SNAPSHOTS: ClassVar[str] = ".launch/snapshots"
    LOGS: ClassVar[str] = "logs"
    TEACHERS: ClassVar[str] = "teachers"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # per cell
    def cell_dir(self, cell: CellRef) -> Path:
        return self.root / _cell_id(cell)

    def record(self, cell: CellRef) -> Path:
        return self.cell_dir(cell) / self.RECORD

    def checkpoint(self, cell: CellRef) -> Path:
        return self.cell_dir(cell) / self.CHECKPOINT

    def last_failure(self, cell: CellRef) -> Path:
        return self.cell_dir(cell) / self.LAST_FAILURE

    def job_info(self, cell: CellRef) -> Path:
        return self.cell_dir(cell) / self.JOB_INFO

    def progress(self, cell: CellRef) -> Path:
        return self.cell_dir(cell) / self.PROGRESS

    def samples(self, cell: CellRef) -> Path:
        return self.cell_dir(cell) / self.SAMPLES

    # the whole folder
    @property
    def grid(self) -> Path:
        return self.root / self.GRID

    @property
    def launch_dir(self) -> Path:
        return self.root / self.LAUNCH_DIR

    @property
    def submissions(self) -> Path:
        return self.root / self.SUBMISSIONS

    @property
    def snapshots(self) -> Path:
        return self.root / self.SNAPSHOTS

    @property
    def logs(self) -> Path:
        return self.root / self.LOGS

    @property
    def teachers(self) -> Path:
        return self.root / self.TEACHERS

    def is_bookkeeping(self, path: Path) -> bool:
        """Under ``.launch/`` (code snapshots hold test fixtures named record.json)."""
        return self.LAUNCH_DIR in Path(path).relative_to(self.root).parts


def cell_dir(out: Path, cell: Cell) -> Path:
    return OutputLayout(out).cell_dir(cell)


# ---- the record -------------------------------------------------------------------------------------------

@dataclass
class Record:
    """What a cell's ``record.json`` holds (README "Records" describes every field).

    Fields not declared here (e.g. a method's extra cost counters) are kept in ``extra`` and written back
    at the top level, so a record survives a round trip through an older or newer reader.
    """

    # the cell
    method: str
    dataset: str
    teacher: str
    student: str
    seed: int
    budget: str = "default"
    overrides: dict[str, str] = field(default_factory=dict)
    teacher_ckpt: str | None = None
    cell_id: str = ""
    schema_version: int = SCHEMA_VERSION
    # what ran and how it ended
    status: str = "running"                      # running | done | failed
    error: str | None = None
    traceback: str | None = None
    data_free: bool | None = None
    citation: str | None = None
    config: dict[str, Any] = field(default_factory=dict)   # {"run": ..., "method": ...}, resolved
    env: dict[str, Any] = field(default_factory=dict)
    started_at: str | None = None
    finished_at: str | None = None
    resumed_from: int | None = field(default=None, metadata={"omit_if_none": True})   # set on a resume
    # the teacher
    teacher_acc: float | None = None
    teacher_time_s: float | None = None
    teacher_info: dict[str, Any] | None = None
    # accuracy and cost
    final_acc: float | None = None
    best_acc: float | None = None
    best_iteration: int | None = None
    iterations: int | None = None
    wall_time_s: float | None = None
    train_time_s: float | None = None
    time_per_iteration_s: float | None = None
    student_steps: int | None = None
    teacher_forwards: int | None = None
    synthetic_images: int | None = None
    images_per_s: float | None = None
    gpu_hours: float | None = None
    peak_memory_mb: float | None = None
    curve: list[dict[str, Any]] = field(default_factory=list)
    loss_curve: list[dict[str, Any]] = field(default_factory=list)
    losses: dict[str, float] = field(default_factory=dict)
    quality: dict[str, float] | None = None
    samples_png: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_cell(cls, cell: Cell, **fields: Any) -> "Record":
        return cls(**cell.as_dict(), cell_id=cell.cell_id, **fields)

    @classmethod
    def failure(cls, cell: Cell, error: str, traceback: str | None = None, **fields: Any) -> "Record":
        """A ``failed`` record for a cell that ended before the runner could record it."""
        return cls.for_cell(cell, status="failed", error=error.splitlines()[0] if error else error,
                            traceback=traceback, **fields)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Record":
        """Any version of the schema; a record without ``schema_version`` is schema 1."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("schema_version", 1)
        values["overrides"] = dict(values.get("overrides") or {})
        for key in ("method", "dataset", "teacher", "student", "seed"):
            values.setdefault(key, None)
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**values, extra=extra)

    def update(self, **values: Any) -> None:
        """Set fields by name; names the schema does not declare go to ``extra``."""
        for key, value in values.items():
            if key != "extra" and key in self.__dataclass_fields__:
                setattr(self, key, value)
            else:
                self.extra[key] = value

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"
                and not (f.metadata.get("omit_if_none") and getattr(self, f.name) is None)}
        return {**self.extra, **data}

    @property
    def done(self) -> bool:
        return self.status == "done"


# ---- writing ----------------------------------------------------------------------------------------------

def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def write_record(out: Path, record: Record | dict[str, Any]) -> Path:
    """The one write rule: atomic, and a failure never replaces a done record (it goes to
    ``last_failure.json`` beside it). Returns the path written."""
    rec = record if isinstance(record, Record) else Record.from_dict(record)
    rec.schema_version = SCHEMA_VERSION
    layout = OutputLayout(out)
    path = layout.record(rec.cell_id)
    if not rec.done:
        previous = load_record(path)
        if previous is not None and previous.done:
            path = layout.last_failure(rec.cell_id)
    atomic_write_json(path, rec.to_dict())
    return path


# ---- reading ----------------------------------------------------------------------------------------------

def read_record(path: Path) -> dict[str, Any]:
    """Load one record as a dict (any schema version; ``schema_version`` filled in); raises ``ValueError``
    for a corrupt or partial file."""
    try:
        rec = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"corrupt record {path}: {exc}") from None
    if not isinstance(rec, dict) or "status" not in rec or "method" not in rec:
        raise ValueError(f"incomplete record {path}: missing status/method")
    rec.setdefault("schema_version", 1)
    return rec


def load_record(path: Path) -> Record | None:
    """The typed record at ``path``, or ``None`` when there is none or it cannot be read."""
    try:
        return Record.from_dict(read_record(path))
    except (OSError, ValueError, TypeError):
        return None


def existing_record(out: Path, cell: CellRef) -> dict[str, Any] | None:
    path = OutputLayout(out).record(cell)
    if not path.exists():
        return None
    try:
        return read_record(path)
    except ValueError:
        return None


def iter_records(root: Path) -> Iterator[tuple[Path, dict[str, Any] | None, str | None]]:
    """Every ``record.json`` below ``root`` (code snapshots under ``.launch/`` left out):
    ``(path, record, None)`` or ``(path, None, error)``."""
    layout = OutputLayout(root)
    for path in sorted(Path(root).rglob(RECORD_NAME)):
        if layout.is_bookkeeping(path):
            continue
        try:
            yield path, read_record(path), None
        except (OSError, ValueError) as exc:
            yield path, None, str(exc)
