"""Launchers: how a list of cells is executed. ``inline`` runs them one after another in this process."""
from __future__ import annotations

import argparse

from .records import Cell
from .runner import RunOptions, run_cell


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--launcher", choices=["inline"], default="inline",
                        help="inline: run cells one after another in this process")


def launch(cells: list[Cell], options: RunOptions, args: argparse.Namespace) -> list[dict]:
    return [run_cell(cell, options) for cell in cells]
