"""The model zoo: output shapes for every registered model, input checks, and state-dict names that match
the CIFAR classifiers of the zju-vipa DataFree library (CMI / Fast-Datafree), so their teachers load."""
from __future__ import annotations

import pytest
import torch

from benchmark.config import ConfigError
from benchmark.models import MODELS, check_model_fits, create_model

SIZES = (8, 16, 28, 32, 64)
pytestmark = pytest.mark.usefixtures("one_thread")


ZOO = ("resnet18", "resnet34", "vgg11", "wrn16_1", "wrn16_2", "wrn40_1", "wrn40_2", "lenet5", "lenet5_half",
       "lenet5_bn", "lenet5_half_bn")


def test_zoo_is_registered():
    assert set(ZOO) <= set(MODELS.list())


@pytest.mark.parametrize("name", MODELS.list())
@pytest.mark.parametrize("channels", (1, 3))
def test_logits_and_features_shapes(name, channels):
    entry = MODELS.get(name)
    if entry.channels is not None and channels not in entry.channels:
        with pytest.raises(ConfigError, match="channel"):
            check_model_fits(name, (channels, 32, 32))
        return
    sizes = [s for s in SIZES if s >= entry.min_size]
    assert sizes, f"{name} accepts none of {SIZES}"
    torch.manual_seed(0)
    model = create_model(name, 7, (channels, sizes[0], sizes[0])).eval()
    assert model.arch == name and isinstance(model.feature_dim, int) and model.feature_dim > 0
    with torch.no_grad():
        for s in sizes:
            x = torch.randn(2, channels, s, s)
            logits = model(x)
            out, feat = model(x, return_features=True)
            assert logits.shape == (2, 7), (name, s)
            assert feat.shape == (2, model.feature_dim), (name, s)
            assert torch.allclose(out, logits)
            assert torch.isfinite(logits).all()


def test_training_mode_backward():
    model = create_model("wrn16_1", 10, (3, 32, 32)).train()
    logits, feat = model(torch.randn(4, 3, 32, 32), return_features=True)
    (logits.sum() + feat.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ("lenet5", "lenet5_half", "lenet5_bn", "lenet5_half_bn"))
def test_lenet_is_one_channel_and_needs_32px(name):
    with pytest.raises(ConfigError, match="1-channel"):
        check_model_fits(name, (3, 32, 32))
    with pytest.raises(ConfigError, match="at least 32x32"):
        check_model_fits(name, (1, 28, 28))
    check_model_fits(name, (1, 32, 32))


def test_feature_dims_and_parameter_counts():
    expected = {   # (feature_dim, parameters with 10 classes and 3 input channels; 1 channel for LeNet)
        "resnet18": (512, 11_173_962), "resnet34": (512, 21_282_122), "vgg11": (512, 9_231_114),
        "wrn16_1": (64, 175_066), "wrn16_2": (128, 691_674), "wrn40_1": (64, 563_930), "wrn40_2": (128, 2_243_546),
        "lenet5": (120, 61_706), "lenet5_half": (60, 15_738),
        # + a BatchNorm2d (2 parameters per channel) after each conv: 2 * (6 + 16 + 120), 2 * (3 + 8 + 60)
        "lenet5_bn": (120, 61_706 + 284), "lenet5_half_bn": (60, 15_738 + 142),
    }
    for name, (dim, params) in expected.items():
        c = 1 if name.startswith("lenet") else 3
        model = create_model(name, 10, (c, 32, 32))
        assert model.feature_dim == dim, name
        assert sum(p.numel() for p in model.parameters()) == params, name


# ---- state-dict names of the DataFree library --------------------------------------------------------
# Written from reading datafree/models/classifiers/{resnet,wresnet,vgg,lenet}.py (zju-vipa/Fast-Datafree).

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix):
    return [f"{prefix}.{k}" for k in BN]


def datafree_resnet_keys(blocks):
    keys = ["conv1.weight", *_bn("bn1")]
    for s, n in enumerate(blocks, 1):
        for j in range(n):
            p = f"layer{s}.{j}"
            keys += [f"{p}.conv1.weight", *_bn(f"{p}.bn1"), f"{p}.conv2.weight", *_bn(f"{p}.bn2")]
            if s > 1 and j == 0:
                keys += [f"{p}.shortcut.0.weight", *_bn(f"{p}.shortcut.1")]
    return keys + ["linear.weight", "linear.bias"]


def datafree_wrn_keys(depth, widen):
    n = (depth - 4) // 6
    keys = ["conv1.weight"]
    for g in (1, 2, 3):
        for i in range(n):
            p = f"block{g}.layer.{i}"
            keys += [*_bn(f"{p}.bn1"), f"{p}.conv1.weight", *_bn(f"{p}.bn2"), f"{p}.conv2.weight"]
            if i == 0 and (g > 1 or widen > 1):
                keys.append(f"{p}.convShortcut.weight")
    return keys + _bn("bn1") + ["fc.weight", "fc.bias"]


def datafree_vgg11_bn_keys():
    keys = []
    for b, convs in enumerate((1, 1, 2, 2, 2)):
        for c in range(convs):
            keys += [f"block{b}.{3 * c}.weight", f"block{b}.{3 * c}.bias", *_bn(f"block{b}.{3 * c + 1}")]
    return keys + ["classifier.weight", "classifier.bias"]


LENET_KEYS = ["features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias",
              "features.6.weight", "features.6.bias", "fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"]

DATAFREE_KEYS = {
    "resnet18": datafree_resnet_keys((2, 2, 2, 2)),
    "resnet34": datafree_resnet_keys((3, 4, 6, 3)),
    "vgg11": datafree_vgg11_bn_keys(),
    "wrn16_1": datafree_wrn_keys(16, 1),
    "wrn16_2": datafree_wrn_keys(16, 2),
    "wrn40_1": datafree_wrn_keys(40, 1),
    "wrn40_2": datafree_wrn_keys(40, 2),
    "lenet5": LENET_KEYS,
    "lenet5_half": LENET_KEYS,
}

# A few hand-checked names and shapes (10 classes, 3 channels; LeNet 1 channel).
KNOWN_SHAPES = {
    "resnet18": {"conv1.weight": (64, 3, 3, 3), "layer1.0.conv1.weight": (64, 64, 3, 3),
                 "layer2.0.shortcut.0.weight": (128, 64, 1, 1), "layer4.1.bn2.running_var": (512,),
                 "linear.weight": (10, 512)},
    "resnet34": {"layer3.5.conv2.weight": (256, 256, 3, 3), "layer4.2.bn2.weight": (512,), "linear.bias": (10,)},
    "vgg11": {"block0.0.weight": (64, 3, 3, 3), "block0.0.bias": (64,), "block2.3.weight": (256, 256, 3, 3),
              "block4.4.running_mean": (512,), "classifier.weight": (10, 512)},
    "wrn16_1": {"conv1.weight": (16, 3, 3, 3), "block2.layer.0.convShortcut.weight": (32, 16, 1, 1),
                "block3.layer.1.conv2.weight": (64, 64, 3, 3), "bn1.weight": (64,), "fc.weight": (10, 64)},
    "wrn16_2": {"block1.layer.0.convShortcut.weight": (32, 16, 1, 1), "fc.weight": (10, 128)},
    "wrn40_1": {"block3.layer.5.conv1.weight": (64, 64, 3, 3)},
    "wrn40_2": {"block1.layer.0.bn1.weight": (16,), "block3.layer.5.bn2.weight": (128,), "fc.weight": (10, 128)},
    "lenet5": {"features.0.weight": (6, 1, 5, 5), "features.6.weight": (120, 16, 5, 5), "fc.0.weight": (84, 120),
               "fc.2.weight": (10, 84)},
    "lenet5_half": {"features.0.weight": (3, 1, 5, 5), "features.3.weight": (8, 3, 5, 5),
                    "features.6.weight": (60, 8, 5, 5), "fc.0.weight": (42, 60), "fc.2.weight": (10, 42)},
}


@pytest.mark.parametrize("name", sorted(DATAFREE_KEYS))
def test_state_dict_names_match_datafree(name):
    c = 1 if name.startswith("lenet") else 3
    model = create_model(name, 10, (c, 32, 32))
    state = model.state_dict()
    assert list(state) == DATAFREE_KEYS[name]          # same names, same order, nothing extra
    for key, shape in KNOWN_SHAPES[name].items():
        assert tuple(state[key].shape) == shape, key


@pytest.mark.parametrize("name", ("resnet18", "vgg11", "wrn40_2", "lenet5"))
def test_datafree_named_state_dict_loads_strictly(name):
    """A state dict spelled with the DataFree names (values from another instance) loads and reproduces it."""
    c = 1 if name.startswith("lenet") else 3
    torch.manual_seed(1)
    source = create_model(name, 10, (c, 32, 32)).eval()
    with torch.no_grad():   # non-trivial BN statistics
        for m in source.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    foreign = {k: v.clone() for k, v in zip(DATAFREE_KEYS[name], source.state_dict().values())}
    torch.manual_seed(2)
    target = create_model(name, 10, (c, 32, 32)).eval()
    target.load_state_dict(foreign, strict=True)
    x = torch.randn(2, c, 32, 32)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


def test_vgg_pools_once_more_at_64px():
    """DataFree's VGG adds the fourth max-pool for 64x64 inputs; the features still have 512 channels."""
    model = create_model("vgg11", 10, (3, 64, 64)).eval()
    seen = []
    model.block4.register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
        model(torch.randn(1, 3, 32, 32))
    assert seen == [4, 4]


def test_lenet_bn_variants_have_batchnorm_and_the_plain_ones_none():
    def has_bn(name):
        return any(isinstance(m, torch.nn.BatchNorm2d) for m in create_model(name, 10, (1, 32, 32)).modules())
    assert has_bn("lenet5_bn") and has_bn("lenet5_half_bn")
    assert not has_bn("lenet5") and not has_bn("lenet5_half")
