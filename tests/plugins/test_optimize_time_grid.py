"""``skd.optimize_time_grid`` on the exact 2-d mixture of the sampler tests (VP SDE, exact score).

* It beats the best fixed grid of ``skd.GRIDS`` on a held-out batch (other prior draws than the
  calibration batch), against dopri5 at ``rtol = atol = 1e-10``, at NFE 5 and 10.
* Its grid is a strictly decreasing float64 tensor from ``t_max`` to ``t_min`` that
  ``skd.sample(ts=)`` runs with exactly ``nfe`` score calls; its calibration error is no worse than
  the best fixed grid's.
* The same inputs give the same grid; bad input is refused with a message naming the fix.
"""
from __future__ import annotations

import pytest
import torch

import sdekit
import sdekit_diffusion as skd

MIXTURE = dict(weights=[0.3, 0.7], means=[[-1.0, 0.5], [1.5, 0.0]], stds=[0.5, 0.65])
CALIBRATION, HELD_OUT = 128, 256     # prior draws: seed 1 calibrates, seed 2 scores


def mixture():
    return skd.GaussianMixture(MIXTURE["weights"], torch.tensor(MIXTURE["means"]), MIXTURE["stds"])


@pytest.fixture(scope="module")
def problem():
    """(sde, exact score, calibration x_T, held-out x_T, dopri5 solution of the held-out x_T)."""
    sde = skd.VPSDE()
    score = mixture().score_fn(sde)
    x_cal, x_test = (sde.prior_sample((n, 2), generator=torch.Generator().manual_seed(seed),
                                      dtype=torch.float64)
                     for n, seed in ((CALIBRATION, 1), (HELD_OUT, 2)))
    exact = sdekit.solve(sde.probability_flow(score), x_test, sde.t_max, sde.t_min,
                         solver="dopri5", rtol=1e-10, atol=1e-10).x
    return sde, score, x_cal, x_test, exact


def mean_l2(sde, score, solver, ts, x_T, exact) -> float:
    x = skd.sample(sde, score, x_T=x_T, solver=solver, ts=ts).x
    return float((x.double() - exact).flatten(1).norm(dim=1).mean())


# -- it beats the best fixed grid on held-out draws ------------------------------------------

@pytest.mark.parametrize("solver, nfe, dtype", [
    ("dpm_solver++_2m", 5, torch.float64), ("dpm_solver++_2m", 10, torch.float64),
    ("unipc", 5, torch.float64), ("unipc", 10, torch.float64),
    ("unipc", 10, torch.float32),    # float32 states: larger difference steps
])
def test_beats_best_fixed_grid_on_held_out_batch(problem, solver, nfe, dtype):
    sde, score, x_cal, x_test, exact = problem
    x_cal, x_test = x_cal.to(dtype), x_test.to(dtype)
    fixed = min(mean_l2(sde, score, solver, skd.time_grid(sde, nfe, kind), x_test, exact)
                for kind in skd.GRIDS)
    ts = skd.optimize_time_grid(sde, score, x_cal, nfe, solver, max_evaluations=60)
    optimised = mean_l2(sde, score, solver, ts, x_test, exact)
    assert optimised < 0.8 * fixed, (solver, nfe, optimised, fixed)


def test_float32_score_behind_a_float64_state_gets_float32_difference_steps(problem):
    """A float32 model wrapped to take and return float64 (as benchmarks/few_step.py runs its U-Net):
    its values carry float32 precision, so a float64-sized difference step would difference rounding
    noise and the search would not move from the best fixed grid (measured: 0.0419 -> 0.0419 at
    difference_step=1e-7); the detected float32 step finds a grid several times better (0.0085)."""
    sde, exact_score, x_cal, x_test, exact = problem

    def score32(t, x):
        return exact_score(t.float(), x.float()).double()

    from sdekit_diffusion.grid_optimization import _score_precision
    assert _score_precision(score32, x_cal, sde.t_max) == torch.float32
    assert _score_precision(exact_score, x_cal, sde.t_max) == torch.float64
    fixed = min(mean_l2(sde, score32, "unipc", skd.time_grid(sde, 10, kind), x_test, exact) for kind in skd.GRIDS)
    detected = skd.optimize_time_grid(sde, score32, x_cal, 10, "unipc", max_evaluations=60)
    assert mean_l2(sde, score32, "unipc", detected, x_test, exact) < 0.5 * fixed
    tiny = skd.optimize_time_grid(sde, score32, x_cal, 10, "unipc", max_evaluations=60, difference_step=1e-7)
    assert mean_l2(sde, score32, "unipc", tiny, x_test, exact) > 0.9 * fixed
    for bad in (0.0, -1e-3, float("nan")):
        with pytest.raises(ValueError, match="difference_step must be a finite number > 0"):
            skd.optimize_time_grid(sde, score32, x_cal[:8], 10, "unipc", difference_step=bad)


@pytest.mark.parametrize("solver", ["unipc", "ipndm", "deis", "dpm_solver++_3m", "ddim", "edm_heun",
                                    "dpm_solver_2", "euler"])
def test_sampler_output_is_differentiable_in_its_grid(problem, solver):
    """skd.sample(ts=grid) keeps the grid's autograd graph (coefficients and the score's times):
    the gradient of a weighted sum of the output equals central differences in each time."""
    sde, score, x_cal, _, _ = problem
    x, weights = x_cal[:16], torch.linspace(-1.0, 1.0, 32, dtype=torch.float64).reshape(16, 2)
    base = skd.time_grid(sde, 8, "quadratic")
    grid = base.clone().requires_grad_(True)
    (skd.sample(sde, score, x_T=x, solver=solver, ts=grid).x * weights).sum().backward()
    for i in (1, 4, 7):
        ahead, behind = base.clone(), base.clone()
        ahead[i] += 1e-6
        behind[i] -= 1e-6
        difference = sum(sign * float((skd.sample(sde, score, x_T=x, solver=solver, ts=ts).x * weights).sum())
                         for sign, ts in ((1, ahead), (-1, behind))) / 2e-6
        assert grid.grad[i].item() == pytest.approx(difference, rel=1e-5, abs=1e-7), (solver, i)


def test_autograd_gradients_are_used_when_they_are_the_objectives(problem, monkeypatch):
    """gradient="auto" checks autograd against a central difference and runs on it for the exact
    (differentiable) score; for the same score under torch.no_grad (the sampler's coefficients
    still carry a graph, the score does not) the check fails and it falls back to differences."""
    from sdekit_diffusion import grid_optimization

    searches = []
    run = grid_optimization._Search.run

    def spy(self):
        searches.append(self)
        return run(self)

    monkeypatch.setattr(grid_optimization._Search, "run", spy)
    sde, score, x_cal, _, _ = problem
    x = x_cal[:64]
    auto = skd.optimize_time_grid(sde, score, x, 10, "unipc", max_evaluations=40)
    assert searches[-1].used_gradient == "autograd"
    differences = skd.optimize_time_grid(sde, score, x, 10, "unipc", gradient="differences", max_evaluations=40)
    assert searches[-1].used_gradient == "differences" and not torch.equal(auto, differences)

    def frozen(t, y):
        with torch.no_grad():
            return score(t, y)

    exact = sdekit.solve(sde.probability_flow(score), x, sde.t_max, sde.t_min, solver="dopri5",
                         rtol=1e-8, atol=1e-8).x
    skd.optimize_time_grid(sde, frozen, x, 10, "unipc", reference=exact, max_evaluations=40)
    assert searches[-1].used_gradient == "differences"
    with pytest.raises(ValueError, match="gradient must be one of 'auto', 'autograd', 'differences'"):
        skd.optimize_time_grid(sde, score, x[:8], 10, "unipc", gradient="adjoint")
    # a search that converges early restarts from the other fixed grids until the budget is spent
    skd.optimize_time_grid(sde, score, x, 5, "ipndm", max_evaluations=300)
    assert searches[-1].evaluations > 300 - grid_optimization.GRADIENT_COST


# -- the grid ---------------------------------------------------------------------------------

@pytest.mark.parametrize("solver, nfe, options", [
    ("dpm_solver++_3m", 6, {}),
    ("unipc", 6, dict(order=2, variant="bh1")),
    ("dpm_solver_2", 8, {}),      # 2 score calls per step: 4 steps
    ("heun", 6, {}),              # the core's Heun on the probability-flow ODE: 3 steps
])
def test_grid_is_valid_and_costs_exactly_nfe(problem, solver, nfe, options):
    sde, score, x_cal, _, _ = problem
    x_cal = x_cal[:64]
    t_min = 0.01
    ts = skd.optimize_time_grid(sde, score, x_cal, nfe, solver, t_min=t_min, max_evaluations=12,
                                **options)
    steps = nfe // skd.samplers.get(solver).calls_per_step(options)
    assert isinstance(ts, torch.Tensor) and ts.dtype == torch.float64 and ts.shape == (steps + 1,)
    assert ts[0].item() == sde.t_max and ts[-1].item() == t_min
    assert bool((ts[1:] < ts[:-1]).all())
    solution = skd.sample(sde, score, x_T=x_cal, solver=solver, ts=ts, **options)
    assert solution.nfe == nfe and solution.n_steps == steps
    # the best grid met: never worse on the calibration batch than the best fixed grid
    exact = sdekit.solve(sde.probability_flow(score), x_cal, sde.t_max, t_min, solver="dopri5",
                         rtol=1e-8, atol=1e-8).x

    def error(**grid):
        x = skd.sample(sde, score, x_T=x_cal, solver=solver, **grid, **options).x
        return float((x - exact).flatten(1).norm(dim=1).mean())

    fixed = min(error(steps=steps, time_grid=kind, t_min=t_min) for kind in skd.GRIDS)
    assert error(ts=ts) <= fixed


def test_given_reference_is_used():
    """Single-Gaussian data: the exact flow map as ``reference`` (no dopri5 solve); a wrong
    reference gives a different grid."""
    sde = skd.VPSDE()
    data = skd.GaussianMixture.gaussian(torch.tensor([1.0, -0.5]), 0.5)
    score = data.score_fn(sde)
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = data.exact_flow(sde, x_T, sde.t_max, sde.t_min)
    ts = skd.optimize_time_grid(sde, score, x_T, 5, "dpm_solver++_2m", reference=exact,
                                max_evaluations=40)
    shifted = skd.optimize_time_grid(sde, score, x_T, 5, "dpm_solver++_2m", reference=exact + 0.5,
                                     max_evaluations=40)
    assert not torch.equal(ts, shifted)
    error = mean_l2(sde, score, "dpm_solver++_2m", ts, x_T, exact)
    fixed = min(mean_l2(sde, score, "dpm_solver++_2m", skd.time_grid(sde, 5, kind), x_T, exact)
                for kind in skd.GRIDS)
    assert error < fixed


def test_reproducible(problem):
    sde, score, x_cal, _, _ = problem
    first = skd.optimize_time_grid(sde, score, x_cal[:64], 6, "ipndm", max_evaluations=30)
    again = skd.optimize_time_grid(sde, score, x_cal[:64].clone(), 6, "ipndm", max_evaluations=30)
    assert torch.equal(first, again)


# -- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("solver, nfe, options, error, match", [
    ("dpm_solver++_2m", 0, {}, ValueError, "nfe must be an integer >= 1"),
    ("dpm_solver++_2m", 4.0, {}, ValueError, "nfe must be an integer"),
    ("dpm_solver++_2m", True, {}, ValueError, "nfe must be an integer"),
    ("dpm_solver++_2m", 1, {}, ValueError, "at least 2 steps: nfe must be >= 2, got 1"),
    ("ipndm", 3, {}, ValueError, ">= 4, got 3"),
    ("dpm_solver_2", 5, {}, ValueError, "2 score calls per step.*multiple of 2"),
    ("edm_heun", 7, {}, ValueError, "multiple of 2"),
    ("dopri5", 10, {}, ValueError, "adaptive"),
    ("adaptive_sde", 10, {}, ValueError, "adaptive"),
    ("euler_maruyama", 10, {}, ValueError, "draws noise"),
    ("ddim", 10, dict(eta=1.0), ValueError, "draws noise"),
    ("ancestral", 10, {}, ValueError, "draws noise"),
    ("no_such_sampler", 10, {}, ValueError, "unknown sampler 'no_such_sampler'"),
    ("unipc", 10, dict(steps=10), TypeError, "drop 'steps'"),
    ("unipc", 10, dict(colour="red"), TypeError, "unknown option 'colour'"),
])
def test_refuses_bad_solver_or_nfe(problem, solver, nfe, options, error, match):
    sde, score, x_cal, _, _ = problem
    with pytest.raises(error, match=match):
        skd.optimize_time_grid(sde, score, x_cal[:8], nfe, solver, **options)


def test_refuses_bad_state_and_reference(problem):
    sde, score, x_cal, _, _ = problem
    x = x_cal[:8]
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(sdekit.NonFiniteError, match="x_T contains NaN"):
        skd.optimize_time_grid(sde, score, bad, 10)
    with pytest.raises(TypeError, match="x_T must be a floating-point tensor"):
        skd.optimize_time_grid(sde, score, torch.zeros(8, 2, dtype=torch.int64), 10)
    with pytest.raises(TypeError, match="x_T must be a floating-point tensor"):
        skd.optimize_time_grid(sde, score, torch.tensor(1.0), 10)
    with pytest.raises(sdekit.ShapeError,
                       match=r"score_fn returned \(8, 2\) for x_T of shape \(8, 1, 2\)"):
        skd.optimize_time_grid(sde, lambda t, y: torch.zeros(8, 2), x[:, None], 10)
    with pytest.raises(sdekit.ShapeError, match="reference has shape"):
        skd.optimize_time_grid(sde, score, x, 10, reference=x[:4])
    with pytest.raises(ValueError, match="max_evaluations must be an integer >= 4"):
        skd.optimize_time_grid(sde, score, x, 10, max_evaluations=2)
    with pytest.raises(ValueError, match="t_min"):
        skd.optimize_time_grid(sde, score, x, 10, t_min=2.0)
    with pytest.raises(TypeError, match="sde must be a DiffusionSDE"):
        skd.optimize_time_grid("vp", score, x, 10)
