import pytest
import torch


@pytest.fixture(autouse=True)
def float64_default():
    """The plugin's numerical tests run in float64."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def float32_default(float64_default):
    """Networks train in float32, as in practice: test modules of training and trained networks
    use it for every test (``pytestmark = pytest.mark.usefixtures("float32_default")``; tensors of
    closed-form checks are float64 explicitly). float64_default restores the previous dtype."""
    torch.set_default_dtype(torch.float32)
    yield
