"""The console table of one result and atomic JSON writes."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .compare import TOLERANCE, Diff

if TYPE_CHECKING:
    from .core import Result


def _fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.1e}"


def table(result: Result) -> str:
    status = "PASS" if result.ok else "PASS within the rounding floor" if result.within_floor else "FAIL"
    lines = [f"{result.method}: {status} (relative difference <= {TOLERANCE:g}, "
             f"K={result.problem['steps']}, {result.problem['dtype']}, compat={'on' if result.problem['compat'] else 'off'})",
             f"reference: github.com/{result.reference.get('repo')} @ {result.reference.get('commit')}"]
    fl = result.floor or {}
    rows = [("quantity", "max abs diff", "max rel diff", "ok", "floor rel" if fl else "")]
    for k, t in result.terms.items():
        rows.append((f"loss {k} ({t['steps']} steps)", _fmt(t["abs"]), _fmt(t["rel"]),
                     "yes" if Diff(t["abs"], t["rel"]).ok else "NO",
                     _fmt(fl["terms"].get(k, 0.0)) if fl else ""))
    for k, d in result.params.items():
        rows.append((f"param {k}", _fmt(d["abs"]), _fmt(d["rel"]), "yes" if Diff(d["abs"], d["rel"]).ok else "NO",
                     _fmt(fl["params"].get(k, 0.0)) if fl else ""))
    if fl:
        lines.append(f"floor: ours against itself with its initial weights x (1 + {fl['eps']:g}): every difference "
                     f"{'within' if result.within_floor else 'NOT within'} {fl['margin']:g} x the floor or the tolerance")
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def write_json(path: Path, payload: Any) -> None:
    """Atomic write (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    os.replace(tmp, path)
