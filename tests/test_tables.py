"""Table specs (benchmark/tables): every shipped spec loads and expands to the cells it should; sweeps."""
from __future__ import annotations

import pytest

import methods  # noqa: F401  (registers every method)
from benchmark.config import ConfigError
from benchmark.registry import METHODS
from benchmark.tables import SpecError, load_spec, parse_spec, spec_names
from benchmark.tables.expand import (canonical_overrides, expand, parse_sweeps, split_values,
                                     sweep_combinations)

STANDARD = [("resnet34", "resnet18"), ("vgg11", "resnet18"), ("wrn40_2", "wrn16_1"), ("wrn40_2", "wrn40_1"),
            ("wrn40_2", "wrn16_2")]
CMI_ROWS = ["teacher", "student-real", "kd-real", "dafl", "zskt", "deepinv", "dfq", "cmi", "fast-2", "fast-5",
            "fast-10"]
SHIPPED = ["cmi-cifar10", "cmi-cifar100", "fast-cost", "dafl-mnist", "cpsc-ablation", "cpsc-sensitivity",
           "digits-reference"]


def _has_budget(method: str, budget: str, dataset: str, teacher: str, student: str) -> bool:
    try:
        METHODS.get(method).budget_overrides(budget, dataset, teacher, student)
        return True
    except ConfigError:
        return False


def test_the_issue_tables_are_shipped():
    assert set(SHIPPED) <= set(spec_names())


@pytest.mark.parametrize("name", spec_names())
def test_every_spec_loads_and_expands(name):
    spec = load_spec(name)
    exp = expand(spec)
    assert spec.description and "\n" not in spec.description
    assert len(exp.planned) == len(exp.rows) * len(exp.columns) * len(spec.seeds)
    # one planned cell per (row, column, seed), each with the row's method and the column's names
    keys = {(p.row.label, p.column, p.seed) for p in exp.planned}
    assert len(keys) == len(exp.planned)
    for p in exp.planned:
        assert (p.cell.method, p.cell.dataset, p.cell.teacher, p.cell.student, p.cell.seed) == \
            (p.row.method, p.column.dataset, p.column.teacher, p.column.student, p.seed)
        assert p.cell.budget == spec.budget
        # a cell is listed as unresolved exactly when its method has no budget of that name there
        assert (p.problem is None) == _has_budget(p.row.method, spec.budget, p.column.dataset, p.column.teacher,
                                                  p.column.student)


@pytest.mark.parametrize("name,dataset", [("cmi-cifar10", "cifar10"), ("cmi-cifar100", "cifar100")])
def test_cmi_tables(name, dataset):
    exp = expand(load_spec(name))
    assert [r.method for r in exp.rows] == CMI_ROWS
    assert [(c.dataset, c.teacher, c.student) for c in exp.columns] == [(dataset, t, s) for t, s in STANDARD]
    assert exp.problems() == []                       # every row has a paper budget on the standard pairs
    assert len(exp.cells()) == len(CMI_ROWS) * 5 * 3
    assert {c.budget for c in exp.cells()} == {"paper"} and all(c.overrides == () for c in exp.cells())
    assert all(r.published == r.method for r in exp.rows)


def test_fast_cost_shares_the_cmi_cells():
    spec = load_spec("fast-cost")
    assert spec.layout == "cost"
    cost = set(expand(spec).cells())
    cmi = set(expand(load_spec("cmi-cifar10")).cells()) | set(expand(load_spec("cmi-cifar100")).cells())
    assert cost and cost <= cmi
    assert {c.method for c in cost} == {"deepinv", "cmi", "dafl", "zskt", "dfq", "fast-2", "fast-5", "fast-10"}


def test_dafl_mnist_lists_cells_without_a_paper_mnist_budget():
    exp = expand(load_spec("dafl-mnist"))
    assert [(c.dataset, c.teacher, c.student) for c in exp.columns] == [("mnist", "lenet5", "lenet5_half")]
    assert [r.method for r in exp.rows][:4] == ["teacher", "student-real", "kd-real", "dafl"]
    missing = {p.row.method for p in exp.unresolved()}
    expected = {r.method for r in exp.rows if not _has_budget(r.method, "paper", "mnist", "lenet5", "lenet5_half")}
    assert missing == expected
    for p in exp.unresolved():
        assert "budget" in p.problem and p.row.method in p.problem and "mnist" in p.problem


def test_cpsc_ablation_switches_each_term_off():
    exp = expand(load_spec("cpsc-ablation"))
    assert [(r.label, r.settings()) for r in exp.rows] == [
        ("all terms", {}), ("w/o adv", {"adv": 0.0}), ("w/o IKD", {"alpha": 0.0}), ("w/o BN", {"beta": 0.0}),
        ("w/o SCL", {"gamma": 0.0}), ("w/o CE", {"eta": 0.0})]
    assert [(c.dataset, c.teacher, c.student) for c in exp.columns] == [("digits", "cnn_wide", "cnn_narrow")]
    cells = exp.cells()
    assert len(cells) == 18 and {c.seed for c in cells} == {0, 1, 2}
    assert {c.overrides for c in cells} == {(), (("adv", "0.0"),), (("alpha", "0.0"),), (("beta", "0.0"),),
                                            (("gamma", "0.0"),), (("eta", "0.0"),)}
    assert {c.method for c in cells} == {"cpsc-dfkd"} and {c.budget for c in cells} == {"default"}
    # only the all-on row gets the published figure of the method
    assert [r.published for r in exp.rows] == ["cpsc-dfkd"] + [None] * 5


def test_cpsc_sensitivity_sweeps_gamma_and_temperature_sharing_the_default_cell():
    exp = expand(load_spec("cpsc-sensitivity"), seeds=[0])
    labels = [r.label for r in exp.rows]
    assert labels == [f"SCL weight [gamma={g}]" for g in ("0.0", "0.35", "0.7", "1.4")] + \
        [f"SCL temperature [temperature={t}]" for t in ("0.035", "0.07", "0.14", "0.28")]
    by_label = {p.row.label: p.cell for p in exp.planned}
    # the recipe's values are the default cell: one cell for both rows, without overrides
    assert by_label["SCL weight [gamma=0.7]"] == by_label["SCL temperature [temperature=0.07]"]
    assert by_label["SCL weight [gamma=0.7]"].overrides == ()
    assert len(exp.cells()) == 7


def test_seeds_methods_and_sweeps_from_the_command_line():
    spec = load_spec("cpsc-ablation")
    exp = expand(spec, seeds=[3, 4], methods="cpsc*", sets=["iterations=10,20", "eval_every=5"])
    assert exp.seeds == [3, 4] and exp.common == {"eval_every": "5"}
    assert len(exp.rows) == 12 and exp.rows[0].label == "all terms [iterations=10]"
    assert len(exp.cells()) == 12 * 2
    assert all(dict(c.overrides)["eval_every"] == "5" for c in exp.cells())
    with pytest.raises(SpecError, match="matches no row"):
        expand(spec, methods="dafl")
    with pytest.raises(SpecError, match="sets it already"):
        expand(spec, sets=["gamma=0.1,0.2"])
    with pytest.raises(ConfigError, match="unknown config key"):
        expand(spec, sets=["no_such_key=1"])
    with pytest.raises(ConfigError, match="bad value"):
        expand(load_spec("digits-reference"), methods="cpsc-dfkd", sets=["alpha=abc"])


def test_split_values_and_sweep_product():
    assert split_values("0,0.35,0.7") == ["0", "0.35", "0.7"]
    assert split_values("[0.5,0.999]") == ["[0.5,0.999]"]
    assert split_values("[0.5,0.9],[0.9,0.99]") == ["[0.5,0.9]", "[0.9,0.99]"]
    assert split_values('"a,b",c') == ['"a,b"', "c"]
    with pytest.raises(ConfigError):
        split_values("1,,2")
    sweeps = parse_sweeps(["a=1,2", "b=x,y,z", "c=7"])
    assert sweeps == [("a", ["1", "2"]), ("b", ["x", "y", "z"]), ("c", ["7"])]
    combos = sweep_combinations(sweeps)
    assert len(combos) == 6 and combos[0] == {"a": "1", "b": "x", "c": "7"} and combos[-1] == {"a": "2", "b": "z", "c": "7"}
    with pytest.raises(ConfigError, match="twice"):
        parse_sweeps(["a=1", "a=2"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_sweeps(["novalue"])


def test_canonical_overrides_type_values_and_drop_defaults():
    cls = METHODS.get("cpsc-dfkd")
    args = ("default", "digits", "cnn_wide", "cnn_narrow")
    assert canonical_overrides(cls, *args, {"alpha": "5"}) == ()          # the default value: no override
    assert canonical_overrides(cls, *args, {"alpha": "2"}) == canonical_overrides(cls, *args, {"alpha": 2.0}) \
        == (("alpha", "2.0"),)
    budget_iters = cls.budget_overrides(*args)["iterations"]
    assert canonical_overrides(cls, *args, {"iterations": str(budget_iters)}) == ()
    assert canonical_overrides(cls, *args, {"iterations": "7", "gamma": "0"}) == (("gamma", "0.0"), ("iterations", "7"))
    with pytest.raises(ConfigError):
        canonical_overrides(cls, *args, {"iterations": "7.5"})


@pytest.mark.parametrize("data,match", [
    ({"description": "x", "datasets": ["digits"], "budget": "default", "methods": ["dafl"], "colour": 1},
     "unknown key"),
    ({"description": "x", "datasets": ["digits"], "methods": ["dafl"]}, "no budget"),
    ({"description": "x", "datasets": ["digits"], "budget": "default"}, "no rows"),
    ({"description": "x", "datasets": ["digits"], "budget": "default", "methods": ["dafl"], "seeds": [-1]}, "seeds"),
    ({"description": "x", "datasets": ["digits"], "budget": "default", "methods": ["dafl"], "metric": "top5"},
     "metric"),
    ({"description": "x", "datasets": ["digits"], "budget": "default", "pairs": ["resnet34"], "methods": ["dafl"]},
     "teacher:student"),
    ({"description": "x", "datasets": ["digits"], "budget": "default",
      "rows": [{"method": "dafl", "label": "a"}, {"method": "zskt", "label": "a"}]}, "duplicate row label"),
    ({"description": "x", "datasets": ["digits"], "budget": "default",
      "rows": [{"method": "dafl", "set": {"a": 1}, "sweep": {"a": [1, 2]}}]}, "both set and swept"),
    ({"description": "x", "datasets": ["digits"], "budget": "default", "rows": [{"method": "dafl", "colour": 1}]},
     "unknown key"),
])
def test_malformed_specs_fail_in_one_line(data, match):
    with pytest.raises(SpecError, match=match) as info:
        parse_spec(data, "bad")
    assert "\n" not in str(info.value)


def test_unknown_table_names_the_known_ones():
    with pytest.raises(SpecError, match="cpsc-ablation"):
        load_spec("cpsc-ablaton")
