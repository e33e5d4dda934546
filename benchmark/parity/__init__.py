"""Parity driver: this project's methods against their authors' released code, step by step.

``python -m benchmark parity METHOD|all --reference DIR [--steps K] [--pair T:S] [--json OUT] [--markdown MD]``

Both sides run on the same CIFAR-shaped problem (3x32x32, 10 classes, a random teacher, no data) with the
same initial weights (state dicts copied across: the zoo uses the DataFree library's parameter names) and the
same random draws (every ``torch.randn / rand / randint / randperm`` our side makes is recorded and handed
back to the reference in the same order). Every loss term is compared at every step, every parameter group
(and BatchNorm running statistics) after K iterations. The reference code is imported at run time from the
checkouts under ``--reference`` (never copied here); shims for what it needs but this machine lacks live in
:func:`refcode.reference_code`. See docs/fidelity.md for the results and the method docstrings for the
compatibility options.

One adapter module per family of reference code; ``ADAPTERS`` maps a method to its module.
"""
from __future__ import annotations

import importlib

ADAPTERS: dict[str, str] = {
    "dafl": "datafree_generative",
    "dfad": "datafree_generative",
    "zskt": "datafree_generative",
    "dfq": "datafree_generative",
    "deepinv": "deepinv",
    "cmi": "cmi",
    "fast-2": "fast",
    "fast-5": "fast",
    "fast-10": "fast",
    "cpsc-dfkd": "cpsc",
    "cudfkd": "cudfkd",
    "adadfkd": "adadfkd",
    "nayer": "nayer",
    "spaceshipnet": "spaceshipnet",
    "pre-dfkd": "pre_dfkd",
}

# registered data-free methods whose authors' code is public but which this driver does not compare yet, and why
NOT_COMPARED: dict[str, str] = {
}


def adapter(method: str):
    """The adapter module for ``method``; raises ``ConfigError`` for a method without one."""
    from benchmark.config import ConfigError

    if method not in ADAPTERS:
        raise ConfigError(f"no parity adapter for method {method!r} (have: {', '.join(sorted(ADAPTERS))})")
    return importlib.import_module(f"{__name__}.{ADAPTERS[method]}")
