"""AdaDFKD: gradient paths, the ring InfoNCE with its adaptive negatives, the schedules and the presets."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import methods  # noqa: F401
from benchmark.config import ConfigError
from benchmark.records import Cell
from benchmark.registry import DATASETS, METHODS
from benchmark.resolve import resolve_cell
from methods.adadfkd import batch_infonce, hard_factor, linear_adv_weight, ring_infonce
from method_kit import assert_each_step_updates_only_its_network, build_small, generator_terms

SMALL = {"batch_size": 16, "ngf": 8, "s_steps": 2, "epoch_iterations": 2, "n_neg": 64}


def build(teacher, iterations=10, student="cnn_narrow", **overrides):
    return build_small("adadfkd", teacher, iterations, student, seed=0, **{**SMALL, **overrides})


# ---- the pieces -------------------------------------------------------------------------------------------


def test_ring_infonce_keeps_the_slice_of_negatives_sorted_by_similarity():
    torch.manual_seed(0)
    q = torch.randn(4, 8)
    k = F.normalize(torch.randn(4, 8), dim=1)
    queue = F.normalize(torch.randn(8, 20), dim=0)
    qn = F.normalize(q, dim=1)
    neg = (qn @ queue).sort(dim=1).values
    for h, length in [(0.0, 1.0), (0.0, 0.5), (0.25, 0.5), (0.5, 0.5)]:
        lo, hi = int(h * 20), int((h + length) * 20)
        logits = torch.cat([(qn * k).sum(1, keepdim=True), neg[:, lo:hi]], 1) / 0.07
        want = F.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
        assert float(ring_infonce(q, k, queue, h, length, 0.07)) == pytest.approx(float(want), rel=1e-5)
    # harder negatives (more similar to the query) make the loss larger
    assert float(ring_infonce(q, k, queue, 0.5, 0.5, 0.07)) > float(ring_infonce(q, k, queue, 0.0, 0.5, 0.07))


def test_batch_infonce_is_low_when_features_match():
    torch.manual_seed(0)
    t = torch.randn(8, 6)
    assert float(batch_infonce(t, t, 0.07)) < 0.01
    assert float(batch_infonce(t, torch.randn(8, 6), 0.07)) > 1.0


def test_schedules_match_the_released_epoch_loop():
    def released_adv(epoch, E, adv, step, b, f):
        # datafree_kd.py sets adv = get_alpha_adv(e) after epoch e, so epoch `epoch` sees get_alpha_adv(epoch - 1)
        e = epoch - 1
        if e < 0:
            return adv
        if int(E * b) < e < int(E * f):
            return adv + (e - int(E * b)) * step
        if e >= int(E * f):
            return adv + (int(E * f) - int(E * b)) * step
        return adv

    for E, b, f in [(300, 0.25, 0.75), (1000, 0.2, 0.8), (5, 0.25, 0.75)]:
        for epoch in range(E):
            got = linear_adv_weight(epoch * 40 + 3, 0.1, 0.01, b, f, 40, E * 40)
            assert got == pytest.approx(released_adv(epoch, E, 0.1, 0.01, b, f))
            want_h = min(max(0, (1 - 0.9) * (epoch - int(b * E)) / int(E * (f - b))), 1 - 0.9)
            assert hard_factor(epoch * 40 + 3, 0.9, b, f, 40, E * 40) == pytest.approx(want_h)
    assert hard_factor(0, 0.9, 0.25, 0.75, 40, 12000) == 0.0
    assert hard_factor(11999, 0.9, 0.25, 0.75, 40, 12000) == pytest.approx(0.1)


# ---- gradient paths -------------------------------------------------------------------------------------


def test_every_generator_term_sends_gradient_to_the_generator(teacher):
    method = build(teacher)
    terms = generator_terms(method)
    assert set(terms) == {"bn", "ent", "oh", "adv", "nce"}
    params = list(method.generator.parameters())
    for key, term in terms.items():
        assert term.dim() == 0 and torch.isfinite(term), key
        grads = torch.autograd.grad(term, params, allow_unused=True, retain_graph=True)
        assert sum(g.abs().sum() for g in grads if g is not None) > 0, key
    assert float(terms["adv"].detach()) < 0 and float(terms["nce"].detach()) > 0


def test_generator_step_fills_the_negative_queue_with_student_keys(teacher):
    method = build(teacher, student="cnn_wide")       # same feature width as the teacher: no projection
    before = method.queue.clone()
    x = method.generator(method.draw_z(16)).detach()
    method.generator_step()
    assert method.queue_ptr == 16
    assert not torch.equal(method.queue[:, :16], before[:, :16]) and torch.equal(method.queue[:, 16:], before[:, 16:])
    norms = method.queue[:, :16].norm(dim=0)
    torch.testing.assert_close(norms, torch.ones(16))
    for _ in range(4):                                 # 64 negatives, 16 per step: wraps around
        method.generator_step()
    assert method.queue_ptr == 16
    del x


def test_each_step_updates_only_its_network(teacher):
    method = build(teacher)
    logs = assert_each_step_updates_only_its_network(method, teacher)
    assert 0 < float(logs["s_weight"]) <= 1 + math.exp(-method.cfg.lambda_0)


def test_student_loss_adds_the_feature_infonce_under_the_self_paced_weight(teacher):
    method = build(teacher, student="cnn_wide")
    x = method.synthesize(8)
    method.counters["student_steps"] = 3000
    terms = method.student_terms(x)
    with torch.no_grad():
        s, s_feat = method.student(x, return_features=True)
        t, t_feat = method.teacher(x, return_features=True)
    c = method.cfg
    raw = (F.kl_div(F.log_softmax(s / c.T, 1), F.softmax(t / c.T, 1), reduction="batchmean") * c.T ** 2
           + c.s_nce * batch_infonce(t_feat, s_feat, c.tau))
    lam = c.lambda_0 + c.lambda_growth * 3000
    v = (1 + math.exp(-lam)) / (1 + math.exp(float(raw) - lam))
    assert float(terms["kd"].detach()) == pytest.approx(v * float(raw), rel=1e-4)
    # the InfoNCE term reaches the student's feature extractor on its own
    method.student.zero_grad()
    batch_infonce(t_feat, method.student(x, return_features=True)[1], c.tau).backward()
    assert sum(p.grad.abs().sum() for p in method.student.parameters() if p.grad is not None) > 0
    plain = build(teacher, student="cnn_wide", s_nce=0.0, curriculum="none")
    with torch.no_grad():
        only_kd = float(plain.student_terms(x)["kd"])
    assert only_kd == pytest.approx(float(raw - c.s_nce * batch_infonce(t_feat, s_feat, c.tau)), rel=1e-4)


def test_switching_off_the_contrastive_terms_leaves_the_cudfkd_losses(teacher):
    method = build(teacher, hard=0.0, adv=0.0)
    calls = []
    handle = method.student.register_forward_hook(lambda *a: calls.append(1))
    try:
        assert set(generator_terms(method)) == {"bn", "ent", "oh"} and calls == []
    finally:
        handle.remove()


def test_config_validation_and_defaults():
    c = METHODS.get("adadfkd").Config()
    assert (c.batch_size, c.nz, c.ngf, c.s_steps, c.T, c.loss, c.adv, c.adv_step) == (768, 512, 64, 10, 20, "kl", 1, 0)
    assert (c.lambda_0, c.lambda_growth, c.hard, c.length, c.tau, c.s_nce, c.n_neg) == (2.2, 1e-4, 0.1, 0.9, 0.07, 0.1, 4096)
    for bad in ({"curriculum": "bogus"}, {"loss": "l2"}, {"adv_begin": 0.8, "adv_end": 0.2}, {"length": 0.0},
                {"lambda_0": 0.0}):
        with pytest.raises(ConfigError):
            dataclasses.replace(c, **bad).validate()


@pytest.mark.skipif(not {"cifar10", "cifar100"} <= set(DATASETS.list()), reason="CIFAR datasets not registered")
def test_paper_presets_follow_the_scripts():
    r = resolve_cell(Cell("adadfkd", "cifar10", "resnet34", "resnet18", budget="paper"))
    assert r.run_cfg.iterations == 300 * 40 and r.method_cfg.batch_size == 768 and r.method_cfg.n_neg == 4096
    r = resolve_cell(Cell("adadfkd", "cifar100", "resnet34", "resnet18", budget="paper"))
    c = r.method_cfg
    assert r.run_cfg.iterations == 400 * 40 and (c.loss, c.T, c.n_neg, c.lambda_growth) == ("l1", 5, 12288, 2e-5)
    r = resolve_cell(Cell("adadfkd", "cifar100", "wrn40_2", "wrn16_2", budget="paper"))
    assert r.run_cfg.iterations == 500 * 40 and r.method_cfg.s_nce == 0.15 and r.method_cfg.adv_end == 0.79


@pytest.mark.skipif("cifar10" not in DATASETS.list(), reason="CIFAR-10 not registered")
def test_digits_default_threshold_ends_where_the_released_run_ends():
    """The digits run is 1/60 of the released CIFAR-10 run; its self-paced threshold still spans the same range."""
    def end_threshold(cell):
        r = resolve_cell(cell)
        return r.method_cfg.lambda_0 + r.method_cfg.lambda_growth * r.run_cfg.iterations * r.method_cfg.s_steps

    paper = end_threshold(Cell("adadfkd", "cifar10", "resnet34", "resnet18", budget="paper"))
    digits = end_threshold(Cell("adadfkd", "digits", "cnn_wide", "cnn_narrow", budget="default"))
    assert paper == pytest.approx(14.2) and digits == pytest.approx(paper)
