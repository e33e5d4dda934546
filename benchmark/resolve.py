"""Resolving a cell: every name and value checked, the typed run and method configs built (budget preset,
then ``--set`` overrides, then declared ranges and the method's own checks), and the method's fit to the
teacher checked on the meta device, all before anything is trained or written."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .checks import SEED, check_ranges
from .config import NotApplicableError, RunConfig, apply_overrides, split_overrides
from .data import DatasetSpec
from .method import DFKDMethod
from .models import check_model_fits, create_model
from .registry import DATASETS, METHODS

if TYPE_CHECKING:
    from .records import Cell


@dataclass
class ResolvedCell:
    cell: Cell
    method_cls: type[DFKDMethod]
    spec: DatasetSpec
    run_cfg: RunConfig
    method_cfg: Any


@functools.lru_cache(maxsize=64)
def teacher_structure(arch: str, dataset: str) -> torch.nn.Module:
    """The teacher's architecture on the meta device: its layers without weights or compute, for the
    compatibility checks that must run before any teacher is trained or loaded."""
    spec: DatasetSpec = DATASETS.get(dataset)
    with torch.device("meta"):
        return create_model(arch, spec.num_classes, spec.image_shape)


def resolve_cell(cell: Cell) -> ResolvedCell:
    """Check every name and value of a cell and build its configs; raises ``ConfigError``/``KeyError``."""
    method_cls = METHODS.get(cell.method)
    spec: DatasetSpec = DATASETS.get(cell.dataset)
    SEED.check("seed", cell.seed)
    check_model_fits(cell.teacher, spec.image_shape)
    check_model_fits(cell.student, spec.image_shape)
    try:
        method_cls.check_compatible(teacher_structure(cell.teacher, spec.name), spec)
    except NotApplicableError as exc:
        hint = ""
        if cell.teacher != spec.default_teacher:
            try:
                method_cls.check_compatible(teacher_structure(spec.default_teacher, spec.name), spec)
                hint = f"; {cell.dataset}'s default pair {spec.default_teacher} -> {spec.default_student} fits"
            except NotApplicableError:
                pass
        raise NotApplicableError(f"{exc} (teacher {cell.teacher!r} on {cell.dataset}){hint}") from None
    preset = method_cls.budget_overrides(cell.budget, cell.dataset, cell.teacher, cell.student)
    overrides = {**preset, **dict(cell.overrides)}
    run_over, method_over = split_overrides(overrides, method_cls.Config)
    run_cfg = apply_overrides(RunConfig(), run_over)
    run_cfg.validate()
    method_cfg = apply_overrides(method_cls.Config(), method_over)
    check_ranges(method_cfg)        # declared ranges (benchmark/checks.py), then the method's own checks
    if hasattr(method_cfg, "validate"):
        method_cfg.validate()
    method_cls.check_config(method_cfg, spec)
    return ResolvedCell(cell, method_cls, spec, run_cfg, method_cfg)
