"""Method-specific tests of PRE-DFKD (methods/pre_dfkd.py): generators, the VAE memory and its replay."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn

import methods  # noqa: F401
from benchmark.config import ConfigError
from benchmark.registry import METHODS
from grad_flags import nonzero_grads
from method_kit import SPEC, build_small, changed, mismatched_bn_teacher, snapshot
from methods.pre_dfkd import PREEncoder, PREGenerator, adam_first_step, info_entropy10, js_agreement

SMALL = {"batch_size": 16, "replay_divisor": 8, "nz": 12, "ngf": 8, "s_steps": 3, "mem_steps": 2}


def _method(iterations: int = 10, **overrides):
    return build_small("pre-dfkd", mismatched_bn_teacher(), iterations, **{**SMALL, **overrides})


def test_defaults_and_paper_budgets_follow_main_py():
    cls = METHODS.get("pre-dfkd")
    c = cls.Config()
    assert (c.batch_size, c.nz, c.g_steps, c.s_steps, c.mem_steps, c.replay_divisor) == (1024, 1000, 1, 10, 4, 8)
    assert (c.lr_g, c.vae_lr_divisor, c.lr_s, c.momentum, c.weight_decay) == (0.02, 40.0, 0.1, 0.9, 5e-4)
    assert (c.oh, c.ie, c.a, c.adv, c.kld) == (1.0, 5.0, 0.1, 1.0, 1e-5)
    for ds in ("cifar10", "cifar100"):
        p = cls.budget_overrides("paper", ds, "resnet34", "resnet18")
        assert p["iterations"] == 400 * 36 and p["batch_size"] == 1024
    with pytest.raises(ConfigError):
        dataclasses.replace(c, batch_size=8, replay_divisor=8).validate()      # a replay batch of 1


def test_generators_standardise_their_output_and_only_the_novel_one_is_spectral():
    novel = PREGenerator(SPEC.image_shape, 12, 8, spectral=True)
    memory = PREGenerator(SPEC.image_shape, 12, 8, spectral=False)
    assert hasattr(novel.block1[0], "weight_orig") and not hasattr(memory.block1[0], "weight_orig")
    assert float(memory.l1.weight.detach().abs().max()) <= 0.08 and float(memory.l1.bias.detach().abs().max()) == 0
    x = memory.train()(torch.randn(64, 12)).detach()
    assert x.shape == (64, *SPEC.image_shape)
    torch.testing.assert_close(x.mean((0, 2, 3)), torch.zeros(1), atol=1e-4, rtol=0)     # affine-free output BN
    torch.testing.assert_close(x.var((0, 2, 3), unbiased=False), torch.ones(1), atol=0.02, rtol=0)  # BN eps
    z, mu, log_var = PREEncoder(SPEC.image_shape, 12, 8)(x)
    assert z.shape == mu.shape == log_var.shape == (64, 12)


def test_js_agreement_is_the_released_formula():
    s, t = torch.randn(6, 10) * 3, torch.randn(6, 10) * 3
    p, q = torch.softmax(t / 3, 1), torch.softmax(s / 3, 1)
    m = (0.5 * (p + q)).clamp(0.01, 0.99)
    kl = nn.KLDivLoss()                                      # the released reduction: mean over all elements
    js = 0.5 * kl(p.clamp(0.01, 0.99).log(), m) + 0.5 * kl(q.clamp(0.01, 0.99).log(), m)
    torch.testing.assert_close(js_agreement(s, t), 1 - js.clamp(0, 1))
    assert float(js_agreement(t, t)) == pytest.approx(1.0, abs=1e-6)     # full agreement costs most
    p = torch.softmax(t, 1).mean(0)
    torch.testing.assert_close(info_entropy10(t), (p * torch.log10(p)).sum())


def test_adam_first_step_is_a_fresh_adam_step():
    z = torch.randn(5, 7, requires_grad=True)
    loss = (z ** 3).sum() + z.var(0).sum()
    (g,) = torch.autograd.grad(loss, [z])
    opt = torch.optim.Adam([z], lr=0.02)
    z.grad = g.clone()
    expected = adam_first_step(z.detach().clone(), g, 0.02)
    opt.step()
    torch.testing.assert_close(z.detach(), expected)


def test_generator_step_terms_reach_the_generator_and_train_only_it():
    m = _method()
    captured = {}
    orig = m.optimize

    def spy(opt, loss):
        captured["flags"] = nonzero_grads(loss, m.generator.parameters())
        return orig(opt, loss)

    m.optimize = spy
    s_before, mem_before = snapshot(m.student), snapshot(m.memory)
    g_before = [p.detach().clone() for p in m.generator.parameters()]
    logs = m.generator_step()
    assert {"g_oh", "g_ie", "g_act", "g_adv"} <= set(logs)
    assert all(captured["flags"])
    assert any(not torch.equal(a, b) for a, b in zip(g_before, m.generator.parameters()))
    assert all(p.grad is None for p in m.student.parameters()) and all(p.grad is None for p in m.teacher.parameters())
    assert not changed(m.memory, mem_before)
    # the student's weights do not move (its BN statistics do: it runs in train mode, as released)
    assert all(torch.equal(p, s_before[k]) for k, p in m.student.named_parameters())


@pytest.mark.parametrize("term", ["oh", "ie", "a", "adv"])
def test_each_generator_term_alone_sends_gradient_to_the_generator(term):
    m = _method(**{k: (1.0 if k == term else 0.0) for k in ("oh", "ie", "a", "adv")})
    m.generator.train()
    z = torch.randn(16, m.cfg.nz)
    x = m.generator(z)
    t_logits, t_feat = m.teacher(x, return_features=True)
    if term == "oh":
        loss = torch.nn.functional.cross_entropy(t_logits, t_logits.argmax(1))
    elif term == "ie":
        loss = info_entropy10(t_logits)
    elif term == "a":
        loss = -t_feat.abs().mean()
    else:
        loss = js_agreement(m.student(x), t_logits.detach())
    assert any(nonzero_grads(loss, m.generator.parameters())), term
    before = [p.detach().clone() for p in m.generator.parameters()]
    m.generator_step()
    assert any(not torch.equal(a, b) for a, b in zip(before, m.generator.parameters()))


def test_student_sees_novel_plus_replayed_memory_samples():
    m = _method()
    sizes, memory_modes = [], []
    h1 = m.student.register_forward_hook(lambda mod, inp, out: sizes.append(inp[0].shape[0]))
    h2 = m.memory.register_forward_hook(lambda mod, inp, out: memory_modes.append(mod.training))
    novel = m.generator(torch.randn(16, m.cfg.nz)).detach()
    mem_before, g_before = snapshot(m.memory), snapshot(m.generator)
    m.student_step(novel)
    h1.remove(), h2.remove()
    assert sizes == [16 + 16 // 8]                     # the replay batch is batch_size // 8
    assert memory_modes == [False, False]              # latent step + rendering, memory in eval mode
    assert not changed(m.memory, mem_before) and not changed(m.generator, g_before)
    assert all(p.grad is None for p in m.memory.parameters())
    torch.manual_seed(3)
    z, latent_loss = m.replay_latents(2)
    assert z.shape == (2, m.cfg.nz) and latent_loss.requires_grad
    torch.manual_seed(3)
    z_init = torch.randn(2, m.cfg.nz)
    torch.testing.assert_close((z - z_init).abs(), torch.full_like(z, m.cfg.lr_g), atol=1e-6, rtol=0)   # one sign step
    plain = _method(replay=False)
    sizes = []
    plain.student.register_forward_hook(lambda mod, inp, out: sizes.append(inp[0].shape[0]))
    plain.student_step(novel)
    assert sizes == [16]


def test_vae_step_trains_memory_and_encoder_only_and_replays_after_the_first_iteration():
    m = _method()
    novel = m.generator(torch.randn(16, m.cfg.nz)).detach()
    targets = []
    h = m.encoder.register_forward_hook(lambda mod, inp, out: targets.append(inp[0].shape[0]))
    before = {n: snapshot(getattr(m, n)) for n in ("memory", "encoder", "student", "generator")}
    logs = m.vae_step(novel, first=True)
    assert set(logs) == {"vae_rec", "vae_kld"} and targets == [8]          # auto-encodes the novel half
    logs = m.vae_step(novel, first=False)
    assert set(logs) == {"vae_latent", "vae_rec", "vae_kld"} and targets == [8, 8 + 2]
    h.remove()
    assert changed(m.memory, before["memory"]) and changed(m.encoder, before["encoder"])
    assert not changed(m.student, before["student"]) and not changed(m.generator, before["generator"])
    # the replay latent loss reaches the memory generator (released: its backward leaves the gradient there)
    torch.manual_seed(0)
    _, latent = m.replay_latents(2)
    assert any(nonzero_grads(latent, m.memory.parameters()))
    assert not any(nonzero_grads(latent, m.encoder.parameters()))


def test_one_iteration_counts_its_work():
    m = _method()
    logs = m.train_iteration(0)
    assert {"g_total", "s_l1", "vae_rec", "vae_kld"} <= set(logs) and "vae_latent" not in logs
    # generator 16; 3 x (novel 16 + replay latents 2 + replay 2); 2 VAE steps x reconstruction 8
    assert m.counters["synthetic_images"] == 16 + 3 * 20 + 2 * 8
    # generator 16; 3 x (replay latents 2 + student batch 18); 2 VAE steps x (target 8 + reconstruction 8)
    assert m.counters["teacher_forwards"] == 16 + 3 * 20 + 2 * 16
    assert m.counters["student_steps"] == 3
    assert "vae_latent" in m.train_iteration(1)


def _lrs(method, n: int) -> list[float]:
    out = []
    for _ in range(n):
        out.append(method.opt_s.param_groups[0]["lr"])
        method.opt_s.step()                  # no gradients: only keeps the scheduler from warning
        method.sched_s.step()
    return out


def test_student_cosine_per_iteration_by_default_per_epoch_as_released_with_epoch_iterations():
    import math

    default = _method(iterations=10)
    assert default.cfg.epoch_iterations == 0
    assert _lrs(default, 10) == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * k / 10)) for k in range(10)])
    # compatibility: CosineAnnealingLR(T_max=cosine_epochs) stepped once per epoch of epoch_iterations iterations,
    # as main.py steps it, also past T_max (periodic); independent of the run's length
    released = _method(iterations=10, epoch_iterations=3, cosine_epochs=2)
    w = nn.Parameter(torch.zeros(1))
    twin = torch.optim.SGD([w], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(twin, T_max=2)
    expected = []
    for k in range(16):
        expected.append(twin.param_groups[0]["lr"])
        if k % 3 == 2:
            twin.step()
            sched.step()
    got = _lrs(released, 16)
    assert got == pytest.approx(expected, abs=1e-12)
    assert got[:3] == [0.1] * 3 and got[3] == pytest.approx(0.05) and got[6] == pytest.approx(0.0, abs=1e-12)
    assert got[9] == pytest.approx(0.05)
