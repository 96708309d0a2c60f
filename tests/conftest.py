import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def single_thread():
    """The tests use small tensors: one intra-op thread avoids oversubscription (on a busy 2-core
    machine multi-threaded tiny ops were measured 25-40x slower than single-threaded ones)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
