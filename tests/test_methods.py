"""Tests that every registered method must pass, parametrised over the registry."""
from __future__ import annotations

import copy

import pytest
import torch

import methods  # noqa: F401
from benchmark.build import build_method
from benchmark.config import ConfigError
from benchmark.data import get_dataset
from benchmark.records import Cell
from benchmark.registry import METHODS
from benchmark.resolve import resolve_cell
from benchmark.runner import RunOptions, run_cell
from benchmark.teachers import get_teacher

ALL = METHODS.list()
STANDARD_PAIRS = [("resnet34", "resnet18"), ("vgg11", "resnet18"), ("wrn40_2", "wrn16_1"),
                  ("wrn40_2", "wrn40_1"), ("wrn40_2", "wrn16_2")]


@pytest.fixture(scope="module")
def digits_teacher(teacher_cache):
    spec = get_dataset("digits")
    teacher, info = get_teacher(spec, spec.default_teacher, 0, torch.device("cpu"), teacher_cache, progress=False)
    return teacher, info


@pytest.mark.parametrize("name", ALL)
def test_smoke_budget_learns(name, tmp_path, teacher_cache, digits_teacher):
    cell = Cell(name, "digits", "cnn_wide", "cnn_narrow", seed=0, budget="smoke")
    rec = run_cell(cell, RunOptions(out=tmp_path, teacher_cache=teacher_cache, progress=False, device="cpu"))
    assert rec["status"] == "done", rec.get("traceback")
    assert rec["final_acc"] >= 30.0, f"{name} smoke run ended at {rec['final_acc']:.1f}% (chance 10%)"
    assert rec["student_steps"] >= 0 and rec["iterations"] == rec["config"]["run"]["iterations"]
    if METHODS.get(name).data_free:
        assert rec["synthetic_images"] > 0 and rec["teacher_forwards"] > 0
    assert (tmp_path / cell.cell_id / "record.json").exists()


def _build(name, teacher, cfg, iterations=10):
    return build_method(name, teacher, "cnn_narrow", get_dataset("digits"), torch.device("cpu"), cfg,
                        iterations=iterations)


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip_continues_identically(name, digits_teacher):
    """Run 2 iterations, snapshot, run 2 more; restoring the snapshot into a fresh method and running the
    same 2 iterations from the same RNG state gives the same student."""
    teacher, _ = digits_teacher
    resolved = resolve_cell(Cell(name, "digits", "cnn_wide", "cnn_narrow", budget="smoke"))
    cfg = resolved.method_cfg
    torch.manual_seed(0)
    method = _build(name, teacher, cfg)
    for it in range(2):
        method.train_iteration(it)
    state = copy.deepcopy(method.state_dict())
    rng = torch.get_rng_state()
    for it in range(2, 4):
        method.train_iteration(it)
    expected = copy.deepcopy(method.student.state_dict())

    torch.manual_seed(123)
    fresh = _build(name, teacher, cfg)
    fresh.load_state_dict(state)
    torch.set_rng_state(rng)
    for it in range(2, 4):
        fresh.train_iteration(it)
    for key, value in fresh.student.state_dict().items():
        torch.testing.assert_close(value, expected[key], msg=f"{name}: {key} differs after resume")
    assert fresh.counters == method.counters


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
@pytest.mark.parametrize("pair", STANDARD_PAIRS)
def test_paper_presets_resolve_for_standard_pairs(name, dataset, pair):
    cls = METHODS.get(name)
    if "paper:" + dataset not in cls.budgets and not any(k.startswith(f"paper:{dataset}") for k in cls.budgets):
        pytest.skip(f"{name} has no published {dataset} recipe")
    resolved = resolve_cell(Cell(name, dataset, pair[0], pair[1], budget="paper"))
    assert resolved.run_cfg.iterations > 0


def test_every_method_declares_config_citation_and_budgets():
    for name in ALL:
        cls = METHODS.get(name)
        assert cls.name == name
        assert cls.citation, name
        assert "smoke" in cls.budgets and "default" in cls.budgets, name
        cls.Config()  # defaults construct


@pytest.mark.parametrize("name", [n for n in ALL if METHODS.get(n).requires_bn])
def test_bn_methods_refuse_a_teacher_without_batchnorm(name):
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))
    with pytest.raises(ConfigError, match="BatchNorm"):
        METHODS.get(name).check_compatible(teacher, get_dataset("digits"))
