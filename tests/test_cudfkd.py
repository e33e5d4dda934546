"""CuDFKD: gradient paths, the self-paced weight, the adversarial schedule, the generator and the presets."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import methods  # noqa: F401
from benchmark.config import ConfigError
from benchmark.records import Cell
from benchmark.registry import DATASETS, METHODS
from benchmark.resolve import resolve_cell
from methods._curriculum import pace, self_paced_weight, stepped_weight
from methods.cudfkd import agreeing_kl
from method_kit import assert_each_step_updates_only_its_network, build_small, generator_terms

SMALL = {"batch_size": 16, "ngf": 8, "s_steps": 2, "epoch_iterations": 2}


def build(teacher, iterations=10, **overrides):
    return build_small("cudfkd", teacher, iterations, seed=0, **{**SMALL, **overrides})


# ---- the curriculum pieces ------------------------------------------------------------------------------


def test_self_paced_weights():
    loss = torch.tensor([0.0, 1.0, 2.0, 3.0, 10.0])
    lam = 2.0
    log = self_paced_weight(loss, lam, "log")
    assert float(log[0]) == pytest.approx(1.0)                       # an easy sample counts fully
    assert float(log[2]) == pytest.approx((1 + math.exp(-2)) / 2)     # at the threshold: about a half
    assert torch.all(log[1:] < log[:-1]) and float(log[-1]) < 1e-3    # harder samples count less
    assert self_paced_weight(loss, lam, "hard").tolist() == [1, 1, 0, 0, 0]
    assert self_paced_weight(loss, lam, "soft").tolist() == pytest.approx([1, 0.5, 0, 0, 0])
    assert self_paced_weight(loss, lam, "none").tolist() == [1] * 5
    # no gradient through the weight
    x = torch.tensor(1.5, requires_grad=True)
    assert not self_paced_weight(x * 2, lam, "log").requires_grad
    # a growing threshold admits harder samples
    assert float(self_paced_weight(torch.tensor(3.0), pace(2.0, 1e-4, 10_000), "log")) > float(
        self_paced_weight(torch.tensor(3.0), pace(2.0, 1e-4, 0), "log"))


def test_adversarial_weight_schedule_matches_the_released_epoch_loop():
    def released(total_epochs, start, step, begin, end):
        """Weight during each epoch, as datafree_kd.py raises synthesizer.adv after an epoch."""
        adv, out = start, []
        for epoch in range(total_epochs):
            out.append(adv)
            if int(total_epochs * begin) < epoch < int(total_epochs * end):
                adv += step
        return out

    for epochs, begin, end in [(250, 0.25, 0.75), (400, 0.2, 0.8), (10, 0.25, 0.75), (7, 0.0, 1.0)]:
        want = released(epochs, 0.5, 0.05, begin, end)
        got = [stepped_weight(e * 40 + 17, 0.5, 0.05, begin, end, 40, epochs * 40) for e in range(epochs)]
        assert got == pytest.approx(want), (epochs, begin, end)


def test_agreeing_kl_counts_only_samples_where_student_and_teacher_agree():
    t = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    s = torch.tensor([[1.0, 0.0, 0.0], [3.0, 0.0, 0.0]])       # agrees on the first sample only
    per_sample = torch.nn.functional.kl_div(torch.log_softmax(s / 3, 1), torch.softmax(t / 3, 1),
                                            reduction="none").sum(1) * 9
    assert float(agreeing_kl(s, t, 3.0)) == pytest.approx(float(per_sample[0]) / 2)
    assert float(agreeing_kl(t, t, 3.0)) == pytest.approx(0.0, abs=1e-6)


# ---- gradient paths -------------------------------------------------------------------------------------


def agreeing_student(teacher):
    """A perturbed copy of the teacher: agrees on most samples but not exactly (the adversarial term counts
    only samples where the student and the teacher agree; an untrained student agrees on none)."""
    import copy

    student = copy.deepcopy(teacher)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * p.abs().mean() * torch.randn_like(p))
            p.requires_grad_(True)
    return student.eval()


def test_every_generator_term_sends_gradient_to_the_generator(teacher):
    method = build(teacher, adv=1.0)
    method.student = agreeing_student(teacher)
    terms = generator_terms(method)
    assert set(terms) == {"bn", "ent", "oh", "adv"}
    params = list(method.generator.parameters())
    for key, term in terms.items():
        assert term.dim() == 0 and torch.isfinite(term), key
        grads = torch.autograd.grad(term, params, allow_unused=True, retain_graph=True)
        assert sum(g.abs().sum() for g in grads if g is not None) > 0, key
    t = {k: float(v.detach()) for k, v in terms.items()}
    assert t["ent"] < 0 and t["oh"] >= 0 and t["bn"] > 0
    assert t["adv"] <= 0          # the generator maximises the agreeing-sample KL


def test_adversarial_term_is_off_until_the_schedule_turns_it_on(teacher):
    method = build(teacher, iterations=20, adv=0.0, adv_step=0.5)
    calls = []
    handle = method.student.register_forward_hook(lambda *a: calls.append(1))
    try:
        assert "adv" not in generator_terms(method) and calls == []
        method.counters["student_steps"] = 14 * method.cfg.s_steps     # iteration 14 of 20: epoch 7 of 10
        assert method.adv_weight() == pytest.approx(0.5 * 4)           # epochs 3..6 raised it
        assert "adv" in generator_terms(method) and calls
    finally:
        handle.remove()
    assert build(teacher, curriculum="none", adv=0.3).adv_weight() == 0.3


def test_each_step_updates_only_its_network(teacher):
    method = build(teacher, adv=1.0)
    logs = assert_each_step_updates_only_its_network(method, teacher)
    assert 0 < float(logs["s_weight"]) <= 1 + math.exp(-method.cfg.lambda_0)


@pytest.mark.parametrize("loss", ["l1", "kl"])
def test_student_loss_is_the_self_paced_weight_times_the_distillation_loss(loss, teacher):
    method = build(teacher, loss=loss)
    x = method.synthesize(8)
    method.counters["student_steps"] = 5000
    terms = method.student_terms(x)
    with torch.no_grad():
        s, t = method.student(x), method.teacher(x)
    raw = method.distillation_loss(s, t)
    lam = method.cfg.lambda_0 + method.cfg.lambda_growth * 5000
    v = (1 + math.exp(-lam)) / (1 + math.exp(float(raw) - lam))
    assert float(terms["kd"]) == pytest.approx(v * float(raw), rel=1e-5)
    grads = torch.autograd.grad(terms["kd"], list(method.student.parameters()))
    assert sum(g.abs().sum() for g in grads) > 0
    plain = build(teacher, loss=loss, curriculum="none")
    assert float(plain.student_terms(x)["kd"]) == pytest.approx(float(raw), rel=1e-5)


def test_counters_logs_and_generator_init(teacher):
    method = build(teacher, s_steps=3, batch_size=12)
    logs = method.train_iteration(0)
    assert method.counters == {"student_steps": 3, "synthetic_images": 12 + 3 * 12, "teacher_forwards": 12 + 3 * 12}
    assert {"g_bn", "g_ent", "g_oh", "s_kd", "s_weight", "adv_weight", "lambda"} <= set(logs)
    assert float(logs["lambda"]) == pytest.approx(2.0 + 3e-4)
    fresh = build(teacher)
    w = fresh.generator.l1[0].weight
    assert abs(float(w.std()) - 0.02) < 0.002 and float(fresh.generator.l1[0].bias.abs().max()) == 0
    bn = fresh.generator.conv_blocks[0].weight
    assert abs(float(bn.mean()) - 1.0) < 0.01 and 0 < float(bn.std()) < 0.04
    opt = fresh.opt_g.param_groups[0]
    assert opt["betas"] == (0.9, 0.99) and opt["lr"] == 1e-3


def test_config_validation():
    """Declared ranges (loss, epoch_iterations) and the method's own cross-field checks, as the runner runs them."""
    from benchmark.checks import check_ranges

    cfg = METHODS.get("cudfkd").Config()
    for bad in ({"curriculum": "bogus"}, {"loss": "l2"}, {"adv_begin": 0.8, "adv_end": 0.2},
                {"epoch_iterations": 0}, {"lambda_0": 0.0}):
        with pytest.raises(ConfigError):
            bad_cfg = dataclasses.replace(cfg, **bad)
            check_ranges(bad_cfg)
            bad_cfg.validate()


# ---- presets ----------------------------------------------------------------------------------------------


def test_defaults_are_the_cifar10_resnet34_script():
    c = METHODS.get("cudfkd").Config()
    assert (c.batch_size, c.nz, c.ngf, c.generator_width, c.g_steps, c.s_steps) == (512, 512, 64, 4, 1, 10)
    assert (c.lr_s, c.lr_g, c.momentum, c.weight_decay) == (0.1, 1e-3, 0.9, 1e-4)
    assert (c.lmda_ent, c.oh, c.bn, c.adv, c.adv_step, c.adv_begin, c.adv_end) == (-20, 1, 1, 0, 0.5, 0.25, 0.75)
    assert (c.T, c.loss, c.curriculum, c.lambda_0, c.lambda_growth) == (20, "l1", "log", 2.0, 1e-4)


@pytest.mark.skipif(not {"cifar10", "cifar100"} <= set(DATASETS.list()), reason="CIFAR datasets not registered")
def test_paper_presets_follow_the_scripts():
    r = resolve_cell(Cell("cudfkd", "cifar10", "resnet34", "resnet18", budget="paper"))
    assert r.run_cfg.iterations == 250 * 40 and r.method_cfg.batch_size == 512 and r.method_cfg.loss == "l1"
    r = resolve_cell(Cell("cudfkd", "cifar10", "wrn40_2", "wrn16_1", budget="paper"))
    c = r.method_cfg
    assert (c.batch_size, c.loss, c.adv, c.adv_step) == (1024, "kl", 0.5, 0.05)
    r = resolve_cell(Cell("cudfkd", "cifar100", "resnet34", "resnet18", budget="paper"))
    assert r.run_cfg.iterations == 400 * 40 and r.method_cfg.lambda_growth == 2e-5 and r.method_cfg.T == 5
    r = resolve_cell(Cell("cudfkd", "cifar100", "wrn40_2", "wrn40_1", budget="paper"))
    assert r.run_cfg.iterations == 500 * 40 and r.method_cfg.T == 2 and r.method_cfg.adv_step == 0.12
