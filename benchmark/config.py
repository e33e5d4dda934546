"""Config dataclasses and overrides.

Defaults live next to the code (one dataclass per method, ``RunConfig`` for the harness); presets and
``--set key=value`` only override them, and an unknown key is an error (as in yacs and submitit).
"""
from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from .checks import COUNT, POS_COUNT, ConfigError, check_ranges, choice, ranges


class NotApplicableError(ConfigError):
    """A method cannot run with a cell's teacher or dataset (e.g. it matches BatchNorm statistics and the
    teacher has none). Found when the cell is resolved, before any teacher is trained."""


@ranges(iterations=COUNT, eval_every=POS_COUNT, log_every=POS_COUNT, checkpoint_every=COUNT,
        eval_batch_size=POS_COUNT, quality_samples=COUNT, precision=choice("fp32", "bf16", "fp16", "auto"))
@dataclasses.dataclass
class RunConfig:
    """Harness-level settings of one cell, the same for every method.

    ``iterations`` is the budget: one iteration is one call of the method's ``train_iteration`` (its
    generator/synthesis steps followed by its student steps). The performance switches at the bottom
    change speed, never the mathematics (issue: speed); each is recorded.
    """

    iterations: int = 200
    eval_every: int = 25          # evaluate the student on the real test split every N iterations (and at the end)
    log_every: int = 10           # read losses back from the device every N iterations
    checkpoint_every: int = 0     # save the full training state every N iterations (0: never)
    eval_batch_size: int = 512
    quality_samples: int = 0      # synthetic samples for the data-quality metrics at the end (0: skip)
    # auto | fp32 | bf16 | fp16 (autocast; master weights and loss reductions stay fp32). auto: bf16 on a CPU
    # with AMX/AVX512-BF16 or a CUDA GPU with bf16, fp16 on older GPUs, else fp32 (benchmark.env.resolve_precision);
    # the default since the digits check of docs/performance.md (CPSC-DFKD, 3 seeds: bf16 within the fp32 spread)
    precision: str = "auto"
    # teacher, student (and the generative baselines' generator) weights and the test images in channels_last:
    # speed only. Default since issue 13: on the digits pair (batch 128, 16x16, one thread) the teacher's
    # forward pass took 21 ms instead of 32 (fp32, AVX2) and 6.5 instead of 19 (bf16, AMX); PyTorch's NCHW
    # max-pooling alone was 10x slower than in channels_last (docs/performance.md)
    channels_last: bool = True
    compile: bool = False
    cudnn_benchmark: bool = False

    def validate(self) -> None:
        check_ranges(self)      # every field's range is declared above


def field_names(cfg_cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cfg_cls)}


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Turn a command-line string (or a preset's value) into the field's declared type."""
    if isinstance(annotation, str):
        annotation = {"int": int, "float": float, "bool": bool, "str": str}.get(annotation, annotation)
    origin = typing.get_origin(annotation)
    if not isinstance(value, str):
        if annotation is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    try:
        if annotation is bool:
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if annotation in (int, float, str):
            return annotation(value)
        if origin in (tuple, list) or annotation in (tuple, list):
            parsed = json.loads(value)
            return tuple(parsed) if (origin or annotation) is tuple else list(parsed)
        return json.loads(value)
    except (ValueError, json.JSONDecodeError):
        raise ConfigError(f"bad value for {key}: {value!r} (expected {getattr(annotation, '__name__', annotation)})") from None


def apply_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """A copy of dataclass ``cfg`` with ``overrides`` applied; unknown keys raise ``ConfigError``."""
    hints = typing.get_type_hints(type(cfg))
    known = field_names(type(cfg))
    changes = {}
    for key, value in overrides.items():
        if key not in known:
            raise ConfigError(f"unknown config key {key!r} for {type(cfg).__name__} (known: {', '.join(sorted(known))})")
        changes[key] = coerce(value, hints[key], key)
    return dataclasses.replace(cfg, **changes)


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2`` -> ``[0, 1, 2]`` (each seed's range is checked with the run config)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds expects comma-separated integers, got {text!r}") from None
    if not seeds:
        raise ConfigError("--seeds is empty")
    return seeds


def parse_assignments(items: list[str] | None) -> dict[str, str]:
    """``['a=1', 'b=x']`` -> ``{'a': '1', 'b': 'x'}``; a malformed item raises ``ConfigError``."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def split_overrides(overrides: dict[str, Any], method_cfg_cls: type) -> tuple[dict, dict]:
    """Route each key to the run config or the method config; a key known to neither raises."""
    run_keys, method_keys = field_names(RunConfig), field_names(method_cfg_cls)
    run, method = {}, {}
    for key, value in overrides.items():
        if key in method_keys:
            method[key] = value
        elif key in run_keys:
            run[key] = value
        else:
            raise ConfigError(
                f"unknown config key {key!r} (run keys: {', '.join(sorted(run_keys))}; "
                f"method keys: {', '.join(sorted(method_keys))})"
            )
    return run, method
