"""Mechanics of the parity driver: the shared problem, random-draw injection, weight copying, comparison
and the report (importing the authors' code: :mod:`.refcode`; capturing their loss terms: :mod:`.capture`).

Nothing here knows a method; each adapter module (``benchmark.parity.datafree`` ...) builds both sides of
one family of methods on a :class:`Problem` and returns a :class:`Sides`, which :func:`run` drives.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from .refcode import checkout_commit, locate, reference_code, upcast_only_float

TOLERANCE = 1e-4      # the target: relative difference on every loss term and parameter group
ABS_FLOOR = 1e-9      # below this absolute difference a value counts as equal (terms that are exactly 0)


class ParityError(RuntimeError):
    """The two sides cannot be compared (e.g. they asked for different random draws)."""


# ---------------------------------------------------------------------------------------------------------
# the problem both sides run on
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Problem:
    """A CIFAR-shaped problem (3x32x32, 10 classes, CIFAR-10's normalisation) with no data: a random teacher
    whose BatchNorm running statistics are made non-trivial by a few forward passes on noise."""

    method: str
    teacher_arch: str = "wrn40_2"
    student_arch: str = "wrn16_1"
    steps: int = 5                      # K iterations (synthesis steps + student steps each)
    batch: int = 16                     # student and synthesis batch
    dtype: torch.dtype = torch.float64
    seed: int = 0
    compat: bool = True                 # switch on the released-code compatibility options
    spec: Any = None                    # benchmark.data.DatasetSpec (cifar10)
    teacher: nn.Module | None = None
    student: nn.Module | None = None

    def build(self) -> "Problem":
        from benchmark.data import get_dataset
        from benchmark.models import create_model

        self.spec = get_dataset("cifar10")
        torch.manual_seed(self.seed)
        shape, k = self.spec.image_shape, self.spec.num_classes
        self.teacher = create_model(self.teacher_arch, k, shape).to(self.dtype)
        self.student = create_model(self.student_arch, k, shape).to(self.dtype)
        with torch.no_grad():                       # running statistics away from (0, 1)
            self.teacher.train()
            for _ in range(3):
                self.teacher(torch.rand(self.batch, *shape, dtype=self.dtype) * 2 + 0.5)
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        return self

    def build_ours(self, cls, cfg):
        """Our side of the comparison: ``cls`` with ``cfg`` on this problem's teacher and student, put
        together as the runner does (:func:`benchmark.build.build_method`), in plain NCHW fp32/fp64."""
        from benchmark.build import build_method
        from benchmark.config import RunConfig

        return build_method(cls, self.teacher, self.student, self.spec, torch.device("cpu"), cfg,
                            RunConfig(precision="fp32", channels_last=False), iterations=self.steps)


# ---------------------------------------------------------------------------------------------------------
# random draws: record on our side, replay on the reference side
# ---------------------------------------------------------------------------------------------------------
DRAW_FUNCTIONS = ("randn", "rand", "randint", "randperm", "randn_like", "rand_like", "randint_like", "bernoulli")


class Tape:
    """Records every draw of ``torch.randn / rand / randint / randperm`` (and ``*_like``) made while
    :meth:`recording` is active, and hands the same values back, in the same order per function, while
    :meth:`replaying`. A replayed draw still calls the original function (to learn the shape, dtype and device
    the caller asked for) and fails with :class:`ParityError` when that shape differs from the recorded one:
    the two sides then do not draw the same things in the same order, and an adapter has to inject the draws
    itself."""

    def __init__(self):
        self.draws: dict[str, list[torch.Tensor]] = {}
        self.replayed: dict[str, int] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self.draws.values())

    @contextlib.contextmanager
    def _patched(self, wrap: Callable[[str, Callable], Callable]) -> Iterator["Tape"]:
        originals = {name: getattr(torch, name) for name in DRAW_FUNCTIONS}
        for name, fn in originals.items():
            setattr(torch, name, wrap(name, fn))
        try:
            yield self
        finally:
            for name, fn in originals.items():
                setattr(torch, name, fn)

    def recording(self):
        def wrap(name, fn):
            def draw(*args, **kwargs):
                out = fn(*args, **kwargs)
                self.draws.setdefault(name, []).append(out.detach().clone())
                return out
            return draw
        return self._patched(wrap)

    def replaying(self):
        def wrap(name, fn):
            def draw(*args, **kwargs):
                fresh = fn(*args, **kwargs)
                queue, i = self.draws.get(name, []), self.replayed.get(name, 0)
                if i >= len(queue):
                    raise ParityError(f"the reference drew torch.{name}{tuple(fresh.shape)} #{i + 1}, "
                                      f"but ours drew only {len(queue)}")
                if queue[i].shape != fresh.shape:
                    raise ParityError(f"draw torch.{name} #{i + 1}: the reference asked for shape "
                                      f"{tuple(fresh.shape)}, ours drew {tuple(queue[i].shape)}")
                self.replayed[name] = i + 1
                return queue[i].to(dtype=fresh.dtype, device=fresh.device).requires_grad_(fresh.requires_grad)
            return draw
        return self._patched(wrap)

    def take(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The next recorded draw of ``torch.<name>`` (for adapters that hand our draws to reference code that
        draws differently, e.g. from Python's ``random``); its shape must be ``shape``."""
        queue, i = self.draws.get(name, []), self.replayed.get(name, 0)
        if i >= len(queue) or tuple(queue[i].shape) != tuple(shape):
            got = tuple(queue[i].shape) if i < len(queue) else "nothing"
            raise ParityError(f"the reference needs torch.{name}{tuple(shape)} #{i + 1}, ours drew {got}")
        self.replayed[name] = i + 1
        return queue[i]

    def unused(self) -> dict[str, int]:
        return {k: len(v) - self.replayed.get(k, 0) for k, v in self.draws.items() if len(v) > self.replayed.get(k, 0)}


# ---------------------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------------------
def copy_state(source: nn.Module, target: nn.Module, rename: Callable[[str], str] = lambda k: k) -> None:
    """Load ``source``'s state dict into ``target`` (names mapped by ``rename``), requiring the same keys and
    shapes on both sides; values keep ``target``'s dtype."""
    src = {rename(k): v for k, v in source.state_dict().items()}
    dst = target.state_dict()
    missing, extra = sorted(set(dst) - set(src)), sorted(set(src) - set(dst))
    if missing or extra:
        raise ParityError(f"{type(source).__name__} -> {type(target).__name__}: keys differ "
                          f"(missing {missing[:5]}, unexpected {extra[:5]})")
    for k, v in src.items():
        if tuple(v.shape) != tuple(dst[k].shape):
            raise ParityError(f"{k}: shape {tuple(v.shape)} vs {tuple(dst[k].shape)}")
    target.load_state_dict(src)


def group_of(name: str) -> str:
    """Parameter group of a state-dict key: its top-level module, with BatchNorm running statistics apart."""
    head = name.split(".")[0]
    tail = name.rsplit(".", 1)[-1]
    return f"{head} (running stats)" if tail in ("running_mean", "running_var") else head


# ---------------------------------------------------------------------------------------------------------
# comparison
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Diff:
    abs: float
    rel: float

    @property
    def ok(self) -> bool:
        return self.abs <= ABS_FLOOR or self.rel <= TOLERANCE


def value_diff(ours: float, ref: float) -> Diff:
    """abs = |ours - ref|; rel = abs / max(|ours|, |ref|) (0 when both are 0)."""
    a = abs(ours - ref)
    scale = max(abs(ours), abs(ref))
    if math.isnan(ours) or math.isnan(ref):
        return Diff(math.inf, math.inf)
    return Diff(a, a / scale if scale else 0.0)


def tensor_diff(ours: torch.Tensor, ref: torch.Tensor) -> Diff:
    """abs = max |ours - ref|; rel = abs / max |ref| (the group's largest magnitude)."""
    o, r = ours.detach().double(), ref.detach().double()
    a = float((o - r).abs().max()) if o.numel() else 0.0
    scale = float(torch.maximum(o.abs().max(), r.abs().max())) if o.numel() else 0.0
    return Diff(a, a / scale if scale else 0.0)


def compare_states(ours: nn.Module, ref: nn.Module, prefix: str,
                   rename: Callable[[str], str] = lambda k: k) -> dict[str, Diff]:
    """Per group (see :func:`group_of`), the largest difference over its floating-point tensors."""
    o_state = {rename(k): v for k, v in ours.state_dict().items()}
    r_state = ref.state_dict()
    groups: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for k, v in o_state.items():
        if not v.is_floating_point():
            continue
        if k not in r_state:
            raise ParityError(f"{prefix}: {k} has no counterpart in the reference")
        groups.setdefault(f"{prefix}.{group_of(k)}", []).append((v, r_state[k]))
    out = {}
    for g, pairs in groups.items():
        o = torch.cat([a.reshape(-1).double() for a, _ in pairs])
        r = torch.cat([b.reshape(-1).double() for _, b in pairs])
        out[g] = tensor_diff(o, r)
    return out


# ---------------------------------------------------------------------------------------------------------
# what an adapter returns, and the driver
# ---------------------------------------------------------------------------------------------------------
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run(adapter: Any, problem: Problem, root: Path | None) -> Result:
    """Build both sides with ``adapter.build(problem, checkout)`` (the checkout of ``adapter.REPO`` found
    under ``root``; ``root`` None for an adapter that needs none, as in the tests), run ``problem.steps``
    iterations, compare."""
    path = locate(root, adapter.REPO, adapter.MARKER) if root is not None else None
    problem.build()
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
    finally:
        torch.set_default_dtype(old_dtype)
    return _result(problem, sides, rows, unmatched, params, tape)


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


# ---------------------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------------------
def _fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.1e}"


def table(result: Result) -> str:
    lines = [f"{result.method}: {'PASS' if result.ok else 'FAIL'} (relative difference <= {TOLERANCE:g}, "
             f"K={result.problem['steps']}, {result.problem['dtype']}, compat={'on' if result.problem['compat'] else 'off'})",
             f"reference: github.com/{result.reference.get('repo')} @ {result.reference.get('commit')}"]
    rows = [("quantity", "max abs diff", "max rel diff", "ok")]
    for k, t in result.terms.items():
        rows.append((f"loss {k} ({t['steps']} steps)", _fmt(t["abs"]), _fmt(t["rel"]),
                     "yes" if Diff(t["abs"], t["rel"]).ok else "NO"))
    for k, d in result.params.items():
        rows.append((f"param {k}", _fmt(d["abs"]), _fmt(d["rel"]), "yes" if Diff(d["abs"], d["rel"]).ok else "NO"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
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
