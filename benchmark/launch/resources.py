"""What one cell asks the scheduler for: cluster profiles (``--slurm-profile``) and flags, flags winning.

The profiles and the local-cluster scripts ship with the package (``benchmark/launch/slurm/``, package data),
so ``--slurm-profile NAME`` finds them from an installed wheel too. See ``profiles/example.toml`` there for
every key.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import LaunchError

SLURM_DIR = Path(__file__).resolve().parent / "slurm"       # package data: profiles/*.toml, *_local_slurm.sh
PROFILE_DIR = SLURM_DIR / "profiles"
DEFAULT_TIME_MIN = 120


@dataclass
class Resources:
    """What one cell asks the scheduler for. Every field can be set in a profile and by a flag."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: int = DEFAULT_TIME_MIN             # minutes
    gpus: int = 0
    cpus_per_task: int = 1
    mem: str | None = None                   # sbatch syntax, e.g. 16G
    constraint: str | None = None
    array_parallelism: int | None = None
    signal_delay_s: int = 90                 # USR2 this long before the time limit (submitit's checkpoint)
    max_requeues: int = 3
    setup: list[str] = field(default_factory=list)       # shell lines run before the job (module load ...)
    sbatch: dict[str, Any] = field(default_factory=dict)  # any other sbatch option

    def summary(self) -> str:
        parts = [f"{k.replace('_', '-')}={v}" for k, v in dataclasses.asdict(self).items()
                 if v not in (None, [], {}) and k not in ("sbatch", "setup")]
        parts += [f"sbatch:{k}={v}" for k, v in self.sbatch.items()]
        parts += [f"setup:{line!r}" for line in self.setup]
        return " ".join(parts)


def parse_time(value: Any) -> int:
    """Minutes from ``90``, ``'90'``, ``'1:30:00'``, ``'2-00:00:00'`` or ``'30:00'`` (MM:SS), rounded up."""
    if isinstance(value, bool):
        raise LaunchError(f"bad time limit {value!r}")
    if isinstance(value, (int, float)):
        minutes = float(value)
    else:
        text = str(value).strip()
        m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
        if not m:
            raise LaunchError(f"bad time limit {value!r} (minutes, or [D-]HH:MM[:SS])")
        days, a, b, c = m.groups()
        if days is None and b is None:
            minutes = float(a)
        elif c is not None:
            minutes = int(days or 0) * 1440 + int(a) * 60 + int(b) + int(c) / 60
        elif days is not None:
            minutes = int(days) * 1440 + int(a) * 60 + int(b)
        else:
            minutes = int(a) + int(b) / 60            # MM:SS, as sbatch reads it
    if minutes <= 0:
        raise LaunchError(f"time limit must be positive, got {value!r}")
    return int(math.ceil(minutes))


def parse_mem_gb(mem: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", str(mem), flags=re.I)
    if not m:
        raise LaunchError(f"bad memory {mem!r} (e.g. 16G or 4000M)")
    scale = {"K": 1 / 2**20, "M": 1 / 1024, "G": 1, "T": 1024, "": 1 / 1024}[m.group(2).upper()]  # sbatch: MB
    return float(m.group(1)) * scale


def _load_toml(path: Path) -> dict:
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore
        except ModuleNotFoundError:
            raise LaunchError("reading a SLURM profile on Python 3.10 needs the 'tomli' package") from None
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LaunchError(f"cannot read SLURM profile {path}: {exc}") from None


def profile_path(name: str) -> Path:
    path = Path(name).expanduser()
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise LaunchError(f"SLURM profile {path} does not exist")
        return path
    path = PROFILE_DIR / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))
        raise LaunchError(f"unknown SLURM profile {name!r} (known: {', '.join(known) or 'none'}; or give a path)")
    return path


def load_profile(name: str | None) -> dict[str, Any]:
    if not name:
        return {}
    path = profile_path(name)
    data = _load_toml(path)
    known = {f.name for f in dataclasses.fields(Resources)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise LaunchError(f"SLURM profile {path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return data


def parse_sbatch_options(items: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise LaunchError(f"--sbatch expects KEY=VALUE (or a bare flag such as exclusive), got {item!r}")
        out[key] = value.strip() if sep else True
    return out


def resolve_resources(args: argparse.Namespace) -> Resources:
    """Profile values, then flags; checked here so that a bad value fails before anything is submitted."""
    values: dict[str, Any] = load_profile(getattr(args, "slurm_profile", None))
    for key in ("partition", "account", "qos", "time", "gpus", "cpus_per_task", "mem", "constraint",
                "array_parallelism", "max_requeues"):
        flag = getattr(args, key, None)
        if flag is not None:
            values[key] = flag
    sbatch = {str(k): v for k, v in dict(values.get("sbatch") or {}).items()}
    sbatch.update(parse_sbatch_options(getattr(args, "sbatch", None) or []))
    values["sbatch"] = sbatch
    values["setup"] = [str(line) for line in values.get("setup") or []]
    if "time" in values:
        values["time"] = parse_time(values["time"])
    res = Resources(**values)
    for key in ("gpus", "max_requeues", "signal_delay_s"):
        if not isinstance(getattr(res, key), int) or getattr(res, key) < 0:
            raise LaunchError(f"{key.replace('_', '-')} must be an integer >= 0, got {getattr(res, key)!r}")
    for key in ("cpus_per_task", "array_parallelism"):
        value = getattr(res, key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise LaunchError(f"{key.replace('_', '-')} must be an integer >= 1, got {value!r}")
    if res.mem is not None:
        parse_mem_gb(res.mem)
    return res
