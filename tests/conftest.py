import os
import sys
from pathlib import Path

# One compute thread per test process (and per subprocess it starts, which inherit the variable): the
# suite runs many small models, and several processes at once (SLURM array tasks, subprocess CLI tests)
# on a 2-core machine; OpenMP threads oversubscribing the cores slow small kernels down by 10-100x.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def teacher_cache(tmp_path_factory):
    """One digits teacher cache shared by every test of the session (training it takes ~10 s)."""
    return tmp_path_factory.mktemp("teachers")


@pytest.fixture(scope="module")
def teacher(teacher_cache):
    """The trained digits teacher (seed 0) from the session's cache, one per test module."""
    from benchmark.data import get_dataset
    from benchmark.teachers import get_teacher

    spec = get_dataset("digits")
    model, _ = get_teacher(spec, spec.default_teacher, 0, torch.device("cpu"), teacher_cache, progress=False)
    return model


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny tensors, whatever OMP_NUM_THREADS says: threads add nothing but
    contention on a busy 2-core machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
