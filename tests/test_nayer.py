"""Method-specific tests of NAYER (methods/nayer.py): label embeddings, noisy layers, loop schedule, gradients."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

import methods  # noqa: F401
from benchmark.config import ConfigError
from benchmark.records import Cell
from benchmark.registry import METHODS
from benchmark.resolve import resolve_cell
from methods.nayer import (NoisyLayerGenerator, balanced_targets, load_label_embedding,
                           random_label_embedding)
from grad_flags import nonzero_grads
from method_kit import SPEC, build_small, mismatched_bn_teacher

AUTHORS_PICKLE = "/work/refs/tmtuan1307+NAYER/label_embedding/cifar10_le.pickle"


def _method(iterations: int = 10, **overrides):
    small = {"batch_size": 16, "synthesis_batch_size": 24, "g_steps": 2, "kd_steps": 2, "ngf": 8,
             "le_emb_size": 32, "label_embedding_dim": 16, "warmup": 1, "gwp_loops": 3, "g_loops": 2, "g_life": 2}
    return build_small("nayer", mismatched_bn_teacher(), iterations, **{**small, **overrides})


# ---- recipe -------------------------------------------------------------------------------------------------


def test_defaults_and_paper_budgets_follow_the_scripts():
    c = METHODS.get("nayer").Config()
    assert (c.batch_size, c.synthesis_batch_size, c.lr, c.lr_g, c.warmup) == (512, 400, 0.2, 4e-3, 20)
    assert (c.g_life, c.g_loops, c.gwp_loops, c.adv, c.bn, c.oh, c.T) == (10, 2, 10, 1.33, 10.0, 0.5, 20.0)
    c10 = METHODS.get("nayer").budget_overrides("paper", "cifar10", "resnet34", "resnet18")
    c100 = METHODS.get("nayer").budget_overrides("paper", "cifar100", "wrn40_2", "wrn16_1")
    assert c10["g_steps"] == 30 and c100["g_steps"] == 40
    assert c10["iterations"] == c100["iterations"] == 120 and c10["kd_steps"] == 400


# ---- label embeddings ---------------------------------------------------------------------------------------


def test_digits_falls_back_to_seeded_random_unit_vectors_and_the_config_says_so():
    r = resolve_cell(Cell("nayer", "digits", "cnn_wide", "cnn_narrow", budget="default"))
    assert r.method_cfg.label_embedding == "random"          # what the record's config will show
    a, b = random_label_embedding(10, 512, 0), random_label_embedding(10, 512, 0)
    assert torch.equal(a, b) and not torch.equal(a, random_label_embedding(10, 512, 1))
    torch.testing.assert_close(a.norm(dim=1), torch.ones(10))


def test_a_label_embedding_file_is_loaded_and_checked_against_the_class_count(tmp_path):
    good, bad = tmp_path / "good.pickle", tmp_path / "bad.pickle"
    emb = torch.randn(10, 20)
    with open(good, "wb") as f:
        pickle.dump(emb, f)
    with open(bad, "wb") as f:
        pickle.dump(torch.randn(100, 20), f)
    torch.testing.assert_close(load_label_embedding(str(good)), emb)
    r = resolve_cell(Cell("nayer", "digits", "cnn_wide", "cnn_narrow", budget="smoke",
                          overrides=(("label_embedding", str(good)),)))
    assert r.method_cfg.label_embedding == str(good)
    with pytest.raises(ConfigError, match="100 rows.*10 classes"):
        resolve_cell(Cell("nayer", "digits", "cnn_wide", "cnn_narrow", budget="smoke",
                          overrides=(("label_embedding", str(bad)),)))
    with pytest.raises(ConfigError, match="no file"):
        resolve_cell(Cell("nayer", "digits", "cnn_wide", "cnn_narrow", budget="smoke",
                          overrides=(("label_embedding", str(tmp_path / "missing")),)))
    m = _method(label_embedding=str(good))
    torch.testing.assert_close(m.generator.label_emb, emb)


def test_clip_without_the_package_or_weights_is_a_config_error():
    with pytest.raises(ConfigError, match="clip"):
        resolve_cell(Cell("nayer", "digits", "cnn_wide", "cnn_narrow", budget="smoke",
                          overrides=(("label_embedding", "clip"),)))


@pytest.mark.skipif(not os.path.isfile(AUTHORS_PICKLE), reason="the authors' repository is not checked out here")
def test_the_authors_gpu_pickle_loads_on_the_cpu():
    emb = load_label_embedding(AUTHORS_PICKLE)
    assert emb.shape == (10, 512) and emb.device.type == "cpu"


# ---- generator ----------------------------------------------------------------------------------------------


def test_each_chunk_of_classes_goes_through_its_own_noisy_layer():
    g = NoisyLayerGenerator(random_label_embedding(10, 16, 0), SPEC.image_shape, batch=25, ngf=8, le_emb_size=32)
    assert len(g.noisy) == 3                                   # ceil(25 / 10)
    y = balanced_targets(25, 10, torch.device("cpu"))
    assert y[:20].tolist() == list(range(10)) * 2
    g.reset_noisy_layers()
    assert g.noisy[0].weight.std().item() == pytest.approx(1.0, rel=0.1) and g.noisy[0].bias.abs().sum() == 0
    g.eval()                                                   # no batch statistics: samples are independent
    with torch.no_grad():
        before = g(y)
        g.noisy[1].weight.mul_(2)
        after = g(y)
    changed = (before - after).flatten(1).abs().sum(1) > 0
    assert changed.tolist() == [False] * 10 + [True] * 10 + [False] * 5
    assert before.shape == (25, *SPEC.image_shape) and 0 <= before.min() and before.max() <= 1


def test_every_term_reaches_noisy_layers_and_body_but_not_the_networks():
    m = _method()
    m.round = m.warmup + 1                                       # adversarial term on
    y = balanced_targets(24, 10, torch.device("cpu"))
    with torch.no_grad():                                        # make the student agree somewhere
        top = m.teacher(m.normalizer(m.generator(y))).argmax(1).mode().values
        m.student.fc.bias[top] += 10.0
    terms = m.losses(m.generator(y), y)
    assert set(terms) == {"bn", "oh", "adv"} and terms["adv"].item() <= 0
    for name, term in terms.items():
        params = [m.generator.noisy[0].weight, m.generator.l1.weight, m.generator.body[2].weight]
        assert all(nonzero_grads(term, params)), name
    assert not m.generator.label_emb.requires_grad
    m.synthesize()
    assert all(p.grad is None for p in m.teacher.parameters()) and all(p.grad is None for p in m.student.parameters())


# ---- schedule ------------------------------------------------------------------------------------------------


def test_warmup_rounds_run_more_loops_adv_and_student_start_after_it(monkeypatch):
    m = _method(warmup=2, gwp_loops=3, g_loops=2, g_steps=2)
    logs = [m.train_iteration(it) for it in range(4)]
    # every loop's lowest-loss batch joins the pool, which is sized for all of them (no overwrite)
    assert len(m.pool) == m.pool.added == (3 + 3 + 2 + 2) * 24
    assert m.counters["synthetic_images"] == (3 + 3 + 2 + 2) * 2 * 24
    assert "g_adv" not in logs[1] and "g_adv" in logs[2]
    assert "s_kd" not in logs[1] and "s_kd" in logs[2] and m.counters["student_steps"] == 2 * m.cfg.kd_steps
    assert m.bn_prior.average is not None


def test_generator_is_reinitialised_every_g_life_rounds_and_noisy_layers_every_loop(monkeypatch):
    m = _method(warmup=1, g_life=3, gwp_loops=1, g_loops=2, g_steps=1)
    calls = {"reinit": [], "noisy": 0}
    orig_reinit, orig_noisy = m.generator.reinitialise, m.generator.reset_noisy_layers
    monkeypatch.setattr(m.generator, "reinitialise", lambda: (calls["reinit"].append(m.round), orig_reinit()))
    monkeypatch.setattr(m.generator, "reset_noisy_layers",
                        lambda: (calls.__setitem__("noisy", calls["noisy"] + 1), orig_noisy()))
    for it in range(6):
        m.train_iteration(it)
    # released: (ep - warmup) % g_life == 0 or ep % g_life == 0, ep = rounds done before this one
    # with warmup 1 and g_life 3: ep = 0, 3 (ep % 3) and 1, 4 ((ep - 1) % 3), i.e. rounds 1, 2, 4, 5
    assert calls["reinit"] == [1, 2, 4, 5]
    assert calls["noisy"] == 1 + 5 * 2


def test_reinitialise_restores_default_initialisation():
    g = NoisyLayerGenerator(random_label_embedding(10, 16, 0), SPEC.image_shape, batch=10, ngf=8, le_emb_size=32)
    with torch.no_grad():
        g.l1.weight.fill_(3.0)
        g.body[0].weight.fill_(5.0)
    g.reinitialise()
    bound = 1 / 32 ** 0.5                                        # kaiming-uniform default of nn.Linear
    assert g.l1.weight.abs().max() <= bound and torch.equal(g.body[0].weight, torch.ones_like(g.body[0].weight))
    assert torch.equal(g.label_emb, random_label_embedding(10, 16, 0))


@pytest.mark.parametrize("released", [False, True])
def test_student_train_after_loop_is_the_released_mode_change(released):
    """Compatibility option: the released ``synthesize`` puts the student into training mode after each loop,
    so the second loop's adversarial forward updates the student's BN running statistics; ours keeps it in
    eval mode (default) and synthesis leaves the student's statistics alone."""
    m = _method(warmup=0, g_loops=2, g_steps=1, student_train_after_loop=released)
    bns = [x for x in m.student.modules() if isinstance(x, torch.nn.BatchNorm2d)]
    before = [b.running_mean.clone() for b in bns]
    m.round = 1                                        # after the warm-up: the adversarial term is on
    m.student.eval()
    m.synthesize()
    changed = any(not torch.equal(a, b.running_mean) for a, b in zip(before, bns))
    assert changed is released
