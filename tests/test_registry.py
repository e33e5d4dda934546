import importlib
import pkgutil

import pytest

import methods
from benchmark.registry import METHODS, MODELS, DATASETS, Registry, UnknownNameError, load_plugins


def test_register_get_list_and_patterns():
    reg = Registry("thing")
    for name in ("fast-2", "fast-5", "dafl"):
        reg.add(name, name.upper())
    assert reg.get("dafl") == "DAFL"
    assert reg.list() == ["dafl", "fast-2", "fast-5"]
    assert reg.list("fast*") == ["fast-2", "fast-5"]
    assert reg.select("all") == ["dafl", "fast-2", "fast-5"]
    assert reg.select("fast-5,dafl") == ["fast-5", "dafl"]
    assert reg.select("fast*,fast-2") == ["fast-2", "fast-5"]
    assert reg.select("all", default_all=lambda n: n != "dafl") == ["fast-2", "fast-5"]


def test_duplicate_name_raises():
    reg = Registry("thing")
    reg.add("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("a", 2)


def test_unknown_name_lists_known_and_close_matches():
    reg = Registry("method")
    reg.add("cpsc-dfkd", 1)
    reg.add("dafl", 2)
    with pytest.raises(UnknownNameError) as err:
        reg.get("cpsc_dfkd")
    msg = str(err.value)
    assert "did you mean cpsc-dfkd" in msg and "known: cpsc-dfkd, dafl" in msg and "\n" not in msg
    with pytest.raises(UnknownNameError, match="no method matches"):
        reg.select("zz*")
    with pytest.raises(UnknownNameError, match="empty"):
        reg.select(" , ")


def test_every_method_module_registers_something():
    before = set(METHODS)
    assert before, "no method registered"
    for info in pkgutil.iter_modules(methods.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"methods.{info.name}")
        classes = [obj for obj in vars(module).values()
                   if isinstance(obj, type) and getattr(obj, "name", "") in METHODS
                   and obj.__module__ == module.__name__]
        assert classes, f"methods/{info.name}.py registers no method"


def test_default_registries_are_populated():
    load_plugins()          # datasets register when benchmark.data is imported; alone, nothing else imports it
    assert "cpsc-dfkd" in METHODS
    assert {"cnn_wide", "cnn_narrow"} <= set(MODELS)
    assert "digits" in DATASETS
