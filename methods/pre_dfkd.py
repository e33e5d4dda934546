"""PRE-DFKD: data-free knowledge distillation with generative pseudo replay.

Binici, Aggarwal, Pham, Mitra, Leman. Robust and Resource-Efficient Data-Free Knowledge Distillation by
Generative Pseudo Replay. AAAI 2022 (arXiv:2201.03019). Authors' code: github.com/kuluhan/PRE-DFKD
(``main.py``, ``distillation.py``, ``networks/generator.py``, ``utils/aux.py``). Read, none of it copied.

Three networks besides teacher and student: a *novel* generator (DAFL-style, spectral-normalised convs,
output Tanh + affine-free BatchNorm), a *memory* generator of the same shape without spectral norm, and a
VAE encoder; the memory generator and the encoder form a VAE that keeps earlier synthetic distributions
and replays them to the student, so the student does not forget them as the novel generator moves on.
Each iteration (36 per epoch in the released loop):

1. ``g_steps`` (1) novel-generator updates (Adam ``lr_g``) on a batch of ``batch_size`` images::

       oh * CE(t, argmax t) + ie * sum_k p_k log10 p_k - a * mean |f_t| + (1 - JS_3(s, t))

   (p: batch-mean teacher softmax; f_t: the teacher's pooled penultimate features; JS_3: the
   Jensen-Shannon divergence at temperature 3 with probabilities clamped to [0.01, 0.99] and
   element-mean KL, clamped to [0, 1]; the student runs in train mode, as released).
2. ``s_steps`` (10) student steps. Each draws a fresh novel batch (generator in train mode) and a replay
   batch of ``batch_size // 8`` from the memory generator (eval mode): its latent codes z ~ N(0, I) take one
   Adam step (lr ``lr_g``) on ``ie * sum p log10 p + oh * CE(t, argmax t) + mse(var(z), 1) + mse(mean(z), 0)``
   first. The student (train mode) minimises the mean absolute logit difference to the teacher on the
   concatenated batch (SGD, momentum 0.9, wd 5e-4, cosine). During the first ``mem_steps`` (4) of these
   student steps the VAE also takes one Adam step (lr ``lr_g / 40``): on the first iteration it
   auto-encodes the first half of the novel batch; afterwards it encodes that half together with a replay
   batch of its own (latent step as above, generator in train mode) and reconstructs both, with loss
   ``L1(x_rec, x) + L1(t(x_rec), t(x)) + 1e-5 * KL(q(z|x) || N(0, I))``.

Deviations from the released code:

- In the released VAE step the replay latent step's backward pass also leaves its gradient on the memory
  generator's weights before the reconstruction step, so the memory generator is trained on the sum of
  both losses; here that sum is formed explicitly (same gradient). The fresh Adam's first latent step is
  computed in closed form (``z - lr * g / (|g| + eps)``, exactly Adam's first step).
- The released distillation step back-propagates the student loss into the novel generator and the teacher
  (gradients that are cleared before use); here novel batches for the student are drawn without a graph.
  The student's parameters get no gradient from the generator step (released: computed, then cleared).
- The student's cosine schedule runs over this run's iterations, stepped per iteration (released: per
  epoch of 36 iterations, ``T_max`` 400 epochs; compatibility option ``epoch_iterations`` N > 0: stepped
  once every N iterations with ``T_max`` ``cosine_epochs`` epochs, the periodic ``CosineAnnealingLR``, as
  released with N = 36 and 400). ``paper:mnist`` is ``main.py --dataset MNIST`` with its other defaults (no MNIST
  command or result is published): the student on Adam at ``lr_S`` 0.1 (``optimizer_s=adam``), as that branch.
- The BatchNorm layers keep the released ``eps=0.8`` (``nn.BatchNorm2d(c, 0.8)`` in the generators and the
  encoder); the encoder L2-normalises its input along the image height (``F.normalize(dim=2)``), as released.
- The information-entropy term clamps the batch-mean teacher probabilities at 1e-12 before the log10
  (released: none; equal unless a class's mean probability falls below 1e-12).
- ``synthetic_images`` counts every image the two generators render for training (novel batches, replay
  batches, the VAE's replay and reconstructions); ``teacher_forwards`` every teacher pass.
- Budgets: the only released recipe is ``main.py``'s defaults (CIFAR-100 resnet34 -> resnet18: batch 1024,
  400 epochs x 36 iterations, lr_S 0.1, lr_G 0.02, latent 1000, oh 1, ie 5, a 0.1); every ``paper`` cell uses
  it, CIFAR-10 included. The digits ``default`` keeps that recipe with batch 128 (16 replayed), ngf 16 and
  150 iterations (1500 student steps): seed 0 was at 93.6 % after 30 iterations, 98.1 after 75 and between
  97.2 and 98.1 from there to the end (97.5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmark.checks import BETA, COUNT, NONNEG, POSITIVE, POS_COUNT, choice, ranges
from benchmark.config import ConfigError
from benchmark.method import DFKDMethod

from ._common import no_param_grad, register_method, warmup_cosine


@ranges(batch_size=POS_COUNT, replay_divisor=POS_COUNT, nz=POS_COUNT, ngf=POS_COUNT, g_steps=COUNT, s_steps=POS_COUNT,
        mem_steps=COUNT, lr_g=POSITIVE, vae_lr_divisor=POSITIVE, lr_s=POSITIVE, momentum=BETA, weight_decay=NONNEG,
        oh=NONNEG, ie=NONNEG, a=NONNEG, adv=NONNEG, kld=NONNEG, optimizer_s=choice("sgd", "adam"),
        epoch_iterations=COUNT, cosine_epochs=POS_COUNT)
@dataclass
class PREDFKDConfig:
    """Defaults: the released ``main.py`` (CIFAR-100, resnet34 -> resnet18)."""

    batch_size: int = 1024           # novel batch (generator and student steps)
    replay_divisor: int = 8          # replay batch = batch_size // replay_divisor
    nz: int = 1000                   # --latent_dim
    ngf: int = 64                    # generator width: 2*ngf / ngf channels (128 / 64 released)
    g_steps: int = 1                 # --gen_iter
    s_steps: int = 10                # --kd_iter
    mem_steps: int = 4               # VAE steps during the first student steps of each iteration
    lr_g: float = 0.02               # novel generator and replay latents; the VAE uses lr_g / vae_lr_divisor
    vae_lr_divisor: float = 40.0
    lr_s: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer_s: str = "sgd"         # sgd (momentum, weight decay) | adam (main.py's MNIST branch: Adam(lr_S), defaults)
    oh: float = 1.0
    ie: float = 5.0                  # information entropy (log base 10)
    a: float = 0.1                   # activation
    adv: float = 1.0                 # weight of (1 - JS); 1 in the released code
    kld: float = 1e-5                # the VAE's KL weight
    replay: bool = True              # False: no memory generator (the novel generator alone)
    # compatibility (default off): the student's cosine stepped once per epoch of this many iterations (main.py:
    # 36) with T_max cosine_epochs epochs (main.py: 400), as released; 0: per iteration over the run
    epoch_iterations: int = 0
    cosine_epochs: int = 400

    def validate(self) -> None:
        """What the declared ranges cannot say (benchmark.checks checks those first)."""
        if self.batch_size < 2 or (self.replay and self.batch_size // self.replay_divisor < 2):
            raise ConfigError("the generators' BatchNorm needs novel and replay batches of at least 2 "
                              f"(batch_size {self.batch_size}, replay_divisor {self.replay_divisor})")


def _uniform_init(module: nn.Module) -> None:
    """The released init: conv / linear weights U(-0.08, 0.08), biases 0 (spectral-normalised convs: their
    underlying weight)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            weight = getattr(m, "weight_orig", m.weight)
            with torch.no_grad():
                weight.uniform_(-0.08, 0.08)
                if m.bias is not None:
                    m.bias.zero_()


class PREGenerator(nn.Module):
    """Linear(nz -> 2ngf (H/4)^2), BN, up x2, conv3x3, BN(eps .8), LReLU(0.2), up x2, conv3x3(2ngf -> ngf),
    BN(eps .8), LReLU, conv3x3(ngf -> C), Tanh, BN(affine=False): the released ``Generator`` (convs
    spectral-normalised) and ``MemoryGenerator`` (plain convs). The output is BatchNorm-standardised, i.e.
    normalised like the data."""

    def __init__(self, image_shape: tuple[int, int, int], nz: int, ngf: int = 64, spectral: bool = True):
        super().__init__()
        channels, height, width = image_shape
        if height % 4 or width % 4:
            raise ConfigError(f"pre-dfkd's generators need image sizes divisible by 4, got {height}x{width}")
        sn = nn.utils.spectral_norm if spectral else (lambda m: m)
        self.init_shape = (2 * ngf, height // 4, width // 4)
        self.l1 = nn.Linear(nz, 2 * ngf * (height // 4) * (width // 4))
        self.bn0 = nn.BatchNorm2d(2 * ngf)
        self.block1 = nn.Sequential(sn(nn.Conv2d(2 * ngf, 2 * ngf, 3, padding=1)), nn.BatchNorm2d(2 * ngf, 0.8),
                                    nn.LeakyReLU(0.2, inplace=True))
        self.block2 = nn.Sequential(sn(nn.Conv2d(2 * ngf, ngf, 3, padding=1)), nn.BatchNorm2d(ngf, 0.8),
                                    nn.LeakyReLU(0.2, inplace=True))
        self.block3 = nn.Sequential(sn(nn.Conv2d(ngf, channels, 3, padding=1)), nn.Tanh(),
                                    nn.BatchNorm2d(channels, affine=False))
        _uniform_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.bn0(self.l1(z).view(z.shape[0], *self.init_shape))
        x = self.block1(F.interpolate(x, scale_factor=2))
        x = self.block2(F.interpolate(x, scale_factor=2))
        return self.block3(x)


class PREEncoder(nn.Module):
    """The released VAE ``Encoder``: L2-normalise along the height, conv(C -> ngf), conv(ngf -> 2ngf),
    down x2, conv stride 2 (2ngf -> 2ngf), down x2, two linear heads (mu, log-variance); returns a
    reparameterised sample, mu and log-variance."""

    def __init__(self, image_shape: tuple[int, int, int], nz: int, ngf: int = 64):
        super().__init__()
        channels, height, width = image_shape
        if height % 8 or width % 8:
            raise ConfigError(f"pre-dfkd's encoder needs image sizes divisible by 8, got {height}x{width}")
        self.block0 = nn.Sequential(nn.Conv2d(channels, ngf, 3, padding=1), nn.BatchNorm2d(ngf, 0.8),
                                    nn.LeakyReLU(0.2, inplace=True))
        self.block1 = nn.Sequential(nn.Conv2d(ngf, 2 * ngf, 3, padding=1), nn.BatchNorm2d(2 * ngf, 0.8),
                                    nn.LeakyReLU(0.2, inplace=True))
        self.block2 = nn.Sequential(nn.Conv2d(2 * ngf, 2 * ngf, 3, stride=2, padding=1), nn.BatchNorm2d(2 * ngf))
        flat = 2 * ngf * (height // 8) * (width // 8)
        self.fc_mu = nn.Linear(flat, nz)
        self.fc_var = nn.Linear(flat, nz)
        _uniform_init(self)

    def forward(self, x: torch.Tensor):
        h = self.block1(self.block0(F.normalize(x, p=2, dim=2)))
        h = self.block2(F.interpolate(h, scale_factor=0.5))
        h = F.interpolate(h, scale_factor=0.5).flatten(1)
        mu, log_var = self.fc_mu(h), self.fc_var(h)
        return mu + torch.exp(0.5 * log_var) * torch.randn_like(mu), mu, log_var


def js_agreement(s_logits: torch.Tensor, t_logits: torch.Tensor, T: float = 3.0) -> torch.Tensor:
    """The released ``JS_divergence``: 1 - clamp(JS, 0, 1) at temperature T, probabilities clamped to
    [0.01, 0.99], KL terms averaged over batch and classes. Minimising it pushes the two apart."""
    p = F.softmax(t_logits.float() / T, 1)
    q = F.softmax(s_logits.float() / T, 1)
    m = (0.5 * (p + q)).clamp(0.01, 0.99)
    p, q = p.clamp(0.01, 0.99), q.clamp(0.01, 0.99)
    # nn.KLDivLoss()(log P, M) with its default element-mean reduction, written out
    js = 0.5 * (m * (m.log() - p.log())).mean() + 0.5 * (m * (m.log() - q.log())).mean()
    return 1.0 - js.clamp(0.0, 1.0)


def info_entropy10(t_logits: torch.Tensor) -> torch.Tensor:
    """sum_k p_k log10 p_k of the batch-mean teacher softmax (minus its base-10 entropy; minimised)."""
    p = F.softmax(t_logits.float(), 1).mean(0)
    return (p * torch.log10(p.clamp_min(1e-12))).sum()


def adam_first_step(z: torch.Tensor, grad: torch.Tensor, lr: float, eps: float = 1e-8) -> torch.Tensor:
    """One step of a fresh ``torch.optim.Adam`` (any betas): ``z - lr * g / (|g| + eps)``."""
    return z - lr * grad / (grad.abs() + eps)


def epoch_cosine(optimizer: torch.optim.Optimizer, epoch_iterations: int, t_max: int):
    """The released student schedule (compatibility): ``CosineAnnealingLR(T_max=t_max)`` stepped once per epoch
    of ``epoch_iterations`` iterations, in closed form (periodic past ``t_max``, as torch's), for a scheduler
    stepped once per iteration."""

    def factor(step: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * (step // epoch_iterations) / t_max))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@register_method("pre-dfkd")
class PREDFKD(DFKDMethod):
    Config = PREDFKDConfig
    citation = ("Binici, Aggarwal, Pham, Mitra, Leman. Robust and Resource-Efficient Data-Free Knowledge "
                "Distillation by Generative Pseudo Replay. AAAI 2022")
    _PAPER = {"batch_size": 1024, "iterations": 400 * 36, "eval_every": 36, "log_every": 36,
              "checkpoint_every": 360, "quality_samples": 1000}
    budgets = {
        # seconds on a 2-core CPU; lands well above chance on digits (tests/test_methods.py)
        "smoke": {"iterations": 40, "eval_every": 20, "log_every": 10, "batch_size": 32, "ngf": 8, "nz": 64,
                  "s_steps": 3, "mem_steps": 2, "quality_samples": 50},
        # the digits benchmark (16x16 grey images): batch 128, ngf 16, 150 iterations (1500 student steps);
        # otherwise main.py's recipe
        "default": {"iterations": 150, "eval_every": 15, "log_every": 5, "batch_size": 128, "ngf": 16,
                    "quality_samples": 500},
        "paper:cifar10": dict(_PAPER),
        "paper:cifar100": dict(_PAPER),
        # main.py --dataset MNIST: the same defaults, the student on Adam(lr_S) (no MNIST command is published)
        "paper:mnist": dict(_PAPER, optimizer_s="adam"),
    }

    def __init__(self, ctx, cfg: PREDFKDConfig):
        super().__init__(ctx, cfg)
        shape = ctx.dataset.image_shape
        self.generator = self.track("generator", PREGenerator(shape, cfg.nz, cfg.ngf, spectral=True).to(self.device))
        self.memory = self.track("memory", PREGenerator(shape, cfg.nz, cfg.ngf, spectral=False).to(self.device))
        self.encoder = self.track("encoder", PREEncoder(shape, cfg.nz, cfg.ngf).to(self.device))
        self.opt_g = self.track("opt_g", torch.optim.Adam(self.generator.parameters(), lr=cfg.lr_g))
        vae_lr = cfg.lr_g / cfg.vae_lr_divisor
        # the released code has one Adam per network at the same LR: the same as one Adam over both
        self.opt_vae = self.track("opt_vae", torch.optim.Adam(
            list(self.memory.parameters()) + list(self.encoder.parameters()), lr=vae_lr))
        if cfg.optimizer_s == "adam":
            opt_s = torch.optim.Adam(self.student.parameters(), lr=cfg.lr_s)
        else:
            opt_s = torch.optim.SGD(self.student.parameters(), lr=cfg.lr_s, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
        self.opt_s = self.track("opt_s", opt_s)
        if cfg.epoch_iterations:
            sched_s = epoch_cosine(self.opt_s, cfg.epoch_iterations, cfg.cosine_epochs)
        else:
            sched_s = warmup_cosine(self.opt_s, ctx.iterations)
        self.sched_s = self.track("sched_s", sched_s)

    # ---- pieces ----------------------------------------------------------------------------------------
    def render(self, generator: nn.Module, z: torch.Tensor) -> torch.Tensor:
        self.counters["synthetic_images"] += z.shape[0]
        return generator(z)

    def teacher_match(self, t_logits: torch.Tensor) -> torch.Tensor:
        """oh * CE(t, argmax t) + ie * sum p log10 p (the terms shared by the generator and replay losses)."""
        c = self.cfg
        return c.oh * F.cross_entropy(t_logits.float(), t_logits.argmax(1)) + c.ie * info_entropy10(t_logits)

    def replay_latents(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Replay latents after their one Adam step, and the latent loss at the initial draw (whose graph
        reaches the memory generator's weights)."""
        c = self.cfg
        z = torch.randn(n, c.nz, device=self.device, requires_grad=True)
        with self.ctx.autocast():
            t_logits = self.teacher_forward(self.render(self.memory, z))
        loss = (self.teacher_match(t_logits) + F.mse_loss(z.var(0), torch.ones_like(z[0]))
                + F.mse_loss(z.mean(0), torch.zeros_like(z[0])))
        (grad,) = torch.autograd.grad(loss, [z], retain_graph=True)
        return adam_first_step(z.detach(), grad, c.lr_g), loss

    # ---- steps -----------------------------------------------------------------------------------------
    def generator_step(self) -> dict[str, torch.Tensor]:
        c = self.cfg
        self.generator.train()
        self.student.train()     # as released: the disagreement term sees the student in train mode
        z = torch.randn(c.batch_size, c.nz, device=self.device)
        with no_param_grad(self.student), self.ctx.autocast():
            x = self.render(self.generator, z)
            t_logits, t_feat = self.teacher_forward(x, features=True)
            terms = {"oh": c.oh * F.cross_entropy(t_logits.float(), t_logits.argmax(1)),
                     "ie": c.ie * info_entropy10(t_logits),
                     "act": -c.a * t_feat.float().abs().mean()}
            if c.adv:
                terms["adv"] = c.adv * js_agreement(self.student(x), t_logits.detach())
        total = torch.stack(list(terms.values())).sum()
        self.optimize(self.opt_g, total)
        return {f"g_{k}": v.detach() for k, v in terms.items()} | {"g_total": total.detach()}

    def student_step(self, novel: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.cfg
        x = novel
        if c.replay:
            self.memory.eval()
            z, _ = self.replay_latents(c.batch_size // c.replay_divisor)
            with torch.no_grad(), self.ctx.autocast():
                x = torch.cat([novel, self.render(self.memory, z).to(novel.dtype)])
        self.student.train()
        with self.ctx.autocast():
            with torch.no_grad():
                t_logits = self.teacher_forward(x)
            loss = F.l1_loss(self.student(x).float(), t_logits.float())
        self.optimize(self.opt_s, loss)
        self.counters["student_steps"] += 1
        return {"s_l1": loss.detach()}

    def vae_step(self, novel: torch.Tensor, first: bool) -> dict[str, torch.Tensor]:
        c = self.cfg
        self.memory.train()
        self.encoder.train()
        half = novel[: max(c.batch_size // 2, 1)]
        terms: dict[str, torch.Tensor] = {}
        if first:     # nothing remembered yet: auto-encode novel samples
            target = half
        else:
            z, terms["latent"] = self.replay_latents(c.batch_size // c.replay_divisor)
            with torch.no_grad(), self.ctx.autocast():
                target = torch.cat([half, self.render(self.memory, z).to(half.dtype)])
        with self.ctx.autocast():
            with torch.no_grad():
                t_target = self.teacher_forward(target)
            z_enc, mu, log_var = self.encoder(target)
            rec = self.render(self.memory, z_enc)
            t_rec = self.teacher_forward(rec)
            terms["rec"] = F.l1_loss(rec.float(), target.float()) + F.l1_loss(t_rec.float(), t_target.float())
        mu, log_var = mu.float(), log_var.float()
        terms["kld"] = c.kld * torch.mean(-0.5 * torch.sum(1 + log_var - mu ** 2 - log_var.exp(), dim=1))
        total = torch.stack(list(terms.values())).sum()
        self.optimize(self.opt_vae, total)
        return {f"vae_{k}": v.detach() for k, v in terms.items()}

    def train_iteration(self, iteration: int) -> dict[str, torch.Tensor]:
        c = self.cfg
        logs: dict[str, torch.Tensor] = {}

        def add(step_logs: dict[str, torch.Tensor], n: int) -> None:
            for k, v in step_logs.items():
                logs[k] = logs[k] + v / n if k in logs else v / n

        for _ in range(c.g_steps):
            add(self.generator_step(), c.g_steps)
        mem_steps = min(c.mem_steps, c.s_steps) if c.replay else 0
        for step in range(c.s_steps):
            self.generator.train()
            with torch.no_grad(), self.ctx.autocast():
                novel = self.render(self.generator, torch.randn(c.batch_size, c.nz, device=self.device))
            add(self.student_step(novel), c.s_steps)
            if step < mem_steps:
                add(self.vae_step(novel, first=iteration == 0), mem_steps)
        self.sched_s.step()
        return logs

    @torch.no_grad()
    def sample(self, n: int) -> tuple[torch.Tensor, None]:
        """Novel-generator samples as the student sees them (train-mode BatchNorm), without moving the
        generator's running statistics."""
        before = self.counters["synthetic_images"]
        state = {k: v.clone() for k, v in self.generator.state_dict().items()}
        was = self.generator.training
        self.generator.train()
        x = self.render(self.generator, torch.randn(n, self.cfg.nz, device=self.device)).float()
        self.generator.load_state_dict(state)
        self.generator.train(was)
        self.counters["synthetic_images"] = before
        return x, None
