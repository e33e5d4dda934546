"""The wheel (issue 11): only the ``benchmark`` and ``methods`` packages, with the SLURM profiles, the
local-cluster scripts and the published figures as package data, found from the installed package."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> list[str]:
    """Build the wheel from a copy of the tree (the build writes build/ and *.egg-info next to the sources)."""
    src = tmp_path_factory.mktemp("src") / "tree"
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = out.glob("*.whl")
    return zipfile.ZipFile(wheel).namelist()


def test_the_wheel_holds_only_benchmark_and_methods(wheel_names):
    top = {n.split("/")[0] for n in wheel_names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"benchmark", "methods"}           # not benchmarks/ (pytest-benchmark), not tests/
    assert "benchmark/launch/submit.py" in wheel_names and "methods/cpsc_dfkd.py" in wheel_names


def test_the_wheel_ships_the_slurm_profiles_scripts_and_published_figures(wheel_names):
    from benchmark.launch.resources import PROFILE_DIR, SLURM_DIR

    shipped = {p.relative_to(ROOT).as_posix() for p in PROFILE_DIR.glob("*.toml")}
    shipped |= {p.relative_to(ROOT).as_posix() for p in SLURM_DIR.glob("*.sh")}
    assert {"benchmark/launch/slurm/profiles/local.toml", "benchmark/launch/slurm/start_local_slurm.sh",
            "benchmark/launch/slurm/stop_local_slurm.sh"} <= shipped
    assert shipped <= set(wheel_names)
    assert "benchmark/reference_data/published_results.csv" in wheel_names


def test_profiles_are_found_inside_the_package():
    import benchmark
    from benchmark.launch.resources import PROFILE_DIR, profile_path

    assert Path(benchmark.__file__).resolve().parent in profile_path("local").resolve().parents
    assert profile_path("local").parent == PROFILE_DIR


def test_records_name_the_cpu_model_not_the_architecture(monkeypatch):
    import platform

    import torch

    from benchmark import env

    cpuinfo = Path("/proc/cpuinfo")
    if not (cpuinfo.is_file() and "model name" in cpuinfo.read_text()):
        pytest.skip("no /proc/cpuinfo model name here")
    name = env.environment(torch.device("cpu"))["device_name"]
    assert name and name not in (platform.machine(), platform.processor())
    assert name in cpuinfo.read_text()
