"""DFKD methods. Each public module here registers one method (or a family of presets) in
``benchmark.registry.METHODS``; modules whose name starts with ``_`` hold shared helpers.

All method modules are imported here, in one place, in sorted order; ``tests/test_registry.py`` checks that
every one of them registers something.
"""
from __future__ import annotations

import importlib
import pkgutil

MODULES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))

for _name in MODULES:
    importlib.import_module(f"{__name__}.{_name}")
