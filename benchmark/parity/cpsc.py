"""Parity adapter for ``cpsc-dfkd`` against RoryShao/CPSC-DFKD (``CPSC_DFKD.train``, one call per iteration
with ``epoch_itrs 1``; the README's CIFAR recipe weights alpha 5, beta 1, gamma 0.7, eta 0.7, every loss
switched on, ``--dataset cifar10`` so that the logit-distance terms take their log form; the released
``GeneratorD``, ``wresnet`` models and ``SupConLoss``).

Pair ``wrn40_2 -> wrn16_2`` (one of the released students) unless ``--pair`` is given: with the narrow
students (wrn16_1, wrn40_1) the released code puts a ``WRNAdapter`` MLP on the normalised student feature,
while ours normalises after the adapter (a documented deviation), so the contrastive term would differ.

Compared: every generator term (adversarial -KD, -alpha log MSE, beta BN statistics, gamma SCL over
[student, teacher] views, eta CE) and every student term (KD, alpha log ||t - s||, eta CE) at every step,
and after K iterations the student (with its BatchNorm running statistics, which the released generator
steps also update) and the generator (CCBN running statistics included; the state dicts are renamed
between the two layouts). Draws: ours replay to the released code (z reshaped to its (b, nz, 1, 1)).

Compatibility settings (our defaults differ; docs/fidelity.md): ``ce_on_probabilities`` (softmax fed to
cross_entropy), ``reset_generator_optimizer`` (a new Adam at every generator step), ``eta_g`` null (one CE
weight), ``memory_format=contiguous``. Student LR: the released code steps its GradualWarmupScheduler and
cosine once per epoch (50 iterations) with a 10-epoch warm-up; ours steps per iteration. This adapter sets
the released optimiser's LR to ours before each iteration (the schedules are compared as formulas in the
method's docstring, not here).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import types
import warnings
from typing import Any

import torch

from .core import Problem, Sides, Tape, caller_locals, copy_state, locals_at_step, returns_of

REPO = "RoryShao/CPSC-DFKD"
MARKER = "CPSC_DFKD.py"
METHODS = ("cpsc-dfkd",)
PAIR = ("wrn40_2", "wrn16_2")
RECIPE = {"co_alpha": 5.0, "co_beta": 1.0, "co_gamma": 0.7, "co_eta": 0.7, "temp": 0.07, "lr_S": 0.1, "lr_G": 1e-3,
          "weight_decay": 5e-4, "momentum": 0.9, "nz": 256, "dataset": "cifar10", "use_amp": False}
G_STEPS, S_STEPS = 2, 3             # per iteration here (the README: 6 and 5)
COMPAT: dict[str, dict[str, Any]] = {"cpsc-dfkd": {"ce_on_probabilities": True, "reset_generator_optimizer": True,
                                                   "eta_g": None, "memory_format": "contiguous"}}
DEFAULTS = {"cpsc-dfkd": [
    "`ce_on_probabilities` (default off): our CE terms take logits; the released code feeds softmax "
    "probabilities to cross_entropy (softmax twice), so `g_ce` and `s_ce` differ from the first step.",
    "`reset_generator_optimizer` (default off): our generator Adam keeps its moments; the released code builds "
    "a new Adam at every generator step, so the generator differs from its second step on.",
    "`eta_g` (digits default 3, CIFAR budgets null): a separate generator CE weight; the released code has one.",
    "`memory_format` (default auto = channels_last on a CPU): layout only, rounding-level differences.",
    "Not compared here: the student LR schedule (released: per epoch, GradualWarmupScheduler + cosine; ours per "
    "iteration, see the docstring), the narrow-student adapter (normalised before it there, after it here), "
    "the released code's CUDA autocast (off on a CPU) and teacher weight gradients (no effect on the numbers)."]}

_RENAME = {"project.": "l1.0.", "bn0.": "conv_blocks0_0.", "conv1.": "conv_blocks1_0.", "bn1.": "conv_blocks1_1.",
           "conv2.": "conv_blocks2_0.", "bn2.": "conv_blocks2_1.", "conv3.": "conv_blocks3_0.", "bn3.": "conv_blocks3_2."}


def generator_name(key: str) -> str:
    """Our ``ConditionalGenerator`` state-dict key -> the released ``GeneratorD`` key."""
    for ours, ref in _RENAME.items():
        if key.startswith(ours):
            key = ref + key[len(ours):]
            break
    return key.replace(".class_scale.", ".weights.").replace(".class_shift.", ".biases.")


def _reshape_latents(tape: Tape, nz: int) -> None:
    """Our latent draws (b, nz) become the released (b, nz, 1, 1)."""
    start = tape.replayed.get("randn", 0)
    queue = tape.draws.get("randn", [])
    tape.draws["randn"] = queue[:start] + [t.reshape(*t.shape, 1, 1) if t.dim() == 2 and t.shape[1] == nz else t
                                           for t in queue[start:]]


def _value(t) -> float:
    return float(t.detach().reshape(-1)[0]) if isinstance(t, torch.Tensor) else float(t)


def build(problem: Problem, path) -> Sides:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        import CPSC_DFKD as ref                                # noqa: N811  (released module name)
        import network
        from metric.DeepInversion import DeepInversionFeatureHook

    b, k = problem.batch, problem.spec.num_classes
    options = {"batch_size": b, "g_steps": G_STEPS, "s_steps": S_STEPS, "alpha": RECIPE["co_alpha"],
               "beta": RECIPE["co_beta"], "gamma": RECIPE["co_gamma"], "eta": RECIPE["co_eta"], "adv": 1.0,
               "temperature": RECIPE["temp"], "lr_g": RECIPE["lr_G"], "lr_s": RECIPE["lr_S"],
               "weight_decay": RECIPE["weight_decay"], "ikd_form": "log",
               **(COMPAT["cpsc-dfkd"] if problem.compat else {})}
    ours, cfg = problem.build_ours("cpsc-dfkd", options)
    ours.generator.to(problem.dtype)
    if ours.adapter is not None:
        from .core import ParityError
        raise ParityError(f"{problem.student_arch}: the student needs a feature adapter, which the released code "
                          "applies before the normalisation and ours after it; use a pair with equal feature "
                          f"sizes (default {PAIR[0]}:{PAIR[1]})")

    arch = {"wrn40_2": "wrn_40_2", "wrn16_2": "wrn_16_2", "wrn40_1": "wrn_40_1", "wrn16_1": "wrn_16_1"}
    teacher = getattr(network.wresnet, arch[problem.teacher_arch])(num_classes=k).to(problem.dtype).eval()
    student = getattr(network.wresnet, arch[problem.student_arch])(num_classes=k).to(problem.dtype)
    generator = network.gan.GeneratorD(nz=RECIPE["nz"], nc=3, img_size=32, num_classes=k).to(problem.dtype)
    copy_state(problem.teacher, teacher)
    copy_state(problem.student, student)
    copy_state(ours.generator, generator, generator_name)
    hooks = [DeepInversionFeatureHook(m) for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    optimizer_s = torch.optim.SGD(student.parameters(), lr=RECIPE["lr_S"], weight_decay=RECIPE["weight_decay"],
                                  momentum=RECIPE["momentum"])
    optimizer_g = torch.optim.Adam(generator.parameters(), lr=RECIPE["lr_G"], betas=(0.5, 0.999))  # unused, as released
    args = argparse.Namespace(epoch_itrs=1, G_steps=G_STEPS, S_steps=S_STEPS, batch_size=b, num_classes=k,
                              loss_IKD=True, loss_BN=True, loss_SCL=True, loss_CE=True, epochs=problem.steps, **RECIPE)
    log = types.SimpleNamespace(logger=types.SimpleNamespace(info=lambda *a, **kw: None))
    tape_holder: dict[str, Tape] = {}
    lrs: list[float] = []

    def ours_iteration(i: int) -> list[dict[str, float]]:
        rows: list[dict[str, float]] = []
        lrs[:] = [g["lr"] for g in ours.opt_s.param_groups]     # this iteration's LR, before ours steps it
        with returns_of(ours, "generator_step", rows), returns_of(ours, "student_step", rows):
            ours.train_iteration(i)
        return rows

    g_terms = {"g_adv": "loss_KD", "g_ikd": "loss_IKD",
               "g_bn": lambda loc: args.co_beta * _value(loc["loss_BN"]),
               "g_scl": lambda loc: args.co_gamma * _value(loc["loss_SCL"]),
               "g_ce": lambda loc: args.co_eta * _value(loc["loss_CE"]), "g_total": "loss_G"}
    s_terms = {"s_kd": "base_KD", "s_ikd": lambda loc: args.co_alpha * _value(loc["loss_l2"]),
               "s_ce": lambda loc: args.co_eta * _value(loc["loss_CE"]), "s_total": "loss_S"}

    def ref_iteration(i: int) -> list[dict[str, float]]:
        _reshape_latents(tape_holder["tape"], RECIPE["nz"])
        rows: list[dict[str, float]] = []
        for group, lr in zip(optimizer_s.param_groups, lrs):
            group["lr"] = lr
        adam_step = torch.optim.Adam.step

        def step(self, *a, **kw):                             # the generator's Adam is built at every step
            loc = caller_locals()
            rows.append({k: _value(v(loc) if callable(v) else loc[v]) for k, v in g_terms.items()})
            return adam_step(self, *a, **kw)

        try:
            with warnings.catch_warnings(), locals_at_step(optimizer_s, s_terms, rows):
                warnings.simplefilter("ignore")
                torch.optim.Adam.step = step
                ref.train(args, teacher=teacher, student=student, generator=generator, device=torch.device("cpu"),
                          optimizer=[optimizer_s, optimizer_g], epoch=i + 1, hooks=hooks, log=log)
        finally:
            torch.optim.Adam.step = adam_step
        return rows

    return Sides(
        ours_iteration=ours_iteration, ref_iteration=ref_iteration,
        modules={"student": (ours.student, student), "generator": (ours.generator, generator, generator_name)},
        options=options,
        reference={"repo": REPO, "entry": "CPSC_DFKD.train (epoch_itrs 1 per iteration)",
                   "flags": {**RECIPE, "G_steps": G_STEPS, "S_steps": S_STEPS, "batch_size": b, "epoch_itrs": 1,
                             "epochs": problem.steps, "loss_IKD": True, "loss_BN": True, "loss_SCL": True,
                             "loss_CE": True}},
        tape_holder=tape_holder,
        notes=["the released student optimiser's LR is set to ours before each iteration (its schedule steps per "
               "epoch of 50 iterations, ours per iteration); the latent draws are reshaped to (b, nz, 1, 1)"],
    )
