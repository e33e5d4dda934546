"""Mechanics of the parity driver: the shared problem, importing the authors' code, random-draw injection,
loss-term capture, weight copying, comparison and the report.

Nothing here knows a method; each adapter module (``benchmark.parity.datafree`` ...) builds both sides of
one family of methods on a :class:`Problem` and returns a :class:`Sides`, which :func:`run` drives.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from benchmark.config import ConfigError

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

    def context(self):
        from benchmark.method import MethodContext

        return MethodContext(teacher=self.teacher, student=self.student, dataset=self.spec,
                             device=torch.device("cpu"), iterations=self.steps, precision="fp32")


# ---------------------------------------------------------------------------------------------------------
# importing the authors' code
# ---------------------------------------------------------------------------------------------------------
def locate(root: Path, repo: str, marker: str) -> Path:
    """The checkout of ``repo`` ("owner/name"): ``root`` itself when it holds ``marker``, else a child folder
    named ``name``, ``owner+name``, ``owner__name`` or ``name-<branch>`` that does."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"--reference {root}: not a folder")
    if (root / marker).exists():
        return root
    owner, name = repo.split("/")
    names = {name.lower(), f"{owner}+{name}".lower(), f"{owner}__{name}".lower(), f"{owner}-{name}".lower()}
    for child in sorted(root.iterdir()):
        low = child.name.lower()
        if child.is_dir() and (low in names or low.startswith(name.lower() + "-")) and (child / marker).exists():
            return child
    raise ConfigError(f"--reference {root}: no checkout of github.com/{repo} (a folder holding {marker}, "
                      f"named {name} or {owner}+{name})")


def checkout_commit(path: Path) -> str:
    """The commit of a checkout: ``git rev-parse HEAD`` if it is a git work tree, else ``COMMIT`` or
    ``.commit`` (a file holding the hash) in it, else 'unknown'."""
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        if out.returncode == 0 and out.stdout.strip() and (Path(path) / ".git").exists():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    for name in ("COMMIT", ".commit"):
        f = Path(path) / name
        if f.is_file():
            return f.read_text().strip().split()[0]
    return "unknown"


def _stub(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    mod.__parity_shim__ = True
    return mod


@contextlib.contextmanager
def reference_code(path: Path) -> Iterator[None]:
    """Make the checkout at ``path`` importable, with shims for what it needs but this machine lacks:
    ``torchvision.models.utils`` (removed from torchvision; its model zoo imports it), ``termcolor`` when not
    installed (its logger), and ``.cuda()`` as a no-op on tensors and modules (some code calls it
    unconditionally). On exit every module loaded from the checkout and every shim is removed again, so two
    checkouts with the same package name (CMI's and Fast-Datafree's ``datafree``) can be used one after the
    other."""
    path = Path(path).resolve()
    before = set(sys.modules)
    shims: dict[str, types.ModuleType] = {}
    try:
        import torchvision.models.utils  # noqa: F401
    except ImportError:
        from torch.hub import load_state_dict_from_url
        shims["torchvision.models.utils"] = _stub("torchvision.models.utils",
                                                  load_state_dict_from_url=load_state_dict_from_url)
    try:
        import termcolor  # noqa: F401
    except ImportError:
        shims["termcolor"] = _stub("termcolor", colored=lambda text, *a, **k: text)
    for name, mod in shims.items():
        sys.modules[name] = mod
    saved_cuda = (torch.Tensor.cuda, nn.Module.cuda)
    torch.Tensor.cuda = lambda self, *a, **k: self           # type: ignore[method-assign]
    nn.Module.cuda = lambda self, *a, **k: self              # type: ignore[method-assign]
    sys.path.insert(0, str(path))
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda = saved_cuda       # type: ignore[method-assign]
        with contextlib.suppress(ValueError):
            sys.path.remove(str(path))
        for name in set(sys.modules) - before:
            file = getattr(sys.modules[name], "__file__", None) or ""
            if name in shims or (file and Path(file).resolve().is_relative_to(path)):
                del sys.modules[name]
        for name in shims:
            sys.modules.pop(name, None)


@contextlib.contextmanager
def upcast_only_float() -> Iterator[None]:
    """In an fp64 comparison, ``Tensor.float()`` converts to float64 instead of float32: this project writes
    ``.float()`` to mean "the compute precision, at least fp32" (after bf16/fp16 autocast, or to decode 8-bit
    pool images), and a cast to fp32 on one side only would limit the comparison to fp32 rounding there."""
    original = torch.Tensor.float

    def float_(self, *args, **kwargs):
        return self if self.dtype == torch.float64 else self.to(torch.float64)

    torch.Tensor.float = float_                              # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.float = original                        # type: ignore[method-assign]


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
# capturing loss terms
# ---------------------------------------------------------------------------------------------------------
def _scalar(v: Any) -> float:
    if isinstance(v, torch.Tensor):
        return float(v.detach().reshape(-1)[0]) if v.numel() else 0.0
    return float(v)


_TORCH_DIR = str(Path(torch.__file__).resolve().parent)


def caller_locals() -> dict[str, Any]:
    """The local variables of the nearest calling frame outside torch and this module (skipping torch's
    optimizer wrappers) above the function that calls this one: the released function that called
    ``optimizer.step()``."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith(_TORCH_DIR)
                                 or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    if frame is None:
        raise ParityError("no calling frame outside torch")
    return frame.f_locals


@contextlib.contextmanager
def locals_at_step(optimizer: torch.optim.Optimizer, names: dict[str, Callable[[dict], float] | str],
                   sink: list[dict[str, float]]) -> Iterator[None]:
    """While active, each ``optimizer.step()`` appends to ``sink`` the loss terms read from the local
    variables of the function that called it (the reference code computes its terms as locals and returns
    none of them). ``names`` maps our term name to a local's name or to a function of the locals dict."""
    original = optimizer.step

    def step(*args, **kwargs):
        frame_locals = caller_locals()
        row = {}
        for ours, how in names.items():
            value = how(frame_locals) if callable(how) else frame_locals[how]
            if value is not None:
                row[ours] = _scalar(value)
        sink.append(row)
        return original(*args, **kwargs)

    optimizer.step = step                                      # type: ignore[method-assign]
    try:
        yield
    finally:
        del optimizer.step


@contextlib.contextmanager
def returns_of(obj: Any, attr: str, sink: list[dict[str, float]],
               keep: Callable[[str], bool] = lambda k: True) -> Iterator[None]:
    """While active, every call of ``obj.attr()`` appends the float values of the dict it returns to ``sink``
    (our methods return their weighted loss terms by name from each step)."""
    original = getattr(obj, attr)

    def call(*args, **kwargs):
        out = original(*args, **kwargs)
        sink.append({k: _scalar(v) for k, v in out.items() if keep(k)})
        return out

    setattr(obj, attr, call)
    try:
        yield
    finally:
        delattr(obj, attr)


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


# ---------------------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------------------
def _fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.1e}"


def table(result: Result) -> str:
    lines = [f"{result.method}: {'PASS' if result.ok else 'FAIL'} (relative difference <= {TOLERANCE:g}, "
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
