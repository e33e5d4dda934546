"""Setup shared by the method tests: small methods on digits (CPU, fp32), an untrained teacher whose BN
statistics random images do not match, and the check that each step of a generator-student method updates
only its own network."""
from __future__ import annotations

import dataclasses

import torch

import methods  # noqa: F401
from benchmark.build import build_method
from benchmark.config import RunConfig
from benchmark.data import get_dataset
from benchmark.models import create_model
from benchmark.registry import METHODS
from methods._common import eval_mode, no_param_grad

SPEC = get_dataset("digits")
FP32 = RunConfig(precision="fp32", channels_last=False)


def mismatched_bn_teacher() -> torch.nn.Module:
    """A frozen ``cnn_wide`` (seed 0) whose BN running statistics random images do not match, so that the
    BN-statistics terms are far from zero."""
    torch.manual_seed(0)
    t = create_model("cnn_wide", 10, SPEC.image_shape)
    with torch.no_grad():
        for m in t.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return t.eval().requires_grad_(False)


def build_small(name: str, teacher: torch.nn.Module, iterations: int = 10, student: str | torch.nn.Module = "cnn_narrow",
                seed: int | None = None, **config):
    """Method ``name`` on digits with ``config`` over its defaults (validated) and ``teacher``; the student is
    ``student`` or a fresh model of that architecture, created after ``torch.manual_seed(seed)`` unless
    ``seed`` is None (then the RNG goes on from where it stands)."""
    cls = METHODS.get(name)
    cfg = dataclasses.replace(cls.Config(), **config)
    cfg.validate()
    if isinstance(student, str):
        if seed is not None:
            torch.manual_seed(seed)
        student = create_model(student, SPEC.num_classes, SPEC.image_shape)
    return build_method(cls, teacher, student, SPEC, torch.device("cpu"), cfg, FP32, iterations=iterations)


def generator_terms(method, n: int = 16) -> dict[str, torch.Tensor]:
    """The generator's terms on a fresh batch of ``n``, with the student in eval mode and out of the graph."""
    method.generator.train()
    x = method.generator(method.draw_z(n))
    with no_param_grad(method.student), eval_mode(method.student):
        return method.generator_terms(x)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def changed(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(v, before[k]) for k, v in module.state_dict().items())


def assert_each_step_updates_only_its_network(method, teacher: torch.nn.Module) -> dict:
    """``generator_step`` changes the generator and leaves the student (even its BN statistics) as it was,
    ``student_step`` the other way round (its sampling is in eval mode); neither leaves a gradient on the
    teacher, touches its state or sets it training, nor computes gradients of the other network. Returns
    the student step's logs."""
    # (a freshly trained teacher keeps the .grad of its last training step; freezing does not clear it)
    for p in list(teacher.parameters()) + list(method.student.parameters()) + list(method.generator.parameters()):
        p.grad = None
    t_before, s_before, g_before = snapshot(teacher), snapshot(method.student), snapshot(method.generator)

    method.generator_step()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in method.student.parameters()), "generator step computed student gradients"
    for k, v in method.student.state_dict().items():
        torch.testing.assert_close(v, s_before[k], msg=f"generator step changed student {k}")
    assert changed(method.generator, g_before), "generator step left the generator as it was"

    for p in method.generator.parameters():
        p.grad = None
    g_before = snapshot(method.generator)
    logs = method.student_step()
    assert all(p.grad is None for p in method.generator.parameters()), "student step computed generator gradients"
    assert all(p.grad is None for p in teacher.parameters())
    for k, v in method.generator.state_dict().items():
        torch.testing.assert_close(v, g_before[k], msg=f"student step changed generator {k}")
    assert changed(method.student, s_before), "student step left the student as it was"
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, t_before[k])
    assert teacher.training is False
    return logs
