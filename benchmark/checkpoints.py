"""Load an external teacher checkpoint (e.g. one shared by CMI / Fast-Datafree) into a zoo model.

Accepts a bare state dict, ``{'state_dict': ...}`` (the DataFree ``train_scratch.py`` format) or
``{'model': ...}``; strips the ``module.`` prefix that ``DataParallel`` / DDP add; reads with
``weights_only=True`` (no code runs on load) and loads strictly. Every failure is a one-line ``ConfigError``.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

from .config import ConfigError

_WRAPPER_KEYS = ("state_dict", "model")
_SHOW = 3   # key names quoted per category in an error message


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


def _first_line(exc: BaseException, limit: int = 160) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    detail = lines[0].split(". ")[0].rstrip(".") if lines else ""   # the first sentence
    if len(detail) > limit:
        detail = detail[:limit].rstrip() + "..."
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _why_unreadable(exc: BaseException, path: Path) -> str:
    if path.stat().st_size == 0:
        return "the file is empty"
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return (f"it pickles a {found.group(1)} object, which weights_only loading refuses; "
                f"re-save just the state dict")
    if not zipfile.is_zipfile(path):   # torch.save writes zip archives (legacy pickles aside)
        return "not a file written by torch.save: corrupt, truncated or another format"
    return _first_line(exc)


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (", ..." if len(keys) > _SHOW else "")


def extract_state_dict(blob, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor dict inside ``blob`` with any ``module.`` prefix removed."""
    state = blob
    if isinstance(blob, dict) and not _is_state_dict(blob):
        for key in _WRAPPER_KEYS:
            if key in blob and isinstance(blob[key], dict):
                state = blob[key]
                break
    if not _is_state_dict(state):
        what = f"a dict with keys {_names(sorted(map(str, blob)))}" if isinstance(blob, dict) else type(blob).__name__
        raise ConfigError(f"{source} holds no state dict (found {what}; expected tensors, "
                          f"or a dict with a 'state_dict' or 'model' entry)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def load_teacher_checkpoint(model: nn.Module, path) -> nn.Module:
    """Load the weights in ``path`` into ``model`` (in place, strictly) and return ``model``."""
    path = Path(path).expanduser()
    arch = getattr(model, "arch", type(model).__name__)
    if not path.is_file():
        raise ConfigError(f"teacher checkpoint {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, not a torch file, or pickled objects beyond tensors
        raise ConfigError(f"teacher checkpoint {path} is not a readable torch file ({_why_unreadable(exc, path)})") from None
    state = extract_state_dict(blob, f"teacher checkpoint {path}")

    expected = model.state_dict()
    # Checkpoints from before PyTorch 0.4.1 lack BN's num_batches_tracked; BN fills it in itself.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key{'s' * (len(missing) != 1)} ({_names(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_names(unexpected)})")
        if mismatched:
            k = mismatched[0]
            parts.append(f"{len(mismatched)} shape mismatch{'es' * (len(mismatched) != 1)} "
                         f"({k}: checkpoint {list(state[k].shape)} vs model {list(expected[k].shape)}"
                         f"{', ...' if len(mismatched) > 1 else ''})")
        raise ConfigError(f"checkpoint {path} does not fit {arch}: {', '.join(parts)}")
    for k in expected:
        if k not in state:
            state[k] = expected[k].clone()   # num_batches_tracked of an old checkpoint
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied
        raise ConfigError(f"checkpoint {path} does not fit {arch}: {_first_line(exc)}") from None
    return model
