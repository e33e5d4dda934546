"""Shared machinery of the generator-based baselines ``dafl``, ``dfad``, ``zskt`` and ``dfq``.

All four run the loop of the zju-vipa DataFree library (``datafree_kd.py`` with ``GenerativeSynthesizer`` in
github.com/zju-vipa/CMI and github.com/zju-vipa/Fast-Datafree, the code behind the CMI paper's baseline
tables): one *iteration* is ``g_steps`` generator updates (Adam, betas (0.5, 0.999), teacher frozen, student
in eval mode), then ``s_steps`` student updates (SGD + momentum, cosine decay) on fresh, detached batches from
the generator. What differs between the methods is only their loss terms, which each method module defines
in ``generator_terms`` and ``student_terms``; this module holds the generator, the optimisers, the loop and
the counters. Nothing here is copied from those repositories.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
import torch.nn as nn

from benchmark.checks import BETA, COUNT, FRACTION, NONNEG, POSITIVE, POS_COUNT, choice, ranges
from benchmark.config import ConfigError
from benchmark.method import DFKDMethod
from benchmark.models.generators import DataFreeGenerator

from ._common import alternate_steps, batch_statistics, eval_mode, no_param_grad, warmup_cosine


@ranges(batch_size=POS_COUNT, synthesis_batch_size=COUNT, nz=POS_COUNT, ngf=POS_COUNT, generator_width=POS_COUNT,
        g_steps=COUNT, s_steps=POS_COUNT, lr_g=POSITIVE, beta1_g=BETA, beta2_g=BETA, lr_s=POSITIVE, momentum=BETA,
        weight_decay=NONNEG, eta_min_ratio=FRACTION, sample_mode=choice("eval", "train"),
        optimizer_s=choice("sgd", "adam"))
@dataclass
class GenerativeConfig:
    """Loop and optimiser settings shared by the four methods; the defaults are the DataFree library's
    (``datafree_kd.py`` defaults and the CIFAR scripts). Each method's config adds its loss weights."""

    batch_size: int = 256           # student batch (the scripts' --batch_size)
    synthesis_batch_size: int = 0   # generator batch; 0: the same as batch_size (datafree_kd.py)
    nz: int = 256
    ngf: int = 64
    generator_width: int = 4        # 4: CMI's LargeGenerator (its choice for these four); 2: Fast-Datafree's
    g_steps: int = 1
    s_steps: int = 5                # the scripts' --kd_steps
    lr_g: float = 1e-3
    beta1_g: float = 0.5
    beta2_g: float = 0.999
    lr_s: float = 0.1
    optimizer_s: str = "sgd"        # sgd (with momentum) | adam (betas 0.9, 0.999; DAFL's MNIST recipe)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # cosine floor as a fraction of lr_s (CMI: 0; Fast-Datafree: 2e-4 / 0.1); 1 keeps the LRs constant
    eta_min_ratio: float = 0.0
    # decay lr_g with the student's schedule: the DataFree library keeps it constant (False); DFAD's README
    # command (--scheduler: both LRs x0.1 at the same epochs) and ZSKT's paper (both cosine-annealed) decay it
    decay_lr_g: bool = False
    sample_mode: str = "eval"       # generator BN mode for the student's batches: eval (CMI) | train (Fast-Datafree)

    def validate(self) -> None:
        """What the declared ranges cannot say (benchmark.checks checks those first)."""
        if (self.synthesis_batch_size or self.batch_size) < 2:
            raise ConfigError("the generator's BatchNorm needs a synthesis batch of at least 2")


# The DataFree scripts' CIFAR settings, shared by the four presets: batch 256, 200 epochs of
# ep_steps // kd_steps iterations, lr 0.1, lr_g 1e-3, one generator step per iteration.
def datafree_cifar_recipe(kd_steps: int, epochs: int = 200, ep_steps: int = 400) -> dict:
    iterations_per_epoch = ep_steps // kd_steps
    return {"batch_size": 256, "s_steps": kd_steps, "g_steps": 1, "lr_s": 0.1, "lr_g": 1e-3,
            "iterations": epochs * iterations_per_epoch, "eval_every": iterations_per_epoch,
            "log_every": iterations_per_epoch, "checkpoint_every": 10 * iterations_per_epoch,
            "quality_samples": 1000}


class GenerativeBaseline(DFKDMethod):
    """A generator trained against the frozen teacher (and, for the adversarial methods, the student),
    and a student distilled on its samples. Subclasses define the loss terms."""

    Config = GenerativeConfig

    def __init__(self, ctx, cfg: GenerativeConfig):
        super().__init__(ctx, cfg)
        spec = ctx.dataset
        self.num_classes = spec.num_classes
        self.generator = self.track("generator", DataFreeGenerator(
            spec.image_shape, cfg.nz, cfg.ngf, cfg.generator_width, spec.mean, spec.std).to(self.device))
        if ctx.channels_last:      # speed only: its convolutions then run in the teacher's and student's layout
            self.generator.to(memory_format=torch.channels_last)
        self.opt_g = self.track("opt_g", torch.optim.Adam(self.generator.parameters(), lr=cfg.lr_g,
                                                          betas=(cfg.beta1_g, cfg.beta2_g)))
        self.opt_s = self.track("opt_s", self.make_student_optimizer())
        self.sched_s = self.track("sched_s", warmup_cosine(self.opt_s, ctx.iterations, 0, cfg.eta_min_ratio))
        self.sched_g = (self.track("sched_g", warmup_cosine(self.opt_g, ctx.iterations, 0, cfg.eta_min_ratio))
                        if cfg.decay_lr_g else None)

    def make_student_optimizer(self) -> torch.optim.Optimizer:
        c = self.cfg
        if c.optimizer_s == "adam":
            return torch.optim.Adam(self.student.parameters(), lr=c.lr_s, weight_decay=c.weight_decay)
        return torch.optim.SGD(self.student.parameters(), lr=c.lr_s, momentum=c.momentum, weight_decay=c.weight_decay)

    # ---- what a method defines ----------------------------------------------------------------------
    @abc.abstractmethod
    def generator_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted loss terms (to be minimised) for generated images ``x`` that carry the generator's graph.
        Runs with the student in eval mode and without student parameter gradients."""

    @abc.abstractmethod
    def student_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms of the student on detached generated images ``x`` (teacher outputs under no_grad)."""

    # ---- the loop --------------------------------------------------------------------------------------
    def draw_z(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.nz, device=self.device)

    def generator_step(self) -> dict[str, torch.Tensor]:
        c = self.cfg
        self.generator.train()
        z = self.draw_z(c.synthesis_batch_size or c.batch_size)
        with no_param_grad(self.student), eval_mode(self.student), self.ctx.autocast():
            x = self.generator(z)
            self.counters["synthetic_images"] += x.shape[0]
            terms = self.generator_terms(x)
        if not terms:
            raise ConfigError(f"{self.name}: every generator loss term is switched off; set g_steps=0 instead")
        total = torch.stack([t.float() for t in terms.values()]).sum()
        self.optimize(self.opt_g, total)
        return {f"g_{k}": v.detach() for k, v in terms.items()} | {"g_total": total.detach()}

    @torch.no_grad()
    def synthesize(self, n: int) -> torch.Tensor:
        """A detached batch for the student, the generator in ``sample_mode``."""
        with eval_mode(self.generator) if self.cfg.sample_mode == "eval" else _train_mode(self.generator):
            with self.ctx.autocast():
                x = self.generator(self.draw_z(n))
        self.counters["synthetic_images"] += n
        return x

    def student_step(self) -> dict[str, torch.Tensor]:
        x = self.synthesize(self.cfg.batch_size)
        self.student.train()
        with self.ctx.autocast():
            terms = self.student_terms(x)
        total = torch.stack([t.float() for t in terms.values()]).sum()
        self.optimize(self.opt_s, total)
        self.counters["student_steps"] += 1
        return {f"s_{k}": v.detach() for k, v in terms.items()} | {"s_total": total.detach()}

    def train_iteration(self, iteration: int) -> dict[str, torch.Tensor]:
        logs = alternate_steps((self.cfg.g_steps, self.generator_step), (self.cfg.s_steps, self.student_step))
        self.sched_s.step()
        if self.sched_g is not None:
            self.sched_g.step()
        return logs

    @torch.no_grad()
    def sample(self, n: int) -> tuple[torch.Tensor, None]:
        """``n`` samples drawn exactly as the student's batches are (:meth:`synthesize`: the generator in
        ``sample_mode``, batches of at most ``batch_size``, the run's autocast). Nothing of the run changes:
        the generator's buffers (BN running statistics, ``num_batches_tracked``; updated by a train-mode
        forward) and mode, and the synthetic-image counter (metric samples are not training cost)."""
        before = self.counters["synthetic_images"]
        m = max(n, 2)                                  # a train-mode BatchNorm needs two samples
        chunks = -(-m // self.cfg.batch_size)
        sizes = [m // chunks + (i < m % chunks) for i in range(chunks)]
        with batch_statistics(self.generator):       # restores buffers and modes; synthesize sets the mode
            x = torch.cat([self.synthesize(k).float().contiguous() for k in sizes])
        self.counters["synthetic_images"] = before
        return x[:n], None


class _train_mode:
    def __init__(self, module: nn.Module):
        self.module = module

    def __enter__(self):
        self.was_training = self.module.training
        self.module.train()

    def __exit__(self, *exc):
        self.module.train(self.was_training)
