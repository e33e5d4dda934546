"""``python -m benchmark parity``: argument parsing, the run over one or all methods, the JSON and Markdown
outputs. Bad input fails in one line with exit status 2 before anything runs or is written."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmark.config import ConfigError

from . import ADAPTERS, adapter
from .core import ParityError, Problem, Result, run, table, write_json

DEFAULT_PAIR = "wrn40_2:wrn16_1"
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("method", nargs="?", default="all", help=f"a method with a parity adapter ({', '.join(ADAPTERS)}), a comma-separated "
                                  "list of them, or 'all'")
    p.add_argument("--reference", type=Path, default=None,
                   help="a checkout of the authors' code, or a folder holding checkouts named NAME or OWNER+NAME "
                        "(CMI, Fast-Datafree, CPSC-DFKD, DataFree, DFKD, NAYER, SpaceshipNet, PRE-DFKD)")
    p.add_argument("--steps", type=int, default=5, help="iterations K (default 5)")
    p.add_argument("--pair", default=None, help=f"teacher:student (default {DEFAULT_PAIR}; cpsc-dfkd: wrn40_2:wrn16_2, "
                                                "spaceshipnet: resnet18:resnet18, see the adapters)")
    p.add_argument("--batch", type=int, default=16, help="student and synthesis batch (default 16)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-compat", action="store_true",
                   help="our defaults instead of the released-code compatibility options")
    p.add_argument("--no-floor", action="store_true",
                   help="skip the rounding-floor run (ours against itself, initial weights perturbed by 1e-15)")
    p.add_argument("--json", type=Path, default=None, help="write the results (every step) as JSON here")
    p.add_argument("--markdown", type=Path, default=None, help="write the fidelity report (docs/fidelity.md) here")
    p.add_argument("--from-json", type=Path, nargs="+", default=None, metavar="JSON",
                   help="write --markdown from the --json files of earlier runs instead of running (e.g. methods "
                        "compared in parallel processes)")


def _check(args: argparse.Namespace) -> tuple[list[str], str, str]:
    names = list(ADAPTERS) if args.method == "all" else [m.strip() for m in args.method.split(",") if m.strip()]
    for name in names:
        adapter(name)                                        # unknown method: ConfigError
    args.pair_given = args.pair is not None
    args.pair = args.pair or DEFAULT_PAIR
    teacher, sep, student = args.pair.partition(":")
    if not sep or not teacher or not student:
        raise ConfigError(f"--pair expects TEACHER:STUDENT, got {args.pair!r}")
    from benchmark.models import check_model_fits
    for arch in (teacher, student):
        check_model_fits(arch, (3, 32, 32))
    if args.steps < 1 or args.batch < 2:
        raise ConfigError("--steps must be >= 1 and --batch >= 2")
    if args.reference is None:
        raise ConfigError("--reference DIR is required (a checkout, or a folder of checkouts)")
    if not args.reference.is_dir():
        raise ConfigError(f"--reference {args.reference}: not a folder")
    for name in names:
        mod = adapter(name)
        from .refcode import locate
        locate(args.reference, mod.REPO, mod.MARKER)
    return names, teacher, student


def _problem(args, name, teacher, student, compat: bool) -> Problem:
    if not args.pair_given:                                  # an adapter may name the pair it needs
        teacher, student = getattr(adapter(name), "PAIR", (teacher, student))
    return Problem(method=name, teacher_arch=teacher, student_arch=student, steps=args.steps, batch=args.batch,
                   dtype=DTYPES[args.dtype], seed=args.seed, compat=compat)


def from_json(args: argparse.Namespace) -> int:
    """The markdown report from the JSON files of earlier runs."""
    import json

    from .report import markdown, write_text

    if not args.markdown:
        raise ConfigError("--from-json needs --markdown")
    results, defaults, explanations, errors = [], {}, {}, {}
    for path in args.from_json:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--from-json {path}: {exc}") from None
        for d in data if isinstance(data, list) else [data]:
            d = dict(d)
            extra = {k: d.pop(k, None) for k in ("defaults", "default_error", "explanations")}
            r = Result(**d)
            results.append(r)
            if extra["defaults"]:
                defaults[r.method] = Result(**{k: v for k, v in extra["defaults"].items()})
            if extra["default_error"]:
                errors[r.method] = extra["default_error"]
            explanations[r.method] = extra["explanations"] or (
                list(getattr(adapter(r.method), "DEFAULTS", {}).get(r.method, [])) if r.method in ADAPTERS else [])
    order = {m: i for i, m in enumerate(ADAPTERS)}
    results.sort(key=lambda r: order.get(r.method, len(order)))
    p = results[0].problem if results else {}
    args.pair = f"{p.get('teacher')}:{p.get('student')}" if p else args.pair
    args.batch, args.dtype, args.seed = p.get("batch", args.batch), p.get("dtype", args.dtype), p.get("seed", args.seed)
    write_text(args.markdown, markdown(results, defaults, args, explanations, errors))
    return 0 if all(r.ok or r.within_floor for r in results) else 1


def command(args: argparse.Namespace) -> int:
    if args.from_json:
        return from_json(args)
    names, teacher, student = _check(args)
    results: list[Result] = []
    defaults: dict[str, Result] = {}
    explanations: dict[str, list[str]] = {}
    default_errors: dict[str, str] = {}
    failed = 0
    for name in names:
        mod = adapter(name)
        try:
            result = run(mod, _problem(args, name, teacher, student, not args.no_compat), args.reference,
                         with_floor=not args.no_floor)
        except ParityError as exc:
            print(f"{name}: cannot compare: {exc}", file=sys.stderr)
            failed += 1
            continue
        # for the report: what our defaults change, where a compatibility option exists
        if args.markdown and not args.no_compat and getattr(mod, "COMPAT", {}).get(name):
            try:
                defaults[name] = run(mod, _problem(args, name, teacher, student, False), args.reference)
            except ParityError as exc:
                default_errors[name] = str(exc)
        results.append(result)
        explanations[name] = list(getattr(mod, "DEFAULTS", {}).get(name, []))
        print(table(result), flush=True)
        if name in default_errors:
            print(f"with our defaults: cannot compare: {default_errors[name]}")
        if name in defaults:
            print(f"with our defaults: {'equal' if defaults[name].ok else 'different'}"
                  + (f"; terms on one side only: {defaults[name].unmatched}" if defaults[name].unmatched else ""))
        print()
        failed += not (result.ok or result.within_floor)
    if args.json:
        payload = [r.to_dict() | {"defaults": defaults[r.method].to_dict() if r.method in defaults else None,
                                  "default_error": default_errors.get(r.method),
                                  "explanations": explanations.get(r.method, [])} for r in results]
        write_json(args.json, payload[0] if len(payload) == 1 and "," not in args.method and args.method != "all"
                   else payload)
    if args.markdown:
        from .report import markdown, write_text
        write_text(args.markdown, markdown(results, defaults, args, explanations, default_errors))
    return 1 if failed else 0
