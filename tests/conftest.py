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


#### slow tests: `@pytest.mark.slow` runs only with --runslow (CI passes it; see .ci/run) ####
def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run the tests marked slow (minutes on 2 cores)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: minutes on 2 CPU cores; runs with --runslow (CI does)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
