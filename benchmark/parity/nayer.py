"""Parity adapter for ``nayer`` against tmtuan1307/NAYER (``datafree.synthesis.NAYER`` with its
``NLGenerator`` and ``datafree_kd.train``, set up as ``datafree_kd.main_worker`` sets them up for CIFAR-10 with
``scripts/nayer_100.sh``'s flags: adv 1.33, bn 10, oh 0.5, lr 0.2, lr_g 4e-3, bn_mmt 0.9, le_emb_size 1000,
KD at T 20, eta_min 2e-4; the label embeddings of ``label_embedding/cifar10_le.pickle`` from the checkout).

Shortened so that every path runs within K rounds: synthesis batch = student batch, ``WARMUP`` (2) warm-up
rounds of ``GWP_LOOPS`` (2) loops, then ``G_LOOPS`` (2) loops per round (so the released code's student mode
change after a loop matters: our ``student_train_after_loop`` compatibility option), ``G_STEPS`` (3)
generator steps per loop, ``G_LIFE`` (3): the whole generator is rebuilt in rounds 1, 3 and 4 (released
``ep`` 0, 2, 3), ``KD_STEPS`` (5) student steps per training round.

Weights and draws: the teacher and student state dicts are copied across. The generator is rebuilt (PyTorch's
default initialisation) and its noisy layers redrawn (N(0, 1)) from the global RNG on both sides, ours in place
(``reinitialise`` / ``reset_noisy_layers``), the released code as a new module (``reinit()``) and
``re_init_le``; ours run under a fixed seed per call and their result is loaded into the released module
right after its own re-initialisation (state dicts renamed: ``noisy`` -> ``le1``, ``l1`` -> ``l1.0``,
``body`` -> ``conv_blocks``; the label embeddings become a buffer of the released module so that they are
compared too). The balanced targets' ``torch.randint`` and kornia's crop / flip draws replay ours (our
``kornia_augment`` compatibility option); the student phase is handled as in the ``deepinv`` adapter (PNG pool
in a temporary folder, in-process loader, per-image crop / flip draws from ours).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from .capture import caller_locals, locals_at_step, returns_of
from .core import Problem, Sides, StateView, Tape, copy_state
from .deepinv import _cifar_transform, _in_process_loader, _prepare_draws, _written_order
from .fast import _Stats

REPO = "tmtuan1307/NAYER"
MARKER = "datafree/synthesis/nayer.py"
METHODS = ("nayer",)
COMPAT: dict[str, dict[str, Any]] = {"nayer": {"kornia_augment": True, "student_train_after_loop": True}}
SCRIPT = {"adv": 1.33, "bn": 10.0, "oh": 0.5, "lr": 0.2, "lr_g": 4e-3, "bn_mmt": 0.9, "le_emb_size": 1000,
          "T": 20.0, "eta_min": 2e-4, "weight_decay": 1e-4, "ngf": 64, "dataset": "cifar10"}
WARMUP, GWP_LOOPS, G_LOOPS, G_STEPS, G_LIFE, KD_STEPS = 2, 2, 2, 3, 3, 5
EMBEDDING = "label_embedding/cifar10_le.pickle"

DEFAULTS = {"nayer": [
    "`kornia_augment` (default off): the synthesis view comes from the on-device re-implementation of the "
    "crop and flip (docstring), so the images the teacher sees differ from the first step on; the draws are "
    "then not even of the same kind (the comparison stops with a draw mismatch).",
    "`student_train_after_loop` (default off): our student stays in eval mode through every synthesis loop; "
    "the released code puts it into training mode after each loop, so from the second loop of a training "
    "round the adversarial term uses the student's batch statistics and updates its running statistics."]}


def generator_name(key: str) -> str:
    """Our ``NoisyLayerGenerator`` state-dict key -> the released ``NLGenerator``'s."""
    head, _, rest = key.partition(".")
    if head == "noisy":
        return "le1." + rest
    if head == "l1":
        return "l1.0." + rest
    if head == "body":
        return "conv_blocks." + rest
    return key


def _adopt_embedding(gen: torch.nn.Module) -> torch.nn.Module:
    """Make the released generator's label embeddings (a plain attribute) a buffer, so that its state dict
    has the same keys as ours; its ``forward`` reads ``self.label_emb`` either way."""
    if "label_emb" not in gen._buffers:
        emb = gen.label_emb
        del gen.label_emb
        gen.register_buffer("label_emb", emb)
    return gen


class _Seeded:
    """Runs ``fn`` under seed ``base + calls`` with the global RNG restored afterwards, scales the parameters
    it re-initialised by ``scale`` (1; the rounding floor's twin: 1 + eps), then records a copy of what
    ``snapshot`` returns (for the reference to load)."""

    def __init__(self, fn, params, snapshot, sink: list):
        self.fn, self.params, self.snapshot, self.sink = fn, params, snapshot, sink
        self.base, self.calls, self.scale = 0, 0, 1.0

    def __call__(self, *args, **kwargs):
        state = torch.get_rng_state()
        torch.manual_seed(self.base + self.calls)
        self.calls += 1
        try:
            out = self.fn(*args, **kwargs)
        finally:
            torch.set_rng_state(state)
        if self.scale != 1.0:
            with torch.no_grad():
                for p in self.params():
                    p.mul_(self.scale)
        self.sink.append(self.snapshot())
        return out


def build(problem: Problem, path) -> Sides:
    import datafree
    import datafree_kd
    import registry
    from datafree.utils import _utils as ref_utils

    b = problem.batch
    if problem.steps <= WARMUP:
        from benchmark.config import ConfigError
        raise ConfigError(f"parity nayer: --steps must exceed the {WARMUP} warm-up rounds")
    embedding = Path(path) / EMBEDDING
    options = {"batch_size": b, "synthesis_batch_size": b, "g_steps": G_STEPS, "kd_steps": KD_STEPS,
               "warmup": WARMUP, "gwp_loops": GWP_LOOPS, "g_loops": G_LOOPS, "g_life": G_LIFE,
               "label_embedding": str(embedding), **(COMPAT["nayer"] if problem.compat else {})}
    ours, cfg = problem.build_ours("nayer", options)
    ours.generator.to(problem.dtype)

    k = problem.spec.num_classes
    teacher = registry.get_model(problem.teacher_arch, num_classes=k).to(problem.dtype).eval()
    student = registry.get_model(problem.student_arch, num_classes=k).to(problem.dtype)
    copy_state(problem.teacher, teacher)
    copy_state(problem.student, student)
    NLGenerator = datafree.models.generator.NLGenerator
    generator = NLGenerator(ngf=cfg.ngf, img_size=32, nc=3, nl=k, label_emb=ours.generator.label_emb.clone(),
                            le_emb_size=cfg.le_emb_size, le_size=ours.generator.label_emb.shape[1], sbz=b)
    generator = _adopt_embedding(generator.to(problem.dtype))
    copy_state(ours.generator, generator, generator_name)
    normalizer = datafree.utils.Normalizer(**registry.NORMALIZE_DICT["cifar10"])
    pool_dir = Path(tempfile.mkdtemp(prefix="parity-nayer-")) / "pool"
    synth = datafree.synthesis.NAYER(
        teacher, student, generator, num_classes=k, img_size=(3, 32, 32), init_dataset=None, g_steps=G_STEPS,
        lr_g=SCRIPT["lr_g"], synthesis_batch_size=b, sample_batch_size=b, adv=SCRIPT["adv"], bn=SCRIPT["bn"],
        oh=SCRIPT["oh"], save_dir=str(pool_dir), transform=_cifar_transform(registry), normalizer=normalizer,
        device="cpu", warmup=WARMUP, bn_mmt=SCRIPT["bn_mmt"], g_life=G_LIFE, g_loops=G_LOOPS,
        gwp_loops=GWP_LOOPS, dataset=SCRIPT["dataset"])
    criterion = datafree.criterions.KLDiv(T=SCRIPT["T"])
    optimizer = torch.optim.SGD(student.parameters(), SCRIPT["lr"], weight_decay=SCRIPT["weight_decay"],
                                momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, problem.steps - WARMUP, eta_min=SCRIPT["eta_min"])
    args = argparse.Namespace(gpu=None, autocast=datafree.utils.dummy_ctx, kd_steps=KD_STEPS, fp16=False,
                              print_freq=0, current_epoch=0, method="nayer")
    tape_holder: dict[str, Tape] = {}                          # filled by core.run

    # our re-initialisations, seeded, recorded for the reference
    gen_states: list[dict[str, torch.Tensor]] = []
    noisy_states: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
    g = ours.generator
    reinit = _Seeded(g.reinitialise, g.parameters,
                     lambda: {generator_name(n): v.clone() for n, v in g.state_dict().items()}, gen_states)
    renoise = _Seeded(g.reset_noisy_layers, lambda: (m.weight for m in g.noisy),
                      lambda: [(m.weight.detach().clone(), m.bias.detach().clone()) for m in g.noisy], noisy_states)

    def perturb(eps: float) -> None:
        reinit.scale = renoise.scale = 1 + eps
    g.reinitialise, g.reset_noisy_layers = reinit, renoise

    def ours_iteration(i: int) -> list[dict[str, float]]:
        g_rows: list[dict[str, float]] = []
        s_rows: list[dict[str, float]] = []
        reinit.base, reinit.calls, renoise.base, renoise.calls = 1000 * i, 0, 1000 * i + 500, 0
        original_student_step = ours.student_step

        def student_step():
            loss = original_student_step()
            s_rows.append({"s_kd": float(loss.detach())})
            return loss

        ours.student_step = student_step
        try:
            with returns_of(ours, "losses", g_rows):
                ours.train_iteration(i)
        finally:
            del ours.student_step
        return [{f"g_{k}": v for k, v in row.items()} | {"g_total": sum(row.values())} for row in g_rows] + s_rows

    ref_reinit, ref_renoise = NLGenerator.reinit, NLGenerator.re_init_le

    def reinit_as_ours(self):
        new = _adopt_embedding(ref_reinit(self).to(problem.dtype))
        new.load_state_dict(gen_states.pop(0))
        return new

    def renoise_as_ours(self):
        ref_renoise(self)
        with torch.no_grad():
            for m, (w, bias) in zip(self.le1, noisy_states.pop(0)):
                m.weight.copy_(w)
                m.bias.copy_(bias)

    def ref_iteration(i: int) -> list[dict[str, float]]:
        tape = tape_holder["tape"]
        _prepare_draws(tape)
        rows: list[dict[str, float]] = []
        collect = ref_utils._collect_all_images
        ref_utils._collect_all_images = lambda root, *a, **kw: sorted(collect(root, *a, **kw), key=_written_order)
        adam_step = torch.optim.Adam.step

        def step(self, *a, **kw):                             # the Adam of each loop is created inside synthesize()
            loc = caller_locals()
            row = {"g_bn": synth.bn * _value(loc["loss_bn"]), "g_oh": synth.oh * _value(loc["loss_oh"])}
            if synth.adv > 0 and synth.ep > synth.ep_start:
                row["g_adv"] = synth.adv * _value(loc["loss_adv"])
            row["g_total"] = _value(loc["loss"])
            rows.append(row)
            return adam_step(self, *a, **kw)

        NLGenerator.reinit, NLGenerator.re_init_le = reinit_as_ours, renoise_as_ours
        try:
            with _in_process_loader(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.filterwarnings("ignore", message=".*optimizer.step.*")
                torch.optim.Adam.step = step
                synth.synthesize()
                torch.optim.Adam.step = adam_step
                args.current_epoch = i
                if i >= WARMUP:                                # datafree_kd.main_worker: epoch >= args.warmup
                    with locals_at_step(optimizer, {"s_kd": "loss_s"}, rows):
                        datafree_kd.train(synth, [student, teacher], criterion, optimizer, args)
                    scheduler.step()
        finally:
            torch.optim.Adam.step = adam_step
            NLGenerator.reinit, NLGenerator.re_init_le = ref_reinit, ref_renoise
            ref_utils._collect_all_images = collect
        return rows

    def ref_pool():
        import numpy as np
        from PIL import Image
        files = sorted(ref_utils._collect_all_images(str(pool_dir)), key=_written_order)
        arr = np.stack([np.asarray(Image.open(f)) for f in files]).transpose(0, 3, 1, 2)
        return torch.from_numpy(arr.copy()).to(torch.float64) / 255

    def our_pool():
        return ours.pool.decode(ours.pool.images[:len(ours.pool)]).double()

    # the released generator is read when compared: its reinit() replaces the module
    return Sides(
        ours_iteration=ours_iteration, ref_iteration=ref_iteration,
        modules={"student": (ours.student, student), "generator": (ours.generator, StateView(lambda: synth.generator.state_dict()), generator_name),
                 "bn_mmt": (_Stats(lambda: ours.bn_prior.average), _Stats(lambda: [h.mmt for h in synth.hooks])),
                 "pool": (StateView(our_pool, "images"), StateView(ref_pool, "images"))},
        options=options,
        reference={"repo": REPO, "entry": "datafree.synthesis.NAYER + datafree_kd.train",
                   "flags": {**SCRIPT, "warmup": WARMUP, "gwp_loops": GWP_LOOPS, "g_loops": G_LOOPS,
                             "g_steps": G_STEPS, "g_life": G_LIFE, "kd_steps": KD_STEPS, "ep_steps": KD_STEPS,
                             "epochs": problem.steps, "batch_size": b, "synthesis_batch_size": b,
                             "cosine_T_max": problem.steps - WARMUP, "label_embedding": EMBEDDING}},
        tape_holder=tape_holder, cleanup=lambda: shutil.rmtree(pool_dir.parent, ignore_errors=True),
        perturb=perturb,
        notes=[f"warm-up shortened to {WARMUP} rounds, g_life to {G_LIFE}, loops to {GWP_LOOPS} / {G_LOOPS} of "
               f"{G_STEPS} steps; the generator's re-initialisations (whole module, noisy layers) are ours, loaded "
               "into the released module; the pool's DataLoader workers and folder order are replaced as in deepinv"],
    )


def _value(t: torch.Tensor) -> float:
    return float(t.detach().reshape(-1)[0])
