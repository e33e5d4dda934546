"""The one interface every DFKD method implements.

The harness (``benchmark.runner``) owns the loop, the budget, seeding, evaluation on the real test split,
timing, checkpoints and records. A method owns its generator or synthesis step, its student step, its named
loss terms, its config dataclass (defaults next to the code) and its citation. This follows the split of
mdistiller's ``Distiller`` and the DataFree library's ``synthesize()`` / student step: a new method is one
module under ``methods/`` plus its tests, and the runner has no per-method branch.
"""
from __future__ import annotations

import abc
import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
import torch.nn as nn

from .config import ConfigError, NotApplicableError


@dataclass
class MethodContext:
    """What the harness hands a method."""

    teacher: nn.Module            # frozen (requires_grad False) and in eval mode
    student: nn.Module            # trained by the method, evaluated by the harness
    dataset: Any                  # benchmark.data.DatasetSpec
    device: torch.device
    iterations: int               # the whole budget, for schedules
    precision: str = "fp32"       # resolved: fp32 | bf16 | fp16
    real_train_data: Callable[[], Any] | None = None   # only reference rows (not data-free) may call it
    channels_last: bool = False

    def autocast(self):
        """Mixed-precision context for forward passes (no-op in fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)


class DFKDMethod(abc.ABC):
    """Base class of a DFKD method (and of the reference rows that use real data).

    Subclasses set ``Config`` (a dataclass of hyperparameters whose defaults are the authors' recipe),
    ``citation``, and ``budgets``: overrides of run and method keys per budget name, refined per dataset
    and per pair as ``"paper"``, ``"paper:cifar10"``, ``"paper:cifar10:wrn40_2:wrn16_1"`` (later keys win).
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type]
    citation: ClassVar[str] = ""
    data_free: ClassVar[bool] = True      # False for reference rows that train on real data
    requires_bn: ClassVar[bool] = False   # True when a loss needs the teacher's BatchNorm statistics
    budgets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, ctx: MethodContext, cfg: Any):
        self.ctx = ctx
        self.cfg = cfg
        self.teacher = ctx.teacher
        self.student = ctx.student
        self.device = ctx.device
        self.counters = {"student_steps": 0, "teacher_forwards": 0, "synthetic_images": 0}
        self._stateful: dict[str, Any] = {"student": self.student}
        self._scalers: dict[int, torch.amp.GradScaler] = {}

    # ---- what a method implements -------------------------------------------------------------
    @abc.abstractmethod
    def train_iteration(self, iteration: int) -> dict[str, torch.Tensor]:
        """One iteration: the method's generator/synthesis steps, then its student steps.

        Returns named loss terms as detached 0-d tensors left on the device; the harness averages them
        and reads them back only at its logging interval.
        """

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``n`` synthetic images (normalised like the dataset) and the labels that were requested
        (``None`` for unconditional methods). Used for data-quality metrics and image grids."""
        raise NotImplementedError(f"{self.name} does not synthesize samples")

    @classmethod
    def check_compatible(cls, teacher: nn.Module, dataset: Any) -> None:
        """Raise ``NotApplicableError`` when this method cannot run with this teacher or dataset. Called when
        a cell is resolved, with the teacher's architecture built on the meta device (no weights, no data):
        decide from the structure only."""
        if cls.requires_bn and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in teacher.modules()):
            raise NotApplicableError(
                f"method {cls.name!r} needs the teacher's BatchNorm statistics, but the teacher has no BatchNorm layer"
            )

    @classmethod
    def check_config(cls, cfg: Any, dataset: Any) -> None:
        """Checks of the method config that need the dataset (e.g. a file's shape against the class count),
        run when the cell is resolved, before anything is written; raise ``ConfigError``. May resolve an
        ``auto`` value in place so that the record shows what runs."""

    @classmethod
    def make_student(cls, teacher: nn.Module, build: Callable[[], nn.Module]) -> nn.Module:
        """The network the harness evaluates; the ``teacher`` reference row returns the teacher."""
        return build()

    # ---- budgets --------------------------------------------------------------------------------
    @classmethod
    def budget_overrides(cls, budget: str, dataset: str, teacher: str, student: str) -> dict[str, Any]:
        keys = [budget, f"{budget}:{dataset}", f"{budget}:{dataset}:{teacher}:{student}"]
        found = [k for k in keys if k in cls.budgets]
        if not found:
            raise ConfigError(
                f"method {cls.name!r} has no {budget!r} budget for dataset {dataset!r} "
                f"(it has: {', '.join(sorted(cls.budgets)) or 'none'})"
            )
        out: dict[str, Any] = {}
        for key in found:
            out.update(cls.budgets[key])
        return out

    # ---- helpers for subclasses -------------------------------------------------------------------
    def track(self, name: str, obj: Any) -> Any:
        """Register a module/optimizer/scheduler (anything with ``state_dict``) for checkpoints."""
        self._stateful[name] = obj
        return obj

    def optimize(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor, clip_grad_norm: float = 0.0) -> None:
        """zero_grad, backward, optional gradient-norm clipping of the optimizer's parameters, step; in fp16
        through one GradScaler per optimizer (gradients unscaled before clipping)."""
        optimizer.zero_grad(set_to_none=True)
        scaler = None
        if self.ctx.precision == "fp16":
            scaler = self._scalers.get(id(optimizer))
            if scaler is None:
                scaler = self._scalers[id(optimizer)] = torch.amp.GradScaler(self.device.type)
            scaler.scale(loss).backward()
        else:
            loss.backward()
        if clip_grad_norm:
            if scaler is not None:
                scaler.unscale_(optimizer)
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

    def teacher_forward(self, x: torch.Tensor, features: bool = False):
        """Teacher on synthetic images, counted for the cost columns."""
        self.counters["teacher_forwards"] += x.shape[0]
        return self.teacher(x, return_features=features)

    def teacher_forward_bn(self, x: torch.Tensor, bn_stats, features: bool = False):
        """:meth:`teacher_forward` and the BN-statistics loss of that forward (``bn_stats``, a
        :class:`benchmark.losses.BatchNormStatistics` on the teacher), or None when ``bn_stats`` is None."""
        if bn_stats is None:
            return self.teacher_forward(x, features), None
        with bn_stats.recording():
            out = self.teacher_forward(x, features)
        return out, bn_stats.loss()

    # ---- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {name: obj.state_dict() for name, obj in self._stateful.items()}
        state["_counters"] = dict(self.counters)
        state["_scalers"] = [s.state_dict() for s in self._scalers.values()]
        state.update(self.extra_state())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, obj in self._stateful.items():
            obj.load_state_dict(state[name])
        self.counters.update(state["_counters"])
        self.load_extra_state(state)

    def extra_state(self) -> dict[str, Any]:
        """Tensors or plain values that are not held by a tracked object (e.g. a memory bank)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass


def default_config(method_cls: type[DFKDMethod]) -> Any:
    return method_cls.Config()


def config_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
