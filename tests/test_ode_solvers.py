"""ODE solvers: asserted orders on a linear system with a matrix-exponential solution."""
import math

import pytest
import torch

import sdekit
from helpers import fitted_slope

A = torch.tensor([[-0.5, 2.0, 0.0], [-2.0, -0.5, 0.3], [0.0, -0.3, -1.0]], dtype=torch.float64)


class LinearODE(sdekit.ODE):
    """dx/dt = A x (+ a time-dependent forcing to exercise t), exact: matrix exponential."""

    def drift(self, t, x):
        return x @ A.T


def exact(x0, t0, t1):
    return x0 @ torch.linalg.matrix_exp(A * (t1 - t0)).T


X0 = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.1]], dtype=torch.float64)


@pytest.mark.parametrize("name,order,steps", [
    ("euler", 1, [16, 32, 64, 128]),
    ("midpoint", 2, [16, 32, 64, 128]),
    ("heun", 2, [16, 32, 64, 128]),
    ("rk4", 4, [8, 16, 32, 64]),
    ("dopri5", 5, [8, 16, 32, 64]),
])
def test_fixed_step_order(name, order, steps):
    errors = []
    for n in steps:
        sol = sdekit.solve(LinearODE(), X0, 0.0, 2.0, solver=name, steps=n)
        errors.append((sol.x - exact(X0, 0.0, 2.0)).abs().max().item())
    slope = fitted_slope([2.0 / n for n in steps], errors)
    assert abs(slope - order) < 0.25, (name, slope, errors)


@pytest.mark.parametrize("name", ["euler", "rk4", "dopri5"])
def test_backward_in_time(name):
    sol = sdekit.solve(LinearODE(), X0, 1.0, -0.5, solver=name, steps=400)
    tol = {"euler": 5e-2, "rk4": 1e-9, "dopri5": 1e-11}[name]
    assert torch.allclose(sol.x, exact(X0, 1.0, -0.5), atol=tol)


def test_nfe_counts_evaluations():
    assert sdekit.solve(LinearODE(), X0, 0.0, 1.0, solver="rk4", steps=10).nfe == 40
    # dopri5 is first-same-as-last: 1 initial evaluation + 6 per step
    assert sdekit.solve(LinearODE(), X0, 0.0, 1.0, solver="dopri5", steps=10).nfe == 61


@pytest.mark.parametrize("rtol", [1e-4, 1e-7, 1e-10])
def test_dopri5_meets_tolerance(rtol):
    sol = sdekit.solve(LinearODE(), X0, 0.0, 2.0, solver="dopri5", rtol=rtol, atol=rtol)
    err = (sol.x - exact(X0, 0.0, 2.0)).abs().max().item()
    assert err < 20 * rtol, (err, rtol)
    assert sol.grid[-1].item() == pytest.approx(2.0)
    assert sol.n_steps == len(sol.grid) - 1


def test_dopri5_needs_fewer_steps_than_a_fixed_grid():
    """At equal accuracy the adaptive solve takes fewer steps than fixed-step dopri5 on a problem
    whose time scale grows from 0.01 to 3: dx/dt = 1 / (t + 0.01), x(t) = x0 + log(1 + 100 t)."""

    class Relaxing(sdekit.ODE):
        def drift(self, t, x):
            return torch.ones_like(x) / (t + 0.01)

    x0 = torch.ones(1, 2, dtype=torch.float64)
    target = 1.0 + math.log(301.0)
    adaptive = sdekit.solve(Relaxing(), x0, 0.0, 3.0, solver="dopri5", rtol=1e-7, atol=1e-9)
    err_adaptive = (adaptive.x - target).abs().max().item()
    assert err_adaptive < 1e-6
    steps = 8
    while (sdekit.solve(Relaxing(), x0, 0.0, 3.0, solver="dopri5", steps=steps).x - target).abs().max() > err_adaptive:
        steps = int(steps * 1.25) + 1
    assert 2 * adaptive.n_steps < steps, (adaptive.n_steps, steps)


def test_save_at_fixed_and_adaptive():
    times = [0.0, 0.3, 1.0, 2.0]
    for kwargs in ({"steps": 20}, {"rtol": 1e-9, "atol": 1e-9}):
        sol = sdekit.solve(LinearODE(), X0, 0.0, 2.0, solver="dopri5", save_at=times, **kwargs)
        assert sol.xs.shape == (4, *X0.shape)
        assert torch.allclose(sol.ts, torch.tensor(times, dtype=torch.float64))
        for t, x in zip(times, sol.xs):
            assert torch.allclose(x, exact(X0, 0.0, t), atol=1e-7)


def test_save_at_backward():
    sol = sdekit.solve(LinearODE(), X0, 2.0, 0.0, solver="rk4", steps=50, save_at=[1.5, 0.5])
    assert torch.allclose(sol.ts, torch.tensor([1.5, 0.5], dtype=torch.float64))
    assert torch.allclose(sol.xs[1], exact(X0, 2.0, 0.5), atol=1e-7)


def test_any_state_shape_and_float32():
    class Decay(sdekit.ODE):
        def drift(self, t, x):
            return -x * (1 + t)

    x0 = torch.ones(4, 3, 5, 5)
    sol = sdekit.solve(Decay(), x0, 0.0, 1.0, solver="rk4", steps=20)
    assert sol.x.dtype == torch.float32 and sol.x.shape == x0.shape
    assert torch.allclose(sol.x, torch.full_like(x0, torch.exp(torch.tensor(-1.5)).item()), atol=1e-5)


def test_torchdiffeq_interop_agrees():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    from sdekit.interop import to_torchdiffeq

    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    theirs = torchdiffeq.odeint(to_torchdiffeq(LinearODE()), X0, ts, method="rk4",
                                options={"step_size": 0.05})[-1]
    ours = sdekit.solve(LinearODE(), X0, 0.0, 1.0, solver="rk4", steps=20).x
    assert torch.allclose(ours, theirs, atol=1e-12)


def test_tableaux_are_consistent():
    """Sum of b is 1 and each row of a sums to c (scipy's tableau checks)."""
    from sdekit.solvers.runge_kutta import ExplicitRungeKutta

    for cls in ExplicitRungeKutta.__subclasses__():
        tab = cls.tableau
        assert sum(tab.b) == pytest.approx(1.0)
        for row, c in zip(tab.a, tab.c):
            assert sum(row) == pytest.approx(c)
        if tab.b_error is not None:
            assert sum(tab.b_error) == pytest.approx(0.0, abs=1e-14)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda():
    x0 = X0.cuda()
    sol = sdekit.solve(LinearODE(), x0, 0.0, 1.0, solver="dopri5", rtol=1e-8, atol=1e-8)
    assert sol.x.device.type == "cuda"
