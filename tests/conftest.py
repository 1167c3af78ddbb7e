import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(autouse=True)
def _torch_threads():
    import torch
    torch.set_num_threads(1)  # tiny models: one thread is faster than two on a 2-core machine, and deterministic
    yield
