"""SDE solvers: convergence orders on problems with exact solutions, and refusals.

Strong orders are measured on one Brownian path per test (one :class:`sdekit.BrownianTree` queried
at every step size); step counts are powers of two on [0, 1], so every grid time is a node of the
tree. The asserted slope is that of log(error) against log(step size), within 0.25 of theory.
"""
import math

import pytest
import torch

import sdekit
from helpers import fitted_slope

DTYPE = torch.float64
STEPS = [2**k for k in range(4, 10)]
BATCH = 32
DEPTH = 12  # dyadic levels of the tree: every grid of up to 2^12 steps is exact


def brownian_tree(shape, seed=1):
    from sdekit.brownian import BrownianTree

    return BrownianTree(0.0, 1.0, shape, seed=seed, dtype=DTYPE, device="cpu", levy_area=True,
                        depth=DEPTH)


class GeometricBrownianMotion(sdekit.SDE):
    """dx = mu x dt + sigma x dW; x_t = x0 exp((mu - sigma^2/2) t + sigma W_t)."""

    noise_type = "diagonal"

    def __init__(self, mu=1.0, sigma=0.8, noise_type="diagonal"):
        self.mu, self.sigma, self.noise_type = mu, sigma, noise_type

    def drift(self, t, x):
        return self.mu * x

    def diffusion(self, t, x):
        return self.sigma * x

    def exact(self, x0, t, W_t):
        if self.noise_type == "scalar":
            W_t = W_t.reshape(-1, *([1] * (x0.dim() - 1)))
        return x0 * torch.exp((self.mu - 0.5 * self.sigma**2) * t + self.sigma * W_t)


class AdditiveLinear(sdekit.SDE):
    """Rackauckas & Nie (2017) additive test problem:
    dx = (b / sqrt(1 + t) - x / (2 (1 + t))) dt + a b / sqrt(1 + t) dW,
    x_t = x0 / sqrt(1 + t) + b (t + a W_t) / sqrt(1 + t)."""

    noise_type = "additive"

    def __init__(self, a=1.0, b=1.0):
        self.a, self.b = a, b

    def drift(self, t, x):
        return self.b / torch.sqrt(1 + t) - x / (2 * (1 + t))

    def diffusion(self, t, x):
        return (self.a * self.b / torch.sqrt(1 + t)).expand_as(x)

    def exact(self, x0, t, W_t):
        t = torch.as_tensor(t, dtype=x0.dtype)
        return (x0 + self.b * (t + self.a * W_t)) / torch.sqrt(1 + t)


def strong_errors(problem, solver, x0, tree, steps=STEPS, **options):
    """Mean |x_N - x(1)| over the batch at each step count, all on the one path of ``tree``."""
    exact = problem.exact(x0, 1.0, tree(0.0, 1.0))
    errors = []
    for n in steps:
        sol = sdekit.solve(problem, x0, 0.0, 1.0, solver=solver, steps=n, brownian=tree, **options)
        errors.append((sol.x - exact).abs().mean().item())
    return errors


def assert_order(errors, order, steps=STEPS, tolerance=0.25):
    slope = fitted_slope([1.0 / n for n in steps], errors)
    assert abs(slope - order) <= tolerance, f"slope {slope:.3f}, expected {order} (errors {errors})"
    return slope


@pytest.mark.parametrize("solver, options, order", [
    ("euler_maruyama", {}, 0.5),
    ("milstein", {}, 1.0),
    ("milstein", {"derivative": "jvp"}, 1.0),
    ("adaptive_em", None, 1.0),  # its step on a fixed grid (the embedded higher-order member)
])
def test_strong_order_geometric_brownian_motion(solver, options, order):
    problem = GeometricBrownianMotion()
    x0 = torch.full((BATCH, 2), 1.0, dtype=DTYPE)
    tree = brownian_tree(x0.shape)
    if options is None:  # fixed steps of the adaptive pair: call the step through a fixed-step solve
        solver = _FixedStep(sdekit.solvers.get(solver))
        options = {}
    assert_order(strong_errors(problem, solver, x0, tree, **options), order)


def test_strong_order_milstein_scalar_noise():
    problem = GeometricBrownianMotion(noise_type="scalar")
    x0 = torch.linspace(0.5, 1.5, 2 * BATCH, dtype=DTYPE).reshape(BATCH, 2)
    tree = brownian_tree((BATCH,))
    assert_order(strong_errors(problem, "milstein", x0, tree), 1.0)
    assert_order(strong_errors(problem, "euler_maruyama", x0, tree), 0.5)


def test_strong_order_additive_linear():
    """Rackauckas & Nie's problem: Euler-Maruyama has order 1; SRA1 is at least 1.5 (it shows 2 here:
    the exact solution depends on W_1 alone and the drift is linear, so the I_(1,1,0) error term
    that limits SRA1 to 1.5 vanishes)."""
    problem = AdditiveLinear()
    x0 = torch.full((BATCH, 2), 1.0, dtype=DTYPE)
    tree = brownian_tree(x0.shape)
    assert_order(strong_errors(problem, "euler_maruyama", x0, tree), 1.0)
    slope = fitted_slope([1.0 / n for n in STEPS], strong_errors(problem, "sra1", x0, tree))
    assert 1.5 - 0.25 <= slope <= 2.25, slope


class AdditiveNonlinear(sdekit.SDE):
    """dx = (sin 2x + cos t) dt + (1 + sin(3t) / 2) dW: nonlinear drift, time-dependent additive noise."""

    noise_type = "additive"

    def drift(self, t, x):
        return torch.sin(2 * x) + torch.cos(t)

    def diffusion(self, t, x):
        return (1.0 + 0.5 * torch.sin(3 * t)).expand_as(x)


def test_strong_order_additive_nonlinear():
    """Against SRA1 with 2^11 steps on the same path (8x finer than the finest solve)."""
    problem = AdditiveNonlinear()
    x0 = torch.full((BATCH, 2), 0.3, dtype=DTYPE)
    tree = brownian_tree(x0.shape, seed=2)
    reference = sdekit.solve(problem, x0, 0.0, 1.0, solver="sra1", steps=2**11, brownian=tree).x
    steps = [2**k for k in range(3, 9)]
    for solver, order in [("euler_maruyama", 1.0), ("sra1", 1.5)]:
        errors = [(sdekit.solve(problem, x0, 0.0, 1.0, solver=solver, steps=n, brownian=tree).x - reference)
                  .abs().mean().item() for n in steps]
        assert_order(errors, order, steps)


class _FixedStep(sdekit.solvers.Solver):
    """An adaptive solver's step used on a fixed grid (its propagated solution, error ignored)."""

    kind = "sde"

    def __init__(self, inner):
        self.inner, self.name = inner, inner.name + "_fixed"
        self.noise_types, self.needs_levy_area = inner.noise_types, inner.needs_levy_area

    def step(self, problem, t0, t1, x0, increment, state):
        x1, _, state = self.inner.step(problem, t0, t1, x0, increment, state)
        return x1, None, state


def test_weak_order_euler_maruyama():
    """E[x_1] on geometric Brownian motion. Each estimate is mean(x_N - x(1)) over the same paths
    (x(1) from the tree's W_1 is an unbiased control variate: E[x(1)] = x0 e^mu), and the exact
    weak error of Euler-Maruyama here is x0 ((1 + mu h)^N - e^mu)."""
    from sdekit.brownian import BrownianTree

    problem = GeometricBrownianMotion(mu=1.0, sigma=0.5)
    x0 = torch.ones(2**13, 1, dtype=DTYPE)
    tree = BrownianTree(0.0, 1.0, x0.shape, seed=4, dtype=DTYPE, depth=6)
    exact = problem.exact(x0, 1.0, tree(0.0, 1.0))
    steps = [4, 8, 16, 32, 64]
    errors = []
    for n in steps:
        difference = sdekit.solve(problem, x0, 0.0, 1.0, solver="euler_maruyama", steps=n, brownian=tree).x - exact
        estimate, standard_error = difference.mean().item(), difference.std().item() / math.sqrt(x0.shape[0])
        assert abs(estimate - ((1 + 1.0 / n) ** n - math.e)) < 4 * standard_error
        errors.append(abs(estimate))
    assert_order(errors, 1.0, steps)


def test_adaptive_em_fewer_steps_than_fixed_grid():
    """At rtol = atol = 1e-2 on geometric Brownian motion, adaptive_em's strong error is below that
    of Euler-Maruyama with twice as many steps as adaptive_em attempted (equal drift evaluations)."""
    from sdekit.brownian import BrownianTree

    problem = GeometricBrownianMotion()
    x0 = torch.ones(BATCH, 2, dtype=DTYPE)
    tree = BrownianTree(0.0, 1.0, x0.shape, seed=3, dtype=DTYPE)  # depth 24: adaptive times are not dyadic
    exact = problem.exact(x0, 1.0, tree(0.0, 1.0))
    sol = sdekit.solve(problem, x0, 0.0, 1.0, solver="adaptive_em", rtol=1e-2, atol=1e-2, brownian=tree)
    error = (sol.x - exact).abs().mean().item()
    attempted = sol.n_steps + sol.n_rejected
    assert sol.grid[-1].item() == pytest.approx(1.0) and attempted < 200
    fixed = sdekit.solve(problem, x0, 0.0, 1.0, solver="euler_maruyama", steps=2 * attempted, brownian=tree)
    fixed_error = (fixed.x - exact).abs().mean().item()
    assert error < fixed_error / 1.5, (error, fixed_error, attempted)
    # a rejected step is retried on the same path: replaying the solve gives the same result
    again = sdekit.solve(problem, x0, 0.0, 1.0, solver="adaptive_em", rtol=1e-2, atol=1e-2, brownian=tree)
    assert torch.equal(again.x, sol.x)


class OrnsteinUhlenbeck(sdekit.SDE):
    """dx = -theta x dt + sigma dW, stationary law N(0, sigma^2 / (2 theta)), with its exact score."""

    noise_type = "additive"

    def __init__(self, theta=1.0, sigma=math.sqrt(2.0), still=False):
        self.theta, self.sigma, self.still = theta, sigma, still
        self.variance = sigma**2 / (2 * theta)

    def drift(self, t, x):
        return torch.zeros_like(x) if self.still else -self.theta * x

    def diffusion(self, t, x):
        return torch.full_like(x, 0.0 if self.still else self.sigma)

    def score(self, t, x):
        return -x / self.variance


def test_pc_keeps_ornstein_uhlenbeck_stationary():
    """Started at the stationary law, predictor (Euler-Maruyama, bias ~ theta h / 2 = 1.6 %) plus
    corrector (snr 0.1: unadjusted-Langevin bias ~ snr^2 = 1 %) stays there."""
    problem = OrnsteinUhlenbeck()
    generator = torch.Generator().manual_seed(5)
    x0 = torch.randn(1024, 16, generator=generator, dtype=DTYPE) * math.sqrt(problem.variance)
    x = sdekit.solve(problem, x0, 0.0, 1.0, solver="pc", steps=32, generator=generator, snr=0.1).x
    n = x.numel()
    assert abs(x.mean().item()) < 4 * math.sqrt(problem.variance / n)
    assert abs(x.var().item() / problem.variance - 1) < 0.026 + 4 * math.sqrt(2 / n)


def test_pc_corrector_alone_reaches_target():
    """With a still predictor (zero drift and diffusion) the Langevin corrector alone moves N(3, 1/4)
    to the score's law N(0, 1), up to the unadjusted-Langevin bias: the stationary variance v of
    x <- (1 - eps) x + sqrt(2 eps) z is 1 / (1 - eps / 2), and the snr rule gives eps = 2 snr^2 / v,
    so v = 1 + snr^2."""
    problem = OrnsteinUhlenbeck(still=True)
    generator = torch.Generator().manual_seed(6)
    x0 = 3 + 0.5 * torch.randn(1024, 16, generator=generator, dtype=DTYPE)
    solver = sdekit.solvers.get("pc", n_corrector_steps=8, generator=generator)
    x = sdekit.solve(problem, x0, 0.0, 1.0, solver=solver, steps=32).x
    n = x.numel()
    assert abs(x.mean().item()) < 0.03
    assert abs(x.var().item() - (1 + 0.16**2)) < 4 * math.sqrt(2 / n)


def test_refusals_name_an_alternative():
    class General(sdekit.SDE):
        noise_type, brownian_size = "general", 3

        def drift(self, t, x):
            return x

        def diffusion(self, t, x):
            return x[..., None].expand(*x.shape, 3)

    x0 = torch.ones(4, 2, dtype=DTYPE)
    with pytest.raises(sdekit.SolverError, match="euler_maruyama"):
        sdekit.solve(General(), x0, 0.0, 1.0, solver="milstein", steps=4)
    with pytest.raises(sdekit.SolverError, match="milstein"):
        sdekit.solve(GeometricBrownianMotion(), x0, 0.0, 1.0, solver="sra1", steps=4)
    with pytest.raises(sdekit.SolverError, match="score"):
        sdekit.solve(AdditiveLinear(), x0, 0.0, 1.0, solver="pc", steps=4)
    with pytest.raises(sdekit.SolverError, match="euler_maruyama"):
        sdekit.solve(General(), x0, 0.0, 1.0, solver="adaptive_em", rtol=1e-3, atol=1e-3)


def test_backward_integration_milstein_and_sra1():
    """t1 < t0: solve flips time and the solvers step forward in s = -t; their orders hold for the
    reverse-time scheme too (against SRA1 with 2^11 steps on the same path)."""
    problem = AdditiveNonlinear()
    x0 = torch.full((8, 2), 0.3, dtype=DTYPE)
    tree = brownian_tree(x0.shape, seed=7)
    reference = sdekit.solve(problem, x0, 1.0, 0.0, solver="sra1", steps=2**11, brownian=tree).x
    for solver, order in [("sra1", 1.5), ("milstein", 1.0)]:
        steps = [2**k for k in range(3, 8)]
        errors = [(sdekit.solve(problem, x0, 1.0, 0.0, solver=solver, steps=n, brownian=tree).x - reference)
                  .abs().mean().item() for n in steps]
        assert_order(errors, order, steps, tolerance=0.3)


class HeterogeneousGBM(GeometricBrownianMotion):
    """Geometric Brownian motions with one volatility per sample; accepts per-sample times."""

    batched_time = True

    def __init__(self, sigmas):
        super().__init__(mu=0.5)
        self.sigmas = sigmas

    def diffusion(self, t, x):
        return self.sigmas[:, None] * x

    def exact(self, x0, t, W_t):
        return x0 * torch.exp((self.mu - 0.5 * self.sigmas[:, None] ** 2) * t + self.sigmas[:, None] * W_t)


def test_adaptive_em_per_sample_steps():
    """With batched_time, each sample keeps its own step size: the noisy samples are controlled to
    their own tolerance (not diluted by the calm ones in a batch-wide norm), forward and backward."""
    from sdekit.brownian import BrownianTree

    sigmas = torch.tensor([0.05] * 4 + [1.0] * 4, dtype=DTYPE)
    x0 = torch.ones(8, 16, dtype=DTYPE)
    tree = BrownianTree(0.0, 1.0, x0.shape, seed=8, dtype=DTYPE)
    problem = HeterogeneousGBM(sigmas)
    exact = problem.exact(x0, 1.0, tree(0.0, 1.0))
    sol = sdekit.solve(problem, x0, 0.0, 1.0, solver="adaptive_em", rtol=1e-2, atol=1e-2, brownian=tree)
    rms = ((sol.x - exact) ** 2).mean(1).sqrt() / exact.abs().mean(1)
    assert sol.n_steps > 10 and (rms < 0.05).all(), rms
    shared = type("Shared", (HeterogeneousGBM,), {"batched_time": False})(sigmas)
    shared_sol = sdekit.solve(shared, x0, 0.0, 1.0, solver="adaptive_em", rtol=1e-2, atol=1e-2, brownian=tree)
    shared_rms = ((shared_sol.x - exact) ** 2).mean(1).sqrt() / exact.abs().mean(1)
    assert rms[4:].max() <= 1.5 * shared_rms[4:].max()
    back = sdekit.solve(problem, x0, 1.0, 0.0, solver="adaptive_em", rtol=1e-2, atol=1e-2, brownian=tree)
    back_shared = sdekit.solve(shared, x0, 1.0, 0.0, solver="adaptive_em", rtol=1e-2, atol=1e-2, brownian=tree)
    assert torch.allclose(back.x, back_shared.x, rtol=0.1)
