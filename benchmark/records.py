"""Cells, their records, and atomic writes.

A *cell* is one (method, dataset, teacher, student, seed, budget, config overrides[, external teacher])
combination. Its folder ``<out>/<cell_id>/`` holds ``record.json`` (written atomically, once the cell has
ended), and while it runs ``checkpoint.pt``. The cell id is readable and ends with a hash of the sorted
cell arguments (DomainBed names job folders by such a hash), so two cells never share a folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

RECORD_NAME = "record.json"
CHECKPOINT_NAME = "checkpoint.pt"
SCHEMA_VERSION = 1


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

    @property
    def cell_id(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        digest = hashlib.sha1(blob.encode()).hexdigest()[:8]
        return f"{self.dataset}-{self.teacher}-{self.student}-{self.method}-{self.budget}-s{self.seed}-{digest}"

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["overrides"] = dict(self.overrides)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Cell":
        d = dict(d)
        d["overrides"] = tuple(sorted((str(k), str(v)) for k, v in dict(d.get("overrides") or {}).items()))
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


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


def cell_dir(out: Path, cell: Cell) -> Path:
    return Path(out) / cell.cell_id


def read_record(path: Path) -> dict[str, Any]:
    """Load one record; raises ``ValueError`` for a corrupt or partial file."""
    try:
        rec = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"corrupt record {path}: {exc}") from None
    if not isinstance(rec, dict) or "status" not in rec or "method" not in rec:
        raise ValueError(f"incomplete record {path}: missing status/method")
    return rec


def existing_record(out: Path, cell: Cell) -> dict[str, Any] | None:
    path = cell_dir(out, cell) / RECORD_NAME
    if not path.exists():
        return None
    try:
        return read_record(path)
    except ValueError:
        return None


def iter_records(root: Path) -> Iterator[tuple[Path, dict[str, Any] | None, str | None]]:
    """Every ``record.json`` below ``root``: ``(path, record, None)`` or ``(path, None, error)``."""
    for path in sorted(Path(root).rglob(RECORD_NAME)):
        try:
            yield path, read_record(path), None
        except (OSError, ValueError) as exc:
            yield path, None, str(exc)
