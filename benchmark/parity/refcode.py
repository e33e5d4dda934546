"""Importing the authors' code: finding a checkout, its commit, and the shims it needs at run time."""
from __future__ import annotations

import contextlib
import sys
import types
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn

from benchmark.config import ConfigError


def locate(root: Path, repo: str, marker: str) -> Path:
    """The checkout of ``repo`` ("owner/name"): ``root`` itself when it holds ``marker``, else a child folder
    named ``name``, ``owner+name``, ``owner__name`` or ``name-<branch>`` that does."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"--reference {root}: not a folder")
    if (root / marker).exists():
        return root
    owner, name = repo.split("/")
    names = {name.lower(), f"{owner}+{name}".lower(), f"{owner}__{name}".lower(), f"{owner}-{name}".lower()}
    for child in sorted(root.iterdir()):
        low = child.name.lower()
        if child.is_dir() and (low in names or low.startswith(name.lower() + "-")) and (child / marker).exists():
            return child
    raise ConfigError(f"--reference {root}: no checkout of github.com/{repo} (a folder holding {marker}, "
                      f"named {name} or {owner}+{name})")


def checkout_commit(path: Path) -> str:
    """The commit of a checkout: ``git rev-parse HEAD`` if it is a git work tree, else ``COMMIT`` or
    ``.commit`` (a file holding the hash) in it, else 'unknown'."""
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        if out.returncode == 0 and out.stdout.strip() and (Path(path) / ".git").exists():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    for name in ("COMMIT", ".commit"):
        f = Path(path) / name
        if f.is_file():
            return f.read_text().strip().split()[0]
    return "unknown"


def _stub(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    mod.__parity_shim__ = True
    return mod


@contextlib.contextmanager
def reference_code(path: Path) -> Iterator[None]:
    """Make the checkout at ``path`` importable, with shims for what it needs but this machine lacks:
    ``torchvision.models.utils`` (removed from torchvision; its model zoo imports it), ``termcolor`` when not
    installed (its logger), ``wandb`` and ``xlsxwriter`` when not installed (NAYER's trainer and its ``fast_meta`` import them for
    logging; nothing the comparison runs uses them), and
    ``.cuda()`` as a no-op on tensors and modules (some code calls it
    unconditionally). On exit every module loaded from the checkout and every shim is removed again, so two
    checkouts with the same package name (CMI's and Fast-Datafree's ``datafree``) can be used one after the
    other."""
    path = Path(path).resolve()
    before = set(sys.modules)
    shims: dict[str, types.ModuleType] = {}
    try:
        import torchvision.models.utils  # noqa: F401
    except ImportError:
        from torch.hub import load_state_dict_from_url
        shims["torchvision.models.utils"] = _stub("torchvision.models.utils",
                                                  load_state_dict_from_url=load_state_dict_from_url)
    try:
        import termcolor  # noqa: F401
    except ImportError:
        shims["termcolor"] = _stub("termcolor", colored=lambda text, *a, **k: text)
    try:
        import wandb  # noqa: F401
    except ImportError:
        shims["wandb"] = _stub("wandb", init=lambda *a, **k: None, log=lambda *a, **k: None,
                               finish=lambda *a, **k: None)
    try:
        import xlsxwriter  # noqa: F401
    except ImportError:
        shims["xlsxwriter"] = _stub("xlsxwriter")
    for name, mod in shims.items():
        sys.modules[name] = mod
    saved_cuda = (torch.Tensor.cuda, nn.Module.cuda)
    torch.Tensor.cuda = lambda self, *a, **k: self           # type: ignore[method-assign]
    nn.Module.cuda = lambda self, *a, **k: self              # type: ignore[method-assign]
    sys.path.insert(0, str(path))
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda = saved_cuda       # type: ignore[method-assign]
        with contextlib.suppress(ValueError):
            sys.path.remove(str(path))
        for name in set(sys.modules) - before:
            file = getattr(sys.modules[name], "__file__", None) or ""
            if name in shims or (file and Path(file).resolve().is_relative_to(path)):
                del sys.modules[name]
        for name in shims:
            sys.modules.pop(name, None)


@contextlib.contextmanager
def upcast_only_float() -> Iterator[None]:
    """In an fp64 comparison, ``Tensor.float()`` converts to float64 instead of float32: this project writes
    ``.float()`` to mean "the compute precision, at least fp32" (after bf16/fp16 autocast, or to decode 8-bit
    pool images), and a cast to fp32 on one side only would limit the comparison to fp32 rounding there."""
    original = torch.Tensor.float

    def float_(self, *args, **kwargs):
        return self if self.dtype == torch.float64 else self.to(torch.float64)

    torch.Tensor.float = float_                              # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.float = original                        # type: ignore[method-assign]
