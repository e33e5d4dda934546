"""Parity adapter for ``cudfkd`` against ljrprocc/DataFree (``datafree.synthesis.ProbSynthesizer`` for the
generator steps and ``datafree_kd.train`` with ``--method cudfkd`` for the student steps, set up as
``datafree_kd.main_worker`` sets them up with ``scripts/cudfkd/cudfkd_cifar10_resnet34_resnet18.sh``'s flags:
``--no_feature`` (one generator level), ``DCGAN_Generator_CIFAR10`` with depth 2 and nz 512, Adam (0.9, 0.99),
lmda_ent -20 at T 20, oh 1, bn 1, adv 0 raised by grad_adv 0.5 per epoch inside (0.25, 0.75) of the epochs,
adv_type kl, L1 student loss weighted by ``curr_log`` with lambda_0 2 (alpha 1e-4 on CIFAR-10), SGD + cosine).

One reference epoch is one iteration here (``--ep_steps`` = ``--kd_steps_interval``, ``--epochs`` = K), so
that its per-epoch cosine step and adversarial ramp step as often as ours (``epoch_iterations=1``): with
K = 5 the ramp raises the adversarial weight after the third epoch, so iterations 4 and 5 compare the
adversarial term as well.

The reference runs its own model zoo (whose ``forward`` takes the fork's feature-level argument ``l``) and
generator (``project.1`` / ``main.*`` for our ``l1.0`` / ``conv_blocks.*``: the state dicts are renamed).
Draws: the generator's z replay ours; the reference's ``sample`` also draws class labels it never uses
(``torch.randint``), which are left to the real RNG.
"""
from __future__ import annotations

import argparse
from typing import Any

import torch

from .capture import locals_at_step, returns_of
from .core import Problem, Sides, copy_state

REPO = "ljrprocc/DataFree"
MARKER = "datafree/synthesis/cudfkd.py"
METHODS = ("cudfkd",)
COMPAT: dict[str, dict[str, Any]] = {}

# scripts/cudfkd/cudfkd_cifar10_resnet34_resnet18.sh (the README's example)
SCRIPT = {"lr": 0.1, "lr_g": 1e-3, "weight_decay": 1e-4, "T": 20.0, "lmda_ent": -20.0, "oh": 1.0, "bn": 1.0,
          "act": 0.0, "adv": 0.0, "grad_adv": 0.5, "begin_fraction": 0.25, "end_fraction": 0.75, "depth": 2,
          "adv_type": "kl", "curr_option": "curr_log", "lambda_0": 2.0, "loss": "l1", "nz": 512, "g_steps": 1}
KD_STEPS = 5         # --kd_steps_interval = --ep_steps (the script: 10 of 400)

DEFAULTS = {"cudfkd": [
    "Equal with our defaults (no compatibility option needed). Listed in the docstring but not changing "
    "these numbers: the clamp at 1e-12 inside the entropy of the mean prediction, the per-iteration cosine "
    "step (aligned here by one iteration per reference epoch)."]}


def generator_name(key: str) -> str:
    """Our ``DataFreeGenerator`` state-dict key -> the released ``DCGAN_Generator_CIFAR10``'s."""
    if key.startswith("l1.0."):
        return "project.1." + key[len("l1.0."):]
    if key.startswith("conv_blocks."):
        return "main." + key[len("conv_blocks."):]
    return key


def fork_models(problem: Problem, script: dict[str, Any], ngf: int):
    """The ljrprocc forks' side of the models, built as their ``main_worker`` builds them for CIFAR-10: the
    teacher and student from the fork's model zoo, the script's ``DCGAN_Generator_CIFAR10`` (nz, depth) and
    the CIFAR-10 ``Normalizer``, in the problem's dtype. Their weights are copied from ours by the caller,
    after the synthesizer's constructor (which re-initialises the generator)."""
    import datafree
    import registry

    k = problem.spec.num_classes
    teacher = registry.get_model(problem.teacher_arch, num_classes=k).to(problem.dtype).eval()
    student = registry.get_model(problem.student_arch, num_classes=k).to(problem.dtype)
    generator = datafree.models.generator.DCGAN_Generator_CIFAR10(
        nz=script["nz"], ngf=ngf, nc=3, img_size=32, d=script["depth"], cond=False, type="normal")
    normalizer = datafree.utils.Normalizer(**registry.NORMALIZE_DICT["cifar10"])
    return teacher, student, generator.to(problem.dtype), normalizer


def build(problem: Problem, path) -> Sides:
    import datafree
    import datafree_kd

    b = problem.batch
    options = {"batch_size": b, "s_steps": KD_STEPS, "epoch_iterations": 1, **COMPAT.get("cudfkd", {})}
    ours, cfg = problem.build_ours("cudfkd", options)
    ours.generator.to(problem.dtype)

    k = problem.spec.num_classes
    teacher, student, generator, normalizer = fork_models(problem, SCRIPT, cfg.ngf)
    synth = datafree.synthesis.ProbSynthesizer(
        teacher=teacher, student=student, G_list=[generator], nz=SCRIPT["nz"], num_classes=k, img_size=32,
        iterations=[SCRIPT["g_steps"]], lr_g=SCRIPT["lr_g"], synthesis_batch_size=b, sample_batch_size=b,
        save_dir="run/unused", transform=None, normalizer=normalizer, device="cpu", lmda_ent=SCRIPT["lmda_ent"],
        adv=SCRIPT["adv"], oh=SCRIPT["oh"], act=SCRIPT["act"], adv_type=SCRIPT["adv_type"], bn=SCRIPT["bn"],
        T=SCRIPT["T"], memory=False)
    # after the constructor, which re-initialises the generator from the global RNG
    copy_state(problem.teacher, teacher)
    copy_state(problem.student, student)
    copy_state(ours.generator, generator, generator_name)
    criterion = torch.nn.L1Loss()
    optimizer = torch.optim.SGD(student.parameters(), SCRIPT["lr"], weight_decay=SCRIPT["weight_decay"],
                                momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=problem.steps)
    args = argparse.Namespace(method="cudfkd", dataset="cifar10", lambda_0=SCRIPT["lambda_0"],
                              curr_option=SCRIPT["curr_option"], gpu=None, autocast=datafree.utils.dummy_ctx,
                              fp16=False, distributed=False, logger=None, print_freq=0, log_fidelity=False,
                              current_epoch=0, epochs=problem.steps)
    state = {"global_iter": 0}
    real_randint = torch.randint                      # build runs before the tape patches torch

    g_names: dict[str, Any] = {
        "g_bn": lambda loc: loc["self"].bn * loc["loss_bn"],
        "g_ent": lambda loc: loc["self"].lmda_ent * loc["ent"],
        "g_oh": lambda loc: loc["self"].oh * loc["loss_oh"],
        "g_adv": lambda loc: loc["self"].adv * loc["loss_adv"] if loc["self"].adv > 0 else None,
        "g_total": "loss",
    }
    s_names = {"s_kd": "loss_s", "s_total": "loss_s", "s_weight": "v"}

    def ours_iteration(i: int) -> list[dict[str, float]]:
        rows: list[dict[str, float]] = []
        with returns_of(ours, "generator_step", rows), returns_of(ours, "student_step", rows):
            ours.train_iteration(i)
        return rows

    def ref_sample(l=0, history=False):
        taped, torch.randint = torch.randint, real_randint    # its unused labels: not ours to replay
        try:
            return sample(l, history)
        finally:
            torch.randint = taped

    sample = synth.sample
    synth.sample = ref_sample

    def ref_iteration(i: int) -> list[dict[str, float]]:
        rows: list[dict[str, float]] = []
        args.current_epoch = i
        with locals_at_step(synth.optimizers[0], g_names, rows):
            synth.synthesize()
        with locals_at_step(optimizer, s_names, rows):
            state["global_iter"] = datafree_kd.train(synth, [student, teacher], criterion, optimizer, args,
                                                     KD_STEPS, l=0, global_iter=state["global_iter"])
        # the epoch loop's adversarial ramp, then its cosine step
        if (int(args.epochs * SCRIPT["begin_fraction"]) < i < int(args.epochs * SCRIPT["end_fraction"])
                and args.curr_option != "none"):
            synth.adv += SCRIPT["grad_adv"]
        scheduler.step()
        return rows

    return Sides(
        ours_iteration=ours_iteration, ref_iteration=ref_iteration,
        modules={"student": (ours.student, student), "generator": (ours.generator, generator, generator_name)},
        options=options,
        reference={"repo": REPO, "entry": "datafree.synthesis.ProbSynthesizer + datafree_kd.train (cudfkd)",
                   "flags": {**SCRIPT, "kd_steps_interval": KD_STEPS, "ep_steps": KD_STEPS,
                             "epochs": problem.steps, "batch_size": b, "synthesis_batch_size": b,
                             "no_feature": True}},
        notes=["the reference's sample() draws class labels it never uses; they come from the real RNG"],
    )
