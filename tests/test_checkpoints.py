"""load_teacher_checkpoint: the checkpoint layouts in circulation load; every failure is a one-line ConfigError."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.checkpoints import load_teacher_checkpoint
from benchmark.config import ConfigError
from benchmark.models import create_model


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(name="wrn16_1", classes=10, seed=0):
    torch.manual_seed(seed)
    c = 1 if name.startswith("lenet") else 3
    return create_model(name, classes, (c, 32, 32)).eval()


def _trained_like(name="wrn16_1", classes=10):
    """A model whose weights and BN statistics differ from a fresh one."""
    model = _model(name, classes, seed=123)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn_like(t) * 0.05)
    return model


def _same_outputs(a, b, channels=3):
    x = torch.randn(3, channels, 32, 32)
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def _one_line_config_error(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


@pytest.mark.parametrize("layout", ("bare", "state_dict", "model", "module_prefix", "datafree_dataparallel"))
def test_round_trip(tmp_path, layout):
    src = _trained_like()
    state = src.state_dict()
    blob = {
        "bare": state,
        "state_dict": {"state_dict": state},
        "model": {"model": state, "epoch": 3},
        "module_prefix": {f"module.{k}": v for k, v in state.items()},
        # what DataFree's train_scratch.py writes for a DataParallel model
        "datafree_dataparallel": {
            "epoch": 200, "arch": "wrn16_1", "best_acc1": 0.91,
            "state_dict": {f"module.{k}": v for k, v in state.items()},
            # the layout of an SGD state_dict (building a real optimizer first-time imports torch._dynamo: slow)
            "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}},
                          "param_groups": [{"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False,
                                            "params": list(range(len(list(src.parameters()))))}]},
        },
    }[layout]
    path = tmp_path / "teacher.pth"
    torch.save(blob, path)
    dst = _model()
    assert not _same_outputs(src, dst)
    assert load_teacher_checkpoint(dst, path) is dst
    assert _same_outputs(src, dst)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_checkpoint_without_num_batches_tracked_loads(tmp_path):
    """Checkpoints saved before PyTorch 0.4.1 have no BN num_batches_tracked buffers."""
    src = _trained_like()
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pt")
    dst = _model()
    load_teacher_checkpoint(dst, tmp_path / "old.pt")
    assert _same_outputs(src, dst)


def test_wrong_depth_lists_missing_keys(tmp_path):
    torch.save(_model("wrn16_1").state_dict(), tmp_path / "wrn16_1.pt")
    target = _model("wrn40_1")
    with pytest.raises(ConfigError) as excinfo:
        load_teacher_checkpoint(target, tmp_path / "wrn16_1.pt")
    msg = _one_line_config_error(excinfo)
    assert "does not fit wrn40_1" in msg and "missing keys" in msg and "block1.layer.2" in msg
    assert "unexpected" not in msg and str(tmp_path / "wrn16_1.pt") in msg


def test_other_family_lists_missing_and_unexpected(tmp_path):
    torch.save({"state_dict": _model("wrn16_1").state_dict()}, tmp_path / "t.pt")
    with pytest.raises(ConfigError) as excinfo:
        load_teacher_checkpoint(_model("vgg11"), tmp_path / "t.pt")
    msg = _one_line_config_error(excinfo)
    assert "does not fit vgg11" in msg and "missing keys (block0.0.weight" in msg and "unexpected (" in msg


@pytest.mark.parametrize("src_name, src_classes, dst_name, detail", [
    ("wrn16_1", 10, "wrn16_2", "1 missing key (block1.layer.0.convShortcut.weight), 63 shape mismatches (block1.layer.0.conv1.weight: checkpoint [16, 16, 3, 3] vs model [32, 16, 3, 3], ...)"),
    ("wrn16_1", 100, "wrn16_1", ": 2 shape mismatches (fc.weight: checkpoint [100, 64] vs model [10, 64], ...)"),
    ("lenet5", 10, "lenet5_half", "shape mismatches (features.0.weight: checkpoint [6, 1, 5, 5] vs model [3, 1, 5, 5]"),
])
def test_shape_mismatch(tmp_path, src_name, src_classes, dst_name, detail):
    torch.save(_model(src_name, src_classes).state_dict(), tmp_path / "t.pt")
    dst = _model(dst_name)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ConfigError) as excinfo:
        load_teacher_checkpoint(dst, tmp_path / "t.pt")
    msg = _one_line_config_error(excinfo)
    assert detail in msg
    # a failed load leaves the model untouched
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist") as excinfo:
        load_teacher_checkpoint(_model(), tmp_path / "nope.pt")
    _one_line_config_error(excinfo)
    with pytest.raises(ConfigError, match="folder"):
        load_teacher_checkpoint(_model(), tmp_path)


@pytest.mark.parametrize("kind, reason", [
    ("garbage", "not a file written by torch.save"),
    ("truncated", "corrupt, truncated or another format"),
    ("empty", "the file is empty"),
    ("pickled_numpy", "weights_only loading refuses"),
])
def test_unreadable_file(tmp_path, kind, reason):
    path = tmp_path / "bad.pt"
    if kind == "garbage":
        path.write_bytes(b"this is not a checkpoint\x00\x01\x02" * 10)
    elif kind == "truncated":
        torch.save(_model().state_dict(), path)
        path.write_bytes(path.read_bytes()[:1000])
    elif kind == "empty":
        path.write_bytes(b"")
    else:   # objects weights_only=True refuses to unpickle
        torch.save({"state_dict": _model().state_dict(), "best_acc1": np.float64(0.9)}, path)
    with pytest.raises(ConfigError, match="not a readable torch file") as excinfo:
        load_teacher_checkpoint(_model(), path)
    assert reason in _one_line_config_error(excinfo)


@pytest.mark.parametrize("blob", ([1, 2, 3], {"epoch": 3, "arch": "wrn16_1"}, {}))
def test_no_state_dict_inside(tmp_path, blob):
    torch.save(blob, tmp_path / "t.pt")
    with pytest.raises(ConfigError, match="holds no state dict") as excinfo:
        load_teacher_checkpoint(_model(), tmp_path / "t.pt")
    _one_line_config_error(excinfo)
