import os

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


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device of the device tests (``tests/test_devices.py``, ``tests/plugins/test_devices_plugin.py``):
    ``SDEKIT_TEST_DEVICE`` (default ``cpu``), e.g. ``SDEKIT_TEST_DEVICE=cuda pytest -k devices``, as
    ``benchmarks/gpu_check.py`` runs them. A device that is not there skips its tests."""
    name = os.environ.get("SDEKIT_TEST_DEVICE", "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        pytest.fail(f"SDEKIT_TEST_DEVICE={name!r} is not a torch device (cpu, cuda, cuda:1, mps)")
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"SDEKIT_TEST_DEVICE={name}: CUDA is not available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        pytest.skip(f"SDEKIT_TEST_DEVICE={name}: only {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        pytest.skip(f"SDEKIT_TEST_DEVICE={name}: MPS is not available")
    return device
