"""Pieces shared by the model-inversion baselines (``deepinv``, ``cmi``, ``fast-*``).

These three methods, as released in the zju-vipa DataFree / Fast-Datafree code, share one structure: each
iteration (an "epoch" of the released scripts) runs one *synthesis round* that produces a batch of images,
adds that batch to an ever-growing image pool, and then trains the student with ``kd_steps`` KD steps on
batches drawn from the whole pool. This module holds that structure:

- ``ImagePool``: the pool, kept in memory on the device (the released code writes every batch to PNG files
  and rebuilds a 4-worker DataLoader over the folder at every round; only the speed differs). Images are
  stored in pixel space [0, 1] and, by default, quantised to uint8 exactly as the PNG round trip does
  (``floor(255 x) / 255``); an optional cap turns it into a ring buffer that replaces the oldest images.
  Student batches walk a fresh random permutation of the pool after every round, as a new shuffled
  DataLoader epoch does.
- ``random_crop_flip`` / ``random_resized_crop`` / ``Normalizer``: batched, differentiable augmentations on
  the device (the released code uses kornia on the generator output and torchvision transforms on the
  pool images); random numbers come from the device's generator, so no host synchronisation is needed.
- ``FeatureMeans``: CMI's instance-mean features of chosen layers' inputs.
- ``reset_generator`` (``methods._common.dcgan_init``) / ``reset_first_layer``: CMI's and Fast's
  re-initialisations of their generator (``benchmark.models.generators.DataFreeGenerator``, width 2, images
  in pixel space).
- ``PoolConfig``: the config fields and checks the three share.
- ``PoolDistillation``: the base class (student optimiser, cosine schedule, warm-up rounds, KD steps on the
  pool, ``sample()``, checkpoint state).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmark.checks import BETA, COUNT, NONNEG, POSITIVE, POS_COUNT, choice, ranges
from benchmark.config import ConfigError
from benchmark.losses import kd_kl
from benchmark.method import DFKDMethod
from benchmark.training import cosine_lr, crop_padding, random_crop_flip  # noqa: F401  (re-exported)

from ._common import dcgan_init as reset_generator  # noqa: F401  (CMI's per-round re-initialisation)

# ----------------------------------------------------------------------------------------------------------
# image pool
# ----------------------------------------------------------------------------------------------------------


class ImagePool:
    """Synthesized images (pixel space, [0, 1]) and the labels they were synthesized for, in memory.

    ``capacity`` is allocated up front (the run's rounds x synthesis batch, or the cap when smaller); when
    full, new images overwrite the oldest ones. ``sample(n)`` walks a random permutation of the pool in
    batches of ``n``; ``add`` starts a new permutation, like the released code's new DataLoader per round
    (the last batch of a permutation may be smaller, as with ``drop_last=False``).
    """

    def __init__(self, capacity: int, image_shape: tuple[int, ...], device: torch.device, uint8: bool = True):
        if capacity < 1:
            raise ValueError("ImagePool capacity must be >= 1")
        self.uint8 = uint8
        self.device = device
        self.image_shape = tuple(image_shape)
        self.images = torch.zeros((capacity, *image_shape), dtype=torch.uint8 if uint8 else torch.float32, device=device)
        self.labels = torch.zeros(capacity, dtype=torch.long, device=device)
        self.count = 0     # filled slots
        self.ptr = 0       # next slot to write
        self.added = 0     # images ever added
        self._perm: torch.Tensor | None = None
        self._pos = 0

    @property
    def capacity(self) -> int:
        return self.images.shape[0]

    def __len__(self) -> int:
        return self.count

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        images = images.detach().float().clamp(0, 1)
        return images.mul(255).to(torch.uint8) if self.uint8 else images   # truncation = the PNG round trip

    def decode(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.float().div_(255) if self.uint8 else stored.float()

    @torch.no_grad()
    def add(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        n = images.shape[0]
        cap = self.capacity
        if n > cap:                       # keep the newest
            images, labels, n = images[-cap:], labels[-cap:], cap
        enc = self._encode(images)
        first = min(n, cap - self.ptr)
        self.images[self.ptr:self.ptr + first] = enc[:first]
        self.labels[self.ptr:self.ptr + first] = labels[:first]
        if first < n:                     # wrap around
            self.images[:n - first] = enc[first:]
            self.labels[:n - first] = labels[first:]
        self.ptr = (self.ptr + n) % cap
        self.count = min(cap, self.count + n)
        self.added += n
        self._perm, self._pos = None, 0

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch (at most ``n`` images, pixel space float) of the current permutation."""
        if self.count == 0:
            raise RuntimeError("the image pool is empty: synthesize before sampling")
        if self._perm is None or self._pos >= self._perm.numel():
            self._perm, self._pos = torch.randperm(self.count, device=self.device), 0
        idx = self._perm[self._pos:self._pos + n]
        self._pos += n
        return self.decode(self.images[idx]), self.labels[idx]

    def state_dict(self) -> dict:
        return {"images": self.images[:self.count].clone(), "labels": self.labels[:self.count].clone(),
                "ptr": self.ptr, "count": self.count, "added": self.added,
                "perm": None if self._perm is None else self._perm.clone(), "pos": self._pos}

    def load_state_dict(self, state: dict) -> None:
        count = state["count"]
        if count > self.capacity:
            self.images = torch.zeros((count, *self.image_shape), dtype=self.images.dtype, device=self.device)
            self.labels = torch.zeros(count, dtype=torch.long, device=self.device)
        self.images[:count] = state["images"].to(self.device, self.images.dtype)
        self.labels[:count] = state["labels"].to(self.device)
        self.ptr, self.count, self.added = state["ptr"], count, state["added"]
        self._perm = None if state["perm"] is None else state["perm"].to(self.device)
        self._pos = state["pos"]


# ----------------------------------------------------------------------------------------------------------
# augmentations (batched, on the device, differentiable)
# ----------------------------------------------------------------------------------------------------------


def random_resized_crop(x: torch.Tensor, scale: tuple[float, float] = (0.25, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True) -> torch.Tensor:
    """Per-sample random resized crop back to the input size (kornia ``RandomResizedCrop``: area fraction
    uniform in ``scale``, log aspect ratio uniform in ``ratio``; a crop that does not fit is clipped to the
    image instead of kornia's 10 rejection tries), bilinear, then an optional random horizontal flip."""
    b, c, h, w = x.shape
    dev = x.device
    area = torch.empty(b, device=dev).uniform_(*scale)
    aspect = torch.exp(torch.empty(b, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1])))
    cw = torch.sqrt(area * aspect).clamp(max=1.0)          # crop width / image width
    ch = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(b, device=dev) * (1 - cw) + cw / 2) * 2 - 1   # crop centre in [-1, 1]
    cy = (torch.rand(b, device=dev) * (1 - ch) + ch / 2) * 2 - 1
    if flip:
        sign = torch.where(torch.rand(b, device=dev) < 0.5, -1.0, 1.0)
    else:
        sign = torch.ones(b, device=dev)
    zero = torch.zeros(b, device=dev)
    theta = torch.stack([torch.stack([cw * sign, zero, cx], 1), torch.stack([zero, ch, cy], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), [b, c, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class Normalizer:
    """``(x - mean) / std`` per channel, and the inverse; also the valid range of normalised pixels."""

    def __init__(self, mean: Iterable[float], std: Iterable[float], device: torch.device):
        self.mean = torch.tensor(list(mean), device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), device=device).view(1, -1, 1, 1)
        self.low = (0 - self.mean) / self.std
        self.high = (1 - self.mean) / self.std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean

    def clip_(self, x: torch.Tensor) -> torch.Tensor:
        """Clamp normalised images in place to the range of valid pixels (the released ``clip_images``)."""
        return torch.maximum(torch.minimum(x, self.high, out=x), self.low, out=x)


def resolve_mode(value: str, dataset_augment: str, key: str) -> bool:
    """``auto`` follows the dataset's training augmentation (e.g. no flips for digits); ``on`` / ``off``."""
    if value == "auto":
        return "flip" in dataset_augment
    if value in ("on", "off"):
        return value == "on"
    raise ConfigError(f"{key} must be auto, on or off, got {value!r}")


# ----------------------------------------------------------------------------------------------------------
# losses and hooks
# ----------------------------------------------------------------------------------------------------------


class FeatureMeans:
    """CMI's features: the spatial mean of each chosen layer's *input*, per sample, concatenated over layers
    (the released ``InstanceMeanHook``). Recorded only inside ``recording()``."""

    def __init__(self, layers: list[nn.Module]):
        if not layers:
            raise ConfigError("no layers to take CMI features from")
        self.layers = layers
        self._index = {id(m): i for i, m in enumerate(layers)}
        self._means: list[torch.Tensor | None] = [None] * len(layers)
        self._active = False
        self._handles = [m.register_forward_hook(self._hook) for m in layers]

    def _hook(self, module, inputs, output):
        if self._active:
            self._means[self._index[id(module)]] = inputs[0].float().mean(dim=(2, 3))

    @contextlib.contextmanager
    def recording(self):
        self._means = [None] * len(self.layers)
        self._active = True
        try:
            yield self
        finally:
            self._active = False

    def get(self) -> torch.Tensor:
        if any(m is None for m in self._means):
            raise RuntimeError("CMI features were not recorded for every layer")
        return torch.cat(self._means, dim=1)  # type: ignore[arg-type]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def js_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The DataFree library's ``jsdiv`` (DeepInversion's adversarial term): with P, Q the softmaxes at
    ``temperature`` and M their mean, all clamped to [0.01, 0.99], ``0.5 KL(M || P) + 0.5 KL(M || Q)``
    averaged over the batch (no T^2 factor)."""
    p = F.softmax(student_logits.float() / temperature, dim=1)
    q = F.softmax(teacher_logits.float() / temperature, dim=1)
    m = (0.5 * (p + q)).clamp(0.01, 0.99)
    p, q = p.clamp(0.01, 0.99), q.clamp(0.01, 0.99)
    return 0.5 * F.kl_div(torch.log(p), m, reduction="batchmean") + 0.5 * F.kl_div(torch.log(q), m, reduction="batchmean")


def masked_disagreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """CMI / Fast's adversarial quantity: per-sample KL(softmax(t) || softmax(s)) at T=1, counted only where
    student and teacher predict the same class, averaged over the batch. The generator *maximises* it (its
    loss holds ``-adv * masked_disagreement``)."""
    s, t = student_logits.float(), teacher_logits.float()
    kl = F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="none").sum(1)
    agree = (s.argmax(1) == t.argmax(1)).float()
    return (kl * agree).mean()


# ----------------------------------------------------------------------------------------------------------
# generator
# ----------------------------------------------------------------------------------------------------------


def kornia_augmentation():
    """``kornia.augmentation`` for the ``kornia_augment`` compatibility options (kornia is optional)."""
    try:
        from kornia import augmentation
    except ImportError:
        raise ConfigError("kornia_augment=true needs the kornia package") from None
    return augmentation


def kornia_crop_flip(image_shape, pad: int) -> nn.Module:
    """The released DataFree synthesizers' view with kornia: ``RandomCrop(size, padding=pad)`` then
    ``RandomHorizontalFlip()`` (always flips with p 0.5, whatever the dataset), before normalisation."""
    K = kornia_augmentation()
    return nn.Sequential(K.RandomCrop(size=list(image_shape[1:]), padding=pad), K.RandomHorizontalFlip())


class LowestLoss:
    """The tensors of a synthesis round's step with the lowest total loss, kept on the device (the released
    ``if best_cost > loss: best_inputs = inputs`` without a host synchronisation): ``offer(total, *tensors)``
    after each step (a ``None`` stays ``None``), then ``best`` holds the kept tensors, detached."""

    def __init__(self, device: torch.device):
        self.cost = torch.full((), float("inf"), device=device)
        self.best: list[torch.Tensor | None] | None = None

    @torch.no_grad()
    def offer(self, total: torch.Tensor, *tensors: torch.Tensor | None) -> None:
        better = total.detach() < self.cost
        self.cost = torch.where(better, total.detach(), self.cost)
        now = [None if t is None else t.detach() for t in tensors]
        self.best = now if self.best is None else [
            None if a is None else torch.where(better, a, b) for a, b in zip(now, self.best)]


@torch.no_grad()
def reset_first_layer(model: nn.Module) -> None:
    """Fast's ``reset_l0``: the modules named ``l1.0`` (the input Linear) and ``conv_blocks.0`` (the first
    BatchNorm) get weights N(0, 0.02) and zero biases, as in the released code (which gives that BatchNorm
    weights around 0, not 1)."""
    for name, m in model.named_modules():
        if name in ("l1.0", "conv_blocks.0"):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------------------------------------
# base class
# ----------------------------------------------------------------------------------------------------------


def cosine_to(optimizer: torch.optim.Optimizer, total: int, eta_min: float) -> torch.optim.lr_scheduler.LambdaLR:
    """``CosineAnnealingLR(T_max=total, eta_min)`` in closed form (stepped once per training round)."""
    return cosine_lr(optimizer, total, eta_min)


class PoolDistillation(DFKDMethod):
    """One iteration = one synthesis round (``synthesize()``, implemented by the subclass, which adds its
    images to ``self.pool``), then -- after ``warmup`` rounds -- ``kd_steps`` student steps of KD at
    temperature ``T`` on augmented pool batches and one step of the cosine LR schedule.

    The config must define: batch_size, synthesis_batch_size, kd_steps, lr, momentum, weight_decay, eta_min,
    T, pool_size, pool_uint8, student_augment, flip (and optionally warmup)."""

    requires_bn = True

    def __init__(self, ctx, cfg):
        super().__init__(ctx, cfg)
        spec = ctx.dataset
        self.spec = spec
        self.num_classes = spec.num_classes
        self.image_shape = tuple(spec.image_shape)
        self.synthesis_batch = cfg.synthesis_batch_size or cfg.batch_size
        self.warmup = getattr(cfg, "warmup", 0)
        self.normalizer = Normalizer(spec.mean, spec.std, self.device)
        augment = spec.teacher_recipe.augment
        self.flip = resolve_mode(cfg.flip, augment, "flip")
        self.pad = crop_padding(self.image_shape)
        # the student's transform on pool images = the dataset's training transform, as in the released code
        student_aug = augment if cfg.student_augment == "auto" else cfg.student_augment
        if student_aug not in ("none", "crop", "crop+flip"):
            raise ConfigError(f"student_augment must be auto, none, crop or crop+flip, got {cfg.student_augment!r}")
        self.student_pad = self.pad if "crop" in student_aug else 0
        self.student_flip = "flip" in student_aug
        capacity = self.pool_batches(ctx.iterations) * self.synthesis_batch
        if cfg.pool_size:
            capacity = min(capacity, cfg.pool_size)
        self.pool = ImagePool(capacity, self.image_shape, self.device, uint8=cfg.pool_uint8)
        self.opt_s = self.track("opt_s", torch.optim.SGD(self.student.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                                         weight_decay=cfg.weight_decay))
        self.sched_s = self.track("sched_s", cosine_to(self.opt_s, ctx.iterations - self.warmup, cfg.eta_min))
        self.round = 0

    # ---- helpers ---------------------------------------------------------------------------------------
    def pool_batches(self, iterations: int) -> int:
        """Synthesis batches the pool receives over the run (one per round here), for its capacity."""
        return max(iterations, 1)

    def _model_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.ctx.channels_last else x

    def _targets(self, n: int, sort: bool) -> torch.Tensor:
        y = torch.randint(0, self.num_classes, (n,), device=self.device)
        return y.sort().values if sort else y

    def _step_all(self, loss: torch.Tensor, optimizers: list[torch.optim.Optimizer], key: str) -> None:
        """zero_grad / backward / step for several optimizers sharing one loss (one GradScaler in fp16,
        kept under a fixed key even when the optimizers are rebuilt every round)."""
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        if self.ctx.precision == "fp16":
            scaler = self._scalers.get(key)  # type: ignore[call-overload]
            if scaler is None:
                scaler = self._scalers[key] = torch.amp.GradScaler(self.device.type)  # type: ignore[index]
            scaler.scale(loss).backward()
            for opt in optimizers:
                scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            for opt in optimizers:
                opt.step()

    @staticmethod
    def _accumulate(logs: dict[str, torch.Tensor], terms: dict[str, torch.Tensor], weight: float) -> None:
        for k, v in terms.items():
            v = v.detach() * weight
            logs[k] = logs[k] + v if k in logs else v

    # ---- the iteration ---------------------------------------------------------------------------------
    def synthesize(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def student_step(self) -> torch.Tensor:
        c = self.cfg
        x, _ = self.pool.sample(c.batch_size)
        with torch.no_grad():
            x = self._model_input(self.normalizer(random_crop_flip(x, self.student_pad, self.student_flip)))
        with self.ctx.autocast():
            with torch.no_grad():
                t_logits = self.teacher_forward(x)
            s_logits = self.student(x)
            loss = kd_kl(s_logits, t_logits, c.T)
        self.optimize(self.opt_s, loss)
        self.counters["student_steps"] += 1
        return loss.detach()

    def train_iteration(self, iteration: int) -> dict[str, torch.Tensor]:
        self.round += 1
        self.teacher.eval()
        was_training = self.student.training
        self.student.eval()          # as in the released synthesizers: the student's BN uses running statistics
        try:
            logs = self.synthesize()
        finally:
            self.student.train(was_training)
        if self.round > self.warmup:
            self.student.train()
            kd = None
            for _ in range(self.cfg.kd_steps):
                loss = self.student_step()
                kd = loss if kd is None else kd + loss
            if kd is not None:
                logs["s_kd"] = kd / self.cfg.kd_steps
            self.sched_s.step()
        return logs

    # ---- samples and state -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` pool images (normalised) and the labels they were synthesized for, drawn without
        replacement when the pool is large enough (from a private RNG, so the run's RNG is untouched)."""
        if len(self.pool) == 0:
            raise NotImplementedError(f"{self.name}: the image pool is empty")
        gen = torch.Generator().manual_seed(0)
        count = len(self.pool)
        idx = torch.randperm(count, generator=gen)[:n] if n <= count else torch.randint(0, count, (n,), generator=gen)
        idx = idx.to(self.device)
        return self.normalizer(self.pool.decode(self.pool.images[idx])), self.pool.labels[idx].clone()

    def extra_state(self) -> dict:
        return {"_pool": self.pool.state_dict(), "_round": self.round}

    def load_extra_state(self, state: dict) -> None:
        self.pool.load_state_dict(state["_pool"])
        self.round = state["_round"]


@ranges(batch_size=POS_COUNT, synthesis_batch_size=COUNT, g_steps=POS_COUNT, kd_steps=POS_COUNT, lr=POSITIVE,
        momentum=BETA, weight_decay=NONNEG, eta_min=NONNEG, lr_g=POSITIVE, beta1_g=BETA, beta2_g=BETA, T=POSITIVE,
        flip=choice("auto", "on", "off"), student_augment=choice("auto", "none", "crop", "crop+flip"), pool_size=COUNT)
@dataclass
class PoolConfig:
    """Settings shared by the pool methods (``deepinv``, ``cmi``, ``fast``), with the DataFree scripts'
    values; each method's config redeclares what its recipe sets differently and adds its loss weights."""

    batch_size: int = 256             # student batch (the scripts' --batch_size)
    synthesis_batch_size: int = 0     # 0: same as batch_size
    g_steps: int = 200                # synthesis steps per round
    kd_steps: int = 400               # student steps per round
    lr: float = 0.1                   # student SGD
    momentum: float = 0.9
    weight_decay: float = 1e-4
    eta_min: float = 2e-4
    lr_g: float = 1e-3                # Adam of the synthesis step
    beta1_g: float = 0.5
    beta2_g: float = 0.999
    T: float = 20.0                   # KD temperature of the student loss
    flip: str = "auto"                # auto (the dataset's augmentation) | on | off
    student_augment: str = "auto"     # auto (the dataset's training augmentation) | none | crop | crop+flip
    pool_size: int = 0                # cap of the image pool (0: unbounded, as released)
    pool_uint8: bool = True           # store the pool as 8-bit pixels (the released PNG round trip)

    def validate(self) -> None:
        """Cross-field checks only; every single field's range is declared above (benchmark.checks)."""
