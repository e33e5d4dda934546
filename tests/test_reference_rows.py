"""Reference rows (teacher, student-real, kd-real): records in the data-free rows' format, the teacher row
reproduces the teacher's accuracy, real-data streams resume exactly, schedules and presets."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import methods  # noqa: F401
from benchmark.data import get_dataset
from benchmark.build import build_method
from benchmark.config import RunConfig
from benchmark.models import create_model
from benchmark.records import Cell
from benchmark.registry import DATASETS, METHODS
from benchmark.resolve import resolve_cell
from benchmark.runner import RunOptions, run_cell
from benchmark.teachers import get_teacher
from methods.reference import RealBatches

ROWS = ["teacher", "student-real", "kd-real"]


@pytest.fixture(scope="module")
def records(tmp_path_factory, teacher_cache):
    """Smoke-budget records of the three reference rows and of one data-free method."""
    out = tmp_path_factory.mktemp("reference_rows")
    opts = RunOptions(out=out, teacher_cache=teacher_cache, progress=False, device="cpu")
    return {name: run_cell(Cell(name, "digits", "cnn_wide", "cnn_narrow", budget="smoke"), opts)
            for name in ROWS + ["dfad"]}


def test_reference_rows_write_records_in_the_data_free_format(records):
    data_free_keys = set(records["dfad"])
    for name in ROWS:
        rec = records[name]
        assert rec["status"] == "done", rec.get("traceback")
        assert set(rec) == data_free_keys, f"{name}: keys differ: {set(rec) ^ data_free_keys}"
        assert rec["data_free"] is False and rec["synthetic_images"] == 0
        assert rec["final_acc"] >= 30
    assert records["dfad"]["data_free"] is True


def test_teacher_row_reports_the_teacher_accuracy(records):
    rec = records["teacher"]
    assert rec["final_acc"] == pytest.approx(rec["teacher_acc"])
    assert rec["iterations"] == 0 and rec["student_steps"] == 0 and rec["teacher_forwards"] == 0
    teacher = torch.nn.Linear(2, 2)
    assert METHODS.get("teacher").make_student(teacher, lambda: torch.nn.Linear(2, 2)) is teacher


def test_real_rows_train_and_count_their_work(records):
    for name in ("student-real", "kd-real"):
        rec = records[name]
        assert rec["student_steps"] == rec["iterations"] > 0
        assert rec["final_acc"] > rec["curve"][0]["acc"]
    assert records["kd-real"]["teacher_forwards"] > 0 and records["student-real"]["teacher_forwards"] == 0


def test_real_batches_resume_with_the_same_batches():
    data = torch.utils.data.TensorDataset(torch.arange(10.0).view(10, 1), torch.arange(10))
    stream = RealBatches(data, 4, seed=3)
    for _ in range(4):        # into the second epoch (3 batches per epoch: 4, 4, 2)
        stream.next()
    state = copy.deepcopy(stream.state_dict())
    expected = [stream.next()[1].tolist() for _ in range(5)]
    fresh = RealBatches(data, 4, seed=99)
    fresh.load_state_dict(state)
    assert [fresh.next()[1].tolist() for _ in range(5)] == expected


def test_real_batches_cover_each_epoch_once_and_skip_singletons():
    data = torch.utils.data.TensorDataset(torch.zeros(9, 1), torch.arange(9))
    stream = RealBatches(data, 4, seed=0)          # 4, 4, then a singleton that BatchNorm cannot use
    first = stream.next()[1].tolist() + stream.next()[1].tolist()
    assert len(set(first)) == 8
    assert len(stream.next()[1]) == 4              # the singleton was skipped: a new epoch began


def _method(name, teacher, iterations, **overrides):
    spec = get_dataset("digits")
    cls = METHODS.get(name)
    cfg = dataclasses.replace(cls.Config(), **overrides)
    cfg.validate()
    student = create_model("cnn_narrow", 10, spec.image_shape)
    return build_method(cls, teacher, student, spec, torch.device("cpu"), cfg, RunConfig(precision="fp32", channels_last=False), iterations=iterations)


def test_multistep_schedule_decays_at_the_budget_fractions():
    teacher = create_model("cnn_wide", 10, (1, 16, 16)).eval()
    method = _method("student-real", teacher, 20, batch_size=16)
    lrs = []
    for it in range(20):
        lrs.append(method.opt.param_groups[0]["lr"])
        method.train_iteration(it)
    assert lrs[0] == pytest.approx(0.1) and lrs[11] == pytest.approx(0.1)
    assert lrs[12] == pytest.approx(0.01) and lrs[15] == pytest.approx(0.001) and lrs[18] == pytest.approx(1e-4)


def test_kd_real_loss_is_hinton_kd(teacher_cache):
    spec = get_dataset("digits")
    teacher, _ = get_teacher(spec, "cnn_wide", 0, torch.device("cpu"), teacher_cache, progress=False)
    method = _method("kd-real", teacher, 5, batch_size=16)
    x, y = next(iter(torch.utils.data.DataLoader(spec.load("train"), batch_size=16)))
    terms = method.loss_terms(x, y)
    from benchmark.losses import kd_kl

    with torch.no_grad():
        s, t = method.student(x), teacher(x)
    assert float(terms["kd"].detach()) == pytest.approx(0.9 * float(kd_kl(s, t, 4.0)), rel=1e-5)
    assert float(terms["ce"].detach()) == pytest.approx(0.1 * float(torch.nn.functional.cross_entropy(s, y)), rel=1e-5)
    assert method.counters["teacher_forwards"] == 16


@pytest.mark.skipif(not {"cifar10", "cifar100"} <= set(DATASETS.list()), reason="CIFAR datasets not registered")
def test_reference_row_paper_presets():
    r = resolve_cell(Cell("student-real", "cifar10", "wrn40_2", "wrn16_1", budget="paper"))
    assert r.run_cfg.iterations == 200 * 196 and r.method_cfg.batch_size == 256 and r.method_cfg.schedule == "multistep"
    r = resolve_cell(Cell("kd-real", "cifar100", "resnet34", "resnet18", budget="paper"))
    assert r.run_cfg.iterations == 200 * 391 and r.method_cfg.temperature == 1.0 and r.method_cfg.hard_weight == 0.1
    assert resolve_cell(Cell("teacher", "cifar100", "vgg11", "resnet18", budget="paper")).run_cfg.iterations == 0


# ---- MNIST: the BN-free LeNet-5 pair -----------------------------------------------------------------------

def test_mnist_real_rows_use_the_dafl_authors_recipe():
    for name in ("student-real", "kd-real"):
        for budget in ("default", "paper"):
            r = resolve_cell(Cell(name, "mnist", "lenet5", "lenet5_half", budget=budget))
            c = r.method_cfg
            assert (c.optimizer, c.lr, c.batch_size, c.weight_decay, c.schedule) == ("adam", 1e-3, 256, 0.0, "constant")
            assert r.run_cfg.iterations == 9 * 235
    # digits keeps its SGD recipe
    digits = resolve_cell(Cell("kd-real", "digits", "cnn_wide", "cnn_narrow", budget="default"))
    assert digits.method_cfg.optimizer == "sgd"


def test_kd_real_learns_on_the_bn_free_lenet_pair():
    """kd-real on MNIST's LeNet-5 -> LeNet-5-half (no BatchNorm) with its default budget's optimiser.

    A confident BN-free teacher (logit range ~30) made the digits recipe (SGD lr 0.05, momentum 0.9, T = 4)
    kill every ReLU of the student's second conv within ~40 steps: constant output, CE = ln 10. Tiny
    separable data made here (10 smoothed random prototypes plus noise, 32x32)."""
    import torch.nn.functional as F

    from benchmark.teachers import freeze

    gen = torch.Generator().manual_seed(0)
    protos = F.interpolate(torch.randn(10, 1, 8, 8, generator=gen), size=(32, 32), mode="bilinear") * 1.5

    def make(n):
        y = torch.arange(n) % 10
        return protos[y] + 0.8 * torch.randn(n, 1, 32, 32, generator=gen), y

    (x_train, y_train), (x_test, y_test) = make(1280), make(300)
    torch.manual_seed(0)
    teacher = create_model("lenet5", 10, (1, 32, 32))
    opt = torch.optim.Adam(teacher.parameters(), 1e-3)
    for _ in range(200):
        i = torch.randint(0, len(y_train), (64,), generator=gen)
        loss = F.cross_entropy(teacher(x_train[i]), y_train[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    freeze(teacher)
    with torch.no_grad():
        t_logits = teacher(x_test)
    assert (t_logits.argmax(1) == y_test).float().mean() > 0.95
    assert (t_logits.amax(1) - t_logits.amin(1)).mean() > 15       # confident, like a trained LeNet-5

    cfg = resolve_cell(Cell("kd-real", "mnist", "lenet5", "lenet5_half", budget="default")).method_cfg
    student = create_model("lenet5_half", 10, (1, 32, 32))
    method = build_method("kd-real", teacher, student, get_dataset("mnist"), torch.device("cpu"), cfg, RunConfig(precision="fp32", channels_last=False), iterations=80,
                          real_train_data=lambda: torch.utils.data.TensorDataset(x_train, y_train))
    for it in range(80):
        method.train_iteration(it)
    student.eval()
    with torch.no_grad():
        s_logits = student(x_test)
    assert s_logits.std(0).mean() > 1.0                                # not a constant output
    assert (s_logits.argmax(1) == y_test).float().mean() > 0.9
