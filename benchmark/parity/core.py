"""The parity driver proper: what an adapter returns (``Sides``), the run over K iterations and its ``Result``.
The mechanics live in one module each: problem, refcode (importing the authors' code), tape (draws),
capture (loss terms), compare (weights and differences), output (table, JSON); their names are re-exported
here for the adapters.

Nothing here knows a method; each adapter module (``benchmark.parity.datafree`` ...) builds both sides of
one family of methods on a :class:`Problem` and returns a :class:`Sides`, which :func:`run` drives.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .capture import caller_locals, locals_at_step, returns_of  # noqa: F401  (re-exported)
from .compare import (ABS_FLOOR, TOLERANCE, Diff, StateView, compare_states, copy_state, group_of,  # noqa: F401
                      tensor_diff, value_diff)
from .output import table, write_json  # noqa: F401
from .problem import ParityError, Problem  # noqa: F401
from .refcode import checkout_commit, locate, reference_code, upcast_only_float  # noqa: F401
from .tape import DRAW_FUNCTIONS, Tape  # noqa: F401


@dataclass
class Sides:
    """Both implementations, built on the same problem with the same weights.

    ``ours_iteration(i)`` / ``ref_iteration(i)`` run iteration ``i`` and return the loss terms of each step as
    a list of ``{step kind + term: value}`` dicts in execution order (same names on both sides);
    ``modules`` maps a name to ``(our module, reference module[, rename])`` whose state is compared at the end.
    """

    ours_iteration: Callable[[int], list[dict[str, float]]]
    ref_iteration: Callable[[int], list[dict[str, float]]]
    modules: dict[str, tuple]
    options: dict[str, Any]                     # our config overrides in use (compat options included)
    reference: dict[str, Any]                   # repo, commit, entry point, its arguments
    notes: list[str] = field(default_factory=list)
    replay_draws: bool = True                   # False when the adapter injects the draws itself
    tape_holder: dict[str, Tape] = field(default_factory=dict)   # run() puts the tape here as "tape"
    cleanup: Callable[[], None] | None = None   # called when the comparison ends (temporary folders)
    # floor.measure: called with eps on the perturbed twin, for weights the run re-initialises itself (a
    # generator rebuilt every few rounds would otherwise wipe the perturbation of its initial weights)
    perturb: Callable[[float], None] | None = None


@dataclass
class Result:
    method: str
    problem: dict[str, Any]
    options: dict[str, Any]
    reference: dict[str, Any]
    terms: dict[str, dict[str, float]]          # term -> max abs / rel over the steps, and the step count
    params: dict[str, dict[str, float]]         # group -> abs / rel after K iterations
    per_step: list[dict[str, Any]]              # every step: term values on both sides
    notes: list[str]
    draws: int
    ok: bool
    unmatched: dict[str, str] = field(default_factory=dict)   # term -> the side it exists on (defaults only)
    floor: dict[str, Any] | None = None         # floor.measure(): ours against itself, perturbed (or None)
    within_floor: bool | None = None            # every difference within the tolerance or MARGIN x its floor

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run(adapter: Any, problem: Problem, root: Path | None, with_floor: bool = False) -> Result:
    """Build both sides with ``adapter.build(problem, checkout)`` (the checkout of ``adapter.REPO`` found
    under ``root``; ``root`` None for an adapter that needs none, as in the tests), run ``problem.steps``
    iterations, compare."""
    path = locate(root, adapter.REPO, adapter.MARKER) if root is not None else None
    problem.build()
    pristine = copy.deepcopy(problem) if with_floor else None
    tape = Tape()
    old_dtype = torch.get_default_dtype()
    torch.set_default_dtype(problem.dtype)
    precision = upcast_only_float() if problem.dtype == torch.float64 else contextlib.nullcontext()
    code = reference_code(path) if path is not None else contextlib.nullcontext()
    try:
        with precision, code:
            sides: Sides = adapter.build(problem, path)
            if path is not None:
                sides.reference.setdefault("commit", checkout_commit(path))
            sides.tape_holder["tape"] = tape
            try:
                rows, unmatched, params = _iterate(sides, problem, tape)
            finally:
                if sides.cleanup is not None:
                    sides.cleanup()
            floor = None
            if pristine is not None:
                from .floor import measure
                floor = measure(adapter, pristine, path, problem.seed)
    finally:
        torch.set_default_dtype(old_dtype)
    result = _result(problem, sides, rows, unmatched, params, tape)
    if floor is not None:
        from .floor import within
        result.floor = floor
        result.within_floor = not result.unmatched and all(
            within(t["rel"], floor["terms"].get(k)) for k, t in result.terms.items()) and all(
            within(d["rel"], floor["params"].get(k)) for k, d in result.params.items())
    return result


def _iterate(sides: Sides, problem: Problem, tape: Tape):
    rows: list[dict[str, Any]] = []
    unmatched: dict[str, str] = {}
    for i in range(problem.steps):
        with tape.recording() if sides.replay_draws else contextlib.nullcontext():
            ours = sides.ours_iteration(i)
        with tape.replaying() if sides.replay_draws else contextlib.nullcontext():
            ref = sides.ref_iteration(i)
        if len(ours) != len(ref):
            raise ParityError(f"iteration {i}: ours made {len(ours)} steps, the reference {len(ref)}")
        for j, (o, r) in enumerate(zip(ours, ref)):
            if set(o) != set(r):
                if problem.compat:
                    raise ParityError(f"iteration {i} step {j}: terms differ: ours {sorted(o)}, "
                                      f"reference {sorted(r)}")
                for k in set(o) ^ set(r):     # with our defaults a term may exist on one side only
                    unmatched.setdefault(k, "ours" if k in o else "reference")
                o = {k: v for k, v in o.items() if k in r}
                r = {k: v for k, v in r.items() if k in o}
            rows.append({"iteration": i, "step": j, "ours": o, "reference": r})
    if sides.replay_draws and tape.unused():
        raise ParityError(f"the reference did not use all of our draws: {tape.unused()}")
    params: dict[str, Diff] = {}
    for name, spec in sides.modules.items():
        ours_m, ref_m, *rename = spec
        params.update(compare_states(ours_m, ref_m, name, *rename))
    return rows, unmatched, params


def _result(problem: Problem, sides: Sides, rows, unmatched, params, tape: Tape) -> Result:
    terms: dict[str, dict[str, float]] = {}
    for row in rows:
        for k in row["ours"]:
            d = value_diff(row["ours"][k], row["reference"][k])
            t = terms.setdefault(k, {"abs": 0.0, "rel": 0.0, "steps": 0})
            t["abs"], t["rel"], t["steps"] = max(t["abs"], d.abs), max(t["rel"], d.rel), t["steps"] + 1
    ok = all(Diff(t["abs"], t["rel"]).ok for t in terms.values()) and all(d.ok for d in params.values())
    return Result(
        method=problem.method,
        problem={"teacher": problem.teacher_arch, "student": problem.student_arch, "steps": problem.steps,
                 "batch": problem.batch, "dtype": str(problem.dtype).replace("torch.", ""), "seed": problem.seed,
                 "compat": problem.compat},
        options=sides.options, reference=sides.reference, terms=terms,
        params={k: {"abs": d.abs, "rel": d.rel} for k, d in params.items()}, per_step=rows, notes=sides.notes,
        draws=len(tape), ok=ok and not unmatched, unmatched=unmatched)
