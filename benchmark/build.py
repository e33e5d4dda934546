"""``build_method``: the one way to put a method together (runner, speed benchmarks, tests).

It builds the student through the method's ``make_student`` (the ``teacher`` reference row returns the
teacher), moves it to the device, applies the run config's memory format and ``compile``, resolves the
precision and hands the method its ``MethodContext``. Whoever builds a method by hand would have to repeat
each of these steps, and would drift from what the runner does.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn

from .config import RunConfig
from .method import DFKDMethod, MethodContext


def build_method(method: str | type[DFKDMethod], teacher: nn.Module, student: str | nn.Module, spec: Any,
                 device: torch.device, cfg: Any = None, run_cfg: RunConfig | None = None,
                 iterations: int | None = None, real_train_data: Callable[[], Any] | None = None) -> DFKDMethod:
    """A ready method. ``student``: an architecture name (built by ``make_student``) or a module; ``cfg``:
    the method config (default: its defaults); ``run_cfg``: precision, memory format and compile (default:
    plain fp32); ``iterations``: the schedule length (default: ``run_cfg.iterations``); ``real_train_data``:
    for the reference rows (default: the dataset's training split)."""
    from .env import resolve_precision
    from .models import create_model
    from .registry import METHODS

    cls = METHODS.get(method) if isinstance(method, str) else method
    run_cfg = run_cfg if run_cfg is not None else RunConfig(precision="fp32")
    if isinstance(student, str):
        arch = student
        student = cls.make_student(teacher, lambda: create_model(arch, spec.num_classes, spec.image_shape))
    student = student.to(device)
    if run_cfg.channels_last:
        teacher.to(memory_format=torch.channels_last)
        student.to(memory_format=torch.channels_last)
    ctx = MethodContext(
        teacher=torch.compile(teacher) if run_cfg.compile else teacher, student=student, dataset=spec,
        device=device, iterations=run_cfg.iterations if iterations is None else iterations,
        precision=resolve_precision(run_cfg.precision, device),
        real_train_data=real_train_data if real_train_data is not None else (lambda: spec.load("train")),
        channels_last=run_cfg.channels_last)
    return cls(ctx, cfg if cfg is not None else cls.Config())
