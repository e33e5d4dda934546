"""Method-specific tests of the model-inversion baselines: deepinv, cmi, fast-2/5/10 (methods/_inversion.py)."""
from __future__ import annotations

import copy

import pytest
import torch

import methods  # noqa: F401
from benchmark.losses import BatchNormStatistics
from benchmark.models.generators import DataFreeGenerator
from benchmark.models import create_model
from benchmark.records import Cell
from benchmark.registry import METHODS
from benchmark.resolve import resolve_cell
from methods import fast as fast_module
from methods._inversion import (ImagePool, LowestLoss, js_divergence, masked_disagreement,
                                random_crop_flip, random_resized_crop)
from methods.cmi import feature_layers
from methods.fast import Fast
from grad_flags import nonzero_grads
from method_kit import SPEC, build_small, mismatched_bn_teacher

SMALL = {"batch_size": 16, "g_steps": 2, "kd_steps": 2}


def _method(name: str, iterations: int = 10, **overrides):
    small = {**SMALL, "ngf": 16} if hasattr(METHODS.get(name).Config(), "ngf") else SMALL
    torch.manual_seed(1)
    student = create_model("cnn_narrow", 10, SPEC.image_shape)
    return build_small(name, mismatched_bn_teacher(), iterations, student, **{**small, **overrides})


def _make_student_agree(m, images: torch.Tensor) -> None:
    """Bias the student towards the teacher's most frequent class on ``images`` so that the agreement mask of
    the CMI / Fast adversarial term is not empty (random nets rarely agree); the outputs still differ."""
    with torch.no_grad():
        top = m.teacher(m.normalizer(images)).argmax(1).mode().values
        m.student.fc.bias[top] += 10.0


def test_lowest_loss_keeps_the_step_with_the_lowest_total():
    lowest = LowestLoss(torch.device("cpu"))
    for cost, value in ((3.0, 1.0), (1.0, 2.0), (2.0, 3.0)):
        x = torch.full((2,), value, requires_grad=True)
        lowest.offer(torch.tensor(cost), x * 1, None)
    images, feats = lowest.best
    assert torch.equal(images, torch.full((2,), 2.0)) and not images.requires_grad and feats is None
    assert float(lowest.cost) == 1.0


# ---- the image pool ---------------------------------------------------------------------------------------


def test_pool_grows_wraps_at_its_cap_and_quantises_like_png():
    pool = ImagePool(10, (1, 2, 2), torch.device("cpu"))
    for i in range(3):
        pool.add(torch.full((4, 1, 2, 2), 0.1 * (i + 1)), torch.full((4,), i))
    assert len(pool) == 10 and pool.added == 12 and pool.ptr == 2
    # the two oldest images were overwritten by the newest batch
    assert pool.labels.tolist() == [2, 2, 0, 0, 1, 1, 1, 1, 2, 2]
    assert pool.images.dtype == torch.uint8
    assert pool.decode(pool.images[:1]).flatten()[0].item() == pytest.approx(int(0.3 * 255) / 255)


def test_pool_batches_walk_a_permutation_restarted_by_each_add():
    pool = ImagePool(20, (1, 1, 1), torch.device("cpu"), uint8=False)
    pool.add(torch.arange(12.0).view(12, 1, 1, 1) / 100, torch.arange(12))
    seen = torch.cat([pool.sample(5)[1] for _ in range(3)])          # 5 + 5 + 2: one pass over the pool
    assert sorted(seen.tolist()) == list(range(12))
    pool.sample(5)
    pool.add(torch.zeros(1, 1, 1, 1), torch.tensor([99]))
    assert pool._pos == 0 and pool._perm is None


def test_method_pool_grows_per_round_and_respects_pool_size():
    m = _method("deepinv", pool_size=40, synthesis_batch_size=16)
    sizes = []
    for it in range(3):
        m.train_iteration(it)
        sizes.append(len(m.pool))
    assert sizes == [16, 32, 40] and m.pool.added == 48
    images, labels = m.sample(8)
    assert images.shape == (8, *SPEC.image_shape) and labels.shape == (8,)
    assert m.counters["synthetic_images"] == 3 * 16 * 2 and m.counters["student_steps"] == 3 * 2


def test_pool_is_part_of_the_checkpoint():
    m = _method("deepinv")
    m.train_iteration(0)
    state = copy.deepcopy(m.state_dict())
    fresh = _method("deepinv")
    fresh.load_state_dict(state)
    assert len(fresh.pool) == len(m.pool) and torch.equal(fresh.pool.images[:16], m.pool.images[:16])
    assert fresh.round == 1


# ---- augmentations and the BN prior ------------------------------------------------------------------------


def test_augmentations_keep_shape_and_pass_gradient():
    x = torch.rand(6, 3, 16, 16, requires_grad=True)
    assert torch.equal(random_crop_flip(x, 0, False), x)
    for out in (random_crop_flip(x, 2, True), random_resized_crop(x, (0.25, 1.0))):
        assert out.shape == x.shape
        (g,) = torch.autograd.grad(out.sum(), x)
        assert g.abs().sum() > 0


def test_bn_prior_matches_the_released_formula_and_blends_with_momentum():
    teacher = mismatched_bn_teacher()
    prior = BatchNormStatistics(teacher, momentum=0.9)
    x = torch.randn(8, 1, 16, 16)
    stats = []
    hooks = [m.register_forward_hook(lambda m, i, o: stats.append((m, i[0]))) for m in prior.layers]
    with prior.recording():
        teacher(x)
    for h in hooks:
        h.remove()
    expected = sum(torch.norm(m.running_var - f.var(dim=(0, 2, 3), unbiased=False), 2)
                   + torch.norm(m.running_mean - f.mean(dim=(0, 2, 3)), 2) for m, f in stats)
    torch.testing.assert_close(prior.loss(), expected, rtol=1e-4, atol=1e-4)
    prior.update_momentum()                                   # the average is now these batch statistics
    with prior.recording():
        teacher(x)
    torch.testing.assert_close(prior.loss(), expected, rtol=1e-4, atol=1e-4)   # (1-m) b + m b = b
    with prior.recording():
        teacher(x + 1)
    blended = prior.loss()
    prior.momentum = 0.0
    with prior.recording():
        teacher(x + 1)
    assert not torch.allclose(blended, prior.loss())


# ---- deepinv -----------------------------------------------------------------------------------------------


def test_deepinv_every_term_sends_gradient_to_the_images_and_none_to_the_nets():
    m = _method("deepinv", tv=1e-3, l2=1e-3)
    x = torch.randn(16, *SPEC.image_shape, requires_grad=True)
    y = torch.randint(0, 10, (16,))
    terms = m.losses(x, y)
    assert set(terms) == {"bn", "oh", "adv", "tv", "l2"}
    for name, term in terms.items():
        assert nonzero_grads(term, [x]) == [True], name
    total = sum(terms.values())
    total.backward()
    assert all(p.grad is None for p in m.teacher.parameters())


def test_deepinv_synthesis_leaves_no_gradient_on_student_or_teacher():
    m = _method("deepinv")
    m.synthesize()
    assert all(p.grad is None for p in m.student.parameters())
    assert all(p.grad is None for p in m.teacher.parameters())
    assert all(p.requires_grad for p in m.student.parameters())


def test_deepinv_adversarial_term_is_negative_and_its_descent_increases_disagreement():
    m = _method("deepinv", jitter=0.0, bn=0.0, oh=0.0, s_bn=0.0)
    m.student.eval()
    x = torch.randn(16, *SPEC.image_shape, requires_grad=True)
    y = torch.zeros(16, dtype=torch.long)
    adv = m.losses(x, y)["adv"]
    before = js_divergence(m.student(x), m.teacher(x), 3.0)
    assert adv.item() == pytest.approx(-before.item(), rel=1e-5) and adv.item() < 0
    (g,) = torch.autograd.grad(adv, x)
    with torch.no_grad():
        after = js_divergence(m.student(x - 0.5 * g / g.norm()), m.teacher(x - 0.5 * g / g.norm()), 3.0)
    assert after > before


def test_deepinv_student_bn_term_is_subtracted():
    with_s = _method("deepinv", s_bn=0.5, adv=1.0)
    x = torch.randn(16, *SPEC.image_shape)
    y = torch.zeros(16, dtype=torch.long)
    with_s.jitter = (0, 0)
    bn_with = with_s.losses(x, y)["bn"]
    with_s.s_bn = None
    bn_without = with_s.losses(x, y)["bn"]
    assert bn_with < bn_without


# ---- cmi -------------------------------------------------------------------------------------------------


def test_cmi_every_term_sends_gradient_to_generator_and_latent_and_cr_to_the_head():
    m = _method("cmi", bank_size=64, n_neg=16)
    m.train_iteration(0)                         # fills the bank once so the contrastive term sees negatives
    assert len(m.bank) == 16
    z = torch.randn(16, m.cfg.nz, requires_grad=True)
    y = torch.randint(0, 10, (16,))
    _make_student_agree(m, m.generator(z))
    torch.manual_seed(3)
    terms, feats = m.losses(m.generator(z), y)
    assert set(terms) == {"bn", "oh", "adv", "cr"} and feats.shape == (16, m.bank.data.shape[1])
    gen = list(m.generator.parameters())
    for name, term in terms.items():
        flags = nonzero_grads(term, gen + [z])
        assert flags[-1] and any(flags[:-1]), name
    assert any(nonzero_grads(terms["cr"], m.head.parameters()))
    assert not any(nonzero_grads(terms["bn"], m.head.parameters()))
    assert all(not p.requires_grad for p in m.teacher.parameters())


def test_cmi_adversarial_term_is_negative_masked_kl():
    torch.manual_seed(0)
    s, t = torch.randn(32, 10), torch.randn(32, 10)
    agree = s.argmax(1) == t.argmax(1)
    assert agree.any()
    per = torch.nn.functional.kl_div(s.log_softmax(1), t.softmax(1), reduction="none").sum(1)
    torch.testing.assert_close(masked_disagreement(s, t), (per * agree).mean())
    m = _method("cmi", cr=0.0)
    terms, _ = m.losses(torch.rand(16, *SPEC.image_shape), torch.zeros(16, dtype=torch.long))
    assert terms["adv"].item() <= 0


def test_cmi_memory_bank_grows_per_round_caps_and_round_trips():
    m = _method("cmi", bank_size=40, n_neg=8, synthesis_batch_size=16)
    for it in range(3):
        m.train_iteration(it)
    assert len(m.bank) == 40 and m.bank.updates == 48 and m.bank.ptr == 8
    assert m.bank.sample(8).shape == (8, m.bank.data.shape[1])
    state = copy.deepcopy(m.state_dict())
    fresh = _method("cmi", bank_size=40, n_neg=8, synthesis_batch_size=16)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.bank.data, m.bank.data) and fresh.bank.updates == 48


def test_cmi_generator_is_reinitialised_each_round_unless_feature_reuse():
    m = _method("cmi", g_steps=1)
    m.train_iteration(0)
    w = m.generator.l1[0].weight.detach().clone()
    m.train_iteration(1)
    assert not torch.allclose(w, m.generator.l1[0].weight)
    assert m.generator.l1[0].weight.std().item() == pytest.approx(0.02, rel=0.2)


def test_cmi_uses_block_inputs_for_resnet34_as_the_script():
    r34 = create_model("resnet34", 10, (3, 32, 32))
    assert feature_layers(r34, "auto") == [r34.layer1, r34.layer2, r34.layer3, r34.layer4]
    wrn = create_model("wrn40_2", 10, (3, 32, 32))
    assert all(isinstance(m, torch.nn.BatchNorm2d) for m in feature_layers(wrn, "auto"))


def test_cmi_runs_without_the_contrastive_term():
    m = _method("cmi", cr=0.0)
    logs = m.train_iteration(0)
    assert "g_cr" not in logs and m.bank is None and len(m.pool) == 16


# ---- fast ------------------------------------------------------------------------------------------------


def test_fast_presets_are_one_class_with_different_step_counts():
    assert "fast" not in METHODS.list()
    cfgs = {n: METHODS.get(n).Config() for n in ("fast-2", "fast-5", "fast-10")}
    assert [c.g_steps for c in cfgs.values()] == [2, 5, 10]
    assert [c.lr_g for c in cfgs.values()] == [5e-3, 3e-3, 2e-3]
    assert [c.lr_z for c in cfgs.values()] == [0.015, 0.01, 0.01]
    assert all(issubclass(METHODS.get(n), Fast) for n in cfgs)
    for n in cfgs:
        r = resolve_cell(Cell(n, "digits", "cnn_wide", "cnn_narrow", budget="default"))
        assert r.method_cfg.g_steps == cfgs[n].g_steps


def test_fast_pair_specific_weights_follow_the_scripts():
    assert METHODS.get("fast-5").budget_overrides("paper", "cifar100", "resnet34", "resnet18")["adv"] == 1.33
    assert METHODS.get("fast-5").budget_overrides("paper", "cifar10", "vgg11", "resnet18")["oh"] == 0.5
    wrn = METHODS.get("fast-5").budget_overrides("paper", "cifar100", "wrn40_2", "wrn16_1")
    assert "adv" not in wrn and wrn["iterations"] == 220 and wrn["warmup"] == 20


def test_fast_meta_generator_takes_one_adam_step_on_the_summed_inner_gradients():
    m = _method("fast-5", g_steps=3, warmup=0)
    before = [p.detach().clone() for p in m.generator.parameters()]
    inner: dict[int, torch.Tensor] = {}

    def keep(i):
        def hook(g):
            inner[i] = inner.get(i, 0) + g.detach().clone()
        return hook

    handles = [p.register_hook(keep(i)) for i, p in enumerate(m.fast_generator.parameters())]
    m.train_iteration(0)
    for h in handles:
        h.remove()
    lr = m.meta_opt.param_groups[0]["lr"]
    assert lr == pytest.approx(m.cfg.lr_g * 3)
    for i, (p, p0) in enumerate(zip(m.generator.parameters(), before)):
        torch.testing.assert_close(p.grad, inner[i])                    # fomaml: the sum of the inner grads
        expected = p0 - lr * p.grad / (p.grad.abs() + 1e-8)              # Adam's first step
        torch.testing.assert_close(p.detach(), expected, rtol=1e-4, atol=1e-6)
    # the fast generator moved further than the meta generator (it took 3 steps from the same start)
    assert not torch.equal(m.fast_generator.l1[0].weight, m.generator.l1[0].weight)


def test_fast_inner_terms_reach_the_fast_generator_and_latent_only():
    m = _method("fast-2", warmup=0)
    m.round = 1
    z = torch.randn(16, m.cfg.nz, requires_grad=True)
    _make_student_agree(m, m.fast_generator(z))
    terms = m.losses(m.fast_generator(z), torch.randint(0, 10, (16,)))
    assert set(terms) == {"bn", "oh", "adv"} and terms["adv"].item() <= 0
    for name, term in terms.items():
        flags = nonzero_grads(term, list(m.fast_generator.parameters()) + [z])
        assert flags[-1] and any(flags[:-1]), name
        assert not any(nonzero_grads(term, m.generator.parameters())), name


def test_fast_warmup_rounds_only_synthesize_and_adv_starts_at_the_warmup_round():
    m = _method("fast-2", warmup=2)
    logs = [m.train_iteration(it) for it in range(3)]
    assert "g_adv" not in logs[0] and "g_adv" in logs[1]
    assert "s_kd" not in logs[1] and "s_kd" in logs[2]
    assert m.counters["student_steps"] == m.cfg.kd_steps
    assert m.bn_prior.average is not None


def test_fast_resets_the_first_layer_once_after_the_configured_rounds(monkeypatch):
    calls = []
    monkeypatch.setattr(fast_module, "reset_first_layer", lambda g: calls.append(g))
    m = _method("fast-2", warmup=1, reset_l0_after=2, g_steps=1, kd_steps=1)
    for it in range(5):
        m.train_iteration(it)
        if it == 1:
            assert not calls
    assert calls == [m.generator]


def test_datafree_generator_names_match_the_released_reset():
    g = DataFreeGenerator((1, 16, 16), nz=8, ngf=4)
    names = dict(g.named_modules())
    assert isinstance(names["l1.0"], torch.nn.Linear) and isinstance(names["conv_blocks.0"], torch.nn.BatchNorm2d)
    out = g(torch.randn(3, 8))
    assert out.shape == (3, 1, 16, 16) and 0 <= out.min() and out.max() <= 1
