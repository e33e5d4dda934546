"""The problem both sides of a parity comparison run on, and the driver's error."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn


class ParityError(RuntimeError):
    """The two sides cannot be compared (e.g. they asked for different random draws)."""


@dataclass
class Problem:
    """A CIFAR-shaped problem (3x32x32, 10 classes, CIFAR-10's normalisation) with no data: a random teacher
    whose BatchNorm running statistics are made non-trivial by a few forward passes on noise."""

    method: str
    teacher_arch: str = "wrn40_2"
    student_arch: str = "wrn16_1"
    steps: int = 5                      # K iterations (synthesis steps + student steps each)
    batch: int = 16                     # student and synthesis batch
    dtype: torch.dtype = torch.float64
    seed: int = 0
    compat: bool = True                 # switch on the released-code compatibility options
    spec: Any = None                    # benchmark.data.DatasetSpec (cifar10)
    teacher: nn.Module | None = None
    student: nn.Module | None = None

    def build(self) -> "Problem":
        from benchmark.data import get_dataset
        from benchmark.models import create_model

        self.spec = get_dataset("cifar10")
        torch.manual_seed(self.seed)
        shape, k = self.spec.image_shape, self.spec.num_classes
        self.teacher = create_model(self.teacher_arch, k, shape).to(self.dtype)
        self.student = create_model(self.student_arch, k, shape).to(self.dtype)
        with torch.no_grad():                       # running statistics away from (0, 1)
            self.teacher.train()
            for _ in range(3):
                self.teacher(torch.rand(self.batch, *shape, dtype=self.dtype) * 2 + 0.5)
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        return self

    def build_ours(self, name: str, options: dict):
        """Our side of the comparison: the registered method ``name`` with its config defaults overridden by
        ``options`` (checked as the runner checks them), on this problem's teacher and student, put together
        as the runner does (:func:`benchmark.build.build_method`), in plain NCHW fp32/fp64. Returns the
        method and its config."""
        from benchmark.build import build_method
        from benchmark.config import RunConfig, apply_overrides
        from benchmark.registry import METHODS, load_plugins

        load_plugins()
        cls = METHODS.get(name)
        cfg = apply_overrides(cls.Config(), options)
        cfg.validate()
        ours = build_method(cls, self.teacher, self.student, self.spec, torch.device("cpu"), cfg,
                            RunConfig(precision="fp32", channels_last=False), iterations=self.steps)
        return ours, cfg
