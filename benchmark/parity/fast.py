"""Parity adapter for ``fast-2``, ``fast-5`` and ``fast-10`` against zju-vipa/Fast-Datafree
(``datafree.synthesis.FastMetaSynthesizer`` with ``is_maml 1`` and ``datafree_kd.train``, with the arguments
of ``scripts/fast_cifar.sh``'s wrn lines: adv 1.1, bn 10, oh 0.4, bn_mmt 0.9, lr 0.2, KD at T 20, and per
preset g_steps / lr_g / lr_z 2 / 5e-3 / 0.015, 5 / 3e-3 / 0.01, 10 / 2e-3 / 0.01; the library's sigmoid
``Generator``).

Compared: every synthesis term (BN statistics with the cross-round momentum, CE, the masked adversarial term
from the warm-up's end on) at every inner step, the student's KD loss at every step, and after K rounds
the student, the *meta* generator (first-order MAML gradients summed over the inner steps, one persistent
Adam step per round), the BN momentum averages and the image pool. The warm-up is shortened to
``WARMUP`` rounds (the script: 20) so that rounds with and without the adversarial term and student steps
both occur; the student's cosine runs over the K - WARMUP training rounds on both sides (the script:
``T_max=200``). Not reached at this K: ``reset_l0`` (the released code fires it at round 120 + warm-up).

Draws: the view uses kornia on both sides (our ``kornia_augment`` compatibility option), whose draws replay
ours; the student phase is handled as in the ``deepinv`` adapter (PNG pool in a temporary folder,
in-process loader, per-image crop/flip draws from ours).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .capture import locals_at_each_step, locals_at_step, pool_iteration_terms
from .core import Problem, Sides, Tape, copy_state
from .deepinv import _cifar_transform, _pool_states, _prepare_draws, _released_pool_round

REPO = "zju-vipa/Fast-Datafree"
MARKER = "datafree/synthesis/fast_meta.py"
METHODS = ("fast-2", "fast-5", "fast-10")
COMPAT: dict[str, dict[str, Any]] = {m: {"kornia_augment": True} for m in METHODS}
SCRIPT = {"adv": 1.1, "bn": 10.0, "oh": 0.4, "bn_mmt": 0.9, "T": 20.0, "lr": 0.2, "weight_decay": 1e-4,
          "eta_min": 2e-4, "nz": 256, "ngf": 64, "is_maml": 1, "reset_l0": 1, "reset_bn": 0}
PRESET = {"fast-2": {"g_steps": 2, "lr_g": 5e-3, "lr_z": 0.015},
          "fast-5": {"g_steps": 5, "lr_g": 3e-3, "lr_z": 0.01},
          "fast-10": {"g_steps": 10, "lr_g": 2e-3, "lr_z": 0.01}}
KD_STEPS, WARMUP = 5, 2

_KORNIA = ("`kornia_augment` (default off): the view comes from the on-device re-implementation of the crop "
           "and flip (docstring), so the images the teacher sees differ from the first step on and every term "
           "after it; the draws are then not even of the same kind (the comparison stops with a draw mismatch).")
DEFAULTS = {m: [_KORNIA] for m in METHODS}


class _Stats:
    """The BN momentum averages as comparable state."""

    def __init__(self, fn):
        self.fn = fn

    def state_dict(self):
        return {f"{k}.{i}": v.double() for i, pair in enumerate(self.fn() or []) for k, v in zip(("mean", "var"), pair)}


def _value(t: torch.Tensor) -> float:
    return float(t.detach().reshape(-1)[0])


def build(problem: Problem, path) -> Sides:
    import datafree
    import datafree_kd
    import registry
    from datafree.utils import _utils as ref_utils

    method, b = problem.method, problem.batch
    if problem.steps <= WARMUP:
        from benchmark.config import ConfigError
        raise ConfigError(f"parity {method}: --steps must exceed the {WARMUP} warm-up rounds")
    preset = PRESET[method]
    options = {"batch_size": b, "synthesis_batch_size": b, "kd_steps": KD_STEPS, "warmup": WARMUP,
               **(COMPAT[method] if problem.compat else {})}
    ours, cfg = problem.build_ours(method, options)
    ours.generator.to(problem.dtype)
    ours.fast_generator.to(problem.dtype)

    k = problem.spec.num_classes
    teacher = registry.get_model(problem.teacher_arch, num_classes=k).to(problem.dtype).eval()
    student = registry.get_model(problem.student_arch, num_classes=k).to(problem.dtype)
    generator = datafree.models.generator.Generator(nz=SCRIPT["nz"], ngf=SCRIPT["ngf"], img_size=32, nc=3).to(problem.dtype)
    copy_state(problem.teacher, teacher)
    copy_state(problem.student, student)
    copy_state(ours.generator, generator)
    normalizer = datafree.utils.Normalizer(**registry.NORMALIZE_DICT["cifar10"])
    pool_dir = Path(tempfile.mkdtemp(prefix="parity-fast-")) / "pool"
    synth = datafree.synthesis.FastMetaSynthesizer(
        teacher, student, generator, nz=SCRIPT["nz"], num_classes=k, img_size=(3, 32, 32), init_dataset=None,
        save_dir=str(pool_dir), device="cpu", transform=_cifar_transform(registry), normalizer=normalizer,
        synthesis_batch_size=b, sample_batch_size=b, iterations=preset["g_steps"], warmup=WARMUP,
        lr_g=preset["lr_g"], lr_z=preset["lr_z"], adv=SCRIPT["adv"], bn=SCRIPT["bn"], oh=SCRIPT["oh"],
        reset_l0=SCRIPT["reset_l0"], reset_bn=SCRIPT["reset_bn"], bn_mmt=SCRIPT["bn_mmt"], is_maml=SCRIPT["is_maml"])
    criterion = datafree.criterions.KLDiv(T=SCRIPT["T"])
    optimizer = torch.optim.SGD(student.parameters(), SCRIPT["lr"], weight_decay=SCRIPT["weight_decay"], momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, problem.steps - WARMUP, eta_min=SCRIPT["eta_min"])
    args = argparse.Namespace(gpu=None, autocast=datafree.utils.dummy_ctx, kd_steps=KD_STEPS, fp16=False,
                              print_freq=0, current_epoch=0, method="fast_meta")
    tape_holder: dict[str, Tape] = {}                          # filled by core.run

    def ours_iteration(i: int) -> list[dict[str, float]]:
        return pool_iteration_terms(ours, i)

    def ref_iteration(i: int) -> list[dict[str, float]]:
        tape = tape_holder["tape"]
        _prepare_draws(tape)
        rows: list[dict[str, float]] = []

        def synthesis_terms(opt, loc):                        # the inner Adam is created inside synthesize()
            if opt is not synth.meta_optimizer:
                row = {"g_bn": synth.bn * _value(loc["loss_bn"]), "g_oh": synth.oh * _value(loc["loss_oh"])}
                if synth.adv > 0 and synth.ep >= synth.ep_start:
                    row["g_adv"] = synth.adv * _value(loc["loss_adv"])
                row["g_total"] = _value(loc["loss"])
                rows.append(row)

        with _released_pool_round(ref_utils):
            with locals_at_each_step(torch.optim.Adam, synthesis_terms):
                synth.synthesize()
            if i >= WARMUP:                                    # datafree_kd.main_worker: epoch >= args.warmup
                with locals_at_step(optimizer, {"s_kd": "loss_s"}, rows):
                    datafree_kd.train(synth, [student, teacher], criterion, optimizer, args)
                scheduler.step()
        return rows

    return Sides(
        ours_iteration=ours_iteration, ref_iteration=ref_iteration,
        modules={"student": (ours.student, student), "generator": (ours.generator, generator),
                 "bn_mmt": (_Stats(lambda: ours.bn_prior.average), _Stats(lambda: [h.mmt for h in synth.hooks])),
                 "pool": _pool_states(ours, pool_dir, ref_utils)},
        options=options,
        reference={"repo": REPO, "entry": "datafree.synthesis.FastMetaSynthesizer + datafree_kd.train",
                   "flags": {**SCRIPT, **preset, "warmup": WARMUP, "kd_steps": KD_STEPS, "ep_steps": KD_STEPS,
                             "epochs": problem.steps, "batch_size": b, "synthesis_batch_size": b,
                             "cosine_T_max": problem.steps - WARMUP}},
        tape_holder=tape_holder, cleanup=lambda: shutil.rmtree(pool_dir.parent, ignore_errors=True),
        notes=[f"warm-up shortened to {WARMUP} rounds and the cosine to the K - {WARMUP} training rounds on both "
               "sides; reset_l0 (released: round 120 + warm-up) not reached; the pool's DataLoader workers and "
               "folder order are replaced as in deepinv"],
    )
