"""Parity adapter for ``pre-dfkd`` against kuluhan/PRE-DFKD (the authors' own code, not a DataFree-library fork).

The released training loop is inlined in ``main.py`` (argument parsing, a data set and a pickled teacher at
import), so that script is not imported: its lines are re-enacted here and everything they call is the
released code. Exercised as released: ``distillation.train_novel_generator``, ``distill_knowledge`` and
``train_memory_generator`` (every loss, the replay latents' Adam step, the VAE step, the mode switches,
the gradients left on the memory generator), ``utils.aux.JS_divergence`` (through them) and
``networks.generator.Generator`` / ``MemoryGenerator`` / ``Encoder``. Re-enacted from ``main.py``: lines 48-50
and 56-58 (generators, encoder, their Adams at ``lr_G`` and ``lr_G / 40``), 61 (the student), 69-70 (SGD,
momentum 0.9, wd 5e-4; ``CosineAnnealingLR`` with ``T_max`` = the run's epochs instead of the literal 400,
which is main.py's default ``--n_epochs``), 73-75 (the teacher, in eval mode), 83-86 (``num_novel_samples``,
``num_mem_samples``, the two periods) and the loop of lines 90-108 with ``scheduler_S.step()`` after each
epoch; left out: the ``nn.DataParallel`` wrappers (a pass-through on one device), the test-set evaluation and
the prints.

Models: the problem's pair. ``networks/resnet.py`` holds no wide ResNet, so for the default wrn40_2 -> wrn16_1
both sides run our models (state dicts copied), the released side's teacher behind :class:`OutFeature`, which
gives it the released ``teacher(x, out_feature=True)`` interface (``features[-1]``, the only one read, is
the pooled penultimate feature vector, as in ``networks/resnet.py``). With ``--pair resnet34:resnet18``
(main.py's recipe; about 1.7x the CPU time per iteration) the released side builds ``networks.resnet.ResNet34`` for
the teacher (main.py ``torch.load``-s a pickled one) and ``utils.model_utils.init_model`` for the student;
their parameter names equal ours.

Shortened so that every path runs within K iterations: ``EPOCH_ITERATIONS`` (2) iterations per epoch instead
of main.py's 36 (so that the cosine steps after iterations 2 and 4, and that the VAE's auto-encoding branch,
taken at ``(i == 0) & (epoch == 0)`` only, is told apart from the first iteration of a later epoch),
``--kd_iter`` ``KD_ITER`` (3 instead of 10) and ``MEM_STEPS`` (2 for main.py's literal ``dist_step < 4``: the
first 2 student steps of an iteration with a VAE step, the third without), ``--batch_size`` the problem's
batch. The replay batch is main.py's ``batch_size // 8`` from batch 16 up and 2 below (``num_mem_samples`` is
set by the script, not a flag; one replayed latent has no variance: ``torch.var`` of one sample is NaN); ours
gets the same ``replay_divisor``. ``--latent_dim`` 1000 and the hard-wired 128 / 64 channels of the released
generators are our defaults (nz 1000, ngf 64).

Draws: every ``torch.randn`` / ``randn_like`` replays ours in the same order (novel z of the generator step;
per student step the novel z and the replay latents; in a VAE step its replay latents and the encoder's
reparameterisation noise); ``device='cuda'`` is dropped from the released ``torch.randn`` calls. The
teacher's parameters are frozen (released: they collect gradients that nothing uses).

Terms: ``g_oh / g_ie / g_act / g_adv / g_total`` at ``optimizer_G.step()``; per student step ``s_latent``
(the replay latents' loss at their draw, ``loss_match + loss_kld``) and ``s_l1`` at ``optimizer_S.step()``;
per VAE step ``vae_latent`` (after the first iteration), ``vae_rec`` and ``vae_kld`` at
``optimizer_G2.step()``. Compared after K: student, novel generator, memory generator and encoder (each with
its BatchNorm running statistics; the novel generator with the spectral norm's ``u`` / ``v``).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .capture import locals_at_step, returns_of
from .core import ParityError, Problem, Sides, copy_state

REPO = "kuluhan/PRE-DFKD"
MARKER = "distillation.py"
METHODS = ("pre-dfkd",)
# the released zoo's models (main.py's default pair is resnet34 -> resnet18); other archs: ours on both sides
RESNETS = {"resnet18": "ResNet18", "resnet34": "ResNet34"}
# main.py's defaults (argparse) that the comparison keeps
MAIN = {"lr_G": 0.02, "lr_S": 0.1, "latent_dim": 1000, "img_size": 32, "oh": 1.0, "ie": 5.0, "a": 0.1,
        "gen_iter": 1, "dataset": "cifar10"}
EPOCH_ITERATIONS = 2                             # main.py: range(36)
KD_ITER = 3                                      # main.py: --kd_iter 10
MEM_STEPS = 2                                    # main.py: dist_step < 4 (ours: mem_steps, default 4)
# with compat, cosine_epochs is added by build(): the run's epochs (main.py's T_max = its default n_epochs)
COMPAT: dict[str, dict[str, Any]] = {"pre-dfkd": {"epoch_iterations": EPOCH_ITERATIONS}}

DEFAULTS = {"pre-dfkd": [
    "`epoch_iterations` / `cosine_epochs` (default off): our student's cosine runs over the run's iterations and "
    "is stepped after every iteration (docstring); the released one is stepped once per epoch with `T_max` in "
    "epochs. The student's learning rate then differs from the second iteration on, and with it `s_l1`, the "
    "student and everything trained on the student's replies afterwards (the novel generator's `g_adv`).",
    "Listed in the docstring but not changing these numbers: the replay latents' first Adam step in closed form, "
    "the memory generator's gradient summed explicitly, no graph from the student loss into the novel generator "
    "(released: gradients cleared before use), the clamp at 1e-12 inside the information entropy."]}


def generator_name(key: str) -> str:
    """Our ``PREGenerator`` / ``PREEncoder`` state-dict key -> the released ``Generator`` / ``MemoryGenerator`` /
    ``Encoder`` key (``l1`` -> ``l1.0``, ``bn0`` -> ``conv_blocks0.0``, ``blockN`` -> ``conv_blocksN``)."""
    head, _, rest = key.partition(".")
    if head == "l1":
        return "l1.0." + rest
    if head == "bn0":
        return "conv_blocks0.0." + rest
    if head.startswith("block"):
        return "conv_blocks" + head[len("block"):] + "." + rest
    return key


class OutFeature(nn.Module):
    """One of our models behind the released teacher interface of ``networks/resnet.py``: ``forward(x,
    out_feature=True)`` returns the logits and a list of features whose last entry is the pooled penultimate
    feature vector (the only one ``train_novel_generator`` reads)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, out_feature: bool = False):
        if not out_feature:
            return self.model(x)
        logits, feature = self.model(x, return_features=True)
        return logits, [feature]


def replay_divisor(batch: int) -> int:
    """main.py's 8 where it leaves a replay batch of at least 2, else ``batch // 2`` (a replay batch of 2)."""
    return 8 if batch // 8 >= 2 else max(1, batch // 2)


@contextlib.contextmanager
def _randn_on_cpu():
    """The released ``torch.randn(..., device='cuda')`` on this machine: the device dropped, the call passed to
    whatever ``torch.randn`` is now (the tape's replay)."""
    current = torch.randn

    def randn(*args, device=None, **kwargs):
        return current(*args, **kwargs)

    torch.randn = randn
    try:
        yield
    finally:
        torch.randn = current


def _forget_namespace_packages(path: Path) -> None:
    """The checkout's folders without ``__init__.py`` (``utils``, ``networks``) load as namespace packages,
    which have no ``__file__`` for ``refcode.reference_code`` to recognise: drop them too."""
    path = Path(path).resolve()
    for name, mod in list(sys.modules.items()):
        if getattr(mod, "__file__", None) is None and any(
                Path(p).resolve().is_relative_to(path) for p in (getattr(mod, "__path__", None) or [])):
            del sys.modules[name]


def build(problem: Problem, path) -> Sides:
    for name in ("utils", "networks", "distillation"):
        mod = sys.modules.get(name)
        where = getattr(mod, "__file__", None) or next(iter(getattr(mod, "__path__", None) or []), None)
        if mod is not None and not (where and Path(where).resolve().is_relative_to(Path(path).resolve())):
            raise ParityError(f"a module {name!r} from elsewhere ({where}) is loaded and would shadow the released one")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import distillation
        from networks import resnet
        from networks.generator import Encoder, Generator, MemoryGenerator
        from utils.constants import num_channels
        from utils.model_utils import init_model

    b = problem.batch
    epochs = math.ceil(problem.steps / EPOCH_ITERATIONS)
    divisor = replay_divisor(b)
    options = {"batch_size": b, "replay_divisor": divisor, "s_steps": KD_ITER, "mem_steps": MEM_STEPS,
               **({**COMPAT["pre-dfkd"], "cosine_epochs": epochs} if problem.compat else {})}
    ours, cfg = problem.build_ours("pre-dfkd", options)
    for m in (ours.generator, ours.memory, ours.encoder):
        m.to(problem.dtype)
    if (cfg.nz, cfg.ngf) != (MAIN["latent_dim"], 64):
        raise ParityError(f"the released generators are hard-wired to 128 / 64 channels and take --latent_dim "
                          f"(nz {cfg.nz}, ngf {cfg.ngf}: need 1000, 64)")

    # main.py, re-enacted (see the module docstring for the lines)
    opt = argparse.Namespace(**MAIN, student=problem.student_arch, batch_size=b, kd_iter=KD_ITER, n_epochs=epochs)
    novel_generator = Generator(opt, num_channels).to(problem.dtype)
    mem_generator = MemoryGenerator(opt, num_channels).to(problem.dtype)
    encoder = Encoder(opt, num_channels).to(problem.dtype)
    optimizer_G = torch.optim.Adam(novel_generator.parameters(), lr=opt.lr_G)
    optimizer_G2 = torch.optim.Adam(mem_generator.parameters(), lr=opt.lr_G / 40)
    optimizer_E = torch.optim.Adam(encoder.parameters(), lr=opt.lr_G / 40)
    student = (init_model(opt) if problem.student_arch in RESNETS else copy.deepcopy(problem.student)).to(problem.dtype)
    optimizer_S = torch.optim.SGD(student.parameters(), lr=opt.lr_S, momentum=0.9, weight_decay=5e-4)
    scheduler_S = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer_S, T_max=opt.n_epochs)
    if problem.teacher_arch in RESNETS:                 # main.py: torch.load of a pickled networks.resnet model
        teacher = getattr(resnet, RESNETS[problem.teacher_arch])(num_classes=problem.spec.num_classes, in_channels=3)
        teacher_name = str
    else:
        teacher, teacher_name = OutFeature(copy.deepcopy(problem.teacher)), "model.{}".format
    teacher = teacher.to(problem.dtype).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt.num_novel_samples = opt.batch_size
    opt.num_mem_samples = opt.batch_size // divisor
    opt.mem_gen_upd_period = 1
    opt.student_rehearse_period = 1

    copy_state(problem.teacher, teacher, teacher_name)
    copy_state(problem.student, student)
    copy_state(ours.generator, novel_generator, generator_name)
    copy_state(ours.memory, mem_generator, generator_name)
    copy_state(ours.encoder, encoder, generator_name)

    # ---- our side: the weighted terms of every step, in execution order ----
    def ours_iteration(i: int) -> list[dict[str, float]]:
        rows: list[dict[str, float]] = []
        latent: list[float] = []
        replay_latents, student_step = ours.replay_latents, ours.student_step

        def replay(n):
            z, loss = replay_latents(n)
            latent.append(float(loss.detach()))
            return z, loss

        def step(novel):
            seen = len(latent)
            out = student_step(novel)
            rows.append({"s_latent": latent[seen], "s_l1": float(out["s_l1"])} if len(latent) > seen
                        else {"s_l1": float(out["s_l1"])})
            return out

        ours.replay_latents, ours.student_step = replay, step
        try:
            with returns_of(ours, "generator_step", rows), returns_of(ours, "vae_step", rows):
                ours.train_iteration(i)
        finally:
            del ours.replay_latents, ours.student_step
        return rows

    # ---- the released side: main.py's loop body around the released functions ----
    g_names: dict[str, Any] = {
        "g_oh": lambda loc: loc["loss_one_hot"] * loc["opt"].oh,
        "g_ie": lambda loc: loc["loss_information_entropy"] * loc["opt"].ie,
        "g_act": lambda loc: loc["loss_activation"] * loc["opt"].a,
        "g_adv": "loss_disaggreement",
        "g_total": "loss_gen",
    }
    s_names: dict[str, Any] = {"s_latent": lambda loc: loc["loss_match"] + loc["loss_kld"], "s_l1": "loss_kd"}
    vae_names: dict[str, Any] = {
        "vae_latent": lambda loc: loc["loss_match"] + loc["loss_kld"] if "loss_match" in loc else None,
        "vae_rec": "recons_loss",
        "vae_kld": "kld_loss",
    }

    def ref_iteration(step: int) -> list[dict[str, float]]:
        epoch, i = divmod(step, EPOCH_ITERATIONS)
        rows: list[dict[str, float]] = []
        with contextlib.ExitStack() as stack:
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")                  # KLDivLoss's 'mean', scheduler before optimizer
            stack.enter_context(_randn_on_cpu())
            for optimizer, names in ((optimizer_G, g_names), (optimizer_S, s_names), (optimizer_G2, vae_names)):
                stack.enter_context(locals_at_step(optimizer, names, rows))
            if i == 0:
                student.train()
            for _ in range(opt.gen_iter):
                distillation.train_novel_generator(opt, novel_generator, optimizer_G, teacher, student)
            for dist_step in range(opt.kd_iter):
                z = torch.randn(opt.num_novel_samples, opt.latent_dim)
                gen_imgs = novel_generator(z)
                distillation.distill_knowledge(opt, epoch, student, teacher, mem_generator, optimizer_S, gen_imgs)
                if (epoch % opt.mem_gen_upd_period == 0) & (dist_step < MEM_STEPS):
                    distillation.train_memory_generator(opt, epoch, i, mem_generator, encoder, optimizer_G2,
                                                        optimizer_E, teacher, gen_imgs)
            if i == EPOCH_ITERATIONS - 1:
                scheduler_S.step()
        return rows

    return Sides(
        ours_iteration=ours_iteration, ref_iteration=ref_iteration,
        modules={"student": (ours.student, student),
                 "generator": (ours.generator, novel_generator, generator_name),
                 "memory": (ours.memory, mem_generator, generator_name),
                 "encoder": (ours.encoder, encoder, generator_name)},
        options=options,
        reference={"repo": REPO,
                   "entry": "distillation.train_novel_generator + distill_knowledge + train_memory_generator "
                            "(main.py's loop re-enacted)",
                   "flags": {**MAIN, "student": problem.student_arch, "batch_size": b, "kd_iter": KD_ITER,
                             "n_epochs": epochs, "iterations_per_epoch": EPOCH_ITERATIONS, "T_max": epochs,
                             "num_mem_samples": b // divisor}},
        cleanup=lambda: _forget_namespace_packages(path),
        notes=[f"main.py's loop re-enacted around the released functions with {EPOCH_ITERATIONS} iterations per "
               f"epoch (released 36) and T_max = the run's epochs (released 400 = its default n_epochs); "
               f"kd_iter {KD_ITER}; replay batch {b // divisor}; the teacher's parameters frozen"],
    )
