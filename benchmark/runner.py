"""The harness loop: resolve a cell, get its teacher, run the method for its budget, evaluate, record.

Everything that can be wrong with a cell (unknown names, bad config values, a model that does not fit the
dataset, a missing budget) is found by ``resolve_cell`` before anything is written. ``run_cell`` never
overwrites a finished record with a failing run, resumes from ``checkpoint.pt`` when one exists, and
writes ``record.json`` atomically.
"""
from __future__ import annotations

import dataclasses
import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import env
from .build import build_method
from .config import RunConfig
from .method import DFKDMethod
from .progress import CellProgress
from .records import Cell, OutputLayout, Record, atomic_torch_save, load_record, write_record
from .resolve import ResolvedCell, resolve_cell
from .teachers import get_teacher
from .training import evaluate


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class RunOptions:
    """Where and how cells run; not part of a cell's identity."""

    out: Path = Path("runs")
    data_root: str | None = None
    download: bool = False
    device: str = "auto"
    force: bool = False
    teacher_cache: Path | None = None   # default <out>/teachers
    progress: bool = True               # progress bars
    tensorboard: bool = False           # TensorBoard curves in <out>/<cell_id>/tensorboard (benchmark.progress)

    def cache_dir(self) -> Path:
        return Path(self.teacher_cache) if self.teacher_cache else OutputLayout(self.out).teachers


def _rng_state(device: torch.device) -> dict:
    import random

    import numpy as np

    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def run_cell(cell: Cell, options: RunOptions) -> dict[str, Any]:
    """Run one cell to its end and return its record (also written to ``<out>/<cell_id>/record.json``)."""
    resolved = resolve_cell(cell)
    layout = OutputLayout(options.out)
    previous = load_record(layout.record(cell))
    if previous is not None and previous.done and not options.force:
        return {**previous.to_dict(), "skipped": True}

    device = env.resolve_device(options.device)
    record = Record.for_cell(
        cell, data_free=resolved.method_cls.data_free, started_at=env.now(),
        config={"run": dataclasses.asdict(resolved.run_cfg), "method": dataclasses.asdict(resolved.method_cfg)},
        citation=resolved.method_cls.citation)
    live = CellProgress(layout.progress(cell), {"cell_id": cell.cell_id, "method": cell.method,
                                                "dataset": cell.dataset, "seed": cell.seed},
                        resolved.run_cfg.iterations, options.tensorboard)
    try:
        record.env = env.environment(device)
        _execute(resolved, options, device, layout, record, live)
        record.status = "done"
    except Exception as exc:  # the failure is recorded; other cells go on
        record.status = "failed"
        record.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        record.traceback = traceback.format_exc()
    live.close(record.status)
    record.finished_at = env.now()
    record.peak_memory_mb = env.peak_memory_mb(device)
    write_record(options.out, record)     # a failure never replaces a done record (last_failure.json)
    if record.done:
        layout.checkpoint(cell).unlink(missing_ok=True)
    return record.to_dict()


def _execute(resolved: ResolvedCell, options: RunOptions, device: torch.device, layout: OutputLayout,
             record: Record, live: CellProgress) -> None:
    cell, spec, run_cfg, method_cls = resolved.cell, resolved.spec, resolved.run_cfg, resolved.method_cls
    precision = env.resolve_precision(run_cfg.precision, device)
    record.config["run"]["precision_resolved"] = precision
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = run_cfg.cudnn_benchmark
        torch.cuda.reset_peak_memory_stats(device)

    env.seed_everything(cell.seed)
    teacher, teacher_info = get_teacher(spec, cell.teacher, cell.seed, device, options.cache_dir(),
                                        options.data_root, options.download, cell.teacher_ckpt, options.progress)
    method_cls.check_compatible(teacher, spec)
    record.update(teacher_acc=teacher_info["test_acc"], teacher_time_s=teacher_info["time_s"],
                  teacher_info=teacher_info)
    test_set = spec.load("test", options.data_root, options.download)

    # Re-seed so that the student and method do not depend on whether the teacher was trained or cached.
    env.seed_everything(cell.seed + 1)
    method = build_method(method_cls, teacher, cell.student, spec, device, resolved.method_cfg, run_cfg,
                          real_train_data=lambda: spec.load("train", options.data_root, options.download))
    student = method.student

    start_it, elapsed, train_elapsed = 0, 0.0, 0.0
    curve: list[dict] = []
    loss_curve: list[dict] = []
    ckpt_path = layout.checkpoint(cell)
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        method.load_state_dict(state["method"])
        _set_rng_state(state["rng"], device)
        start_it, elapsed, train_elapsed = state["iteration"], state["elapsed"], state["train_elapsed"]
        curve, loss_curve = state["curve"], state["loss_curve"]
        record.resumed_from = start_it

    live.start(start_it, elapsed)

    def snapshot(iteration: int, acc: float) -> dict:
        point = {"iteration": iteration, "acc": acc, "wall_time_s": elapsed, **method.counters}
        live.evaluated(iteration, acc, method.counters)
        return point

    if not curve:
        curve.append(snapshot(0, evaluate(student, test_set, device, run_cfg.eval_batch_size, run_cfg.channels_last)))

    sums: dict[str, torch.Tensor] = {}
    count = 0
    bar = tqdm(total=run_cfg.iterations, initial=start_it, desc=f"{cell.method} {cell.dataset} s{cell.seed}",
               disable=not options.progress, leave=False)
    last_losses: dict[str, float] = loss_curve[-1] if loss_curve else {}
    t0 = time.perf_counter() - elapsed
    for it in range(start_it, run_cfg.iterations):
        t_iter = time.perf_counter()
        losses = method.train_iteration(it)
        for k, v in losses.items():
            sums[k] = sums[k] + v.detach().float() if k in sums else v.detach().float()
        count += 1
        done = it + 1
        if done % run_cfg.log_every == 0 or done == run_cfg.iterations:
            means = {k: (v / count).item() for k, v in sums.items()}      # the one host sync per interval
            bad = [k for k, v in means.items() if not math.isfinite(v)]
            if bad:
                raise NonFiniteLossError(f"non-finite loss {', '.join(bad)} by iteration {done}; the run diverged")
            last_losses = {"iteration": done, **means}
            loss_curve.append(last_losses)
            live.logged(done, means)
            sums, count = {}, 0
            bar.set_postfix({k: f"{v:.3g}" for k, v in list(means.items())[:4]} | {"acc": f"{curve[-1]['acc']:.1f}"})
        train_elapsed += time.perf_counter() - t_iter
        if done % run_cfg.eval_every == 0 or done == run_cfg.iterations:
            elapsed = time.perf_counter() - t0
            curve.append(snapshot(done, evaluate(student, test_set, device, run_cfg.eval_batch_size, run_cfg.channels_last)))
            bar.set_postfix({"acc": f"{curve[-1]['acc']:.1f}"})
        bar.update(1)
        if run_cfg.checkpoint_every and done % run_cfg.checkpoint_every == 0 and done < run_cfg.iterations:
            elapsed = time.perf_counter() - t0
            atomic_torch_save(ckpt_path, {
                "iteration": done, "elapsed": elapsed, "train_elapsed": train_elapsed, "curve": curve,
                "loss_curve": loss_curve, "method": method.state_dict(), "rng": _rng_state(device),
                "cell": cell.as_dict(),
            })
    bar.close()
    elapsed = time.perf_counter() - t0
    iterations = run_cfg.iterations
    accs = [c["acc"] for c in curve]
    best = max(range(len(curve)), key=lambda i: accs[i])
    record.update(**{
        "final_acc": accs[-1], "best_acc": accs[best], "best_iteration": curve[best]["iteration"],
        "iterations": iterations, "wall_time_s": elapsed, "train_time_s": train_elapsed,
        "time_per_iteration_s": train_elapsed / iterations if iterations else None,
        **method.counters,
        "images_per_s": method.counters["synthetic_images"] / elapsed if elapsed > 0 else None,
        "curve": curve, "loss_curve": loss_curve,
        "losses": {k: v for k, v in last_losses.items() if k != "iteration"},
        "gpu_hours": elapsed / 3600 if device.type == "cuda" else 0.0,
    })
    record.quality, record.samples_png = _synthetic_quality(method, teacher, test_set, spec, layout.samples(cell),
                                                            run_cfg)


def _synthetic_quality(method: DFKDMethod, teacher, test_set, spec, png: Path, run_cfg: RunConfig):
    """Data-quality metrics and a sample grid for methods that synthesize (skipped when quality_samples=0)."""
    if run_cfg.quality_samples <= 0:
        return None, None
    try:
        images, labels = method.sample(run_cfg.quality_samples)
    except NotImplementedError:
        return None, None
    from .quality import quality_metrics, save_sample_grid
    from .training import batches

    real = torch.cat([x for x, _ in batches(test_set, 1024)])
    metrics = quality_metrics(teacher, images, labels, real.to(images.device), spec.num_classes)
    save_sample_grid(images.cpu(), None if labels is None else labels.cpu(), spec, png)
    return metrics, png.name
