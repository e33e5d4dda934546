"""Method-specific tests of the generator-based baselines dafl, dfad, zskt and dfq: gradient paths, loss
signs, counters, the attention term of zskt and the presets."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import methods  # noqa: F401
from benchmark.config import ConfigError
from benchmark.data import get_dataset
from benchmark.models import create_model
from benchmark.records import Cell
from benchmark.registry import DATASETS, METHODS
from benchmark.resolve import resolve_cell
from methods.zskt import attention_loss, stage_modules
from method_kit import assert_each_step_updates_only_its_network, build_small, generator_terms

GENERATIVE = ["dafl", "dfad", "zskt", "dfq"]
ADVERSARIAL = ["dfad", "zskt", "dfq"]
SMALL = {"batch_size": 16, "ngf": 8, "s_steps": 2}


def build(name, teacher, iterations=10, **overrides):
    return build_small(name, teacher, iterations, seed=0, **{**SMALL, **overrides})


def only(name, term):
    """Overrides that switch off every generator term of ``name`` except ``term``."""
    weights = {"dafl": ("oh", "act", "balance"), "dfad": ("adv",), "zskt": ("adv",),
               "dfq": ("adv", "bn", "oh", "balance")}[name]
    return {w: (getattr(METHODS.get(name).Config(), w) if w == term else 0.0) for w in weights}


def generator_grads(method, loss):
    params = [p for p in method.generator.parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return [g for g in grads if g is not None]


# ---- gradient paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GENERATIVE)
def test_every_generator_term_sends_gradient_to_the_generator(name, teacher):
    method = build(name, teacher)
    terms = generator_terms(method)
    expected = {"dafl": {"oh", "act", "balance"}, "dfad": {"adv"}, "zskt": {"adv"},
                "dfq": {"bn", "oh", "adv", "balance"}}[name]
    assert set(terms) == expected
    for key, term in terms.items():
        assert term.dim() == 0 and torch.isfinite(term), key
        grads = generator_grads(method, term)
        assert grads and sum(g.abs().sum() for g in grads) > 0, f"{name}: term {key} gives the generator no gradient"


@pytest.mark.parametrize("name", GENERATIVE)
def test_teacher_gets_no_gradient_and_each_step_updates_only_its_network(name, teacher):
    assert_each_step_updates_only_its_network(build(name, teacher), teacher)


@pytest.mark.parametrize("name", ["dafl"])
def test_dafl_generator_loss_does_not_involve_the_student(name, teacher):
    method = build(name, teacher)
    calls = []
    handle = method.student.register_forward_hook(lambda *a: calls.append(1))
    try:
        method.generator_step()
    finally:
        handle.remove()
    assert calls == []


# ---- loss signs ------------------------------------------------------------------------------------------


def discrepancy(method, x):
    from methods.dfad import l1_discrepancy
    from benchmark.losses import kd_kl

    with torch.no_grad():
        s, t = method.student(x), method.teacher(x)
    return float(l1_discrepancy(s, t) if method.name == "dfad" else kd_kl(s, t))


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_adversarial_term_is_minus_the_student_teacher_discrepancy(name, teacher):
    method = build(name, teacher, **only(name, "adv"))
    method.student.eval()
    terms = generator_terms(method)
    assert float(terms["adv"].detach()) < 0, f"{name}: the generator must maximise the discrepancy"
    # the adversarial term plays against the real student (Fast-Datafree's issue #11 gives KL(t, t) = 0)
    assert abs(float(terms["adv"].detach())) > 1e-4


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_a_generator_step_increases_the_discrepancy(name, teacher):
    """One small Adam step on a fixed latent batch moves the generator up the student-teacher discrepancy."""
    method = build(name, teacher, lr_g=1e-4, **only(name, "adv"))
    z = method.draw_z(16)
    method.draw_z = lambda n: z
    method.student.eval()
    method.generator.train()
    before = discrepancy(method, method.generator(z).detach())
    for _ in range(3):
        method.generator_step()
    method.generator.train()
    after = discrepancy(method, method.generator(z).detach())
    assert after > before, f"{name}: discrepancy {before:.4f} -> {after:.4f} after generator steps"


@pytest.mark.parametrize("name", ["dafl", "dfq"])
def test_balance_and_one_hot_signs(name, teacher):
    method = build(name, teacher)
    terms = generator_terms(method)
    import math

    # balance = -weight * entropy of the mean prediction: minimising it spreads the classes
    assert -math.log(10) * method.cfg.balance - 1e-4 <= float(terms["balance"].detach()) <= 0
    assert float(terms["oh"].detach()) >= 0
    if name == "dafl":
        assert float(terms["act"].detach()) <= 0     # minus the mean absolute activation


def test_dfq_bn_term_is_the_teacher_statistics_distance(teacher):
    method = build("dfq", teacher, **only("dfq", "bn"))
    terms = generator_terms(method)
    assert float(terms["bn"].detach()) > 0
    assert METHODS.get("dfq").requires_bn
    lenet = create_model("lenet5", 10, (1, 32, 32))
    with pytest.raises(ConfigError, match="BatchNorm"):
        METHODS.get("dfq").check_compatible(lenet, get_dataset("digits"))


# ---- zskt's attention transfer ------------------------------------------------------------------------


def test_zskt_pairs_stages_by_spatial_size(teacher):
    method = build("zskt", teacher)
    assert len(method.pairs) == 3     # 16x16, 8x8 and 4x4 stages of cnn_wide / cnn_narrow


@pytest.mark.parametrize("pair,expected", [(("wrn40_2", "wrn16_1"), 3), (("resnet34", "resnet18"), 4),
                                           (("vgg11", "resnet18"), 4)])
def test_zskt_stage_pairs_for_cifar_models(pair, expected):
    t, s = (create_model(n, 10, (3, 32, 32)) for n in pair)
    from methods.zskt import StageOutputs

    probe = torch.zeros(2, 3, 32, 32)
    t.eval(), s.eval()
    with torch.no_grad():
        _, t_out = StageOutputs(t).record(lambda: t(probe))
        _, s_out = StageOutputs(s).record(lambda: s(probe))
    sizes = {tuple(h.shape[2:]) for h in t_out} & {tuple(h.shape[2:]) for h in s_out}
    assert len(sizes) == expected and len(stage_modules(t)) >= expected


def test_attention_loss_is_zero_for_equal_maps_and_positive_otherwise():
    a = torch.rand(4, 8, 6, 6)
    assert float(attention_loss([a], [a])) == 0.0
    assert float(attention_loss([a], [a.flip(3)])) > 0
    assert float(attention_loss([a], [3 * a])) < 1e-12      # maps are normalised: scale does not matter


@pytest.mark.parametrize("clip", [0.0, 5.0])
def test_zskt_clips_the_gradient_norm_only_when_asked(clip, teacher):
    method = build("zskt", teacher, grad_clip=clip)
    params = list(method.student.parameters())
    loss = 1e4 * method.student(torch.randn(8, 1, 16, 16)).pow(2).mean()
    method.optimize(torch.optim.SGD(params, lr=0.0), loss)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    assert norm <= 5.0 + 1e-3 if clip else norm > 50.0


def test_zskt_attention_term_trains_the_student_and_can_be_switched_off(teacher):
    method = build("zskt", teacher)
    logs = method.student_step()
    assert {"s_kd", "s_at"} <= set(logs) and float(logs["s_at"]) > 0
    x = method.synthesize(8)
    terms = method.student_terms(x)
    grads = torch.autograd.grad(terms["at"], [p for p in method.student.parameters()], allow_unused=True)
    assert sum(g.abs().sum() for g in grads if g is not None) > 0
    plain = build("zskt", teacher, at_beta=0.0)
    assert set(plain.student_step()) == {"s_kd", "s_total"}


# ---- loop, counters, samples ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GENERATIVE)
def test_counters_and_logs_of_one_iteration(name, teacher):
    method = build(name, teacher, g_steps=2, s_steps=3, batch_size=12, synthesis_batch_size=10)
    logs = method.train_iteration(0)
    assert method.counters == {"student_steps": 3, "synthetic_images": 2 * 10 + 3 * 12,
                               "teacher_forwards": 2 * 10 + 3 * 12}
    for key, value in logs.items():
        assert value.dim() == 0 and not value.requires_grad, key
    assert method.sched_s.last_epoch == 1


@pytest.mark.parametrize("decay", [False, True])
def test_generator_lr_decays_with_the_student_only_when_asked(decay, teacher):
    method = build("dfad", teacher, iterations=4, decay_lr_g=decay)
    lr_g = method.opt_g.param_groups[0]["lr"]
    for i in range(2):
        method.train_iteration(i)
    ratio_s = method.opt_s.param_groups[0]["lr"] / method.cfg.lr_s
    assert 0 < ratio_s < 1
    assert method.opt_g.param_groups[0]["lr"] == pytest.approx(lr_g * ratio_s if decay else lr_g)
    state = method.state_dict()
    assert ("sched_g" in state) == decay
    resumed = build("dfad", teacher, iterations=4, decay_lr_g=decay)
    resumed.load_state_dict(state)
    assert resumed.opt_g.param_groups[0]["lr"] == pytest.approx(method.opt_g.param_groups[0]["lr"])


@pytest.mark.parametrize("name", GENERATIVE)
def test_sample_returns_normalised_images_without_labels(name, teacher):
    method = build(name, teacher)
    before = dict(method.counters)
    x, y = method.sample(7)
    assert x.shape == (7, 1, 16, 16) and y is None
    spec = get_dataset("digits")
    lo, hi = (0 - spec.mean[0]) / spec.std[0], (1 - spec.mean[0]) / spec.std[0]
    assert float(x.min()) >= lo - 1e-5 and float(x.max()) <= hi + 1e-5     # a sigmoid image, normalised
    assert method.counters == before


@pytest.mark.parametrize("sample_mode", ["eval", "train"])
def test_sample_is_the_student_batch_and_leaves_the_generator_unchanged(sample_mode, teacher):
    method = build("dfad", teacher, sample_mode=sample_mode, batch_size=12)
    method.train_iteration(0)
    state = {k: v.clone() for k, v in method.generator.state_dict().items()}
    modes = [m.training for m in method.generator.modules()]
    torch.manual_seed(3)
    x, _ = method.sample(12)
    assert [m.training for m in method.generator.modules()] == modes
    for k, v in method.generator.state_dict().items():
        assert torch.equal(v, state[k]), f"sample() changed generator entry {k}"
    torch.manual_seed(3)
    assert torch.equal(method.synthesize(12).float(), x)     # the student's batch for the same draws
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(3)
        method.generator.train(sample_mode == "eval")        # the other mode draws other images
        assert not torch.allclose(method.generator(method.draw_z(12)), x)


def test_config_validation():
    """Declared ranges first, then the method's own cross-field checks, as the runner runs them."""
    from benchmark.checks import check_ranges

    def check(cfg):
        check_ranges(cfg)
        cfg.validate()

    with pytest.raises(ConfigError):
        check(dataclasses.replace(METHODS.get("dfad").Config(), sample_mode="bogus"))
    with pytest.raises(ConfigError):
        check(dataclasses.replace(METHODS.get("dafl").Config(), batch_size=0))
    with pytest.raises(ConfigError, match="synthesis batch"):
        check(dataclasses.replace(METHODS.get("dafl").Config(), batch_size=1))


# ---- presets -------------------------------------------------------------------------------------------------


def test_defaults_are_the_datafree_recipe():
    for name in GENERATIVE:
        c = METHODS.get(name).Config()
        assert (c.batch_size, c.g_steps, c.lr_s, c.lr_g, c.momentum, c.weight_decay) == (256, 1, 0.1, 1e-3, 0.9, 1e-4)
        assert c.s_steps == (10 if name == "dfq" else 5)
    assert METHODS.get("dafl").Config().nz == 512 and METHODS.get("dfad").Config().nz == 256
    d = METHODS.get("dafl").Config()
    assert (d.oh, d.act, d.balance) == (1.0, 0.001, 20.0)
    q = METHODS.get("dfq").Config()
    assert (q.adv, q.bn, q.oh, q.balance) == (1.0, 1.0, 1.0, 20.0)
    assert METHODS.get("zskt").Config().at_beta == 250.0


@pytest.mark.skipif(not {"cifar10", "cifar100"} <= set(DATASETS.list()), reason="CIFAR datasets not registered")
@pytest.mark.parametrize("name", GENERATIVE)
def test_paper_presets(name):
    r = resolve_cell(Cell(name, "cifar100", "wrn40_2", "wrn16_1", budget="paper"))
    per_epoch = 40 if name == "dfq" else 80
    assert r.run_cfg.iterations == 200 * per_epoch and r.method_cfg.batch_size == 256
    assert r.method_cfg.ngf == 64 and r.method_cfg.lr_s == 0.1
    r = resolve_cell(Cell(name, "cifar100", "resnet34", "resnet18", budget="paper"))
    assert r.method_cfg.lr_s == (0.05 if name == "dfq" else 0.1)
    assert resolve_cell(Cell(name, "cifar10", "resnet34", "resnet18", budget="paper")).method_cfg.lr_s == 0.1


def test_mnist_paper_budgets_are_the_authors_mnist_recipes():
    import math

    r = resolve_cell(Cell("dafl", "mnist", "lenet5", "lenet5_half", budget="paper"))
    c = r.method_cfg
    assert r.run_cfg.iterations == 200 * 120 and (c.batch_size, c.g_steps, c.s_steps) == (512, 1, 1)
    assert (c.lr_g, c.beta1_g, c.lr_s, c.optimizer_s) == (0.2, 0.9, 2e-3, "adam")
    assert (c.weight_decay, c.eta_min_ratio) == (0.0, 1.0)
    assert (c.nz, c.oh, c.act, c.temperature) == (100, 1.0, 0.1, 1.0)
    assert c.balance == pytest.approx(5 / math.log(10))       # ie 5 with log10
    r = resolve_cell(Cell("dfad", "mnist", "lenet5", "lenet5_half", budget="paper"))
    c = r.method_cfg
    assert r.run_cfg.iterations == 40 * 50 and (c.batch_size, c.g_steps, c.s_steps, c.nz) == (512, 1, 5, 100)
    assert (c.lr_s, c.optimizer_s, c.momentum, c.weight_decay) == (0.01, "sgd", 0.9, 1e-4)
    assert (c.lr_g, c.eta_min_ratio) == (1e-3, 1.0)


def test_every_method_resolves_a_paper_budget_on_mnist():
    """Every method that can run on an MNIST LeNet-5 pair has a ``paper:mnist`` budget (SpaceshipNet's CAM
    needs a resnet/wrn/vgg/CNN head and is refused up front instead)."""
    from benchmark.config import NotApplicableError

    resolved = 0
    for name in METHODS.list():
        pair = ("lenet5_bn", "lenet5_half_bn") if METHODS.get(name).requires_bn else ("lenet5", "lenet5_half")
        try:
            cell = resolve_cell(Cell(name, "mnist", *pair, budget="paper"))
        except NotApplicableError:
            assert name == "spaceshipnet"
            continue
        assert cell.run_cfg.iterations >= 0
        resolved += 1
    assert resolved == len(METHODS.list()) - 1


def test_adam_student_and_constant_lrs(teacher):
    method = build("dafl", teacher, iterations=4, optimizer_s="adam", lr_s=2e-3, weight_decay=0.0, eta_min_ratio=1.0)
    assert isinstance(method.opt_s, torch.optim.Adam)
    before = [p.detach().clone() for p in method.student.parameters()]
    for i in range(2):
        method.train_iteration(i)
    assert method.opt_s.param_groups[0]["lr"] == pytest.approx(2e-3)
    assert any(not torch.equal(a, b) for a, b in zip(before, method.student.parameters()))
    from benchmark.checks import check_ranges

    with pytest.raises(ConfigError, match="optimizer_s"):
        check_ranges(dataclasses.replace(METHODS.get("dafl").Config(), optimizer_s="lbfgs"))
    with pytest.raises(ConfigError, match="eta_min_ratio"):
        check_ranges(dataclasses.replace(METHODS.get("dafl").Config(), eta_min_ratio=1.5))
