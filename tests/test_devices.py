"""The core on a device: fixed-step solves and the Brownian noise stay on it and agree with the CPU.

The device is ``SDEKIT_TEST_DEVICE`` (default ``cpu``; the ``device`` fixture of ``conftest.py``):
``SDEKIT_TEST_DEVICE=cuda pytest -k devices tests`` runs this file and
``tests/plugins/test_devices_plugin.py`` on CUDA, as ``benchmarks/gpu_check.py`` does. On the CPU
these are smoke tests of the same code paths; on another device every result is also compared with
the CPU's for the same seed.
"""
from __future__ import annotations

import pytest
import torch

import sdekit
from sdekit.brownian import BrownianTree, PerSampleNoise, counter_words

CPU = torch.device("cpu")
FIXED_STEP = [info for info in sdekit.solvers.available() if not info["adaptive"]]
# the solvers whose result is a function of the Brownian path alone (pc's Langevin corrector draws
# torch.randn from the device's own generator)
PATHWISE = {info["name"] for info in FIXED_STEP if info["name"] != "pc"}
# CPU and CUDA round float32 log/cos/sin differently by an ulp or two: the tree's normals (float32
# Box-Muller for every dtype) then differ by ~1e-7 relative
RTOL, ATOL = 1e-5, 1e-6


class Decay(sdekit.ODE):
    """dx/dt = -x."""

    def drift(self, t, x):
        return -x


class OrnsteinUhlenbeck(sdekit.SDE):
    """dx = -x dt + 0.5 dW (additive noise), with the score of its stationary law N(0, 1/8)."""

    noise_type = "additive"

    def drift(self, t, x):
        return -x

    def diffusion(self, t, x):
        return torch.full_like(x, 0.5)

    def score(self, t, x):
        return -8.0 * x


def same(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL, atol: float = ATOL) -> None:
    torch.testing.assert_close(actual.cpu(), expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("info", FIXED_STEP, ids=[info["name"] for info in FIXED_STEP])
@pytest.mark.parametrize("t0, t1", [(0.0, 1.0), (1.0, 0.0)], ids=["forward", "backward"])
def test_fixed_step_solve_stays_on_the_device(info, t0, t1, device):
    name, is_sde = info["name"], info["kind"] == "sde"
    x0 = torch.linspace(-1.0, 1.0, 12, dtype=torch.float64).reshape(4, 3)

    def run(on: torch.device) -> sdekit.Solution:
        tree = BrownianTree(0.0, 1.0, (4, 3), seed=3, dtype=torch.float64, device=on) if is_sde else None
        return sdekit.solve(OrnsteinUhlenbeck() if is_sde else Decay(), x0.to(on), t0, t1, solver=name,
                            steps=8, brownian=tree)

    solution = run(device)
    assert solution.x.device.type == device.type and solution.ts.device.type == device.type
    assert solution.x.dtype == torch.float64 and solution.x.shape == x0.shape
    assert bool(torch.isfinite(solution.x).all())
    assert solution.n_steps == 8 and solution.nfe == 8 * info["evals_per_step"]
    if device != CPU and name in PATHWISE:
        same(solution.x, run(CPU).x)


def test_fixed_step_solve_saves_on_the_device(device):
    x0 = torch.ones(2, 3, dtype=torch.float32, device=device)
    solution = sdekit.solve(Decay(), x0, 0.0, 1.0, solver="rk4", steps=4, save_at=[0.0, 0.3, 1.0])
    assert solution.xs.device.type == device.type and solution.xs.shape == (3, 2, 3)
    same(solution.xs[-1], torch.full((2, 3), torch.e ** -1.0), rtol=1e-4, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_brownian_tree_equals_the_cpu_tree(dtype, device):
    if device == CPU:
        pytest.skip("compares the device with the CPU")
    ts = torch.tensor([0.0, 0.1, 0.37, 0.5, 0.93, 1.0], dtype=torch.float64)
    make = lambda on: BrownianTree(0.0, 1.0, (5, 3), seed=11, dtype=dtype, device=on, sample_offset=2)
    tree, reference = make(device), make(CPU)
    for times in (ts, ts.flip(0)):   # either direction of query
        dW, H = tree.increments(times.to(device), levy_area=True)
        dW_cpu, H_cpu = reference.increments(times, levy_area=True)
        assert dW.device.type == device.type and dW.dtype == dtype and H.dtype == dtype
        same(dW, dW_cpu)
        same(H, H_cpu)
    ta, tb = torch.tensor([0.0, 0.2, 0.25, 0.6, 0.9]), torch.tensor([0.3, 0.4, 0.5, 1.0, 0.95])
    dW, H = tree.increments_per_sample(ta.to(device), tb.to(device))
    dW_cpu, H_cpu = reference.increments_per_sample(ta, tb)
    assert dW.device.type == device.type
    same(dW, dW_cpu)
    same(H, H_cpu)
    same(tree(0.2, 0.7), reference(0.2, 0.7))


def test_counter_words_are_bit_identical_on_the_device(device):
    """The integer stage of counter_normal (the words of seed, key and element) is exact on every
    device: the same seed gives the same noise everywhere up to the rounding of log/cos/sin."""
    if device == CPU:
        pytest.skip("compares the device with the CPU")
    keys = torch.tensor([0, 1, 2, 2**31 - 1, 2**31, 2**32 + 5, 2**62 + 3], dtype=torch.int64)
    words = counter_words(123456789, keys.to(device), 33)
    assert words.device.type == device.type
    assert torch.equal(words.cpu(), counter_words(123456789, keys, 33))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_per_sample_noise_equals_the_cpu_noise(dtype, device):
    if device == CPU:
        pytest.skip("compares the device with the CPU")
    ts = torch.tensor([1.0, 0.7, 0.2, 0.05], dtype=dtype)
    make = lambda on: PerSampleNoise((4, 2, 3), seed=5, sample_offset=3, dtype=dtype, device=on)
    noise, reference = make(device), make(CPU)
    for _ in range(2):   # the step counter advances identically
        dW, H = noise.increments(ts.to(device), levy_area=True)
        dW_cpu, H_cpu = reference.increments(ts, levy_area=True)
        assert dW.device.type == device.type and dW.shape == (3, 4, 2, 3)
        same(dW, dW_cpu)
        same(H, H_cpu)
