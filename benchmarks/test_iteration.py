"""One full training iteration (``train_iteration``: the method's generator/synthesis steps, then its student
steps) of every registered method, timed with pytest-benchmark.

Parametrised over ``benchmark.registry.METHODS`` after ``import methods``, so a method added later is
benchmarked without touching this file. Two model pairs, both random-initialised (no data, no teacher
training):

- ``digits``: the digits dataset's default pair (cnn_wide -> cnn_narrow, 1x16x16) with the method's
  ``default`` budget config;
- ``cifar``: wrn40_2 -> wrn16_2 at 3x32x32, batch 64, the method's ``default`` budget config otherwise
  (for CPSC-DFKD: 1 generator step + 5 student steps, the issue's definition of an iteration).

and two precisions: ``fp32`` (``precision=fp32``, RunConfig's ``channels_last`` and ``compile`` off) and
``default`` (RunConfig's defaults, resolved for this machine: bf16 autocast on a CPU with AMX/AVX512-BF16;
skipped where they resolve to the plain path).

Command (from the repository root; docs/performance.md explains the baseline and a CPU-time variant for
busy machines)::

    python -m pytest benchmarks -k digits --benchmark-enable --benchmark-only \
        --benchmark-storage=file://benchmarks/baseline --benchmark-compare=0002 --benchmark-compare-fail=median:20%

``--benchmark-enable`` overrides pyproject's ``--benchmark-disable``; ``--benchmark-save=<name>`` records a new
baseline, ``-k cpsc`` selects methods, ``--bench-rounds N`` sets the timed iterations (default 3).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

import methods  # noqa: F401  (registers every method)
from benchmark import env
from benchmark.build import build_method
from benchmark.config import ConfigError
from benchmark.data import get_dataset
from benchmark.models import create_model
from benchmark.records import Cell
from benchmark.registry import METHODS
from benchmark.resolve import resolve_cell

PAIRS = {
    # name: (dataset, teacher, student, method overrides applied where the method has the key)
    "digits": ("digits", None, None, {}),
    "cifar": ("cifar10", "wrn40_2", "wrn16_2", {"batch_size": 64}),
}
PRECISIONS = ("fp32", "default")
SCHEDULE_ITERATIONS = 1000     # ctx.iterations: only shapes the LR schedules


def _fake_real_data(spec, n: int = 512):
    """Reference rows (not data-free) train on real data; random images of the right shape time the same."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *spec.image_shape, generator=g)
    y = torch.randint(0, spec.num_classes, (n,), generator=g)
    return torch.utils.data.TensorDataset(x, y)


def build_iteration(method_name: str, pair: str, precision: str, device: torch.device):
    """A closure running one ``train_iteration`` of a freshly built method, and the run config it used."""
    dataset, teacher_arch, student_arch, extra = PAIRS[pair]
    spec = get_dataset(dataset)
    teacher_arch = teacher_arch or spec.default_teacher
    student_arch = student_arch or spec.default_student
    cls = METHODS.get(method_name)
    config_keys = {f.name for f in dataclasses.fields(cls.Config)}
    overrides = tuple(sorted((k, str(v)) for k, v in extra.items() if k in config_keys))
    resolved = None
    for budget in ("default", "smoke"):
        try:
            resolved = resolve_cell(Cell(method_name, dataset, teacher_arch, student_arch, budget=budget,
                                         overrides=overrides))
            break
        except ConfigError as exc:
            reason = str(exc)
    if resolved is None:
        pytest.skip(f"{method_name} has no default/smoke budget for {dataset}: {reason}")
    run_cfg = resolved.run_cfg
    if run_cfg.iterations == 0:
        pytest.skip(f"{method_name} trains nothing (its budget has no iterations)")
    if precision == "fp32":
        run_cfg = dataclasses.replace(run_cfg, precision="fp32", channels_last=False, compile=False)
    resolved_precision = env.resolve_precision(run_cfg.precision, device)
    if precision == "default" and resolved_precision == "fp32" and not run_cfg.channels_last and not run_cfg.compile:
        pytest.skip("the default path is the plain fp32 path on this machine")

    torch.manual_seed(0)
    teacher = create_model(teacher_arch, spec.num_classes, spec.image_shape).to(device)
    teacher.eval()
    teacher.requires_grad_(False)                  # as benchmark.teachers.freeze
    cls.check_compatible(teacher, spec)
    real = (lambda: spec.load("train")) if not spec.needs_root else (lambda: _fake_real_data(spec))
    method = build_method(cls, teacher, student_arch, spec, device, resolved.method_cfg, run_cfg,
                          iterations=SCHEDULE_ITERATIONS, real_train_data=real)
    state = {"it": 0}

    def iteration():
        losses = method.train_iteration(state["it"])
        state["it"] += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return losses

    info = {"precision": resolved_precision, "channels_last": run_cfg.channels_last, "compile": run_cfg.compile,
            "teacher": teacher_arch, "student": student_arch, "dataset": dataset,
            "method_config": dataclasses.asdict(resolved.method_cfg), "threads": torch.get_num_threads()}
    return iteration, info


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize("method_name", METHODS.list())
def test_iteration(benchmark, request, method_name, pair, precision):
    device = torch.device(request.config.getoption("--bench-device"))
    benchmark.group = f"{pair}-{precision}"
    iteration, info = build_iteration(method_name, pair, precision, device)
    benchmark.extra_info.update(info)
    rounds = request.config.getoption("--bench-rounds")
    warmup = request.config.getoption("--bench-warmup")
    losses = benchmark.pedantic(iteration, rounds=rounds, warmup_rounds=warmup, iterations=1)
    for name, value in (losses or {}).items():
        assert torch.isfinite(value).all(), f"{method_name}: loss {name} is not finite"
