"""The parity driver's mechanics against a small reference written here, and (marked ``reference``) the real
comparisons, which run only when DFKD_REFERENCE_ROOT names a folder holding the authors' checkouts."""
from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from benchmark.cli import main
from benchmark.parity import ADAPTERS, adapter
from benchmark.parity.capture import locals_at_each_step, pool_iteration_terms
from benchmark.parity.core import (ParityError, Problem, Sides, Tape, compare_states, copy_state, locals_at_step,
                                   locate, reference_code, returns_of, run, table, value_diff)

# a tiny "released code": a regression trainer that draws its inputs with torch.randn and keeps its loss in a
# local variable, as the authors' code does
TOY_REFERENCE = '''
import torch

def train_step(model, optimizer, batch, lr_scale=1.0):
    x = torch.randn(batch, 4)
    target = x.sum(1, keepdim=True)
    loss_mse = ((model(x) - target) ** 2).mean()
    optimizer.zero_grad()
    (lr_scale * loss_mse).backward()
    optimizer.step()
'''


def toy_adapter(ref_lr_scale: float = 1.0, ref_batch_delta: int = 0):
    """An adapter over the toy reference: ours is written here independently."""
    mod = types.SimpleNamespace(REPO="toy/toyref", MARKER="toyref.py")

    def build(problem: Problem, path) -> Sides:
        import toyref

        torch.manual_seed(1)
        ours, ref = nn.Linear(4, 1), nn.Linear(4, 1)
        copy_state(ours, ref)
        opt_o = torch.optim.SGD(ours.parameters(), lr=0.1)
        opt_r = torch.optim.SGD(ref.parameters(), lr=0.1)

        def ours_iteration(i):
            x = torch.randn(problem.batch, 4)
            loss = ((ours(x) - x.sum(1, keepdim=True)) ** 2).mean()
            opt_o.zero_grad()
            loss.backward()
            opt_o.step()
            return [{"mse": float(loss.detach())}]

        def ref_iteration(i):
            rows = []
            with locals_at_step(opt_r, {"mse": "loss_mse"}, rows):
                toyref.train_step(ref, opt_r, problem.batch + ref_batch_delta, ref_lr_scale)
            return rows

        return Sides(ours_iteration, ref_iteration, {"model": (ours, ref)}, options={}, reference={"repo": mod.REPO})

    mod.build = build
    return mod


@pytest.fixture
def toy_root(tmp_path):
    root = tmp_path / "refs" / "toy+toyref"
    root.mkdir(parents=True)
    (root / "toyref.py").write_text(TOY_REFERENCE)
    (root / "COMMIT").write_text("0123abc\n")
    return tmp_path / "refs"


def tiny_problem(**kw):
    p = Problem(method="toy", teacher_arch="cnn_narrow", student_arch="cnn_narrow", **{"steps": 5, "batch": 4, **kw})
    p.build = lambda: p     # the toy adapter needs no teacher
    return p


def test_equal_implementations_match_and_reference_modules_are_unloaded(toy_root):
    result = run(toy_adapter(), tiny_problem(), toy_root)
    assert result.ok
    assert result.terms["mse"]["steps"] == 5 and result.terms["mse"]["rel"] < 1e-12
    assert result.params["model.weight"]["abs"] < 1e-12 and result.params["model.bias"]["abs"] < 1e-12
    assert result.reference["commit"] == "0123abc" and result.draws == 5
    assert "toyref" not in sys.modules and not any("toy+toyref" in p for p in sys.path)
    text = table(result)
    assert "PASS" in text and "loss mse (5 steps)" in text


def test_a_different_reference_is_reported(toy_root):
    result = run(toy_adapter(ref_lr_scale=1.01), tiny_problem(), toy_root)
    assert not result.ok
    assert result.terms["mse"]["rel"] > 1e-4          # the losses drift apart after the first step
    assert result.per_step[0]["ours"]["mse"] == pytest.approx(result.per_step[0]["reference"]["mse"], rel=1e-12)
    assert result.params["model.weight"]["rel"] > 1e-4
    assert "FAIL" in table(result)


def test_different_draws_cannot_be_compared(toy_root):
    with pytest.raises(ParityError, match="shape"):
        run(toy_adapter(ref_batch_delta=1), tiny_problem(), toy_root)


def test_tape_replays_each_function_in_order():
    tape = Tape()
    with tape.recording():
        a, b, c = torch.randn(3), torch.randint(0, 10, (4,)), torch.randn(2, 2)
    with tape.replaying():
        a2 = torch.randn(3)
        b2 = torch.randint(0, 10, (4,))
        assert tape.unused() == {"randn": 1}
        c2 = torch.randn(2, 2)
    assert torch.equal(a, a2) and torch.equal(b, b2) and torch.equal(c, c2) and not tape.unused()
    with pytest.raises(ParityError, match="drew only"), tape.replaying():
        torch.randn(3)
    assert torch.randn is not None and torch.randn.__module__ == "torch"      # restored


def test_copy_state_checks_names_and_shapes():
    a, b = nn.Sequential(nn.Linear(3, 2)), nn.Sequential(nn.Linear(3, 2))
    copy_state(a, b)
    assert torch.equal(a[0].weight, b[0].weight)
    with pytest.raises(ParityError, match="keys differ"):
        copy_state(a, nn.Linear(3, 2))
    with pytest.raises(ParityError, match="shape"):
        copy_state(a, nn.Sequential(nn.Linear(4, 2)))
    renamed = nn.Linear(3, 2)
    copy_state(a, renamed, rename=lambda k: k.split(".", 1)[1])
    assert torch.equal(renamed.bias, a[0].bias)


def test_compare_groups_parameters_and_running_statistics():
    a = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    b = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    copy_state(a, b)
    with torch.no_grad():
        b[1].running_mean += 0.5
    diffs = compare_states(a, b, "m")
    assert set(diffs) == {"m.0", "m.1", "m.1 (running stats)"}
    assert diffs["m.0"].ok and diffs["m.1"].ok and not diffs["m.1 (running stats)"].ok
    assert value_diff(1.0, 1.0 + 2e-4).rel > 1e-4 and not value_diff(1.0, 1.0 + 2e-4).ok
    assert value_diff(0.0, 1e-12).ok and value_diff(0.0, 0.0).rel == 0


def test_locals_and_returns_are_captured():
    w = nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([w], lr=0.1)

    def released_step():
        loss_a = (w * 2).sum()
        opt.zero_grad()
        loss_a.backward()
        opt.step()

    rows = []
    with locals_at_step(opt, {"a": "loss_a", "twice": lambda loc: 2 * loc["loss_a"]}, rows):
        released_step()
    assert rows == [{"a": 2.0, "twice": 4.0}] and "step" not in vars(opt)

    sgd_step, seen = torch.optim.SGD.step, []
    with locals_at_each_step(torch.optim.SGD, lambda o, loc: seen.append((o is opt, float(loc["loss_a"].detach())))):
        released_step()
    assert seen == [(True, pytest.approx(1.6))] and torch.optim.SGD.step is sgd_step

    class Ours:
        def step(self):
            return {"x": torch.tensor(1.5)}

    obj, out = Ours(), []
    with returns_of(obj, "step", out):
        obj.step()
    assert out == [{"x": 1.5}] and "step" not in vars(obj)


def test_pool_iteration_terms_rows_in_order_and_restored():
    class Pooled:                                              # the shape of deepinv / cmi / fast
        def __init__(self, wrapped: bool):
            self.wrapped = wrapped

        def losses(self, x):
            terms = {"bn": torch.tensor(x), "oh": torch.tensor(0.25)}
            return (terms, None) if self.wrapped else terms

        def student_step(self):
            return torch.tensor(3.0)

        def train_iteration(self, i):
            for x in (1.0, 2.0):
                self.losses(x)
            self.student_step()

    plain = Pooled(wrapped=False)
    assert pool_iteration_terms(plain, 0) == [{"g_bn": 1.0, "g_oh": 0.25, "g_total": 1.25},
                                              {"g_bn": 2.0, "g_oh": 0.25, "g_total": 2.25}, {"s_kd": 3.0}]
    assert "losses" not in vars(plain) and "student_step" not in vars(plain)
    rows = pool_iteration_terms(Pooled(wrapped=True), 0, terms_of=lambda out: out[0])
    assert rows[1] == {"g_bn": 2.0, "g_oh": 0.25, "g_total": 2.25} and len(rows) == 3


def test_reference_code_shims_and_cleans_up(tmp_path):
    (tmp_path / "needs_shims.py").write_text(
        "import torchvision.models.utils\nimport torch\nX = torch.zeros(1).cuda()\n")
    with reference_code(tmp_path):
        import needs_shims
        assert needs_shims.X.device.type == "cpu"
    assert "needs_shims" not in sys.modules
    assert torch.Tensor.cuda.__name__ == "cuda"


def test_locate_finds_named_checkouts(tmp_path):
    (tmp_path / "zju-vipa+CMI" / "datafree").mkdir(parents=True)
    (tmp_path / "zju-vipa+CMI" / "datafree" / "x.py").write_text("")
    assert locate(tmp_path, "zju-vipa/CMI", "datafree/x.py").name == "zju-vipa+CMI"
    assert locate(tmp_path / "zju-vipa+CMI", "zju-vipa/CMI", "datafree/x.py").name == "zju-vipa+CMI"


@pytest.mark.parametrize("argv, message", [
    (["parity", "nosuch", "--reference", "."], "no parity adapter"),
    (["parity", "dafl", "--reference", "/nonexistent/x"], "not a folder"),
    (["parity", "dafl", "--reference", "."], "no checkout of github.com/zju-vipa/CMI"),
    (["parity", "dafl", "--reference", ".", "--pair", "wrn40_2"], "TEACHER:STUDENT"),
])
def test_bad_input_exits_2_before_writing(argv, message, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(argv + ["--json", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()


# ---- the real comparisons --------------------------------------------------------------------------------
REFERENCE_ROOT = os.environ.get("DFKD_REFERENCE_ROOT")


@pytest.mark.reference
@pytest.mark.skipif(not REFERENCE_ROOT, reason="DFKD_REFERENCE_ROOT names no folder of reference checkouts")
@pytest.mark.parametrize("method", sorted(ADAPTERS))
def test_matches_released_code(method, tmp_path):
    out = tmp_path / "parity.json"
    assert main(["parity", method, "--reference", REFERENCE_ROOT, "--steps", "5", "--batch", "8",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["problem"]["steps"] == 5 and result["terms"] and result["params"]
    # equal within the tolerance, or (chaotic adversarial dynamics) within 10x the rounding floor
    assert result["ok"] or result["within_floor"]
    floor = result["floor"]
    assert all(t["rel"] <= 1e-4 or t["abs"] <= 1e-9 or t["rel"] <= 10 * floor["terms"][k]
               for k, t in result["terms"].items())
    assert adapter(method).REPO.split("/")[1] in result["reference"]["repo"]


@pytest.mark.parametrize("name,extra,terms", [
    ("cmi", {"bank_size": 64, "n_neg": 8}, {"g_bn", "g_oh", "g_adv", "g_cr", "s_kd"}),
    ("fast-2", {"warmup": 0}, {"g_bn", "g_oh", "g_adv", "s_kd"}),
    ("nayer", {"warmup": 0, "g_loops": 1, "synthesis_batch_size": 8, "label_embedding": "random",
               "label_embedding_dim": 16, "le_emb_size": 16},
     {"g_bn", "g_oh", "g_adv", "s_kd"}),
])
def test_kornia_views_option_runs(name, extra, terms):
    """The compatibility option that the cmi and fast parity needs: the views through kornia, as released."""
    pytest.importorskip("kornia")
    from benchmark.build import build_method
    from benchmark.config import RunConfig, apply_overrides
    from benchmark.data import get_dataset
    from benchmark.models import create_model
    from benchmark.registry import METHODS
    import methods  # noqa: F401

    spec = get_dataset("digits")
    torch.manual_seed(0)
    teacher = create_model("cnn_narrow", 10, spec.image_shape).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = create_model("cnn_narrow", 10, spec.image_shape)
    cls = METHODS.get(name)
    cfg = apply_overrides(cls.Config(), {"batch_size": 8, "g_steps": 2, "kd_steps": 1, "ngf": 8,
                                         "kornia_augment": True, **extra})
    method = build_method(cls, teacher, student, spec, torch.device("cpu"), cfg,
                          RunConfig(precision="fp32", channels_last=False), iterations=1)
    assert method.kornia_view is not None if name != "cmi" else method.kornia_views is not None
    logs = method.train_iteration(0)
    assert terms <= set(logs) and len(method.pool) == 8
    assert all(torch.isfinite(v) for v in logs.values())


def test_markdown_report_lists_terms_groups_and_uncompared_methods(toy_root, monkeypatch):
    import argparse

    import benchmark.parity
    from benchmark.parity.report import markdown

    monkeypatch.setattr(benchmark.parity, "NOT_COMPARED", {"other": "no adapter yet"})

    result = run(toy_adapter(), tiny_problem(), toy_root)
    args = argparse.Namespace(pair="a:b", batch=4, dtype="float64", seed=0)
    text = markdown([result], {}, args, {"toy": ["why it differs"]})
    assert "## `toy`" in text and "| loss `mse` (5 steps) |" in text and "| parameters `model.weight` after K |" in text
    assert "`0123abc`" in text and "- why it differs" in text
    assert "## Not compared yet" in text and "- `other`: no adapter yet" in text


def test_report_from_json_files(toy_root, tmp_path):
    from benchmark.parity.core import write_json

    result = run(toy_adapter(), tiny_problem(), toy_root)
    path = tmp_path / "toy.json"
    write_json(path, [result.to_dict() | {"defaults": None, "default_error": "draws differ", "explanations": ["x"]}])
    md = tmp_path / "fidelity.md"
    assert main(["parity", "--from-json", str(path), "--markdown", str(md)]) == 0
    text = md.read_text()
    assert "## `toy`" in text and "Cannot be compared step by step: draws differ" in text
    assert main(["parity", "--from-json", str(tmp_path / "missing.json"), "--markdown", str(md)]) == 2


def test_floor_does_not_excuse_a_real_difference(toy_root):
    """On stable dynamics the floor (ours against itself, perturbed by 1e-15) stays at rounding level, so a
    reference that computes something else is still reported."""
    same = run(toy_adapter(), tiny_problem(), toy_root, with_floor=True)
    assert same.ok and same.within_floor and same.floor["terms"]["mse"] < 1e-12
    other = run(toy_adapter(ref_lr_scale=1.01), tiny_problem(), toy_root, with_floor=True)
    assert not other.ok and not other.within_floor
    assert other.floor["params"]["model.weight"] < 1e-12 < other.params["model.weight"]["rel"]


class LogisticState(nn.Module):
    """The state of the logistic map (one frozen scalar parameter, started at 0.3)."""

    def __init__(self, dtype=torch.float64):
        super().__init__()
        self.x = nn.Parameter(torch.tensor(0.3, dtype=dtype), requires_grad=False)


def logistic_step(state: LogisticState, expanded: bool):
    """One iteration of the logistic map at r = 3.9 in one of two mathematically equal orders."""
    def iteration(i):
        with torch.no_grad():
            x = state.x
            x.copy_(3.9 * x - 3.9 * x * x if expanded else 3.9 * x * (1 - x))
        return [{"x": float(state.x)}]
    return iteration


def chaotic_adapter(dtype=torch.float64):
    """The logistic map at r = 3.9 computed in two mathematically equal orders: rounding differences grow
    until the two sequences are unrelated, as do two runs of the same order from slightly different starts."""
    mod = types.SimpleNamespace(REPO="toy/none", MARKER="none")

    def build(problem, path):
        ours, ref = LogisticState(dtype), LogisticState(dtype)
        ours_iteration, ref_iteration = logistic_step(ours, expanded=False), logistic_step(ref, expanded=True)
        return Sides(ours_iteration, ref_iteration, {"state": (ours, ref)}, options={}, reference={"repo": mod.REPO})

    mod.build = build
    return mod


def test_floor_accepts_rounding_amplified_by_chaotic_dynamics():
    result = run(chaotic_adapter(), tiny_problem(steps=80), None, with_floor=True)
    assert not result.ok and result.terms["x"]["rel"] > 1e-2           # the two orders end far apart ...
    assert result.within_floor and result.floor["terms"]["x"] > 1e-2   # ... as do two runs of one order
    assert "within the rounding floor" in table(result)


def reinitialising_adapter(hook: bool):
    """The logistic map again, but its state is re-initialised (to 0.3) in the first iteration, as NAYER's
    generator is rebuilt: the perturbation of the initial state is wiped unless the adapter's ``perturb`` hook
    perturbs the re-initialised value too."""
    mod = types.SimpleNamespace(REPO="toy/none", MARKER="none")

    def build(problem, path):
        ours, ref = LogisticState(), LogisticState()
        scale = {"value": 1.0}
        step = logistic_step(ours, expanded=False)

        def ours_iteration(i):
            if i == 0:
                with torch.no_grad():
                    ours.x.fill_(0.3 * scale["value"])
            return step(i)

        ref_iteration = logistic_step(ref, expanded=True)

        perturb = (lambda eps: scale.__setitem__("value", 1 + eps)) if hook else None
        return Sides(ours_iteration, ref_iteration, {"state": (ours, ref)}, options={},
                     reference={"repo": mod.REPO}, perturb=perturb)

    mod.build = build
    return mod


def test_floor_perturbs_what_the_run_reinitialises_through_the_adapter_hook():
    wiped = run(reinitialising_adapter(False), tiny_problem(steps=80), None, with_floor=True)
    assert wiped.floor["terms"]["x"] == 0 and not wiped.within_floor
    hooked = run(reinitialising_adapter(True), tiny_problem(steps=80), None, with_floor=True)
    assert hooked.floor["terms"]["x"] > 1e-2 and hooked.within_floor


def test_floor_perturbs_float32_by_ulps_not_below_its_resolution():
    """In float32 a perturbation of 1e-15 leaves the weights unchanged (floor 0, every rounding difference
    would count as real); the floor then perturbs by a few float32 ulps."""
    from benchmark.parity.floor import EPS, eps_for

    assert eps_for(torch.float64) == EPS and 1e-7 < eps_for(torch.float32) < 1e-6
    result = run(chaotic_adapter(torch.float32), tiny_problem(steps=80, dtype=torch.float32), None, with_floor=True)
    assert not result.ok and result.floor["eps"] == eps_for(torch.float32)
    assert result.within_floor and result.floor["terms"]["x"] > 1e-2


def test_cpsc_generator_names_and_pair():
    from benchmark.models.generators import ConditionalGenerator
    from benchmark.parity import cpsc
    from benchmark.parity.cli import _problem

    keys = [cpsc.generator_name(k) for k in ConditionalGenerator(10, (3, 32, 32)).state_dict()]
    assert len(set(keys)) == len(keys)
    assert {"l1.0.weight", "conv_blocks0_0.weights.weight", "conv_blocks3_2.biases.weight",
            "conv_blocks3_0.bias", "conv_blocks2_1.running_var"} <= set(keys)
    import argparse
    args = argparse.Namespace(pair_given=False, steps=5, batch=8, dtype="float64", seed=0)
    assert (_problem(args, "cpsc-dfkd", "wrn40_2", "wrn16_1", True).student_arch, _problem(
        args, "dafl", "wrn40_2", "wrn16_1", True).student_arch) == ("wrn16_2", "wrn16_1")
    args.pair_given = True
    assert _problem(args, "cpsc-dfkd", "wrn40_2", "wrn16_1", True).student_arch == "wrn16_1"


def test_cudfkd_generator_names_follow_the_released_dcgan_generator():
    """Our width-4 generator's keys map one to one onto ``DCGAN_Generator_CIFAR10``'s (``project.1``, ``main.*``
    with the same module indices), so the state dicts copy across and compare group by group."""
    from benchmark.models.generators import DataFreeGenerator
    from benchmark.parity import cudfkd

    keys = [cudfkd.generator_name(k) for k in DataFreeGenerator((3, 32, 32), 512, 8, 4).state_dict()]
    assert len(set(keys)) == len(keys) and all(k.split(".")[0] in ("project", "main") for k in keys)
    # the released layout: Flatten + Linear; BN, up, conv, BN, LReLU, up, conv, BN, LReLU, conv, Sigmoid
    assert {"project.1.weight", "project.1.bias", "main.0.running_var", "main.2.weight", "main.3.weight",
            "main.6.weight", "main.7.running_mean", "main.9.weight", "main.9.bias"} <= set(keys)
    assert "cudfkd" in ADAPTERS and cudfkd.MARKER == "datafree/synthesis/cudfkd.py"


def test_nayer_generator_names_follow_the_released_nl_generator():
    """Our noisy-layer generator's keys map one to one onto ``NLGenerator``'s (``le1.i``, ``l1.0``,
    ``conv_blocks.*``; ``label_emb`` becomes a buffer there)."""
    from benchmark.parity import nayer
    from methods.nayer import NoisyLayerGenerator

    generator = NoisyLayerGenerator(torch.randn(10, 6), (3, 32, 32), 25, 8, 12)
    keys = [nayer.generator_name(k) for k in generator.state_dict()]
    assert len(set(keys)) == len(keys)
    assert {"label_emb", "n1.weight", "n1.running_var", "le1.0.weight", "le1.2.bias", "l1.0.weight",
            "conv_blocks.0.weight", "conv_blocks.2.weight", "conv_blocks.6.weight", "conv_blocks.9.bias"} <= set(keys)
    assert not any(k.startswith(("noisy.", "body.", "l1.weight")) for k in keys)


def test_every_data_free_method_is_compared_or_says_why_not():
    from benchmark.parity import NOT_COMPARED
    from benchmark.registry import METHODS, load_plugins

    load_plugins()
    data_free = {name for name in METHODS if METHODS.get(name).data_free}
    assert data_free <= set(ADAPTERS) | set(NOT_COMPARED), data_free - set(ADAPTERS) - set(NOT_COMPARED)
    assert not set(ADAPTERS) & set(NOT_COMPARED) and all(NOT_COMPARED.values())
    assert {"cudfkd", "adadfkd"} <= set(ADAPTERS)


def test_spaceshipnet_generator_names_follow_the_released_cmi_generator_v3():
    """Our split generator's keys map one to one onto ``CMIGeneratorV3``'s (``l1.0``, ``layer1``,
    ``conv_layer1.{0,1}``, ``conv_layer2.{0,1}``, ``conv_layer3.0``)."""
    from benchmark.parity import spaceshipnet
    from methods.spaceshipnet import SplitGenerator

    keys = [spaceshipnet.generator_name(k) for k in SplitGenerator((3, 32, 32), 256, 8).state_dict()]
    assert len(set(keys)) == len(keys)
    assert {"l1.0.weight", "l1.0.bias", "layer1.weight", "layer1.running_var", "conv_layer1.0.weight",
            "conv_layer1.1.running_mean", "conv_layer2.0.weight", "conv_layer2.1.bias", "conv_layer3.0.weight",
            "conv_layer3.0.bias"} <= set(keys)
    assert all(k.split(".")[0] in ("l1", "layer1", "conv_layer1", "conv_layer2", "conv_layer3") for k in keys)


def test_spaceshipnet_numpy_draws_return_ours():
    """The released channel exchange (per sample ``np.random.choice(C, C // 2)`` kept channels, the others from
    the mirror sample) fed by our draws gives our ``channel_exchange``; the level and the coin are ours too."""
    from benchmark.parity.spaceshipnet import _TapeRandom
    from methods.spaceshipnet import channel_exchange

    feats = torch.randn(6, 8, 2, 2)
    tape = Tape()
    with tape.recording():
        level = int(torch.randint(3, ()))
        coin = float(torch.rand(()))
        ours = channel_exchange(feats)
    draws = _TapeRandom(tape)
    assert int(draws.choice([0, 1, 2], 1)[0]) == level and draws.rand() == coin
    released = feats.clone()
    for i in range(6):
        mask = torch.zeros(8).scatter_(0, torch.as_tensor(draws.choice(8, 4, replace=False)), 1).view(8, 1, 1)
        released[i] = feats[i] * mask + feats[5 - i] * (1 - mask)
    assert torch.equal(released, ours) and not tape.unused()


def test_pre_dfkd_names_and_shims(tmp_path, monkeypatch):
    """The pre-dfkd adapter's own mechanics: our generators' and encoder's keys map one to one onto the released
    ``Generator`` / ``MemoryGenerator`` / ``Encoder`` layout, the replay batch never drops below 2, the teacher
    wrapper gives the released ``out_feature`` interface, ``device='cuda'`` is dropped from ``torch.randn`` and
    the checkout's namespace packages are forgotten."""
    from benchmark.models import create_model
    from benchmark.parity import pre_dfkd
    from methods.pre_dfkd import PREEncoder, PREGenerator

    for spectral in (True, False):
        keys = [pre_dfkd.generator_name(k) for k in PREGenerator((3, 32, 32), 12, 8, spectral).state_dict()]
        assert len(set(keys)) == len(keys) and all(k.startswith(("l1.0.", "conv_blocks")) for k in keys)
        assert {"l1.0.bias", "conv_blocks0.0.running_var", "conv_blocks1.1.weight", "conv_blocks2.1.running_mean",
                "conv_blocks3.2.running_var"} <= set(keys)
        assert ("conv_blocks1.0.weight_u" in keys) == spectral
    keys = [pre_dfkd.generator_name(k) for k in PREEncoder((3, 32, 32), 12, 8).state_dict()]
    assert {"conv_blocks0.0.weight", "conv_blocks1.1.running_var", "conv_blocks2.1.bias", "fc_mu.weight",
            "fc_var.bias"} <= set(keys) and len(set(keys)) == len(keys)
    assert all(b // pre_dfkd.replay_divisor(b) >= 2 for b in range(4, 65))
    assert [pre_dfkd.replay_divisor(b) for b in (8, 15, 16, 1024)] == [4, 7, 8, 8]

    model = create_model("wrn16_1", 10, (3, 32, 32)).eval()
    x = torch.randn(2, 3, 32, 32)
    wrapped = pre_dfkd.OutFeature(model)
    logits, features = wrapped(x, out_feature=True)
    ref_logits, ref_feature = model(x, return_features=True)
    assert torch.equal(logits, ref_logits) and torch.equal(features[-1], ref_feature)
    assert torch.equal(wrapped(x), ref_logits)

    with pre_dfkd._randn_on_cpu():
        z = torch.randn((2, 3), requires_grad=True, device="cuda")
    assert z.device.type == "cpu" and z.requires_grad and torch.randn.__module__ == "torch"

    (tmp_path / "nspkg").mkdir()
    (tmp_path / "nspkg" / "leaf.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import nspkg.leaf  # noqa: F401
    assert "nspkg" in sys.modules
    pre_dfkd._forget_namespace_packages(tmp_path)
    assert "nspkg" not in sys.modules
    sys.modules.pop("nspkg.leaf", None)
