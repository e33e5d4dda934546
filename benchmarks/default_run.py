"""Wall-clock measurement of the default benchmark (issue 13): ``python -m benchmark run --methods all`` from
scratch (fresh output folder, teacher training included), then the machine, the total, every cell's time and
every method's accuracy against the reference set's seed range (``results/reference``).

    python benchmarks/default_run.py [--out DIR] [--simulate-avx2] [-- extra run arguments]

``--simulate-avx2`` limits oneDNN and ATen to AVX2 and runs fp32 (``--set precision=fp32``), which is what
``precision=auto`` gives on a CPU without AMX/AVX512-BF16 (e.g. the 2-core AMD EPYC of issue 13). On a Xeon it
is an estimate of such a CPU, not a measurement of it: say so next to any number it gives. Run it on an
otherwise idle machine; the load average before and after is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")


def machine() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", info)
    flags = set(re.search(r"flags\s*:\s*(.*)", info).group(1).split()) if "flags" in info else set()
    have = " ".join(f for f in CPU_FLAGS if f in flags)
    return f"{model.group(1) if model else 'unknown CPU'}, {os.cpu_count()} cores, flags: {have or '-'}"


def reference_ranges(folder: Path) -> dict[str, tuple[float, float, int]]:
    accs: dict[str, list[float]] = {}
    for path in folder.glob("*/record.json"):
        rec = json.loads(path.read_text())
        if rec.get("status") == "done" and rec.get("dataset") == "digits" and rec.get("final_acc") is not None:
            accs.setdefault(rec["method"], []).append(rec["final_acc"])
    return {m: (min(v), max(v), len(v)) for m, v in accs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/dfkd-default-run", help="fresh output folder (emptied first)")
    parser.add_argument("--simulate-avx2", action="store_true", help="AVX2-only kernels and fp32, see above")
    parser.add_argument("--reference", default=str(ROOT / "results" / "reference"))
    parser.add_argument("extra", nargs="*", help="further `run` arguments, after --")
    args = parser.parse_args(argv)

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "benchmark", "run", "--methods", "all", "--no-progress", "--out", str(out)]
    if args.simulate_avx2:
        env.update(ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2")
        cmd += ["--set", "precision=fp32"]
    cmd += args.extra
    print(f"machine: {machine()}")
    print(f"mode: {'AVX2 simulated, fp32' if args.simulate_avx2 else 'as the machine is (precision auto)'}")
    print(f"commit: {subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()}")
    print(f"load before: {os.getloadavg()[0]:.2f}\n$ {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    with open(out.parent / f"{out.name}.log", "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    total = time.perf_counter() - start
    print(f"exit {rc}; wall clock {total:.0f} s; load after: {os.getloadavg()[0]:.2f}")

    ranges = reference_ranges(Path(args.reference))
    rows = [json.loads(p.read_text()) for p in out.glob("*/record.json")]
    print(f"\n{'method':14s} {'status':7s} {'final %':>8s} {'cell s':>7s}  reference range (n)   inside")
    for rec in sorted(rows, key=lambda r: -(r.get("wall_time_s") or 0)):
        lo, hi, n = ranges.get(rec["method"], (None, None, 0))
        acc = rec.get("final_acc")
        inside = "-" if lo is None or acc is None else ("yes" if lo - 1e-9 <= acc <= hi + 1e-9 else
                                                        "above" if acc > hi else "BELOW")
        span = f"{lo:.2f}-{hi:.2f} ({n})" if lo is not None else "-"
        print(f"{rec['method']:14s} {rec.get('status', '?'):7s} {acc if acc is None else round(acc, 2)!s:>8s} "
              f"{rec.get('wall_time_s') or 0:7.0f}  {span:20s} {inside}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
