"""The speed switches change speed, never the mathematics (issue 6).

On a fixed batch (same seed, same initial weights) the losses of one CPSC-DFKD generator step and one
student step under each switch (bf16 autocast, channels_last, torch.compile of the teacher) stay within
tolerance of the plain fp32 path; the teacher never gets a parameter gradient; student steps build no
autograd graph through the generator; the optimisers' faster implementations are bit-identical.
"""
from __future__ import annotations

import os
import time

import pytest
import torch

import methods  # noqa: F401
from benchmark import env
from benchmark.data import get_dataset
from benchmark.build import build_method
from benchmark.config import RunConfig
from benchmark.models import create_model
from benchmark.registry import METHODS

SPEC = get_dataset("digits")
CPSC = METHODS.get("cpsc-dfkd")


def make(precision: str = "fp32", channels_last: bool = False, compile: bool = False, seed: int = 0, **cfg):
    """A CPSC-DFKD method on the digits default pair, random-initialised, identical for a given seed.

    ``channels_last`` is RunConfig's switch (teacher and student weights in channels_last, as the runner
    does it); the method's own ``memory_format`` (images and generator) is contiguous unless asked for."""
    cfg.setdefault("memory_format", "contiguous")
    torch.manual_seed(seed)
    teacher = create_model(SPEC.default_teacher, SPEC.num_classes, SPEC.image_shape).eval().requires_grad_(False)
    student = create_model(SPEC.default_student, SPEC.num_classes, SPEC.image_shape)
    run_cfg = RunConfig(precision=precision, channels_last=channels_last, compile=compile)
    return build_method(CPSC, teacher, student, SPEC, torch.device("cpu"),
                        CPSC.Config(**{"batch_size": 64, "g_steps": 1, "s_steps": 1, **cfg}), run_cfg, iterations=10)


def step_losses(**switches) -> dict[str, float]:
    """Losses of one generator step and one student step, each from the same fresh state and batch."""
    out = {}
    for step in ("generator_step", "student_step"):
        method = make(**switches)
        torch.manual_seed(1)
        out.update({k: float(v) for k, v in getattr(method, step)().items()})
    return out


@pytest.fixture(scope="module")
def plain():
    return step_losses()


def assert_losses_close(got: dict, ref: dict, rtol: float, atol: float):
    assert got.keys() == ref.keys()
    bad = {k: (got[k], ref[k]) for k in ref if abs(got[k] - ref[k]) > atol + rtol * abs(ref[k])}
    assert not bad, f"losses off the fp32 path (got, fp32): {bad}"


def test_plain_path_is_deterministic(plain):
    assert_losses_close(step_losses(), plain, 0, 0)


@pytest.mark.parametrize("switches", [{"channels_last": True}, {"memory_format": "channels_last"},
                                      {"channels_last": True, "memory_format": "auto"}], ids=str)
def test_channels_last_keeps_losses(plain, switches):
    assert_losses_close(step_losses(**switches), plain, rtol=1e-4, atol=1e-5)


def test_auto_memory_format_is_channels_last_on_cpu():
    assert make(memory_format="auto").channels_last
    assert not make().channels_last


@pytest.mark.parametrize("memory_format", ["contiguous", "auto"])
def test_bf16_autocast_keeps_losses(plain, memory_format):
    assert_losses_close(step_losses(precision="bf16", memory_format=memory_format), plain, rtol=1e-2, atol=1e-3)


def test_bf16_keeps_fp32_master_weights():
    method = make(precision="bf16")
    method.train_iteration(0)
    for module in (method.student, method.generator, method.teacher):
        assert {p.dtype for p in module.parameters()} == {torch.float32}
    assert all(s["momentum_buffer"].dtype == torch.float32 for s in method.opt_s.state.values())


@pytest.mark.slow
def test_compile_keeps_losses(plain):
    """torch.compile of the teacher (RunConfig.compile), as the runner applies it."""
    if os.environ.get("DFKD_SKIP_COMPILE"):
        pytest.skip("DFKD_SKIP_COMPILE is set")
    start = time.perf_counter()
    try:
        got = step_losses(compile=True)
    except Exception as exc:  # no C++ toolchain, unsupported platform: a property of the machine, not the code
        pytest.skip(f"torch.compile does not work on this CPU: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    assert_losses_close(got, plain, rtol=1e-4, atol=1e-5)
    print(f"compile check took {time.perf_counter() - start:.0f} s")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_teacher_gets_no_parameter_gradient(precision):
    method = make(precision=precision)
    method.generator_step()
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    # the student is fixed on generator steps too: gradients flow through it, not into its weights
    assert all(p.grad is None for p in method.student.parameters())
    assert all(p.requires_grad for p in method.student.parameters())
    assert any(p.grad is not None for p in method.generator.parameters())
    method.student_step()
    assert all(p.grad is None for p in method.teacher.parameters())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_student_steps_build_no_generator_graph(precision):
    method = make(precision=precision)
    seen = []
    handle = method.generator.register_forward_hook(lambda m, i, out: seen.append((out.requires_grad, out.grad_fn)))
    try:
        method.student_step()
    finally:
        handle.remove()
    assert seen == [(False, None)]
    assert all(p.grad is None for p in method.generator.parameters())
    assert any(p.grad is not None for p in method.student.parameters())


def test_fast_optimizers_are_bit_identical():
    """foreach SGD and Adam give exactly the for-loop implementations' weights."""
    fast, slow = make(), make()
    slow.opt_s = slow._stateful["opt_s"] = torch.optim.SGD(
        slow.student.parameters(), lr=slow.cfg.lr_s, momentum=slow.cfg.momentum, weight_decay=slow.cfg.weight_decay,
        foreach=False)
    slow.sched_s = slow._stateful["sched_s"] = type(fast.sched_s)(slow.opt_s, fast.sched_s.lr_lambdas[0])
    slow.opt_g = slow._stateful["opt_g"] = torch.optim.Adam(
        slow.generator.parameters(), lr=slow.cfg.lr_g, betas=(slow.cfg.beta1_g, slow.cfg.beta2_g), foreach=False)
    assert fast.opt_s.defaults.get("foreach") and fast.opt_g.defaults.get("foreach")
    for method in (fast, slow):
        torch.manual_seed(5)
        for it in range(3):
            method.train_iteration(it)
    for a, b in ((fast.student, slow.student), (fast.generator, slow.generator)):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), name


def test_auto_precision_follows_the_cpu():
    expected = "bf16" if env.cpu_supports_bf16() else "fp32"
    assert env.resolve_precision("auto", torch.device("cpu")) == expected

