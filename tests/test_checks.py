"""Every config value is checked before anything runs (issue 11): each numeric field of every registered
method's config (and of the run config) declares its range, and bad values of every field end in a
one-line error and exit status 2 with nothing written."""
from __future__ import annotations

import dataclasses
import math
import typing

import pytest

from benchmark.checks import FINITE, INT_MAX, SEED_MAX, Range, declared_range
from benchmark.cli import main
from benchmark.config import ConfigError, RunConfig
from benchmark.records import Cell
from benchmark.registry import METHODS, load_plugins
from benchmark.resolve import resolve_cell

load_plugins()


def _numeric(annotation) -> bool:
    if isinstance(annotation, str):
        return annotation in ("int", "float")
    if annotation in (int, float):
        return True
    return typing.get_origin(annotation) in (tuple, list) and all(a in (int, float, Ellipsis)
                                                                   for a in typing.get_args(annotation))


def _fields(cfg_cls):
    hints = typing.get_type_hints(cfg_cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cfg_cls)]


def bad_values(f: dataclasses.Field, annotation, rng: Range | None) -> list[str]:
    """Command-line spellings of values that parse for the field's type but are out of its range."""
    if annotation is bool:
        return []
    if rng is not None and rng.choices is not None:
        return ["no-such-choice"]
    if typing.get_origin(annotation) in (tuple, list):
        return ["[NaN]", "[-1.0]"] if rng is not None and rng.low is not None else ["[NaN]"]
    values = []
    if annotation is float:
        values += ["nan", "inf", "-inf"]
    if annotation is int:
        values += [str(INT_MAX + 1), str(2**64)]
    if rng is not None:
        if rng.low is not None:
            values.append(str(rng.low) if rng.low_open else str(rng.low - 1))
            if annotation is float and rng.low_open:
                values.append(str(rng.low))
        if rng.high is not None:
            values.append(str(rng.high + 1))
    return values


CASES = []
for _name in METHODS:
    _cls = METHODS.get(_name).Config
    for _f, _ann in _fields(_cls):
        for _v in bad_values(_f, _ann, declared_range(_cls, _f)):
            CASES.append((_name, _f.name, _v))
for _f, _ann in _fields(RunConfig):
    for _v in bad_values(_f, _ann, declared_range(RunConfig, _f)):
        CASES.append(("dafl", _f.name, _v))


@pytest.mark.parametrize("name", list(METHODS))
def test_every_numeric_field_declares_its_range(name):
    for cls in (METHODS.get(name).Config, RunConfig):
        missing = [f.name for f, ann in _fields(cls) if _numeric(ann) and declared_range(cls, f) is None]
        assert not missing, f"{cls.__name__}: no declared range for {missing} (benchmark/checks.py)"


def test_the_walk_covers_every_method_and_the_run_config():
    with_fields = {n for n in METHODS if dataclasses.fields(METHODS.get(n).Config)}
    assert {m for m, _, _ in CASES} == with_fields and len(with_fields) >= len(METHODS) - 1    # teacher: none
    assert {k for _, k, _ in CASES} >= {f.name for f in dataclasses.fields(RunConfig) if f.name != "compile"
                                        and f.type not in ("bool", bool)}
    assert len(CASES) > 300


def test_the_defaults_and_every_budget_preset_pass_the_checks():
    for name in METHODS:
        for budget in ("smoke", "default"):
            resolve_cell(Cell(name, "digits", "cnn_wide", "cnn_narrow", budget=budget))


@pytest.mark.parametrize("name,key,value", CASES)
def test_a_bad_value_of_any_field_fails_on_resolution(name, key, value):
    cell = Cell(name, "digits", "cnn_wide", "cnn_narrow", budget="smoke", overrides=((key, value),))
    with pytest.raises(ConfigError) as err:
        resolve_cell(cell)
    assert "\n" not in str(err.value) and key in str(err.value)


@pytest.mark.parametrize("name", list(METHODS))
def test_bad_values_on_the_command_line_exit_2_and_write_nothing(name, tmp_path, capsys):
    cases = [(k, v) for m, k, v in CASES if m == name]
    for key, value in cases[:: max(1, len(cases) // 6)]:          # a spread of fields per method
        out = tmp_path / "out"
        code = main(["run", "--methods", name, "--budget", "smoke", "--set", f"{key}={value}", "--out", str(out),
                     "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error:") and err.count("\n") == 1, (key, value, err)
        assert not out.exists()


@pytest.mark.parametrize("seeds", ["-1", str(SEED_MAX + 1), str(2**64), "0,1,99999999999999999999"])
def test_seeds_out_of_range_exit_2_and_write_nothing(seeds, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["run", "--methods", "dafl", "--budget", "smoke", "--seeds", seeds, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "seed must be" in err and err.count("\n") == 1 and not out.exists()


def test_a_range_rejects_non_finite_values_even_without_bounds():
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ConfigError, match="x must be finite"):
            FINITE.check("x", value)
    FINITE.check("x", -1e300)
