"""DFKD methods. Each module registers one method (or a family of presets) in ``benchmark.registry.METHODS``.

Every module is imported here explicitly, in one place; a test checks that each module under ``methods/``
registers something.
"""
from __future__ import annotations

import importlib

MODULES = ("cpsc_dfkd",)

for _name in MODULES:
    importlib.import_module(f"{__name__}.{_name}")
