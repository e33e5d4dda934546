"""Parity adapter for ``adadfkd`` against ljrprocc/DFKD (``datafree.synthesis.AdaSynthesizer`` with its
``MoCo`` negative queue for the generator steps, ``datafree_kd.train`` with ``--method adadfkd`` and
``difficulty_mining`` for the student steps), set up as ``datafree_kd.main_worker`` sets them up with
``scripts/adadfkd/adadfkd_cifar10_resnet34_resnet18.sh``'s flags: ``--no_feature``, ``DCGAN_Generator_CIFAR10``
(depth 2, nz 512), Adam (0.9, 0.99), lmda_ent -20 at T 20, oh 1, bn 1, adv 1 (adv_type kl, no mask), hard 0.1
over a ring of length 0.9 of 4096 negatives at tau 0.07, s_nce 0.1, KL student loss at T 20 weighted by
``curr_log`` with lambda_0 2.2 (alpha 1e-4 on CIFAR-10), SGD + cosine.

One reference epoch is one iteration here (``--ep_steps`` = ``--kd_steps``, ``--epochs`` = K,
``epoch_iterations=1``), so its per-epoch cosine step, ``get_alpha_adv(type='linear')`` ramp and ring position
(``hard_factor``) move as often as ours. The script's ``--grad_adv`` is 0 (a constant adversarial weight); the
comparison uses 0.25 on both sides so that the ramp is compared too (with K = 5: raised after epochs 2, 3, 4).

The reference's generator and model zoo take the fork's feature-level argument ``l``; the generator's state
dict is renamed as in the ``cudfkd`` adapter. Draws: z replays ours; the queue's initial ``torch.randn`` is
copied across. The student features of wrn16_1 (64) are mapped to the teacher's width (128) by a freshly
initialised ``nn.Linear`` at every use, on both sides (released behaviour, kept by ours): those
initialisations come from the global RNG, so each iteration runs under the same seed on both sides, and the
reference's ``sample`` gets its unused class labels from ``torch.zeros`` instead of ``torch.randint`` so that
both sides consume the RNG in the same order.
"""
from __future__ import annotations

import argparse
from typing import Any

import torch

from .capture import locals_at_step, returns_of
from .core import Problem, Sides, StateView, copy_state
from .cudfkd import fork_models, generator_name

REPO = "ljrprocc/DFKD"
MARKER = "datafree/synthesis/adadfkd.py"
METHODS = ("adadfkd",)
COMPAT: dict[str, dict[str, Any]] = {}

# scripts/adadfkd/adadfkd_cifar10_resnet34_resnet18.sh (grad_adv: see the module docstring)
SCRIPT = {"lr": 0.1, "lr_g": 1e-3, "weight_decay": 1e-4, "T": 20.0, "lmda_ent": -20.0, "oh": 1.0, "bn": 1.0,
          "act": 0.0, "adv": 1.0, "grad_adv": 0.25, "begin_fraction": 0.25, "end_fraction": 0.75, "depth": 2,
          "adv_type": "kl", "curr_option": "curr_log", "lambda_0": 2.2, "loss": "kl", "nz": 512, "g_steps": 1,
          "hard": 0.1, "length": 0.9, "tau": 0.07, "s_nce": 0.1, "N_neg": 4096, "mode": "memory", "neg": 0.0}
KD_STEPS = 5         # --kd_steps = --ep_steps (the script: 10 of 400)

DEFAULTS = {"adadfkd": [
    "Equal with our defaults (no compatibility option needed). Listed in the docstring but not changing "
    "these numbers: the queue that wraps around where the released one asserts `N_neg % batch == 0` (here "
    "4096 % 8 == 0), the entropy clamp at 1e-12, the per-iteration cosine step (aligned here by one "
    "iteration per reference epoch)."]}


def build(problem: Problem, path) -> Sides:
    import datafree
    import datafree_kd

    b = problem.batch
    options = {"batch_size": b, "s_steps": KD_STEPS, "epoch_iterations": 1, "adv_step": SCRIPT["grad_adv"],
               **COMPAT.get("adadfkd", {})}
    ours, cfg = problem.build_ours("adadfkd", options)
    ours.generator.to(problem.dtype)
    ours.queue = ours.queue.to(problem.dtype)

    k = problem.spec.num_classes
    teacher, student, generator, normalizer = fork_models(problem, SCRIPT, cfg.ngf)
    synth = datafree.synthesis.AdaSynthesizer(
        teacher=teacher, student=student, G_list=[generator], nz=SCRIPT["nz"], num_classes=k, img_size=32,
        iterations=SCRIPT["g_steps"], lr_g=SCRIPT["lr_g"], synthesis_batch_size=b, sample_batch_size=b,
        save_dir="run/unused", transform=None, normalizer=normalizer, device="cpu", lmda_ent=SCRIPT["lmda_ent"],
        adv=SCRIPT["adv"], oh=SCRIPT["oh"], act=SCRIPT["act"], adv_type=SCRIPT["adv_type"], bn=SCRIPT["bn"],
        T=SCRIPT["T"], memory=False, hard=SCRIPT["hard"], tau=SCRIPT["tau"], mode=SCRIPT["mode"],
        neg=SCRIPT["neg"], n_neg=SCRIPT["N_neg"], distributed=False, k=SCRIPT["length"])
    # after the constructor, which re-initialises the generator and draws the queue from the global RNG
    copy_state(problem.teacher, teacher)
    copy_state(problem.student, student)
    copy_state(ours.generator, generator, generator_name)
    synth.neg_bank.queue = ours.queue.clone()
    criterion = datafree.criterions.KLDiv(T=SCRIPT["T"])
    optimizer = torch.optim.SGD(student.parameters(), SCRIPT["lr"], weight_decay=SCRIPT["weight_decay"],
                                momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=problem.steps)
    args = argparse.Namespace(method="adadfkd", dataset="cifar10", lambda_0=SCRIPT["lambda_0"],
                              curr_option=SCRIPT["curr_option"], s_nce=SCRIPT["s_nce"], tau=SCRIPT["tau"],
                              gpu=None, autocast=datafree.utils.dummy_ctx, fp16=False, distributed=False,
                              logger=None, print_freq=0, log_fidelity=False, memory=False, current_epoch=0,
                              epochs=problem.steps, begin_fraction=SCRIPT["begin_fraction"],
                              end_fraction=SCRIPT["end_fraction"], grad_adv=SCRIPT["grad_adv"],
                              length=SCRIPT["length"])
    state = {"global_iter": 0}

    g_names: dict[str, Any] = {
        "g_bn": lambda loc: loc["self"].bn * loc["loss_bn"],
        "g_ent": lambda loc: loc["self"].lmda_ent * loc["ent"],
        "g_oh": lambda loc: loc["self"].oh * loc["loss_oh"],
        "g_adv": lambda loc: loc["self"].adv * loc["loss_adv"] if loc["self"].adv > 0 else None,
        "g_nce": lambda loc: loc["self"].hard * loc["loss_cnce"] if loc["self"].hard > 0 else None,
        "g_total": "loss",
    }
    s_names = {"s_kd": "loss_s", "s_total": "loss_s", "s_weight": "v"}

    def ours_iteration(i: int) -> list[dict[str, float]]:
        rows: list[dict[str, float]] = []
        torch.manual_seed(1000 + i)
        with returns_of(ours, "generator_step", rows), returns_of(ours, "student_step", rows):
            ours.train_iteration(i)
        return rows

    def ref_sample(l=0):
        taped = torch.randint                              # its unused labels, drawing nothing
        torch.randint = lambda low, high, size, **kw: torch.zeros(size, dtype=torch.long)
        try:
            return sample(l)
        finally:
            torch.randint = taped

    sample = synth.sample
    synth.sample = ref_sample

    def ref_iteration(i: int) -> list[dict[str, float]]:
        rows: list[dict[str, float]] = []
        args.current_epoch = epoch = i
        torch.manual_seed(1000 + i)
        begin = int(args.begin_fraction * args.epochs)
        hard_factor = min(max(0, (1 - args.length) * (epoch - begin)
                              / int(args.epochs * (args.end_fraction - args.begin_fraction))), 1 - args.length)
        with locals_at_step(synth.optimizers[0], g_names, rows):
            synth.synthesize(hard_factor=hard_factor, warmup=epoch < begin)
        with locals_at_step(optimizer, s_names, rows):
            state["global_iter"] = datafree_kd.train(synth, [student, teacher], criterion, optimizer, args,
                                                     KD_STEPS, l=0, global_iter=state["global_iter"],
                                                     warmup=epoch < begin)
        synth.adv = datafree.utils.get_alpha_adv(epoch, args, SCRIPT["adv"], type="linear")
        scheduler.step()
        return rows

    return Sides(
        ours_iteration=ours_iteration, ref_iteration=ref_iteration,
        modules={"student": (ours.student, student), "generator": (ours.generator, generator, generator_name),
                 "queue": (StateView(lambda: ours.queue, "negatives"), StateView(lambda: synth.neg_bank.queue, "negatives"))},
        options=options,
        reference={"repo": REPO, "entry": "datafree.synthesis.AdaSynthesizer + datafree_kd.train (adadfkd)",
                   "flags": {**SCRIPT, "kd_steps": KD_STEPS, "ep_steps": KD_STEPS, "epochs": problem.steps,
                             "batch_size": b, "synthesis_batch_size": b, "no_feature": True}},
        notes=["each iteration runs under the same seed on both sides (the student-to-teacher feature maps are "
               "fresh nn.Linear layers, initialised from the global RNG at every use, as released); the "
               "reference's sample() gets its unused class labels from torch.zeros"],
    )
