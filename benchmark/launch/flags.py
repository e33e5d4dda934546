"""The launcher's command-line flags (``run --launcher ...`` and the SLURM resources)."""
from __future__ import annotations

import argparse
import os

from .resources import DEFAULT_TIME_MIN

LAUNCHERS = ("inline", "local", "slurm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("launcher")
    g.add_argument("--launcher", choices=LAUNCHERS, default="inline",
                   help="inline: one after another in this process (default); local: parallel subprocesses "
                        "(submitit LocalExecutor); slurm: SLURM job arrays, one task per cell")
    g.add_argument("--jobs", default="auto", metavar="N|auto",
                   help="inline launcher: run the cells in N worker processes on this machine (auto: one per core, "
                        "cores // N torch threads each; 1: one after another in this process)")
    g.add_argument("--array-parallelism", type=int, default=None, metavar="N",
                   help="at most N cells run at once (slurm: the array's %%N; local: N worker processes)")
    g.add_argument("--wait", action="store_true", help="block until every submitted cell has ended, showing progress")
    g.add_argument("--dry-run", action="store_true", help="print the cells and resources; submit nothing")
    g.add_argument("--log-dir", default=None, help="job logs and submitit files (default: OUT/logs; must be "
                                                   "shared between the nodes, like OUT)")
    g.add_argument("--no-snapshot", action="store_true",
                   help="jobs run the working tree itself instead of a snapshot taken at submission")
    r = parser.add_argument_group("SLURM resources (override the profile)")
    r.add_argument("--slurm-profile", default=os.environ.get("DFKD_SLURM_PROFILE"), metavar="NAME|PATH",
                   help="cluster profile: NAME (one shipped in benchmark/launch/slurm/profiles/; `python -m benchmark list profiles`) or a .toml path (default: $DFKD_SLURM_PROFILE)")
    r.add_argument("--partition", default=None)
    r.add_argument("--account", default=None)
    r.add_argument("--qos", default=None)
    r.add_argument("--time", default=None, metavar="MIN|[D-]HH:MM[:SS]",
                   help=f"time limit per cell (default: the profile's, else {DEFAULT_TIME_MIN} min)")
    r.add_argument("--gpus", type=int, default=None, help="GPUs per cell")
    r.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per cell (also its torch threads)")
    r.add_argument("--mem", default=None, help="memory per cell, e.g. 16G or 4000M")
    r.add_argument("--constraint", default=None, help="node feature constraint")
    r.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                   help="extra sbatch option (repeatable), e.g. --sbatch exclude=node3 --sbatch nice=10")
    r.add_argument("--max-requeues", type=int, default=None,
                   help="requeues after time limits before a cell gives up (default: 3)")
