"""Parity adapter for ``cmi`` against zju-vipa/Fast-Datafree (``datafree.synthesis.CMISynthesizer`` and
``datafree_kd.train`` with ``scripts/cmi_cifar.sh``'s arguments: adv 0.5, bn 1, oh 1, cr 0.8, cr_T 0.2, lr_g
1e-3, bank 40960, 4096 negatives, head 256, KD at T 20; the library's ``Generator``).

Draws: the views use kornia in both (our ``kornia_augment`` compatibility option), whose ``torch.rand`` /
``torch.bernoulli`` draws replay ours; the generator re-initialisation draws from the global RNG before z
here and after z and the labels in the released code, so both re-initialisations run under the same fresh
seed (the RNG state around them is restored); the memory bank's ``random.sample`` returns our permutation
(or, when all entries are used, the bank in order: the contrastive loss does not depend on the order of its
rows up to rounding). The student phase is handled as in the ``deepinv`` adapter (PNG pool in a temporary
folder, in-process loader, per-image crop/flip draws from ours).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from .capture import locals_at_each_step, locals_at_step, pool_iteration_terms
from .core import Problem, Sides, StateView, Tape, copy_state
from .deepinv import _cifar_transform, _pool_states, _prepare_draws, _released_pool_round

REPO = "zju-vipa/Fast-Datafree"
MARKER = "datafree/synthesis/fast_meta.py"
METHODS = ("cmi",)
COMPAT: dict[str, dict[str, Any]] = {"cmi": {"kornia_augment": True}}
SCRIPT = {"adv": 0.5, "bn": 1.0, "oh": 1.0, "cr": 0.8, "cr_T": 0.2, "lr_g": 1e-3, "T": 20.0, "lr": 0.1,
          "weight_decay": 1e-4, "eta_min": 2e-4, "bank_size": 40960, "n_neg": 4096, "head_dim": 256, "nz": 256}
G_STEPS, KD_STEPS = 5, 5

DEFAULTS = {"cmi": [
    "`kornia_augment` (default off): the views come from the on-device re-implementation (docstring: the "
    "resized crop clips an oversize crop instead of kornia's retries and samples with `grid_sample`), so "
    "the images the teacher sees differ from the first step on and every term after it; the draws are "
    "then not even of the same kind (the comparison stops with a draw mismatch)."]}


class _BankRandom:
    """Stands in for ``random`` in the released contrastive module: ``sample`` returns our bank draw."""

    def __init__(self, tape: Tape):
        self.tape = tape

    def sample(self, population, k):
        population = list(population)
        if k >= len(population):
            return population                       # ours uses the whole bank in order, drawing nothing
        perm = self.tape.take("randperm", (len(population),))
        return [population[int(j)] for j in perm[:k]]


class _SeededReset:
    """Runs a re-initialisation under a given seed and restores the global RNG afterwards."""

    def __init__(self, fn):
        self.fn, self.seed = fn, 0

    def __call__(self, model):
        state = torch.get_rng_state()
        torch.manual_seed(self.seed)
        try:
            return self.fn(model)
        finally:
            torch.set_rng_state(state)


def build(problem: Problem, path) -> Sides:
    import datafree
    import datafree_kd
    import registry
    from datafree.synthesis import contrastive as ref_module
    from datafree.utils import _utils as ref_utils

    import methods.cmi as ours_module

    b = problem.batch
    options = {"batch_size": b, "synthesis_batch_size": b, "g_steps": G_STEPS, "kd_steps": KD_STEPS,
               **(COMPAT["cmi"] if problem.compat else {})}
    ours, cfg = problem.build_ours("cmi", options)
    ours.generator.to(problem.dtype)
    if ours.head is not None:
        ours.head.to(problem.dtype)
        ours.bank.data = ours.bank.data.to(problem.dtype)

    k = problem.spec.num_classes
    teacher = registry.get_model(problem.teacher_arch, num_classes=k).to(problem.dtype).eval()
    student = registry.get_model(problem.student_arch, num_classes=k).to(problem.dtype)
    generator = datafree.models.generator.Generator(nz=SCRIPT["nz"], ngf=cfg.ngf, img_size=32, nc=3).to(problem.dtype)
    copy_state(problem.teacher, teacher)
    copy_state(problem.student, student)
    copy_state(ours.generator, generator)
    normalizer = datafree.utils.Normalizer(**registry.NORMALIZE_DICT["cifar10"])
    pool_dir = Path(tempfile.mkdtemp(prefix="parity-cmi-")) / "pool"
    with warnings.catch_warnings(), contextlib_redirect():
        warnings.simplefilter("ignore")
        synth = datafree.synthesis.CMISynthesizer(
            teacher, student, generator, nz=SCRIPT["nz"], num_classes=k, img_size=(3, 32, 32), feature_reuse=False,
            feature_layers=None, bank_size=SCRIPT["bank_size"], n_neg=SCRIPT["n_neg"], head_dim=SCRIPT["head_dim"],
            init_dataset=None, iterations=G_STEPS, lr_g=SCRIPT["lr_g"], progressive_scale=False,
            synthesis_batch_size=b, sample_batch_size=b, adv=SCRIPT["adv"], bn=SCRIPT["bn"], oh=SCRIPT["oh"],
            cr=SCRIPT["cr"], cr_T=SCRIPT["cr_T"], save_dir=str(pool_dir), transform=_cifar_transform(registry),
            normalizer=normalizer, device="cpu")
    synth.head.to(problem.dtype)
    synth.mem_bank.data = synth.mem_bank.data.to(problem.dtype)
    copy_state(ours.head, synth.head)
    synth.optimizer_head = torch.optim.Adam(synth.head.parameters(), lr=SCRIPT["lr_g"])
    criterion = datafree.criterions.KLDiv(T=SCRIPT["T"])
    optimizer = torch.optim.SGD(student.parameters(), SCRIPT["lr"], weight_decay=SCRIPT["weight_decay"], momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, problem.steps, eta_min=SCRIPT["eta_min"])
    args = argparse.Namespace(gpu=None, autocast=datafree.utils.dummy_ctx, kd_steps=KD_STEPS, fp16=False,
                              print_freq=0, current_epoch=0, method="cmi")
    tape_holder: dict[str, Tape] = {}
    our_reset, ref_reset = _SeededReset(ours_module.reset_generator), _SeededReset(ref_module.reset_model)
    weights = {"bn": SCRIPT["bn"], "oh": SCRIPT["oh"], "adv": SCRIPT["adv"], "cr": SCRIPT["cr"]}

    def ours_iteration(i: int) -> list[dict[str, float]]:
        our_reset.seed = 1000 + i
        saved, ours_module.reset_generator = ours_module.reset_generator, our_reset
        try:
            return pool_iteration_terms(ours, i, terms_of=lambda out: out[0])     # losses: (terms, features)
        finally:
            ours_module.reset_generator = saved

    def ref_iteration(i: int) -> list[dict[str, float]]:
        tape = tape_holder["tape"]
        _prepare_draws(tape)
        rows: list[dict[str, float]] = []
        saved_random, ref_module.random = ref_module.random, _BankRandom(tape)
        ref_reset.seed = 1000 + i
        saved_reset, ref_module.reset_model = ref_module.reset_model, ref_reset

        def synthesis_terms(opt, loc):                        # the synthesis Adam is created inside synthesize()
            if opt is not synth.optimizer_head:
                row = {f"g_{k}": w * float(loc[f"loss_{k}"].detach().reshape(-1)[0]) for k, w in weights.items()}
                row["g_total"] = float(loc["loss"].detach())
                rows.append(row)

        try:
            with _released_pool_round(ref_utils):
                with locals_at_each_step(torch.optim.Adam, synthesis_terms):
                    synth.synthesize()
                with locals_at_step(optimizer, {"s_kd": "loss_s"}, rows):
                    datafree_kd.train(synth, [student, teacher], criterion, optimizer, args)
                scheduler.step()
        finally:
            ref_module.random = saved_random
            ref_module.reset_model = saved_reset
        return rows

    n_bank = lambda: ours.bank.updates                         # noqa: E731
    return Sides(
        ours_iteration=ours_iteration, ref_iteration=ref_iteration,
        modules={"student": (ours.student, student), "generator": (ours.generator, generator),
                 "head": (ours.head, synth.head), "pool": _pool_states(ours, pool_dir, ref_utils),
                 "bank": (StateView(lambda: ours.bank.data[:n_bank()].double(), "features"),
                          StateView(lambda: synth.mem_bank.data[:n_bank()].double(), "features"))},
        options=options,
        reference={"repo": REPO, "entry": "datafree.synthesis.CMISynthesizer + datafree_kd.train",
                   "flags": {**SCRIPT, "g_steps": G_STEPS, "kd_steps": KD_STEPS, "ep_steps": KD_STEPS,
                             "epochs": problem.steps, "batch_size": b, "synthesis_batch_size": b}},
        tape_holder=tape_holder, cleanup=lambda: shutil.rmtree(pool_dir.parent, ignore_errors=True),
        notes=["the generator re-initialisations run under the same seed on both sides; the memory bank's "
               "Python random.sample, the pool's DataLoader workers and folder order are replaced as in deepinv"],
    )


def contextlib_redirect():
    """Silence the released constructor's print ("CMI dims: ...")."""
    import contextlib
    import io

    return contextlib.redirect_stdout(io.StringIO()) if sys.stdout else contextlib.nullcontext()
