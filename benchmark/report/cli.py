"""``python -m benchmark report OUT [OUT ...]``: tables, figures and a report folder from the records."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..records import atomic_write_bytes
from .load import ReportError, load_records, records_csv_frame
from .render import render_csv, render_latex, render_markdown, render_text
from .accuracy import accuracy_table
from .columns import LAYOUTS, METRICS
from .costs import cost_table, equal_cost_table, quality_table

FORMATS = {"md": ".md", "latex": ".tex", "csv": ".csv"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("outs", nargs="+", metavar="OUT", help="output folder(s) holding cell folders with record.json")
    parser.add_argument("--format", choices=[*FORMATS, "all"], default="all",
                        help="table formats to write (default: all: Markdown, LaTeX and CSV)")
    parser.add_argument("--table", default="all", metavar="NAME",
                        help=f"main table: all (every dataset/pair in the records), "
                             f"{' / '.join(LAYOUTS)} (the five standard pairs of the CMI / Fast-Datafree tables), "
                             f"a dataset name, or a paper table (python -m benchmark list tables: that table "
                             f"alone, in its layout) (default: all)")
    parser.add_argument("--metric", choices=list(METRICS), default="final",
                        help="final: accuracy at the last iteration (default); best: best accuracy during training")
    parser.add_argument("--budget", default=None, choices=["smoke", "default", "paper"],
                        help="with a paper table: the budget its cells ran at (default: the table's)")
    parser.add_argument("--datasets", default=None, metavar="A,B",
                        help="with a paper table: the datasets it ran on, if not its own (run --table ... --datasets)")
    parser.add_argument("--pairs", default=None, metavar="T:S,...|default|standard",
                        help="with a paper table: the teacher:student pairs it ran with, if not its own")
    parser.add_argument("--report-dir", default=None, metavar="DIR", help="where to write the report (default: OUT/report)")
    parser.add_argument("--no-figures", action="store_true", help="write the tables only")


def _write(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _report_md(args, df, problems, tables, figures, report_dir: Path) -> str:
    done = int((df["status"] == "done").sum())
    failed = len(df) - done
    cmd = ["python -m benchmark report", *args.outs]
    if args.table != "all":
        cmd += ["--table", args.table]
    if args.metric != "final":
        cmd += ["--metric", args.metric]
    lines = ["# DFKD benchmark report", "",
             f"Regenerate with `{' '.join(cmd)}`.", "",
             f"{len(df)} records ({done} finished, {failed} failed) from {', '.join(f'`{o}`' for o in args.outs)}."]
    commits = sorted({str(c) for c in df["git_commit"] if isinstance(c, str) and c})
    if commits:
        lines.append(f"Code commits: {', '.join(f'`{c[:12]}`' for c in commits)}.")
    if problems:
        lines += ["", "Records that could not be read (skipped):", ""] + [f"- {p}" for p in problems]
    for table in tables:
        lines += ["", render_markdown(table, heading="##").rstrip("\n")]
    if figures:
        lines += ["", "## Figures", ""]
        for path in figures:
            if path.suffix == ".png":
                rel = path.relative_to(report_dir).as_posix()
                lines.append(f"![{path.stem}]({rel})")
                lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def command(args: argparse.Namespace) -> int:
    """Run the report; returns the exit status (non-zero with a one-line error on bad input)."""
    from ..tables.spec import is_table

    if is_table(args.table):        # a paper table spec (python -m benchmark list tables)
        from ..tables.report import command as table_command

        return table_command(args)
    try:
        df, problems = load_records(args.outs)
        for problem in problems:
            print(f"warning: {problem}", file=sys.stderr)
        if df.empty:
            raise ReportError(f"no records under {', '.join(map(str, args.outs))}")
        main = accuracy_table(df, metric=args.metric, table=args.table)
        for line in main.mixed:
            print(f"warning: runs differ within a row: {line}", file=sys.stderr)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    report_dir = Path(args.report_dir) if args.report_dir else Path(args.outs[0]) / "report"
    columns = [c for c in main.columns]
    tables = [main.to_table(), equal_cost_table(df, columns), cost_table(df, columns), quality_table(df, columns)]
    formats = list(FORMATS) if args.format == "all" else [args.format]
    written: list[Path] = []
    for table in tables:
        for fmt in formats:
            render = {"md": render_markdown, "latex": render_latex, "csv": render_csv}[fmt]
            path = report_dir / f"{table.name}{FORMATS[fmt]}"
            _write(path, render(table))
            written.append(path)
    records_csv = report_dir / "records.csv"
    _write(records_csv, render_csv(records_csv_frame(df)))
    written.append(records_csv)

    figures: list[Path] = []
    if not getattr(args, "no_figures", False):
        from .figures import write_figures

        def warn(name: str, exc: Exception) -> None:
            print(f"warning: figure {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)

        figures = write_figures(df, report_dir / "figures", metric=args.metric, columns=columns, on_error=warn)
        written += figures
    report_md = report_dir / "report.md"
    _write(report_md, _report_md(args, df, problems, tables, figures, report_dir))
    written.append(report_md)

    print(render_text(main), end="")
    print(f"\nreport: {report_dir} ({len(written)} files)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark report", description=__doc__)
    add_arguments(parser)
    return command(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
