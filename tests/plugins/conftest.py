import pytest
import torch


@pytest.fixture(autouse=True)
def float64_default():
    """The plugin's numerical tests run in float64."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(autouse=True)
def single_thread():
    """The plugin's tests use small tensors: one intra-op thread avoids oversubscription (on a
    busy 2-core machine multi-threaded tiny ops were measured 40x slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
