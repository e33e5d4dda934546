"""Parity adapter for ``spaceshipnet`` against skgyu/SpaceshipNet (``code/SpaceshipNet``): the released model
``models.model_CFE_mSARC_base`` with ``models/model_CFE_mSARC_bases/model_CFE_mSARC_base_V37.py`` (and
``models/test_functions.py``) bound to it by their ``skyu_util.add_functions``, as the released ``initialize``
binds them, then set up by V37's own ``initializeB`` (``CMIGeneratorV3``, the ``ResNet*_1028`` teacher and
student, the SGD + cosine of ``init_optS`` / ``init_scheduler``, the BatchNorm hooks, kornia's ``self.aug``)
with the options of ``scripts/DFKD_Cifar10_ResNet34_ResNet18_V37_conv012.yaml`` (read from the checkout)
over the defaults of ``options/train_options.py``. One iteration is one epoch of ``train/train_cvpr2023.py``:
``trainstate``, ``clear_loss``, ``optimize_step`` (``train_G`` then ``train_S``), ``evalstate``,
``update_learning_rate`` (its test pass and checkpoints are left out: they change nothing).

Pair: resnet18 -> resnet18 (``PAIR``: ``ResNet18_1028`` as the teacher too, the same code path at half the
YAMLs' teacher cost, which in float64 on a CPU dominates the run; ``--pair resnet34:resnet18`` runs the YAMLs'
pair). Only these resnets can be built: the released wrn variant derives from a ``networks.wresnet`` module
that the repository does not hold. Shortened:
``G_STEPS`` generator steps and ``KD_STEPS`` student steps per epoch, the cosine over K epochs
(``max_epoch`` = K - 1).

Shims (here; the checkout is not touched): stub modules for imports that nothing compared uses (``lmdb``,
``pyarrow``, ``pickle5`` and ``cv2`` for the LMDB pools and image files, ``timm``'s ``Mixup``, off in the
YAML), each only when not installed; the LMDB feature pools replaced by an in-memory pool of the same
interface (insertion order, arrays kept as given, read back with ``torch.Tensor`` as their dataset does);
the DataLoaders in-process (no workers, as in deepinv); the option object a dict with attribute access (their
EasyDict); the debug dumps of the first exchanged batch of an epoch (``record_batchimg`` /
``record_feature_fuse``: image and log files only, and they call torchvision's removed ``make_grid(range=)``)
skipped.

Draws: z and kornia's crop / flip draws (our ``kornia_augment`` compatibility option) replay ours; the unused
noise of ``generate_input`` (it only sets the balanced labels here) comes from the real RNG. numpy's draws in
``train_S`` return ours: the level (``np.random.choice(conv_idx, 1)``: our ``randint``), the exchange coin
(``np.random.rand()``: our ``rand(())``) and each sample's kept channels (``np.random.choice(C, C // 2,
replace=False)``: the channels that our ``rand(n, C).argsort(1) < C // 2`` keeps in that sample). The pool
loaders' ``randperm`` replay our feature pools' permutations, with the discarded remainder permutation that
torch's ``RandomSampler`` draws when an epoch is exhausted inserted before each reshuffle.
"""
from __future__ import annotations

import contextlib
import copy
import io
import shutil
import sys
import tempfile
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .capture import locals_at_each_step, locals_at_step, returns_of
from .core import ParityError, Problem, Sides, StateView, Tape, copy_state
from .deepinv import _in_process_loader, _sampler_draws_remainder

REPO = "skgyu/SpaceshipNet"
CODE = "code/SpaceshipNet"
MARKER = f"{CODE}/models/model_CFE_mSARC_bases/model_CFE_mSARC_base_V37.py"
METHODS = ("spaceshipnet",)
PAIR = ("resnet18", "resnet18")        # the YAML: resnet34 -> resnet18 (`--pair resnet34:resnet18`)
ARCS = {"resnet34": "ResNet34_1028", "resnet18": "ResNet18_1028"}
YAML = "scripts/DFKD_Cifar10_ResNet34_ResNet18_V37_conv012.yaml"
TRAIN_OPTIONS = {"weight_decay": 1e-4, "aug_padding": 4, "synthesize_interval": 1,   # options/train_options.py
                 "FeatureLabelImagePoolType": "SkyuFeatureLabelImagePool"}            # options/base_options.py
COMPAT: dict[str, dict[str, Any]] = {"spaceshipnet": {"kornia_augment": True}}
G_STEPS, KD_STEPS = 3, 3           # per epoch here (the YAML: 200 and 2000)
STUBS = ("lmdb", "pyarrow", "pickle5", "cv2", "timm", "timm.data", "timm.data.mixup")

DEFAULTS = {"spaceshipnet": [
    "`kornia_augment` (default off): both views (the synthesis view and the student's view of the rendered "
    "batch) come from the on-device re-implementation of the crop and flip (docstring), so the images the "
    "teacher sees differ from the first step on and every term after it; the draws are then not even of the "
    "same kind (the comparison stops with a draw mismatch)."]}


class _Opt(dict):
    """The released option object (an EasyDict): a dict whose keys are also attributes, nested."""

    def __init__(self, data=()):
        super().__init__()
        for k, v in dict(data).items():
            self[k] = v

    def __setitem__(self, key, value):
        super().__setitem__(key, _Opt(value) if isinstance(value, dict) and not isinstance(value, _Opt) else value)

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


class _MemoryDataset(torch.utils.data.Dataset):
    """The released ``LMDBFeatureLabelImageDataset`` over an in-memory list: ``{'feature', 'label', 'image'}``
    per index, arrays read back with ``torch.Tensor`` (the default dtype) as there."""

    def __init__(self, items: list):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> dict:
        feature, label, image = self.items[idx % len(self.items)]
        return {"feature": torch.Tensor(feature.copy()), "label": copy.deepcopy(label),
                "image": torch.Tensor(image.copy())}


class _MemoryPool:
    """Stands in for the released LMDB ``SkyuFeatureLabelImagePool``: ``add(features, labels, images)`` appends
    the samples in order, ``get_dataset()`` reads them all back."""

    def __init__(self, root=None, name=None):
        self.items: list = []

    def add(self, features, labels, images, targets=None):
        for f, y, x in zip(features, labels, images):
            self.items.append((np.array(f, copy=True), y, np.array(x, copy=True)))

    def get_dataset(self) -> _MemoryDataset:
        return _MemoryDataset(list(self.items))

    def state_dict(self) -> dict:
        return {"features": torch.from_numpy(np.stack([f for f, _, _ in self.items])).double()}


class _TapeRandom:
    """Stands in for ``numpy.random`` inside the released V37 functions: its draws return ours."""

    def __init__(self, tape: Tape):
        self.tape, self.keep, self.row = tape, None, 0

    def rand(self) -> float:                                   # the exchange coin: our torch.rand(())
        return float(self.tape.take("rand", ()))

    def choice(self, a, size=None, replace=True):
        if isinstance(a, (int, np.integer)):                   # one sample's kept channels
            if self.keep is None or self.row >= self.keep.shape[0]:
                queue, i = self.tape.draws.get("rand", []), self.tape.replayed.get("rand", 0)
                shape = tuple(queue[i].shape) if i < len(queue) else None
                if shape is None or len(shape) != 2 or shape[1] != a:
                    raise ParityError(f"the reference picks {size} of {a} channels, ours drew {shape} next")
                self.keep, self.row = self.tape.take("rand", shape).argsort(1) < a // 2, 0
            picks = self.keep[self.row].nonzero().flatten().tolist()
            self.row += 1
            if len(picks) != size or replace:
                raise ParityError(f"channel picks: {len(picks)} kept, the reference asks {size} (replace={replace})")
            return np.array(picks)
        levels = list(a)                                       # the level: our torch.randint(len(levels), ())
        return np.array([levels[int(self.tape.take("randint", ()))]])


class _Numpy(types.ModuleType):
    """numpy, with ``random`` replaced by :class:`_TapeRandom`."""

    def __init__(self, tape: Tape):
        super().__init__("numpy")
        self.random = _TapeRandom(tape)

    def __getattr__(self, name):
        return getattr(np, name)


def generator_name(key: str) -> str:
    """Our ``SplitGenerator`` (``DataFreeGenerator``) state-dict key -> the released ``CMIGeneratorV3``'s."""
    head, _, rest = key.partition(".")
    if head != "conv_blocks":
        return key                                             # l1.0.*
    index, _, tail = rest.partition(".")
    names = {"0": "layer1", "2": "conv_layer1.0", "3": "conv_layer1.1", "6": "conv_layer2.0",
             "7": "conv_layer2.1", "9": "conv_layer3.0"}
    if index not in names:
        raise ParityError(f"generator key {key} has no counterpart in CMIGeneratorV3")
    return f"{names[index]}.{tail}"


@contextlib.contextmanager
def _code_path(code: Path):
    """The released code imports its packages (``models``, ``networks``, ``datafree`` ...) from
    ``code/SpaceshipNet``; stub modules for what it imports but nothing compared uses."""
    added = []
    for name in STUBS:
        if name in sys.modules:
            continue
        try:
            __import__(name)
        except ImportError:
            mod = types.ModuleType(name)
            mod.__parity_shim__ = True
            if name == "timm.data.mixup":
                mod.Mixup = None
            sys.modules[name] = mod
            added.append(name)
    sys.path.insert(0, str(code))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(code))
        for name in added:
            sys.modules.pop(name, None)


def _reference_model(problem: Problem, code: Path, tmp: Path, b: int):
    import yaml

    import datafree.utils._utils as pool_lib
    from models.model_CFE_mSARC_base import model_CFE_mSARC_base
    from skyu_tools import skyu_util as sutil

    opt = _Opt(yaml.safe_load((code / YAML).read_text()))
    opt.update(_Opt(TRAIN_OPTIONS))
    opt.update(_Opt({"isTrain": True, "device": torch.device("cpu"), "gpu_ids": [], "local_rank": 0,
                     "expr_dir": str(tmp), "debug_image_dir": str(tmp / "image"),
                     "debug_info_dir": str(tmp / "info"), "batch_size": b, "g_steps": G_STEPS,
                     "kd_steps": KD_STEPS, "max_epoch": problem.steps - 1, "num_workers": 0}))
    opt.teacher_net.arc, opt.student_net.arc = ARCS[problem.teacher_arch], ARCS[problem.student_arch]
    opt.teacher_net.pretrained_loc = None                     # weights copied from ours below
    opt.teacher_net.num_classes = opt.student_net.num_classes = problem.spec.num_classes
    pool_lib.SkyuFeatureLabelImagePool = _MemoryPool          # looked up by name in initializeB
    m = model_CFE_mSARC_base()
    m.opt, m.gpu_ids, m.isTrain = opt, opt.gpu_ids, True      # what BaseModel.initialize sets (it also logs)
    sutil.add_functions(m, dirs="models", model_name="test_functions")
    for name in opt.model_files:
        sutil.add_functions(m, dirs=f"models/{m.name()}s", model_name=name)
    with contextlib.redirect_stdout(io.StringIO()):
        m.initializeB(opt)
    m.record_batchimg = lambda *a, **k: None                  # debug files only
    m.record_feature_fuse = lambda *a, **k: None
    return m, opt


def build(problem: Problem, path) -> Sides:
    from benchmark.config import ConfigError

    if problem.teacher_arch not in ARCS or problem.student_arch not in ARCS:
        raise ConfigError(f"parity spaceshipnet: the released code builds {' / '.join(ARCS)} only "
                          f"(ResNet*_1028), not {problem.teacher_arch}:{problem.student_arch}")
    b = problem.batch
    options = {"batch_size": b, "g_steps": G_STEPS, "kd_steps": KD_STEPS,
               **(COMPAT["spaceshipnet"] if problem.compat else {})}
    ours, cfg = problem.build_ours("spaceshipnet", options)
    ours.generator.to(problem.dtype)
    for pool in ours.feature_pools:                           # float32 storage -> the comparison's dtype
        pool.images = pool.images.to(problem.dtype)

    code = Path(path) / CODE
    tmp = Path(tempfile.mkdtemp(prefix="parity-spaceshipnet-"))
    stack = contextlib.ExitStack()
    stack.enter_context(_code_path(code))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m, opt = _reference_model(problem, code, tmp, b)
    except BaseException:
        stack.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    v37 = sys.modules[f"models.{m.name()}s.{opt.model_files[0]}"]
    m.teacher_net.to(problem.dtype)
    m.student_net.to(problem.dtype)
    m.generator.to(problem.dtype)
    copy_state(problem.teacher, m.teacher_net)                # requires_grad stays on: their Grad-CAM needs it
    copy_state(problem.student, m.student_net)
    copy_state(ours.generator, m.generator, generator_name)

    real_randn = torch.randn                                  # build runs before the tape patches torch
    released_input = m.generate_input

    def generate_input(*args, **kwargs):                      # its noise is unused: not ours to replay
        taped, torch.randn = torch.randn, real_randn
        try:
            return released_input(*args, **kwargs)
        finally:
            torch.randn = taped

    m.generate_input = generate_input

    # which of our pool permutations reshuffle an exhausted one (the sampler then draws its remainder first)
    reshuffles: list[bool] = []
    for pool in ours.feature_pools:
        def sample(n, pool=pool, original=pool.sample):
            if pool.count and (pool._perm is None or pool._pos >= pool._perm.numel()):
                reshuffles.append(pool._perm is not None)
            return original(n)
        pool.sample = sample

    tape_holder: dict[str, Tape] = {}

    def ours_iteration(i: int) -> list[dict[str, float]]:
        g_rows: list[dict[str, float]] = []
        s_rows: list[dict[str, float]] = []
        reshuffles.clear()
        with returns_of(ours, "synthesis_losses", g_rows), returns_of(ours, "student_losses", s_rows):
            ours.train_iteration(i)
        return ([{f"g_{k}": v for k, v in r.items()} | {"g_total": sum(r.values())} for r in g_rows]
                + [{f"s_{k}": v for k, v in r.items()} | {"s_total": sum(r.values())} for r in s_rows])

    def insert_remainders(tape: Tape) -> None:
        if not _sampler_draws_remainder():
            return
        start = tape.replayed.get("randperm", 0)
        perms = tape.draws.get("randperm", [])[start:]
        if len(perms) != len(reshuffles):
            raise ParityError(f"{len(perms)} permutations drawn, {len(reshuffles)} pool samples noted")
        spaced = [q for p, again in zip(perms, reshuffles) for q in ((p.clone(), p) if again else (p,))]
        tape.draws["randperm"] = tape.draws.get("randperm", [])[:start] + spaced

    g_names = {"g_cls": "cls_loss", "g_bn": "loss_bn_meanvar", "g_total": "loss_G"}
    s_names = {"s_kd": "kl_loss", "s_cam": "loss_mSARC_cam_mse", "s_gradcam": "loss_mSARC_gradcams_mse",
               "s_total": "loss"}

    def ref_iteration(i: int) -> list[dict[str, float]]:
        tape = tape_holder["tape"]
        insert_remainders(tape)
        rows: list[dict[str, float]] = []

        def synthesis_terms(optimizer, loc):                  # train_G creates its Adam inside
            rows.append({k: float(loc[v].detach()) for k, v in g_names.items()})

        saved_np, v37.np = v37.np, _Numpy(tape)
        try:
            with _in_process_loader(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with locals_at_each_step(torch.optim.Adam, synthesis_terms), \
                        locals_at_step(m.optimizer_S, s_names, rows):
                    m.iepoch = i
                    m.trainstate()
                    m.clear_loss()
                    m.optimize_step()
                m.evalstate()
                m.update_learning_rate(i + 1)
        finally:
            v37.np = saved_np
        return rows

    def pool_state(level: int):
        ours_pool = ours.feature_pools[level]
        return (StateView(lambda: ours_pool.images[:ours_pool.count].double(), "features"),
                StateView(lambda: getattr(m, f"data_pool{level}").state_dict()))

    def cleanup() -> None:
        stack.close()
        shutil.rmtree(tmp, ignore_errors=True)

    return Sides(
        ours_iteration=ours_iteration, ref_iteration=ref_iteration,
        modules={"student": (ours.student, m.student_net), "generator": (ours.generator, m.generator, generator_name),
                 **{f"pool{level}": pool_state(level) for level in range(3)}},
        options=options,
        reference={"repo": REPO, "entry": f"{CODE}: model_CFE_mSARC_base + model_CFE_mSARC_base_V37 "
                                          "(initializeB, optimize_step), the epoch loop of train/train_cvpr2023.py",
                   "flags": {"config": YAML, "teacher_net": ARCS[problem.teacher_arch],
                             "student_net": ARCS[problem.student_arch], "g_steps": G_STEPS, "kd_steps": KD_STEPS,
                             "batch_size": b, "max_epoch": problem.steps - 1, "num_workers": 0,
                             **{k: opt[k] for k in ("lambda_cls", "lambda_bn_meanvar", "first_bn_multiplier",
                                                    "lambda_mSARC_cam_mse", "lambda_mSARC_gradcams_mse",
                                                    "gen_mixup_cutmix_p", "conv_idx")},
                             "T": opt.distill.T, "alpha": opt.distill.alpha,
                             "lr_G": opt.optimizer_G.lr[0], "lr_S": opt.optimizer_S.lr[0],
                             "weight_decay": opt.weight_decay, "aug_padding": opt.aug_padding}},
        tape_holder=tape_holder, cleanup=cleanup,
        notes=["LMDB feature pools kept in memory, DataLoaders in-process, numpy's level / exchange / channel "
               "draws return ours; the debug image dumps of train_S are skipped (files only)"],
    )
