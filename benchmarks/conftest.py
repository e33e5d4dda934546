"""pytest-benchmark setup for ``benchmarks/`` (not part of the normal ``python -m pytest`` run: pyproject's
``testpaths`` is ``tests``). The command and the saved baseline are described in ``docs/performance.md``."""
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def pytest_addoption(parser):
    group = parser.getgroup("dfkd-benchmark")
    group.addoption("--bench-rounds", type=int, default=3,
                    help="timed iterations per benchmark, after --bench-warmup untimed ones (default 3)")
    group.addoption("--bench-warmup", type=int, default=1, help="untimed warm-up iterations (default 1)")
    group.addoption("--bench-threads", type=int, default=2,
                    help="torch intra-op threads (default 2, the CPUs of the timings in docs/performance.md; "
                         "1 with --benchmark-timer=time.process_time gives CPU times that other processes on a "
                         "shared machine hardly disturb)")
    group.addoption("--bench-device", default="cpu", help="cpu (default) or cuda")


def pytest_configure(config):
    threads = config.getoption("--bench-threads", default=None)
    if threads:
        torch.set_num_threads(max(1, min(threads, os.cpu_count() or 1)))


def pytest_report_header(config):
    return f"dfkd benchmarks: torch {torch.__version__}, {torch.get_num_threads()} thread(s), load {os.getloadavg()[0]:.1f}"
