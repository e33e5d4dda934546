"""The code snapshot that jobs import, taken at submission (see the package docstring for why)."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..records import RECORD_NAME, atomic_write_json
from .errors import LaunchError
from .plan import _now


def _git(root: Path, *args: str, check: bool = True) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=check,
                          timeout=120).stdout


@dataclass
class Snapshot:
    path: Path
    commit: str | None
    dirty: bool | None


def make_snapshot(dest: Path, exclude: Iterable[Path] = ()) -> Snapshot:
    """Copy the code as it is now (tracked + untracked-not-ignored files) into ``dest/<commit>-<hash>/``."""
    from ..env import REPO_ROOT

    root = REPO_ROOT
    try:
        top = Path(_git(root, "rev-parse", "--show-toplevel").strip()).resolve()
    except (OSError, subprocess.SubprocessError):
        raise LaunchError(f"{root} is not a git checkout (or git is missing): cannot snapshot the code; "
                          "pass --no-snapshot to run the working tree itself") from None
    excluded = [Path(p).resolve() for p in exclude]
    names = _git(top, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    files = []
    for name in sorted(set(n for n in names if n)):
        path = (top / name)
        if not path.is_file() or path.is_symlink():
            continue            # deleted in the work tree, a submodule, or a link
        if path.name == RECORD_NAME:
            continue            # record fixtures are data, and would be found by anything reading OUT's records
        real = path.resolve()
        if any(real == ex or ex in real.parents for ex in excluded):
            continue
        files.append(name)
    digest = hashlib.sha1()
    for name in files:
        digest.update(name.encode() + b"\0" + hashlib.sha1((top / name).read_bytes()).digest())
    commit = _git(top, "rev-parse", "--verify", "-q", "HEAD", check=False).strip() or None
    dirty = bool(_git(top, "status", "--porcelain", "--untracked-files=no").strip()) if commit else None
    target = Path(dest) / f"{(commit or 'nocommit')[:12]}-{digest.hexdigest()[:12]}"
    if (target / ".snapshot.json").is_file():
        return Snapshot(target, commit, dirty)
    tmp = Path(dest) / f".{target.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if commit:
            # a one-commit repository at HEAD, so that git inside the snapshot reports the commit and whether
            # the copied files differ from it (env.git_state reads both into every record)
            _git(tmp, "init", "-q")
            try:
                _git(tmp, "fetch", "-q", "--depth", "1", f"file://{top}", commit)
            except subprocess.CalledProcessError:      # an old git that fetches named refs only
                _git(tmp, "fetch", "-q", "--depth", "1", f"file://{top}", "HEAD")
                if _git(tmp, "rev-parse", "FETCH_HEAD").strip() != commit:
                    raise LaunchError("HEAD moved while the snapshot was being taken; submit again") from None
            _git(tmp, "update-ref", "HEAD", "FETCH_HEAD")
            _git(tmp, "read-tree", "HEAD")
        for name in files:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(top / name, tmp / name)
        if commit:
            _git(tmp, "update-index", "-q", "--refresh", check=False)   # so jobs' `git status` writes nothing
        atomic_write_json(tmp / ".snapshot.json", {"commit": commit, "dirty": dirty, "source": str(top),
                                                   "files": len(files), "created_at": _now()})
        try:
            tmp.rename(target)
        except OSError:          # another launch made the same snapshot meanwhile
            if not (target / ".snapshot.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Snapshot(target, commit, dirty)


class _chdir:
    """Submit from the snapshot: sbatch and the local executor start jobs in the submitting directory, and
    ``python -m`` puts that directory first on ``sys.path``."""

    def __init__(self, path: Path | None):
        self.path, self.old = path, None

    def __enter__(self):
        if self.path is not None:
            self.old = os.getcwd()
            os.chdir(self.path)

    def __exit__(self, *exc):
        if self.old is not None:
            os.chdir(self.old)



def _code_dir(snapshot: Snapshot | None) -> Path:
    """Where the jobs import the benchmark from: the snapshot, or (``--no-snapshot``) this checkout."""
    from ..env import REPO_ROOT

    return snapshot.path if snapshot else REPO_ROOT


def _slurm_setup_lines(snapshot: Snapshot | None) -> list[str]:
    lines = [f"export PYTHONPATH={_shq(str(_code_dir(snapshot)))}${{PYTHONPATH:+:$PYTHONPATH}}"]
    if snapshot and snapshot.commit:
        lines.append(f"export DFKD_GIT_COMMIT={snapshot.commit}")
    return lines


def _shq(text: str) -> str:
    import shlex

    return shlex.quote(text)
