"""Parity adapter for ``deepinv`` against zju-vipa/Fast-Datafree (``datafree.synthesis.DeepInvSyntheiszer``
and ``datafree_kd.train``, with the arguments of ``scripts/deepinv_cifar.sh`` and ``datafree_kd.main_worker``:
adv 1, bn 10, oh 1, tv 0, l2 0, lr_g 0.1, KD at T 20, the CIFAR-10 training transform on the pool).

The released synthesizer draws its jitter and flip from Python's ``random`` and its student batches through
an on-disk PNG pool, a shuffled DataLoader and per-image torchvision transforms (``RandomCrop(32, 4)``,
``RandomHorizontalFlip``). To give it our draws, this adapter
- hands its module a ``random`` whose ``randint`` / ``random`` return our batch-wide jitter offsets and flip
  (our ``torch.rand(3)`` per step: ``randint`` gives ``int(u * 9) - 4``, ``random`` gives ``1 - u``, so that its
  ``> 0.5`` flips exactly when our ``< 0.5`` does);
- splits our batched crop offsets and flips into the per-image draws its transforms make (``randint`` for the
  row, then the column, then ``rand`` for the flip, image by image);
- runs its DataLoader in-process (``num_workers=0``; the released 4 workers would draw in other processes)
  and lists the pool folder in the order the images were written (round, index): ``os.walk`` order is the
  file system's, ours is insertion order. Its ``randperm`` then replays ours.
Its pool is written to and read from a temporary folder as released (8-bit PNG round trip).
"""
from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch

from .capture import locals_at_each_step, locals_at_step, pool_iteration_terms
from .core import Problem, Sides, StateView, Tape, copy_state

REPO = "zju-vipa/Fast-Datafree"
MARKER = "datafree/synthesis/fast_meta.py"
METHODS = ("deepinv",)
COMPAT: dict[str, dict[str, Any]] = {}
SCRIPT = {"adv": 1.0, "bn": 10.0, "oh": 1.0, "tv": 0.0, "l2": 0.0, "lr_g": 0.1, "T": 20.0, "lr": 0.1,
          "weight_decay": 1e-4, "eta_min": 2e-4}
G_STEPS, KD_STEPS = 10, 5           # per round here (the script: 1000 and 400)

DEFAULTS = {"deepinv": [
    "Equal with our defaults (the driver's draw injection stands in for the released code's Python `random` "
    "jitter, which the docstring lists). Not compared: the zju-vipa/CMI copy (no student-BN term, `tv=0.001`: "
    "`s_bn=0 tv=0.001` here), the released 1000 steps per round (10 here, the same code path)."]}


class _Jitter:
    """Stands in for the ``random`` module inside the released ``jitter_and_flip``."""

    def __init__(self, tape: Tape, lim: int):
        self.tape, self.lim, self.u = tape, lim, None
        self.calls = 0

    def _draw(self) -> torch.Tensor:
        if self.calls % 3 == 0:
            self.u = self.tape.take("rand", (3,))
        self.calls += 1
        return self.u

    def randint(self, low: int, high: int) -> int:
        u = self._draw()
        return int(u[(self.calls - 1) % 3] * (2 * self.lim + 1)) - self.lim

    def random(self) -> float:
        u = self._draw()
        return 1.0 - float(u[2])


def _sampler_draws_remainder() -> bool:
    """Whether torch's ``RandomSampler`` draws a second ``randperm`` for the remainder of an epoch when it is
    exhausted (its values unused), as recent torch versions do."""
    import inspect

    return "num_samples % n" in inspect.getsource(torch.utils.data.RandomSampler.__iter__)


def _prepare_draws(tape: Tape) -> None:
    """Turn this iteration's recorded draws (those not yet replayed) into the draws the released code asks for:
    our crop offsets (dy, dx: two ``randint`` draws of shape (b, 1, 1)) and flips (``rand`` (b, 1, 1, 1))
    become per-image draws of shape (1,) in the order torchvision's transforms ask for them (row, column,
    flip, image by image); between two of our pool permutations the sampler's discarded remainder
    permutation is inserted."""
    start = tape.replayed.get("randint", 0)
    ints, new_ints = tape.draws.get("randint", [])[start:], []
    i = 0
    while i < len(ints):
        t = ints[i]
        if t.dim() == 3 and i + 1 < len(ints) and ints[i + 1].shape == t.shape:
            for a, b in zip(t.reshape(-1), ints[i + 1].reshape(-1)):
                new_ints += [a.reshape(1), b.reshape(1)]
            i += 2
        else:
            new_ints.append(t)
            i += 1
    tape.draws["randint"] = tape.draws.get("randint", [])[:start] + new_ints
    start = tape.replayed.get("rand", 0)
    rands = []
    for t in tape.draws.get("rand", [])[start:]:
        rands += [v.reshape(1) for v in t.reshape(-1)] if t.dim() == 4 else [t]
    tape.draws["rand"] = tape.draws.get("rand", [])[:start] + rands
    if _sampler_draws_remainder():
        start = tape.replayed.get("randperm", 0)
        perms = tape.draws.get("randperm", [])[start:]
        spaced = [q for p in perms for q in (p, p.clone())][:-1] if perms else []
        tape.draws["randperm"] = tape.draws.get("randperm", [])[:start] + spaced


@contextlib.contextmanager
def _in_process_loader():
    original = torch.utils.data.DataLoader

    class Loader(original):                                   # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            kwargs["num_workers"], kwargs["pin_memory"] = 0, False
            super().__init__(*args, **kwargs)

    torch.utils.data.DataLoader = Loader                      # type: ignore[misc]
    try:
        yield
    finally:
        torch.utils.data.DataLoader = original                # type: ignore[misc]


def _written_order(path: str) -> tuple[int, int]:
    m = re.search(r"(\d+)-(\d+)\.png$", path)
    return (int(m.group(1)), int(m.group(2))) if m else (1 << 30, 0)


def _cifar_transform(registry) -> Any:
    """The released CIFAR-10 training transform, taken from ``registry.get_dataset`` with the CIFAR10 class
    stubbed (it would need the data on disk)."""
    import torchvision.datasets as tv_datasets

    class Stub:
        def __init__(self, root, train=True, download=False, transform=None, **kw):
            self.transform = transform

    original = tv_datasets.CIFAR10
    tv_datasets.CIFAR10 = Stub                                # type: ignore[misc]
    try:
        _, train, _ = registry.get_dataset(name="cifar10", data_root=tempfile.gettempdir())
    finally:
        tv_datasets.CIFAR10 = original                        # type: ignore[misc]
    return train.transform


@contextlib.contextmanager
def _released_pool_round(ref_utils) -> Iterator[None]:
    """While active, the released code lists its pool folder in the order the images were written, runs its
    DataLoader in-process, and the scheduler's warning about our patched ``optimizer.step`` is silenced."""
    collect = ref_utils._collect_all_images
    ref_utils._collect_all_images = lambda root, *a, **kw: sorted(collect(root, *a, **kw), key=_written_order)
    try:
        with _in_process_loader(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*optimizer.step.*")
            yield
    finally:
        ref_utils._collect_all_images = collect


def _pool_states(ours, pool_dir: Path, ref_utils) -> tuple[StateView, StateView]:
    """Our pool (decoded from memory) and the released one (its PNGs read back in write order), as comparable
    states."""

    def ref_pool():
        import numpy as np
        from PIL import Image
        files = sorted(ref_utils._collect_all_images(str(pool_dir)), key=_written_order)
        arr = np.stack([np.asarray(Image.open(f)) for f in files]).transpose(0, 3, 1, 2)
        return torch.from_numpy(arr.copy()).to(torch.float64) / 255

    return (StateView(lambda: ours.pool.decode(ours.pool.images[:len(ours.pool)]).double(), "images"),
            StateView(ref_pool, "images"))


def build(problem: Problem, path) -> Sides:
    import datafree
    import datafree_kd
    import registry
    from datafree.synthesis import deepinversion as ref_module
    from datafree.utils import _utils as ref_utils

    b = problem.batch
    options = {"batch_size": b, "synthesis_batch_size": b, "g_steps": G_STEPS, "kd_steps": KD_STEPS}
    ours, cfg = problem.build_ours("deepinv", options)

    k = problem.spec.num_classes
    teacher = registry.get_model(problem.teacher_arch, num_classes=k).to(problem.dtype).eval()
    student = registry.get_model(problem.student_arch, num_classes=k).to(problem.dtype)
    copy_state(problem.teacher, teacher)
    copy_state(problem.student, student)
    normalizer = datafree.utils.Normalizer(**registry.NORMALIZE_DICT["cifar10"])
    pool_dir = Path(tempfile.mkdtemp(prefix="parity-deepinv-")) / "pool"
    synth = datafree.synthesis.DeepInvSyntheiszer(
        teacher=teacher, student=student, num_classes=k, img_size=(3, 32, 32), iterations=G_STEPS,
        lr_g=SCRIPT["lr_g"], synthesis_batch_size=b, sample_batch_size=b, adv=SCRIPT["adv"], bn=SCRIPT["bn"],
        oh=SCRIPT["oh"], tv=SCRIPT["tv"], l2=SCRIPT["l2"], save_dir=str(pool_dir),
        transform=_cifar_transform(registry), normalizer=normalizer, device="cpu")
    criterion = datafree.criterions.KLDiv(T=SCRIPT["T"])
    optimizer = torch.optim.SGD(student.parameters(), SCRIPT["lr"], weight_decay=SCRIPT["weight_decay"], momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, problem.steps, eta_min=SCRIPT["eta_min"])
    args = argparse.Namespace(gpu=None, autocast=datafree.utils.dummy_ctx, kd_steps=KD_STEPS, fp16=False,
                              print_freq=0, current_epoch=0, method="deepinv")
    tape_holder: dict[str, Tape] = {}                          # filled by core.run

    def ours_iteration(i: int) -> list[dict[str, float]]:
        return pool_iteration_terms(ours, i)

    g_names = {"g_adv": lambda loc: SCRIPT["adv"] * loc["loss_adv"], "g_bn": lambda loc: SCRIPT["bn"] * loc["loss_bn"],
               "g_oh": lambda loc: SCRIPT["oh"] * loc["loss_oh"], "g_total": "loss"}

    def ref_iteration(i: int) -> list[dict[str, float]]:
        tape = tape_holder["tape"]
        _prepare_draws(tape)
        rows: list[dict[str, float]] = []
        saved_random, ref_module.random = ref_module.random, _Jitter(tape, int(32 * 1 / 8))

        def synthesis_terms(opt, loc):                        # the synthesis Adam is created inside synthesize()
            rows.append({k: float((v(loc) if callable(v) else loc[v]).detach()) for k, v in g_names.items()})

        try:
            with _released_pool_round(ref_utils):
                with locals_at_each_step(torch.optim.Adam, synthesis_terms):
                    synth.synthesize()
                with locals_at_step(optimizer, {"s_kd": "loss_s"}, rows):
                    datafree_kd.train(synth, [student, teacher], criterion, optimizer, args)
                scheduler.step()
        finally:
            ref_module.random = saved_random
        return rows

    sides = Sides(
        ours_iteration=ours_iteration, ref_iteration=ref_iteration,
        modules={"student": (ours.student, student), "pool": _pool_states(ours, pool_dir, ref_utils)},
        options=options,
        reference={"repo": REPO, "entry": "datafree.synthesis.DeepInvSyntheiszer + datafree_kd.train",
                   "flags": {**SCRIPT, "g_steps": G_STEPS, "kd_steps": KD_STEPS, "ep_steps": KD_STEPS,
                             "epochs": problem.steps, "batch_size": b}},
        tape_holder=tape_holder, cleanup=lambda: shutil.rmtree(pool_dir.parent, ignore_errors=True),
        notes=["the released code's jitter (Python random), DataLoader workers and pool-folder listing order "
               "are replaced by injected draws, an in-process loader and write order (see the adapter)"],
    )
    return sides
