"""ZSKT: zero-shot knowledge transfer via adversarial belief matching, with attention transfer.

Micaelli, Storkey. Zero-shot Knowledge Transfer via Adversarial Belief Matching. NeurIPS 2019.
Authors' code: github.com/polo5/ZeroShotKnowledgeTransfer. The loop and optimiser settings here are those the
CMI paper's baseline tables were produced with, the zju-vipa DataFree library (github.com/zju-vipa/CMI
``datafree_kd.py --method zskt``, ``scripts/zskt``; the same in github.com/zju-vipa/Fast-Datafree); the
attention-transfer term is the paper's. None of that code is copied here.

The generator searches for images on which the student's beliefs differ most from the teacher's; the student
matches the teacher's beliefs on them and, through attention transfer, the spatial attention maps of the
teacher's stages. Each iteration: ``g_steps`` (the paper's n_generator_iter) generator updates minimising::

    -adv * KL(softmax(t) || softmax(s))

with the student in eval mode and frozen, then ``s_steps`` (n_student_iter) student updates on fresh
samples minimising::

    KL(softmax(t) || softmax(s)) + at_beta * sum_j mean((a(s_j) - a(t_j))^2),   a(h) = normalize(mean_c h^2)

where ``j`` runs over pairs of stage outputs with the same spatial size (the last stage at each resolution
in both networks: WRN block groups, ResNet layers, VGG blocks, the conv stages of the small CNNs).

Deviations from the released code:

- The DataFree library's ``zskt`` has no attention term; the paper's (beta 250) is here, ``at_beta=0`` gives
  the library's method. Its KL is averaged over the batch only (the paper's code uses ``F.kl_div``'s
  default mean over batch *and* classes, so there beta 250 weighs 10x (CIFAR-10) relatively more).
- Fast-Datafree's ``datafree_kd.py`` hands ``student=teacher`` to the synthesizer (its issue #11), making the
  adversarial term KL(t, t) = 0. Here, as in the CMI repository, the generator plays against the real student.
- The paper's own recipe (Adam lr 2e-3 for the student and 1e-3 for the generator, both cosine-annealed,
  gradient-norm clipping at 5, batch 128, nz 100, 1 generator and 10 student steps on the *same* batch,
  80k batches on CIFAR-10, a generator ending in BatchNorm without squashing) is not reproduced; the
  library's (SGD lr 0.1, fresh batches, 5 student steps, 200 x 80 iterations, sigmoid generator) is.
- Budgets: the ``paper`` presets run the library's scripts exactly, i.e. without the attention term and
  without clipping (that is the code behind the published CMI-table figures). The digits ``default`` budget
  runs the library's zskt too, because there the attention term kept the student from matching the
  teacher: measured with the default budget (150 iterations, cnn_wide -> cnn_narrow), at_beta 250 ended at
  44% and 39% (two seeds), 62.5 at 52%, 25 at 92% and 66%, 0 at 92% and 94%; with the paper's clipping at
  5, at_beta 250 gave 91% and 62% and 0 gave 95%. With the term on, the student's KL stayed at 0.75-4.9
  (0.3-0.5 without). The paper's beta was set for 32-pixel CIFAR maps (the term grows as 1/(H*W) and here
  the 4x4 last stage of the small CNNs dominates) and for Adam with clipping. The digits budgets also use
  a generator of width ngf 16 (``smoke``: 8, batch 32, 120 iterations); ``smoke`` keeps the paper's term
  and clipping so that the tests run them. The digits ``default`` runs 600 iterations and decays the
  generator's LR with the student's (``decay_lr_g``; the paper anneals both, the library keeps lr_g
  constant). Evidence (issue 3, seeds 0-2): 150 iterations ended at 91.7 / 15.3 / 57.5 %, the students
  still learning (one stuck near chance for 100 iterations); 600 iterations with constant lr_g gave
  98.6 / 95.8 / 96.7 %, with ``decay_lr_g`` 99.2 / 97.2 / 95.0 % and more class-balanced samples (0.94-0.95
  normalised class entropy against 0.85-0.93); the late collapse that a constant lr_g caused for dfad did
  not show here, but the game is the same. At 600 iterations the paper's attention term no longer stops
  the student (``--set at_beta=250 --set grad_clip=5``: 97.5 / 92.2 / 96.1 %), but it does not help either,
  so the default stays the library's zskt, the same method as the ``paper`` presets.
- Stages are paired by spatial size, so attention transfer also works across families (vgg11 -> resnet18);
  the paper's code requires teacher and student of the same family.
- The scripts pass ``--T 20`` but the generative branch runs a temperature-1 KL; ``temperature`` (default 1)
  is what runs. The cosine schedule is stepped per iteration; losses stay on the device.

``paper:mnist``: no MNIST recipe is published (the ZSKT paper's experiments are CIFAR-10 and SVHN; the
DataFree library ships no MNIST script), so the MNIST paper budget is this method's ``paper:cifar10`` recipe
unchanged (DAFL's MNIST table, ``dafl-mnist``, needs a budget for every method).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmark.checks import NONNEG, POSITIVE, ranges
from benchmark.config import ConfigError
from benchmark.losses import kd_kl
from benchmark.models.resnet import CifarResNet
from benchmark.models.vgg import VGG
from benchmark.models.wrn import WideResNet

from ._common import eval_mode, register_method
from ._generative import GenerativeBaseline, GenerativeConfig, datafree_cifar_recipe


@ranges(adv=NONNEG, at_beta=NONNEG, temperature=POSITIVE, grad_clip=NONNEG)
@dataclass
class ZSKTConfig(GenerativeConfig):
    adv: float = 1.0              # weight of the generator's -KL(t || s)
    at_beta: float = 250.0        # attention transfer on the student's steps (the paper's AT_beta)
    temperature: float = 1.0      # KL temperature
    grad_clip: float = 5.0        # gradient-norm clipping of both networks, as the paper's code (0: off)


# The DataFree library's script (the published CMI-table figures): no attention term, no clipping.
_PAPER = {**datafree_cifar_recipe(kd_steps=5), "at_beta": 0.0, "grad_clip": 0.0}


def stage_modules(model: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are ``model``'s stage activations, in forward order."""
    model = getattr(model, "_orig_mod", model)    # a torch.compile'd teacher
    if isinstance(model, WideResNet):
        return [model.block1, model.block2, model.block3]
    if isinstance(model, CifarResNet):
        return [model.layer1, model.layer2, model.layer3, model.layer4]
    if isinstance(model, VGG):
        return [getattr(model, f"block{i}") for i in range(5)]
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):   # small CNNs and LeNet: the layer before each pooling, and the last
        layers = list(features)
        before_pool = [layers[i - 1] for i, m in enumerate(layers) if i and isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))]
        return before_pool + [layers[-1]]
    raise ConfigError(f"zskt does not know the stages of {type(model).__name__} for attention transfer; "
                      "set at_beta=0")


class StageOutputs:
    """Forward hooks that keep a model's stage outputs while ``recording()`` is active (else do nothing)."""

    def __init__(self, model: nn.Module):
        self.modules = stage_modules(model)
        self.outputs: list[torch.Tensor | None] = [None] * len(self.modules)
        self.active = False
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.modules)]

    def _hook(self, index: int):
        def hook(module, inputs, output):
            if self.active:
                self.outputs[index] = output
        return hook

    def record(self, forward):
        """Run ``forward()`` and return its result and the stage outputs it produced."""
        self.active = True
        try:
            result = forward()
        finally:
            self.active = False
        outputs, self.outputs = self.outputs, [None] * len(self.modules)
        return result, outputs

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def attention_map(h: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis' spatial attention: channel mean of h^2, flattened, L2-normalised."""
    return F.normalize(h.float().pow(2).mean(1).flatten(1), dim=1)


def attention_loss(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([(attention_map(s) - attention_map(t)).pow(2).mean()
                        for s, t in zip(student_maps, teacher_maps)]).sum()


@register_method("zskt")
class ZSKT(GenerativeBaseline):
    Config = ZSKTConfig
    citation = ("Micaelli, Storkey. Zero-shot Knowledge Transfer via Adversarial Belief Matching. "
                "NeurIPS 2019")
    budgets = {
        # seconds on a 2-core CPU; lands well above chance on digits (tests/test_methods.py)
        "smoke": {"iterations": 120, "eval_every": 40, "log_every": 10, "batch_size": 32, "ngf": 8,
                  "quality_samples": 50},
        # the digits benchmark (16x16 grey images, ~1-2 min of one CPU core): ngf 16, the library's zskt, i.e.
        # without the attention term (as the paper presets), 600 iterations, lr_g decayed with the student's
        # as in the paper (see the docstring)
        "default": {"iterations": 600, "eval_every": 50, "log_every": 10, "batch_size": 128, "ngf": 16,
                    "at_beta": 0.0, "grad_clip": 0.0, "decay_lr_g": True, "quality_samples": 500},
        # the DataFree library's script: batch 256, 200 epochs x 80 iterations, G 1 / S 5, no attention term
        "paper:cifar10": dict(_PAPER),
        # no MNIST recipe published (see the docstring): the CIFAR-10 recipe unchanged
        "paper:mnist": dict(_PAPER),
        "paper:cifar100": dict(_PAPER),
    }

    def __init__(self, ctx, cfg: ZSKTConfig):
        super().__init__(ctx, cfg)
        self.pairs: list[tuple[int, int]] = []
        if cfg.at_beta:
            self.t_stages, self.s_stages = StageOutputs(self.teacher), StageOutputs(self.student)
            self.pairs = self._pair_stages()
            if not self.pairs:
                raise ConfigError("zskt: teacher and student have no stage outputs of the same spatial size; "
                                  "set at_beta=0")

    @torch.no_grad()
    def _pair_stages(self) -> list[tuple[int, int]]:
        """(student stage, teacher stage) index pairs: the last stage of each spatial size the two share."""
        probe = torch.zeros(2, *self.ctx.dataset.image_shape, device=self.device)
        with eval_mode(self.student):
            _, s_out = self.s_stages.record(lambda: self.student(probe))
            _, t_out = self.t_stages.record(lambda: self.teacher(probe))
        last_s = {tuple(h.shape[2:]): i for i, h in enumerate(s_out)}
        last_t = {tuple(h.shape[2:]): i for i, h in enumerate(t_out)}
        return sorted((last_s[size], last_t[size]) for size in last_s.keys() & last_t.keys())

    def optimize(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor, clip_grad_norm: float = 0.0) -> None:
        super().optimize(optimizer, loss, clip_grad_norm or self.cfg.grad_clip)

    def generator_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.cfg.adv:
            return {}
        t_logits = self.teacher_forward(x)
        return {"adv": -self.cfg.adv * kd_kl(self.student(x), t_logits, self.cfg.temperature)}

    def student_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.cfg
        if not self.pairs:
            with torch.no_grad():
                t_logits = self.teacher_forward(x)
            return {"kd": kd_kl(self.student(x), t_logits, c.temperature)}
        with torch.no_grad():
            t_logits, t_maps = self.t_stages.record(lambda: self.teacher_forward(x))
        s_logits, s_maps = self.s_stages.record(lambda: self.student(x))
        return {"kd": kd_kl(s_logits, t_logits, c.temperature),
                "at": c.at_beta * attention_loss([s_maps[i] for i, _ in self.pairs],
                                                 [t_maps[j] for _, j in self.pairs])}
