import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def teacher_cache(tmp_path_factory):
    """One digits teacher cache shared by every test of the session (training it takes ~10 s)."""
    return tmp_path_factory.mktemp("teachers")
