"""Command line: ``python -m benchmark {run,teacher,list,report,status}``.

Every bad input (unknown name, bad value, impossible combination, missing data) ends with a one-line
``error: ...`` on stderr and exit status 2, before anything is written.
"""
from __future__ import annotations

import argparse
import fnmatch
import sys
from pathlib import Path

from . import launch as launch_mod
from .config import ConfigError, NotApplicableError, parse_seeds
from .data import DataError
from .records import Cell, OutputLayout
from .registry import DATASETS, METHODS, MODELS, UnknownNameError, load_plugins
from .resolve import resolve_cell
from .runner import RunOptions
from .tables import SpecError
from .tables.expand import parse_sweeps, sweep_combinations

EXIT_BAD_INPUT = 2
DEFAULT_OUT = "runs"      # never the folder of the committed reference records (results/reference)


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line and exits 2 (argparse prints the whole usage)."""

    def error(self, message):  # noqa: D401
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _load_plugins() -> None:
    load_plugins()


def add_cell_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", default="all",
                   help="'all' (every method), a comma list, or shell patterns such as 'fast*' (default: all)")
    p.add_argument("--dataset", default=None, help="dataset name (default: digits, embedded)")
    p.add_argument("--datasets", default=None, metavar="A,B,...",
                   help="comma list of datasets: the grid runs every pair on each (instead of --dataset)")
    p.add_argument("--teacher", default=None, help="teacher architecture (default: the dataset's)")
    p.add_argument("--student", default=None, help="student architecture (default: the dataset's)")
    p.add_argument("--pairs", default=None, metavar="T:S,...|PRESET",
                   help="teacher:student pairs, comma separated (instead of --teacher/--student), or a preset: "
                        "'default' (each dataset's own pair) or 'standard' (the five CMI / Fast-Datafree pairs)")
    p.add_argument("--table", default=None, metavar="NAME",
                   help="run a paper table's cells (python -m benchmark list tables); --seeds, --methods, --set and "
                        "--budget then refine the table's own")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: 0, or the table's)")
    p.add_argument("--budget", default=None, choices=["smoke", "default", "paper"],
                   help="smoke: seconds, for tests; default: the digits benchmark; paper: the authors' recipes")
    p.add_argument("--teacher-ckpt", default=None, help="load this teacher checkpoint instead of training one")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", default=[],
                   help="override a run or method config value (repeatable), e.g. --set iterations=50; "
                        "key=v1,v2,... runs one cell per value (several swept keys: their product)")


def add_io_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None, help="folder holding the datasets other than digits")
    p.add_argument("--download", action="store_true", help="let torchvision download missing datasets")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder for records (default: {DEFAULT_OUT}; the "
                   "committed reference set lives apart, in results/reference)")
    p.add_argument("--teacher-cache", default=None, help="teacher checkpoint cache (default: OUT/teachers)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cells_from_args(args: argparse.Namespace) -> list[Cell]:
    """Expand the command line into cells (datasets x pairs x methods x seeds) and resolve each one
    (raises on any bad input)."""
    _load_plugins()
    if getattr(args, "table", None):
        from .tables.cli import table_cells

        return table_cells(args, dry_run=getattr(args, "dry_run", False))
    budget = args.budget or "default"
    methods = METHODS.select(args.methods, default_all=lambda n: True)
    dataset, datasets = getattr(args, "dataset", None), getattr(args, "datasets", None)
    pairs_arg = getattr(args, "pairs", None)
    if dataset and datasets:
        raise UsageError("give --dataset or --datasets, not both")
    if pairs_arg and (args.teacher or args.student):
        raise UsageError("give --pairs or --teacher/--student, not both")
    names = launch_mod.split_list(datasets or dataset or "digits", "--datasets")
    specs = [DATASETS.get(name) for name in names]
    if args.teacher_ckpt and not Path(args.teacher_ckpt).is_file():
        raise UsageError(f"--teacher-ckpt {args.teacher_ckpt}: no such file")
    combos = [tuple(sorted(c.items())) for c in sweep_combinations(parse_sweeps(args.overrides))]
    seeds = parse_seeds(args.seeds or "0")
    cells: list[Cell] = []
    for spec in specs:
        if pairs_arg:
            pairs = launch_mod.expand_pairs(pairs_arg, spec)
        else:
            pairs = [(args.teacher or spec.default_teacher, args.student or spec.default_student)]
        for teacher, student in pairs:
            MODELS.get(teacher), MODELS.get(student)
            cells += [Cell(m, spec.name, teacher, student, seed, budget, overrides, args.teacher_ckpt)
                      for m in methods for overrides in combos for seed in seeds]
    cells = list(dict.fromkeys(cells))      # a pair named twice runs once
    return resolve_or_skip(cells, args.methods)


def resolve_or_skip(cells: list[Cell], methods_arg: str) -> list[Cell]:
    """Resolve every cell (raises on any bad input). A method that cannot run with a cell's teacher (e.g.
    it needs BatchNorm statistics and the teacher has none) is an error when the user named it; when it
    came in through ``all`` or a pattern, its cells are left out with one note per method on stderr."""
    named = {p.strip() for p in methods_arg.split(",")} - {"all"}
    kept: list[Cell] = []
    skipped: dict[str, str] = {}
    for cell in cells:
        try:
            resolve_cell(cell)
        except NotApplicableError as exc:
            if cell.method in named:
                raise
            skipped.setdefault(cell.method, str(exc).split(";")[0])
            continue
        kept.append(cell)
    for reason in skipped.values():
        print(f"note: not applicable, skipped: {reason}", file=sys.stderr)
    if not kept:
        raise UsageError("no selected method applies to the chosen teacher(s)")
    return kept


def options_from_args(args: argparse.Namespace) -> RunOptions:
    from .env import resolve_device

    resolve_device(args.device)
    tensorboard = getattr(args, "tensorboard", False)
    if tensorboard:
        from .progress import tensorboard_available

        if not tensorboard_available():
            raise UsageError("--tensorboard needs the tensorboard package (pip install -e '.[tensorboard]')")
    return RunOptions(out=Path(args.out), data_root=args.data_root, download=args.download, device=args.device,
                      force=getattr(args, "force", False),
                      teacher_cache=Path(args.teacher_cache) if args.teacher_cache else None,
                      progress=not args.no_progress, tensorboard=tensorboard)


def check_data(args: argparse.Namespace, cells: list[Cell], dry_run: bool = False) -> None:
    """Open each dataset's splits once, so a missing data root fails before any work or write. A dry run
    only warns (a grid can be planned on a machine that does not hold the data)."""
    for name in sorted({c.dataset for c in cells}):
        spec = DATASETS.get(name)
        try:
            spec.load("test", args.data_root, args.download)
            spec.load("train", args.data_root, args.download)
        except DataError as exc:
            if not dry_run:
                raise
            print(f"warning: {name}: {exc} (dry run: planned anyway)", file=sys.stderr)


def check_teacher_checkpoints(cells: list[Cell]) -> None:
    """Load each external teacher checkpoint into its architecture once, so a corrupt or mismatched file
    fails in one line before anything runs."""
    from .checkpoints import load_teacher_checkpoint
    from .models import create_model

    for ckpt, dataset, arch in sorted({(c.teacher_ckpt, c.dataset, c.teacher) for c in cells if c.teacher_ckpt}):
        spec = DATASETS.get(dataset)
        load_teacher_checkpoint(create_model(arch, spec.num_classes, spec.image_shape), ckpt)


def cmd_run(args: argparse.Namespace) -> int:
    cells = cells_from_args(args)
    options = options_from_args(args)
    check_data(args, cells, dry_run=getattr(args, "dry_run", False))
    check_teacher_checkpoints(cells)
    records = launch_mod.launch(cells, options, args)
    if records:
        print_summary(records)
        return 0 if all(r.get("status") == "done" for r in records) else 1
    return 0


def print_summary(records: list[dict]) -> None:
    rows = [("method", "seed", "status", "teacher", "student", "best", "time (s)")]
    for r in records:
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        status = r.get("status", "?") + (" (skipped)" if r.get("skipped") else "")
        rows.append((r["method"], str(r["seed"]), status, fmt(r.get("teacher_acc")), fmt(r.get("final_acc")),
                     fmt(r.get("best_acc")), fmt(r.get("wall_time_s"))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for r in records:
        if r.get("status") == "failed":
            print(f"failed: {r['method']} seed {r['seed']}: {r.get('error')}", file=sys.stderr)


def cmd_teacher(args: argparse.Namespace) -> int:
    from .env import resolve_device
    from .models import check_model_fits
    from .teachers import get_teacher

    spec = DATASETS.get(args.dataset)
    arch = args.arch or spec.default_teacher
    check_model_fits(arch, spec.image_shape)
    device = resolve_device(args.device)
    spec.load("train", args.data_root, args.download)
    cache = Path(args.teacher_cache) if args.teacher_cache else OutputLayout(args.out).teachers
    _, info = get_teacher(spec, arch, args.seed, device, cache, args.data_root, args.download,
                          progress=not args.no_progress)
    print(f"teacher {spec.name}/{arch} seed {args.seed}: {info['test_acc']:.2f}% top-1 "
          f"({info['source']}, {info['time_s']:.1f} s) -> {info['checkpoint']}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    _load_plugins()
    if args.what == "tables":
        from .tables.cli import list_tables

        return list_tables(args.pattern)
    if args.what == "methods":
        for name in METHODS.list(args.pattern):
            cls = METHODS.get(name)
            kind = "data-free" if cls.data_free else "reference"
            print(f"{name:14s} {kind:10s} {cls.citation}")
    elif args.what == "models":
        for name in MODELS.list(args.pattern):
            entry = MODELS.get(name)
            print(f"{name:14s} {entry.description}")
    elif args.what == "profiles":
        from .launch.resources import PROFILE_DIR, SLURM_DIR

        for path in sorted(PROFILE_DIR.glob("*.toml")):
            if fnmatch.fnmatchcase(path.stem, args.pattern):
                print(f"{path.stem:14s} {path}")
        print(f"local SLURM cluster scripts: {SLURM_DIR / 'start_local_slurm.sh'}, {SLURM_DIR / 'stop_local_slurm.sh'}")
    else:
        for name in DATASETS.list(args.pattern):
            s = DATASETS.get(name)
            shape = "x".join(map(str, s.image_shape))
            print(f"{name:14s} {s.num_classes:4d} classes  {shape:9s} teacher {s.default_teacher} -> student {s.default_student}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m benchmark", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("run", help="run a grid of cells (methods x seeds) and write their records")
    add_cell_arguments(p)
    add_io_arguments(p)
    p.add_argument("--force", action="store_true", help="rerun cells that already have a finished record")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write loss and accuracy curves as TensorBoard event files in OUT/<cell>/tensorboard "
                        "(needs the optional tensorboard package)")
    launch_mod.add_arguments(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("teacher", help="train (or reuse from the cache) a teacher")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--arch", default=None, help="architecture (default: the dataset's teacher)")
    p.add_argument("--seed", type=int, default=0)
    add_io_arguments(p)
    p.set_defaults(func=cmd_teacher)

    p = sub.add_parser("list", help="list registered methods, models, datasets, paper tables or SLURM profiles")
    p.add_argument("what", choices=["methods", "models", "datasets", "tables", "profiles"])
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'wrn*'")
    p.set_defaults(func=cmd_list)

    try:
        from . import report
    except ImportError:  # pragma: no cover - while the report package is being written
        report = None
    if report is not None and hasattr(report, "add_arguments"):
        p = sub.add_parser("report", help="tables and figures from the records under OUT")
        report.add_arguments(p)
        p.set_defaults(func=report.command)

    from .parity import cli as parity_cli

    p = sub.add_parser("parity", help="compare a method with its authors' released code, step by step")
    parity_cli.add_arguments(p)
    p.set_defaults(func=parity_cli.command)

    try:
        from . import status
    except ImportError:  # pragma: no cover
        status = None
    if status is not None:
        p = sub.add_parser("status", help="done / running / pending / failed / missing cells under OUT")
        status.add_arguments(p)
        p.set_defaults(func=status.command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, ConfigError, UnknownNameError, DataError, SpecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
