"""A cell's id, from what the cell will actually run.

The id hashes the fully resolved, typed run and method configs (budget preset and ``--set`` values applied
and coerced to their field types) together with the method, dataset, teacher:student pair, seed, budget name,
the dataset's fingerprint (input shape, normalisation) and the content hash of an external teacher checkpoint.
So ``--set alpha=5`` and ``--set alpha=5.0`` are one cell, and a change of a method's budget defaults
(iterations, batch, generator steps) or of the dataset's inputs makes a new cell that ``run`` does not skip.
It stays readable: ``{dataset}-{teacher}-{student}-{method}-{budget}-s{seed}-{hash8}``.

Records written before this rule (ids hashed from the names and the raw ``--set`` strings) keep their ids:
``status`` and ``report`` read the id stored in each record and the grid, never recompute it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .records import Cell

IDENTITY_VERSION = 3   # 3: the dataset's fingerprint (input shape, normalisation) joined the identity
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """SHA-1 of a file's content (cached by path, size and modification time); the path itself when the file
    cannot be read (the cell then fails its checks before running)."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _FILE_DIGESTS:
            h = hashlib.sha1()
            with open(p, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    h.update(block)
            _FILE_DIGESTS[key] = h.hexdigest()
        return _FILE_DIGESTS[key]
    except OSError:
        return f"unreadable:{p}"


def _plain(value: Any) -> Any:
    """JSON-ready, with one spelling per value (tuples as lists, paths as strings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def identity(cell: "Cell") -> dict[str, Any]:
    """Everything that decides what a cell computes. Resolving checks the cell (raises ``ConfigError``,
    ``UnknownNameError``, ...)."""
    from .data import get_dataset
    from .registry import load_plugins
    from .resolve import resolve_cell

    load_plugins()
    resolved = resolve_cell(cell)
    return {
        "identity_version": IDENTITY_VERSION,
        "method": cell.method, "dataset": cell.dataset, "teacher": cell.teacher, "student": cell.student,
        "seed": int(cell.seed), "budget": cell.budget, "data": get_dataset(cell.dataset).fingerprint(),
        "run": _plain(resolved.run_cfg), "method_config": _plain(resolved.method_cfg),
        "teacher_file": file_digest(cell.teacher_ckpt) if cell.teacher_ckpt else None,
    }


def cell_id(cell: "Cell") -> str:
    blob = json.dumps(identity(cell), sort_keys=True, default=str, allow_nan=True)
    digest = hashlib.sha1(blob.encode()).hexdigest()[:8]
    return f"{cell.dataset}-{cell.teacher}-{cell.student}-{cell.method}-{cell.budget}-s{cell.seed}-{digest}"


def legacy_cell_id(cell: "Cell") -> str:
    """The id of records written before identity version 2 (names and raw ``--set`` strings)."""
    blob = json.dumps(dataclasses.asdict(cell), sort_keys=True, default=str)
    digest = hashlib.sha1(blob.encode()).hexdigest()[:8]
    return f"{cell.dataset}-{cell.teacher}-{cell.student}-{cell.method}-{cell.budget}-s{cell.seed}-{digest}"
