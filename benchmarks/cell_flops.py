"""The arithmetic of the default benchmark (issue 13): FLOPs per iteration and per cell of every method's digits
``default`` budget, the teacher's training, the total, and the time that total takes at a given rate.

    python benchmarks/cell_flops.py [--methods SELECTION] [--rate GFLOP/s | --measure-rate]

Each method is built as ``benchmarks/test_iteration.py`` builds it (random-initialised digits pair, fp32,
channels_last off) and its iterations are counted (``benchmark.flops``: convolutions and matmuls with their
backward passes): every iteration of a budget of at most ``--exact-up-to`` iterations (the synthesis-round
methods, whose rounds differ: NAYER's first four cost 1.5x the rest, CMI's grow with its pool), otherwise
iteration 1 times the budget's iterations (the generator methods, whose iterations all do the same work). The
teacher's training is one counted step times its steps. ``--measure-rate`` times an fp32 2048x2048 matmul on every core (an upper
bound on what convolutions reach), run it with ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
MKL_ENABLE_INSTRUCTIONS=AVX2`` to ask what an AVX2-only CPU of this clock could do at best.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from benchmark.data import get_dataset  # noqa: E402
from benchmark.flops import count_flops  # noqa: E402
from benchmark.models import create_model  # noqa: E402
from benchmark.records import Cell  # noqa: E402
from benchmark.registry import METHODS, UnknownNameError  # noqa: E402
from benchmark.resolve import resolve_cell  # noqa: E402
from default_run import machine  # noqa: E402
from test_iteration import build_iteration  # noqa: E402


def matmul_rate(n: int = 2048, repeats: int = 10) -> float:
    """fp32 GFLOP/s of an n x n matmul with every core."""
    torch.set_num_threads(os.cpu_count() or 1)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9


def teacher_flops(dataset: str = "digits") -> tuple[int, int]:
    """(FLOPs of one training step of the dataset's default teacher, number of steps in its recipe)."""
    spec = get_dataset(dataset)
    recipe = spec.teacher_recipe
    model = create_model(spec.default_teacher, spec.num_classes, spec.image_shape)
    x = torch.randn(recipe.batch_size, *spec.image_shape)
    y = torch.randint(0, spec.num_classes, (recipe.batch_size,))
    step = count_flops(lambda: F.cross_entropy(model(x), y).backward())
    steps = recipe.epochs * -(-len(spec.load("train")) // recipe.batch_size)
    return step, steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="all",
                        help="as run's --methods: 'all', a comma list, or shell patterns (default: all)")
    parser.add_argument("--exact-up-to", type=int, default=50, metavar="N",
                        help="count every iteration of budgets of at most N iterations (default 50)")
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("--rate", type=float, help="GFLOP/s at which to convert the total into seconds")
    rate.add_argument("--measure-rate", action="store_true", help="use this machine's fp32 matmul rate")
    args = parser.parse_args(argv)
    if args.rate is not None and args.rate <= 0:
        parser.error(f"--rate must be positive, got {args.rate}")

    import methods  # noqa: F401  (registers every method)

    try:
        names = METHODS.select(args.methods)
    except UnknownNameError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(os.cpu_count() or 1)
    spec = get_dataset("digits")
    total = 0
    for name in names:
        resolved = resolve_cell(Cell(name, "digits", spec.default_teacher, spec.default_student, budget="default"))
        if resolved.run_cfg.iterations == 0:
            continue
        iteration, _ = build_iteration(name, "digits", "fp32", torch.device("cpu"))
        n = resolved.run_cfg.iterations
        if n <= args.exact_up_to:
            cell = sum(count_flops(iteration) for _ in range(n))
            how = "every iteration counted"
        else:
            iteration()
            cell = count_flops(iteration) * n
            how = "iteration 1 x iterations"
        total += cell
        print(f"{name:14s} {cell / n / 1e9:8.2f} GFLOP/iteration (mean) x {n:4d} = {cell / 1e12:6.2f} TFLOP ({how})",
              flush=True)
    step, steps = teacher_flops()
    print(f"{'teacher':14s} {step / 1e9:8.2f} GFLOP/step             x {steps:4d} = {step * steps / 1e12:6.2f} TFLOP")
    total += step * steps
    print(f"total {total / 1e12:.1f} TFLOP (convolutions and matmuls)")
    gflops = matmul_rate() if args.measure_rate else args.rate
    if args.measure_rate:
        limits = " ".join(f"{k}={os.environ[k]}" for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY",
                                                           "MKL_ENABLE_INSTRUCTIONS") if k in os.environ)
        print(f"machine: {machine()}{'; ' + limits if limits else ''}")
    if gflops:
        print(f"at {gflops:.0f} GFLOP/s{' (fp32 matmul, every core, measured here)' if args.measure_rate else ''}: "
              f"{total / gflops / 1e9:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
