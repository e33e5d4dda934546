"""Method-specific tests of SpaceshipNet (methods/spaceshipnet.py): feature pools and exchange, mSARC terms."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

import methods  # noqa: F401
from benchmark.config import ConfigError
from benchmark.models import create_model
from benchmark.registry import METHODS
from methods.spaceshipnet import ActivationSites, SplitGenerator, channel_exchange, pair_stages
from grad_flags import nonzero_grads
from method_kit import SPEC, build_small, mismatched_bn_teacher



def _method(iterations: int = 10, **overrides):
    small = {"batch_size": 16, "g_steps": 2, "kd_steps": 2, "ngf": 8, "nz": 16}
    return build_small("spaceshipnet", mismatched_bn_teacher(), iterations, **{**small, **overrides})


def test_defaults_and_paper_budgets_follow_the_yaml():
    c = METHODS.get("spaceshipnet").Config()
    assert (c.batch_size, c.g_steps, c.kd_steps, c.lr, c.lr_g, c.T) == (256, 200, 2000, 0.1, 1e-3, 30.0)
    assert (c.cls, c.bn, c.cam, c.gradcam, c.mix_p) == (0.5, 1.0, 1.0, 1.0, 0.7)
    assert (c.conv_idx, c.kl_reduction) == ("0,1,2", "mean")
    for ds in ("cifar10", "cifar100"):
        p = METHODS.get("spaceshipnet").budget_overrides("paper", ds, "resnet34", "resnet18")
        assert p["iterations"] == 200 and p["kd_steps"] == 2000 and p["g_steps"] == 200
    with pytest.raises(ConfigError):
        dataclasses.replace(c, conv_idx="0,3").validate()


def test_generator_renders_the_same_image_from_each_level():
    g = SplitGenerator(SPEC.image_shape, nz=16, ngf=8).eval()
    g.kaiming_init()
    z = torch.randn(4, 16)
    with torch.no_grad():
        img, feats = g.forward_features(z)
        torch.testing.assert_close(img, g(z))
        assert [f.shape[1:] for f in feats] == [(16, 4, 4), (16, 8, 8), (8, 16, 16)]
        for level, f in enumerate(feats):
            torch.testing.assert_close(g.render(f, level), img)


def test_channel_exchange_takes_half_the_channels_from_the_mirror_sample():
    feats = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 8, 2, 2).clone()       # sample i is filled with i
    mixed = channel_exchange(feats)
    for i in range(6):
        own = (mixed[i, :, 0, 0] == i).sum().item()
        mirror = (mixed[i, :, 0, 0] == 5 - i).sum().item()
        assert own == 4 and mirror == 4


def test_synthesis_fills_three_feature_pools_and_trains_only_the_generator():
    m = _method()
    before = [p.detach().clone() for p in m.generator.parameters()]
    logs = m.synthesize()
    assert set(logs) == {"g_cls", "g_bn", "g_total"}             # no adversarial term
    assert [len(p) for p in m.feature_pools] == [16, 16, 16] and len(m.pool) == 16
    assert m.feature_pools[0].labels[:16].tolist() == [i % 10 for i in range(16)]   # balanced labels
    assert m.feature_pools[0].images[:16].min() < 0              # features kept as they are (no [0, 1] clamp)
    assert any(not torch.equal(a, b) for a, b in zip(before, m.generator.parameters()))
    assert all(p.grad is None for p in m.teacher.parameters()) and all(p.grad is None for p in m.student.parameters())
    assert not m.generator.training                              # students' batches use BN running stats


def test_student_batches_are_rendered_from_features_by_the_current_generator():
    m = _method(mix_p=0.0, conv_idx="2")
    m.synthesize()
    torch.manual_seed(5)
    x1, level = m.render_batch(8)
    with torch.no_grad():
        m.generator.conv_blocks[9].weight.mul_(-1)               # the last conv, used from level 2
    torch.manual_seed(5)
    x2, _ = m.render_batch(8)
    assert level == 2 and not torch.allclose(x1, x2)


def test_every_student_term_reaches_the_student_and_not_the_teacher():
    m = _method()
    m.synthesize()
    x, _ = m.render_batch(16)
    terms = m.student_losses(x)
    assert set(terms) == {"kd", "cam", "gradcam"}
    params = [p for p in m.student.parameters()]
    for name, t in terms.items():
        assert any(nonzero_grads(t, params)), name
    assert not any(nonzero_grads(terms["cam"], [m.student.fc.weight]))  # classifier weights detached in the CAM
    assert all(p.grad is None for p in m.teacher.parameters())


def test_cam_averaged_over_space_plus_bias_gives_the_logits():
    t = mismatched_bn_teacher()
    sites = ActivationSites(t)
    x = torch.randn(4, *SPEC.image_shape)
    with sites.recording():
        logits = t(x)
    torch.testing.assert_close(sites.cam().mean((2, 3)) + t.fc.bias, logits, rtol=1e-4, atol=1e-4)


def test_gradcam_matches_the_released_hook_formulation():
    m = _method(cam=0.0, alpha=0.0)
    m.synthesize()
    x, _ = m.render_batch(16)
    torch.manual_seed(0)
    got = m.student_losses(x)["gradcam"]
    # released: backward of the logits with grad_outputs = one-hot of the teacher's top class;
    # cam = sum_c mean(grad) * act
    maps = {}
    with torch.no_grad():
        top = m.teacher(x).argmax(1)
    for name, net, sites in (("t", m.teacher, m.t_sites), ("s", m.student, m.s_sites)):
        with sites.recording():
            out = net(x.clone().requires_grad_(True))
            acts = sites.stage_outputs()
        grads = torch.autograd.grad(out, acts, grad_outputs=F.one_hot(top, 10).float())
        maps[name] = [(g.mean((2, 3), keepdim=True) * a).sum(1).detach() for g, a in zip(grads, acts)]
    expected = sum(F.mse_loss(s, t) for s, t in zip(maps["s"], maps["t"]))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_kl_mean_reduction_is_batchmean_over_the_class_count():
    m_mean, m_bm = _method(cam=0.0, gradcam=0.0), _method(cam=0.0, gradcam=0.0, kl_reduction="batchmean")
    m_mean.synthesize()
    x, _ = m_mean.render_batch(16)
    m_bm.student.load_state_dict(m_mean.student.state_dict())
    torch.testing.assert_close(m_mean.student_losses(x)["kd"] * 10, m_bm.student_losses(x)["kd"])


def test_stages_pair_by_resolution_and_lenet_is_refused():
    r34, r18 = create_model("resnet34", 10, (3, 32, 32)), create_model("resnet18", 10, (3, 32, 32))
    pairs = pair_stages(ActivationSites(r34), ActivationSites(r18), r34, r18, (3, 32, 32), torch.device("cpu"))
    assert pairs == [(0, 0), (1, 1), (2, 2), (3, 3)]
    vgg = create_model("vgg11", 10, (3, 32, 32))
    pairs = pair_stages(ActivationSites(vgg), ActivationSites(r18), vgg, r18, (3, 32, 32), torch.device("cpu"))
    assert pairs == [(0, 0), (1, 1), (2, 2), (4, 3)]          # vgg block3 and block4 are both 4x4: the deeper
    with pytest.raises(ConfigError, match="not supported"):
        ActivationSites(create_model("lenet5", 10, (1, 32, 32)))
    from benchmark.config import NotApplicableError
    from methods.spaceshipnet import SpaceshipNet
    for arch in ("lenet5_bn", "lenet5_half_bn"):        # MNIST default pair: 1x1 last map, two-layer head
        with pytest.raises(NotApplicableError, match="no CAM"):
            SpaceshipNet.check_compatible(create_model(arch, 10, (1, 32, 32)), None)


def test_feature_pools_are_part_of_the_checkpoint():
    m = _method()
    m.train_iteration(0)
    fresh = _method()
    fresh.load_state_dict(copy.deepcopy(m.state_dict()))
    for a, b in zip(m.feature_pools, fresh.feature_pools):
        assert len(a) == len(b) == 16 and torch.equal(a.images[:16], b.images[:16])


def test_kornia_augment_sends_both_views_through_one_released_aug(monkeypatch):
    """Compatibility option ``kornia_augment`` (default off): the synthesis view and the student's view of the
    rendered batch both go through one kornia crop + flip module (the released ``self.aug``, padded as the
    synthesis view). Kornia is stood in for by a recording module, so the wiring is tested without it."""
    import methods.spaceshipnet as ssn

    made, views = [], []

    class Recording(torch.nn.Module):
        def forward(self, x):
            views.append(tuple(x.shape))
            return x.flip(-1)

    def fake_kornia(image_shape, pad):
        made.append((tuple(image_shape), pad))
        return Recording()

    monkeypatch.setattr(ssn, "kornia_crop_flip", fake_kornia)
    plain = _method()
    assert plain.kornia_view is None and not made                  # default: the on-device views
    m = _method(kornia_augment=True)
    assert made == [(tuple(SPEC.image_shape), m.pad)] and isinstance(m.kornia_view, Recording)
    m.train_iteration(0)
    # g_steps = 2 synthesis views of the synthesis batch, then kd_steps = 2 student views of a full batch
    assert views == [(16, *SPEC.image_shape)] * 4
