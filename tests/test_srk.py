"""Additive-noise SRK solvers (sra3, sosra, shark, shark_t) and the step-size controller.

Strong orders are measured on one Brownian path per test (one :class:`sdekit.BrownianTree` queried
at every step size, float64); the slope of log(error) against log(step size) is asserted within
0.25 of theory. Adaptive solves use trees of the default depth (their step times are not dyadic).
"""
import math

import pytest
import torch

import sdekit
from helpers import fitted_slope
from sdekit.bench.problems import AdditiveNoise
from sdekit.controller import PIDController
from sdekit.solvers import Increment
from sdekit.solvers.additive_srk import AdditiveSRKTableau
from test_sde_solvers import AdditiveLinear, AdditiveNonlinear, assert_order, brownian_tree, strong_errors

DTYPE = torch.float64
SRK = ["sra3", "sosra", "shark", "shark_t"]


def transient(batched_time=False, dim=2):
    """dx = (1/sqrt(s+t) - x/(2(s+t))) dt + 1/sqrt(s+t) dW with s = 0.01 (time scale 0.01 at t = 0),
    exact sqrt(s+t) x_t = sqrt(s) x0 + t + W_t: sdekit.bench's Rackauckas-Nie system."""
    return AdditiveNoise(alpha=1.0, beta=(1.0,) * dim, x0=(1.0,) * dim, shift=0.01, batched_time=batched_time)


def tree_for(x0, seed, t0=0.0, t1=1.0):
    return sdekit.BrownianTree(t0, t1, tuple(x0.shape), seed=seed, dtype=DTYPE)


# -- tableaux ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SRK)
def test_tableau_consistency_and_declarations(name):
    """sum(b) = 1, A 1 = c, the error weights sum to 0, constant g gives the noise g W."""
    solver = sdekit.solvers.get(name)
    solver.tableau.check()
    row = {r["name"]: r for r in sdekit.solvers.available()}[name]
    assert row["adaptive"] and row["strong_order"] == 1.5 and row["noise_types"] == ["additive"]
    assert row["evals_per_step"] == len(solver.tableau.c) and solver.error_order == 1.0


def test_rossler_form_converts_exactly():
    """SRA3's stage 3 noise (g(t1) + g(t0)/2) I10/h and update noise g(t1) W + (g(t0) - g(t1)) I10/h,
    with I10/h = H + W/2, in the common form (diffusion times theta = (1, 0))."""
    tableau = sdekit.solvers.get("sra3").tableau
    assert tableau.theta == (1.0, 0.0)
    assert tableau.stage_h[2] == (1.0, 0.5) and tableau.stage_w[2] == (0.5, 0.25)
    assert tableau.update_w == (0.5, 0.5) and tableau.update_h == (-1.0, 1.0)
    assert tableau.b_error == pytest.approx((-5 / 6, 1 / 6, 2 / 3))
    shark = sdekit.solvers.get("shark").tableau
    assert shark.update_w == (0.5, 0.5) and shark.update_h == (1.0, -1.0)  # g0 (W/2 + H) + g1 (W/2 - H)


def test_inconsistent_tableau_is_refused():
    with pytest.raises(ValueError, match="A 1 = c"):  # A 1 = 0.75 but c = 0.5
        AdditiveSRKTableau.from_rossler(c0=(0.0, 0.5), c1=(1.0, 0.0), A0=((0, 0), (0.75, 0)), B0=((0, 0), (1.5, 0)),
                                        alpha=(1 / 3, 2 / 3), beta1=(1, 0), beta2=(-1, 1), alpha_embedded=(1, 0))


# -- strong orders -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nonlinear_reference():
    """SRA1 (an independent method) with 2^11 steps on the path of seed 2, 8x finer than the finest solve."""
    problem = AdditiveNonlinear()
    x0 = torch.full((32, 2), 0.3, dtype=DTYPE)
    tree = brownian_tree(x0.shape, seed=2)
    return problem, x0, tree, sdekit.solve(problem, x0, 0.0, 1.0, solver="sra1", steps=2**11, brownian=tree).x


@pytest.mark.parametrize("name", SRK)
def test_strong_order_additive_nonlinear(name, nonlinear_reference):
    """dx = (sin 2x + cos t) dt + (1 + sin(3t)/2) dW: strong order 1.5 (the error term of iterated
    integrals I_(1,1,0) that no two- or three-stage method captures limits it to 1.5)."""
    problem, x0, tree, reference = nonlinear_reference
    steps = [2**k for k in range(3, 9)]
    errors = [(sdekit.solve(problem, x0, 0.0, 1.0, solver=name, steps=n, brownian=tree).x - reference)
              .abs().mean().item() for n in steps]
    assert_order(errors, 1.5, steps)


@pytest.mark.parametrize("name", SRK)
def test_strong_order_exact_linear(name):
    """Rackauckas & Nie's problem against its exact solution: at least 1.5 (2 is seen: the solution
    depends on W_1 alone and the drift is linear, as for SRA1 in test_sde_solvers)."""
    problem = AdditiveLinear()
    x0 = torch.full((32, 2), 1.0, dtype=DTYPE)
    slope = fitted_slope([1.0 / n for n in [2**k for k in range(4, 10)]],
                         strong_errors(problem, name, x0, brownian_tree(x0.shape)))
    assert 1.5 - 0.25 <= slope <= 2.25, slope


@pytest.mark.parametrize("name", SRK)
def test_strong_order_backward(name):
    """t1 < t0: the reverse-time scheme keeps order 1.5 (against SRA1 with 2^11 steps on the path)."""
    problem = AdditiveNonlinear()
    x0 = torch.full((8, 2), 0.3, dtype=DTYPE)
    tree = brownian_tree(x0.shape, seed=7)
    reference = sdekit.solve(problem, x0, 1.0, 0.0, solver="sra1", steps=2**11, brownian=tree).x
    steps = [2**k for k in range(3, 8)]
    errors = [(sdekit.solve(problem, x0, 1.0, 0.0, solver=name, steps=n, brownian=tree).x - reference)
              .abs().mean().item() for n in steps]
    assert_order(errors, 1.5, steps, tolerance=0.3)


def test_refuses_other_noise_types():
    from test_sde_solvers import GeometricBrownianMotion

    with pytest.raises(sdekit.SolverError, match="milstein"):
        sdekit.solve(GeometricBrownianMotion(), torch.ones(4, 2, dtype=DTYPE), 0.0, 1.0, solver="shark",
                     rtol=1e-3, atol=1e-3)


# -- adaptive ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SRK)
def test_adaptive_meets_tolerance_with_fewer_steps_than_a_fixed_grid(name):
    """On the transient problem (time scale 0.01 at t = 0) at rtol = atol = 1e-3 the adaptive error
    is below the tolerance, and a uniform grid of as many steps as the adaptive solve attempted
    (so at least its drift evaluations) is at least 5x less accurate."""
    bench = transient()
    x0 = bench.initial(16, dtype=DTYPE)
    tree = tree_for(x0, seed=3)
    exact = bench.exact(1.0, tree, x0)
    sol = sdekit.solve(bench.problem, x0, 0.0, 1.0, solver=name, rtol=1e-3, atol=1e-3, brownian=tree)
    error = (sol.x - exact).abs().mean().item()
    attempted = sol.n_steps + sol.n_rejected
    assert sol.grid[-1].item() == pytest.approx(1.0) and sol.n_steps == len(sol.grid) - 1
    assert error < 1e-3, error
    fixed = sdekit.solve(bench.problem, x0, 0.0, 1.0, solver=name, steps=attempted, brownian=tree)
    assert fixed.nfe == sol.nfe - 2  # the controller's initial step: f(t0, x0) and one trial drift
    assert (fixed.x - exact).abs().mean().item() > 5 * error, ((fixed.x - exact).abs().mean().item(), error)


@pytest.mark.parametrize("name", SRK)
def test_rejected_steps_stay_on_the_path(name):
    """A first step of 0.5 is rejected several times and each retry is a bridge of the same path: the
    solution still converges to the exact solution on that path as the tolerance shrinks (redrawn
    noise would leave an O(1) error), and replaying the solve is bit-exact."""
    bench = transient()
    x0 = bench.initial(8, dtype=DTYPE)
    tree = tree_for(x0, seed=5)
    exact = bench.exact(1.0, tree, x0)
    errors = []
    for tol in (1e-1, 1e-3):
        sol = sdekit.solve(bench.problem, x0, 0.0, 1.0, solver=name, rtol=tol, atol=tol, brownian=tree, dt0=0.5)
        assert sol.n_rejected >= 3
        errors.append((sol.x - exact).abs().mean().item())
    assert errors[1] < errors[0] / 20 and errors[1] < 1e-3, errors
    again = sdekit.solve(bench.problem, x0, 0.0, 1.0, solver=name, rtol=1e-3, atol=1e-3, brownian=tree, dt0=0.5)
    assert torch.equal(again.x, sol.x)


@pytest.mark.parametrize("name", ["sra3", "shark"])
def test_per_sample_steps_equal_single_sample_solves(name):
    """With batched_time each sample keeps its own step size and controller memory: sample b of a
    per-sample solve equals a shared-step solve of sample b alone on the same path (sample_offset),
    rejections included."""
    x0 = torch.linspace(0.5, 1.5, 8, dtype=DTYPE).reshape(4, 2)
    tree = tree_for(x0, seed=6)
    options = dict(rtol=1e-2, atol=1e-2, dt0=0.5)
    per_sample = sdekit.solve(transient(batched_time=True).problem, x0, 0.0, 1.0, solver=name, brownian=tree,
                              **options)
    rejected = []
    for b in range(x0.shape[0]):
        alone_tree = sdekit.BrownianTree(0.0, 1.0, (1, 2), seed=6, dtype=DTYPE, sample_offset=b)
        alone = sdekit.solve(transient().problem, x0[b:b + 1], 0.0, 1.0, solver=name, brownian=alone_tree,
                             **options)
        assert torch.allclose(alone.x, per_sample.x[b:b + 1], rtol=1e-12, atol=1e-12), b
        rejected.append(alone.n_rejected)
    assert min(rejected) > 0 and per_sample.n_rejected == max(rejected)


def test_per_sample_steps_false_takes_one_step_for_the_batch():
    """per_sample_steps=False on a batched_time problem runs the shared-step loop: the very solve of
    the same problem without batched_time (bit for bit), on one grid for the batch."""
    x0 = torch.linspace(0.5, 1.5, 8, dtype=DTYPE).reshape(4, 2)
    tree = tree_for(x0, seed=6)
    options = dict(solver="shark", rtol=1e-2, atol=1e-2, brownian=tree)
    shared = sdekit.solve(transient(batched_time=True).problem, x0, 0.0, 1.0, per_sample_steps=False, **options)
    plain = sdekit.solve(transient().problem, x0, 0.0, 1.0, **options)
    assert torch.equal(shared.x, plain.x) and (shared.nfe, shared.n_steps) == (plain.nfe, plain.n_steps)
    assert shared.grid.dim() == 1
    per_sample = sdekit.solve(transient(batched_time=True).problem, x0, 0.0, 1.0, per_sample_steps=True, **options)
    assert torch.equal(per_sample.x, sdekit.solve(transient(batched_time=True).problem, x0, 0.0, 1.0, **options).x)
    assert not torch.equal(per_sample.x, shared.x)


@pytest.mark.parametrize("call, message", [
    (dict(per_sample_steps=True), "does not declare batched_time"),
    (dict(per_sample_steps=True, batched=True, save_at=[0.5]), "save_at= needs one grid"),
    (dict(per_sample_steps="yes", batched=True), "must be None, True or False"),
    (dict(per_sample_steps=False, batched=True, fixed=True), "a fixed grid"),
])
def test_per_sample_steps_refuses_what_it_cannot_do(call, message):
    x0 = torch.ones(4, 2, dtype=DTYPE)
    bench = transient(batched_time=call.pop("batched", False))
    grid = dict(steps=8) if call.pop("fixed", False) else dict(rtol=1e-2, atol=1e-2)
    with pytest.raises((ValueError, TypeError), match=message):
        sdekit.solve(bench.problem, x0, 0.0, 1.0, solver="shark", brownian=tree_for(x0, 1), **grid, **call)


@pytest.mark.parametrize("batched_time", [False, True])
def test_adaptive_backward_returns_to_x0(batched_time):
    """Additive noise makes the pathwise solution reversible: from the exact x(1) backwards to t = 0
    on the same path gives x0 back (to the tolerance, through the stiffening clock 0.01 + t)."""
    bench = transient(batched_time=batched_time)
    x0 = bench.initial(4, dtype=DTYPE)
    tree = tree_for(x0, seed=9)
    x1 = bench.exact(1.0, tree, x0)
    sol = sdekit.solve(bench.problem, x1, 1.0, 0.0, solver="sosra", rtol=1e-4, atol=1e-4, brownian=tree)
    assert (sol.x - x0).abs().max().item() < 1e-2


@pytest.mark.parametrize("batched_time", [False, True])
def test_solve_takes_a_controller(batched_time):
    """controller= replaces the one solve builds from rtol/atol: the same settings give the same
    solve to the bit on either loop (its per_sample set by the loop, the caller's object left as it
    was), other coefficients other steps."""
    bench = transient(batched_time=batched_time)
    x0 = bench.initial(4, dtype=DTYPE)
    tree = tree_for(x0, seed=11)
    built = sdekit.solve(bench.problem, x0, 0.0, 1.0, solver="shark", rtol=1e-2, atol=1e-3, brownian=tree)
    controller = sdekit.PIDController(1e-2, 1e-3, error_order=1.0, per_sample=not batched_time)
    given = sdekit.solve(bench.problem, x0, 0.0, 1.0, solver="shark", controller=controller, brownian=tree)
    assert torch.equal(given.x, built.x) and (given.nfe, given.n_steps) == (built.nfe, built.n_steps)
    assert controller.per_sample is not batched_time
    i_controller = sdekit.PIDController(1e-2, 1e-3, error_order=1.0, pcoeff=0.0, icoeff=1.0, factor_max=1.125)
    other = sdekit.solve(bench.problem, x0, 0.0, 1.0, solver="shark", controller=i_controller, brownian=tree)
    assert other.n_steps != built.n_steps


def test_solve_refuses_a_controller_it_cannot_use():
    bench = transient()
    x0 = bench.initial(2, dtype=DTYPE)
    controller = sdekit.PIDController(1e-2, 1e-2, error_order=1.0)
    run = dict(problem=bench.problem, x0=x0, t0=0.0, t1=1.0)
    with pytest.raises(ValueError, match="controller= or rtol=/atol=, not both"):
        sdekit.solve(**run, solver="shark", controller=controller, atol=1e-3)
    with pytest.raises(TypeError, match="must be a sdekit.PIDController"):
        sdekit.solve(**run, solver="shark", controller={"rtol": 1e-2})
    with pytest.raises(ValueError, match="error_order=4.0 but solver 'shark' declares error_order=1.0"):
        sdekit.solve(**run, solver="shark", controller=sdekit.PIDController(1e-2, 1e-2, error_order=4.0))
    with pytest.raises(ValueError, match="takes fixed steps"):
        sdekit.solve(**run, solver="sra1", controller=controller)
    with pytest.raises(ValueError, match="not both"):
        sdekit.solve(**run, solver="shark", controller=controller, steps=10)


# -- solver state through the adaptive loops -------------------------------------------------------

class CachedDriftHeun(sdekit.solvers.Solver):
    """adaptive_em's additive-noise pair with f(t0, x0) carried in the state (first same as last):
    its results equal adaptive_em's exactly when the loop keeps each sample's state at its step's
    start after a rejection."""

    name, kind, adaptive, error_order = "cached_drift_heun", "sde", True, 0.5
    noise_types = ("additive",)

    def init(self, problem, t0, x0):
        return problem.drift(t0, x0)

    def step(self, problem, t0, t1, x0, increment, state):
        h = increment.dt
        x_euler = x0 + state * h + problem.diffusion(t0, x0) * increment.dW
        correction = 0.5 * (problem.drift(t1, x_euler) - state) * h
        x1 = x_euler + correction
        return x1, correction, problem.drift(t1, x1)


class LabelledSRA3(sdekit.solvers.sra3.SRA3):
    """SRA3 with a state that is not f(t0, x0) (a constant label, carried along unused)."""

    def init(self, problem, t0, x0):
        return torch.full_like(x0, 123.0)

    def step(self, problem, t0, t1, x0, increment, state):
        return (*super().step(problem, t0, t1, x0, increment, None)[:2], state)


def test_per_sample_loop_keeps_the_state_of_rejected_samples():
    x0 = torch.linspace(0.5, 1.5, 8, dtype=DTYPE).reshape(4, 2)
    problem = transient(batched_time=True).problem
    tree = tree_for(x0, seed=10)
    options = dict(rtol=1e-2, atol=1e-2, brownian=tree, dt0=0.5)
    reference = sdekit.solve(problem, x0, 0.0, 1.0, solver="adaptive_em", **options)
    cached = sdekit.solve(problem, x0, 0.0, 1.0, solver=CachedDriftHeun(), **options)
    assert reference.n_rejected > 0
    assert torch.allclose(cached.x, reference.x, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("batched_time", [False, True])
def test_initial_step_does_not_read_the_solver_state_as_a_derivative(batched_time):
    x0 = torch.ones(4, 2, dtype=DTYPE)
    problem = transient(batched_time=batched_time).problem
    tree = tree_for(x0, seed=11)
    plain = sdekit.solve(problem, x0, 0.0, 1.0, solver="sra3", rtol=1e-3, atol=1e-3, brownian=tree)
    labelled = sdekit.solve(problem, x0, 0.0, 1.0, solver=LabelledSRA3(), rtol=1e-3, atol=1e-3, brownian=tree)
    assert torch.equal(plain.x, labelled.x) and plain.n_steps == labelled.n_steps


# -- a solve that cannot make progress raises at once --------------------------------------------

class NaNDrift(sdekit.SDE):
    """Additive noise whose drift is NaN from ``t_bad`` on."""

    noise_type = "additive"

    def __init__(self, t_bad=0.0, batched_time=False):
        self.t_bad, self.batched_time = t_bad, batched_time

    def drift(self, t, x):
        bad = (t >= self.t_bad).reshape(-1, *([1] * (x.dim() - 1))) if t.dim() else t >= self.t_bad
        return torch.where(bad, torch.full_like(x, float("nan")), -x)

    def diffusion(self, t, x):
        return torch.ones_like(x)


class NaNDecay(sdekit.ODE):
    def drift(self, t, x):
        return torch.where(t > 0.5, torch.full_like(x, float("nan")), -x)


CASES = {  # problem, solver, options, the time the message must name
    "nan drift at t0": (NaNDrift(), "sra3", {}, r"t=0\b"),
    "nan drift at t0, per sample": (NaNDrift(batched_time=True), "shark", {}, r"t=0 \(sample 0\)"),
    "rtol=nan": (NaNDrift(t_bad=2.0), "sra3", {"rtol": float("nan")}, r"t=0\b.*rtol=nan"),
    "dt0=0": (NaNDrift(t_bad=2.0), "sra3", {"dt0": 0.0}, r"step size is 0 at t=0\b"),
    "dt0=0, per sample": (NaNDrift(t_bad=2.0, batched_time=True), "sra3", {"dt0": 0.0}, r"t=0 \(sample 0\)"),
    # from t = 0.5 on every step is rejected: the accepted steps approach 0.5 until the step collapses
    "nan drift from t=0.5": (NaNDrift(t_bad=0.5), "shark", {"dt0": 0.1}, r"t=0\.5"),
    "ode: nan drift from t=0.5": (NaNDecay(), "dopri5", {}, r"t=0\.5"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_stalled_adaptive_solve_raises_at_once(case):
    """NonFiniteError naming the time, long before max_steps: at once for a NaN first step (NaN
    drift at t0, rtol=nan) or a zero one (dt0=0); within a few hundred attempts (the step shrinks
    by factor_min = 0.2 per rejection) when every step beyond t = 0.5 fails."""
    problem, solver, options, message = CASES[case]
    options = {"rtol": 1e-3, "atol": 1e-3, **options}
    max_steps = 400 if "0.5" in case else 3
    with pytest.raises(sdekit.NonFiniteError, match=message):
        sdekit.solve(problem, torch.ones(4, 2, dtype=DTYPE), 0.0, 1.0, solver=solver, max_steps=max_steps, **options)


# -- the controller ----------------------------------------------------------------------------

def test_controller_accepts_and_rejects_per_sample():
    controller = PIDController(1e-3, 1e-3, error_order=1.0, per_sample=True)
    zero, one = torch.zeros(4, dtype=DTYPE), torch.ones(4, dtype=DTYPE)
    h, state = controller.init(zero, one, torch.ones(4, 2, dtype=DTYPE), dt0=0.1)
    assert h.tolist() == [0.1] * 4 and state.previous.tolist() == [1.0] * 4
    ratio = torch.tensor([0.5, 2.0, float("nan"), 0.0], dtype=DTYPE)
    accept, h_next, state = controller.adapt_step_size(h, ratio, state)
    assert accept.tolist() == [True, False, False, True]
    k = controller.error_order + 1
    assert h_next[0].item() == pytest.approx(0.1 * 0.9 * 0.5 ** (-0.7 / k))  # PI: r_n^(-0.7/k) r_(n-1)^(0.4/k)
    assert h_next[1].item() == pytest.approx(0.1 * 0.9 * 2.0 ** (-0.7 / k))   # rejected: shrinks
    assert h_next[2].item() == pytest.approx(0.1 * 0.2)                        # non-finite: factor_min
    assert h_next[3].item() == pytest.approx(0.1 * 10.0)                       # zero error: factor_max
    assert state.previous.tolist() == pytest.approx([0.5, 1.0, 1.0, 1e-10])  # rejected ones keep memory
    accept, h_after, _ = controller.adapt_step_size(h, torch.full((4,), 0.5, dtype=DTYPE), state)
    assert accept.all()
    assert h_after[0].item() == pytest.approx(0.1 * 0.9 * 0.5 ** (-0.7 / k) * 0.5 ** (0.4 / k))
    # no growth right after a rejection
    assert h_after[1].item() == pytest.approx(0.1) and h_after[2].item() == pytest.approx(0.1)


def test_controller_coefficients_and_validation():
    i_controller = PIDController(1e-3, 1e-3, error_order=4.0, pcoeff=0.0, icoeff=1.0)
    h, state = i_controller.init(torch.tensor(0.0, dtype=DTYPE), torch.tensor(2.0, dtype=DTYPE),
                                 torch.ones(1, dtype=DTYPE), dt0=1.0)
    _, h_next, _ = i_controller.adapt_step_size(h, torch.tensor(1e-5, dtype=DTYPE), state)
    assert h_next.item() == pytest.approx(0.9 * 1e-5 ** (-1 / 5))
    with pytest.raises(ValueError, match="not both zero"):
        PIDController(0.0, 0.0, error_order=1.0)
    with pytest.raises(ValueError, match="error_order"):
        PIDController(1e-3, 1e-3, error_order=None)
    with pytest.raises(ValueError, match="dt0= or the drift="):
        i_controller.init(h, h, h)


def test_controller_expresses_the_gotta_go_fast_rule():
    """Jolicoeur-Martineau et al. (2021): h <- theta h E^-r after every attempt, no clipping, no cap
    after a rejection, mixed tolerance max(atol, rtol max(|x0|, |x1|)); as an I controller."""
    theta, r, inf = 0.9, 0.9, float("inf")
    controller = PIDController(0.05, 0.0078, error_order=1.0, pcoeff=0.0, icoeff=2 * r, dcoeff=0.0,
                               safety=theta, factor_min=0.0, factor_max=inf, factor_after_reject=inf,
                               combine="max", per_sample=True)
    h, state = controller.init(torch.zeros(5, dtype=DTYPE), torch.ones(5, dtype=DTYPE),
                               torch.ones(5, 2, dtype=DTYPE), dt0=0.01)
    ratio = torch.tensor([1e-6, 0.5, 3.0, 1e3, float("inf")], dtype=DTYPE)
    accept, h_next, state = controller.adapt_step_size(h, ratio, state)
    assert accept.tolist() == [True, True, False, False, False]
    expected = (0.01 * theta * ratio[:4] ** -r).tolist() + [0.0]   # E = inf: the limit, h = 0
    assert h_next.tolist() == pytest.approx(expected, rel=1e-14)
    assert h_next[0].item() > 0.01 * 1e4                            # no factor_max (10 by default)
    # the step right after a rejection grows freely (Hairer's rule would cap it at 1)
    _, h_after, _ = controller.adapt_step_size(h_next, torch.full((5,), 1e-3, dtype=DTYPE), state)
    assert h_after[2].item() == pytest.approx(h_next[2].item() * theta * 1e-3 ** -r, rel=1e-14)
    assert bool(PIDController.stalled(torch.zeros(1, dtype=DTYPE), h_after[4:], 1.0))
    x0 = torch.tensor([[0.01, 1.0]], dtype=DTYPE)
    x1 = torch.tensor([[0.02, -3.0]], dtype=DTYPE)
    error = torch.tensor([[0.001, 0.1]], dtype=DTYPE)
    scale = torch.tensor([0.0078, 0.05 * 3.0], dtype=DTYPE)            # max(atol, rtol max|x|)
    single = PIDController(0.05, 0.0078, 1.0, combine="max", per_sample=True)
    assert single.error_ratio(error, x0, x1).item() == pytest.approx(
        (error[0] / scale).pow(2).mean().sqrt().item(), rel=1e-14)
    summed = PIDController(0.05, 0.0078, 1.0, per_sample=True)        # the default: atol + rtol|x|
    assert summed.error_ratio(error, x0, x1).item() == pytest.approx(
        (error[0] / (0.0078 + 0.05 * torch.tensor([0.02, 3.0], dtype=DTYPE))).pow(2).mean().sqrt().item(),
        rel=1e-14)
    with pytest.raises(ValueError, match="factor_after_reject"):
        PIDController(1e-3, 1e-3, 1.0, factor_after_reject=0.5)
    with pytest.raises(ValueError, match="combine"):
        PIDController(1e-3, 1e-3, 1.0, combine="min")
    with pytest.raises(ValueError, match="factor_min"):
        PIDController(1e-3, 1e-3, 1.0, factor_min=-0.1)


def test_controller_initial_step_per_sample_equals_shared():
    """Hairer-Norsett-Wanner's initial step per sample is the shared one of each sample alone, and
    is bounded by the noise for an SDE."""
    bench = transient()
    x0 = torch.tensor([[1.0, 2.0], [0.1, -3.0], [5.0, 5.0]], dtype=DTYPE)
    t0, t1 = torch.tensor(0.0, dtype=DTYPE), torch.tensor(1.0, dtype=DTYPE)
    per_sample = PIDController(1e-3, 1e-4, error_order=1.0, per_sample=True)
    h, state = per_sample.init(t0.expand(3), t1.expand(3), x0, drift=bench.problem.drift)
    assert h.shape == (3,) and state.previous.tolist() == [1.0] * 3
    shared = PIDController(1e-3, 1e-4, error_order=1.0)
    for b in range(3):
        alone, _ = shared.init(t0, t1, x0[b:b + 1], drift=bench.problem.drift)
        assert h[b].item() == pytest.approx(alone.item(), rel=1e-12)
    noisy, _ = shared.init(t0, t1, x0, drift=bench.problem.drift, diffusion=lambda t, x: 100 * torch.ones_like(x))
    quiet, _ = shared.init(t0, t1, x0, drift=bench.problem.drift)
    assert noisy.item() < quiet.item()
    fixed, _ = shared.init(t0, t1, x0, dt0=5.0)
    assert fixed.item() == 1.0  # at most the span


def test_stalled():
    t = torch.tensor([0.0, 0.5, 1e6], dtype=DTYPE)
    h = torch.tensor([1e-12, float("nan"), 1e-9], dtype=DTYPE)
    assert PIDController.stalled(t, h, 1.0).tolist() == [False, True, True]
    assert not bool(PIDController.stalled(torch.tensor(0.0), torch.tensor(1e-5), 1.0))
    assert bool(PIDController.stalled(torch.tensor(0.0), torch.tensor(0.0), 1.0))


# -- the benchmark script ----------------------------------------------------------------------

def test_adaptive_srk_benchmark_script(tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "adaptive_srk.py"
    spec = importlib.util.spec_from_file_location("_bench_adaptive_srk", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    # interpolation on a curve error = 1/NFE, and extrapolation beyond it
    assert script.nfe_for_error([(10, 0.1), (100, 0.01)], 0.03) == (pytest.approx(1 / 0.03), False)
    assert script.nfe_for_error([(10, 0.1), (100, 0.01)], 0.001) == (pytest.approx(1000.0), True)
    out = tmp_path / "srk.json"
    assert script.main(["--samples", "8", "--rtol", "1e-1,1e-2", "--em-steps", "16,64", "--sra1-steps", "8,32",
                        "--solvers", "shark", "--json", str(out)]) == 0
    assert "shark" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    adaptive = [r for r in rows if r["solver"] == "shark"]
    assert len(adaptive) == 2 and all(r["nfe_ratio"]["euler_maruyama"] > 1 for r in adaptive)
    assert {r["solver"] for r in rows} == {"euler_maruyama", "sra1", "shark"}


# -- shark_t: stage diffusions for a time-dependent g -------------------------------------------

class LinearTimeNoise(sdekit.SDE):
    """dx = -lam x dt + g(t) dW with g(t) = 1 + 10 t."""

    noise_type = "additive"

    def __init__(self, lam: float):
        self.lam = lam

    def drift(self, t, x):
        return -self.lam * x

    def diffusion(self, t, x):
        return (1.0 + 10.0 * t).expand_as(x)


def noise_components(name, problem, t0, h):
    """The coefficients of W and H in one step of ``name`` from x0 = 0 (the scheme is linear)."""
    solver = sdekit.solvers.get(name)
    t0, t1 = torch.tensor(t0, dtype=DTYPE), torch.tensor(t0 + h, dtype=DTYPE)
    one, zero = torch.ones(1, 1, dtype=DTYPE), torch.zeros(1, 1, dtype=DTYPE)
    step = lambda W, H: solver.step(problem, t0, t1, zero, Increment(t1 - t0, W, H), None)[0].item()  # noqa: E731
    return step(one, zero), step(zero, one)


def exact_components(problem, t0, h):
    """Projections of the exact noise int_0^h exp(-lam (h - r)) g(t0 + r) dW_r on W and on H =
    int (1/2 - r/h) dW (variances h and h/12)."""
    from scipy.integrate import quad
    kernel = lambda r: math.exp(-problem.lam * (h - r)) * (1.0 + 10.0 * (t0 + r))  # noqa: E731
    on_w = quad(kernel, 0.0, h, epsabs=1e-15, epsrel=1e-13)[0] / h
    on_h = quad(lambda r: kernel(r) * (0.5 - r / h), 0.0, h, epsabs=1e-15, epsrel=1e-13)[0] * 12.0 / h
    return on_w, on_h


def test_shark_t_gets_the_noise_of_a_step_with_time_dependent_g():
    """The W component of a step's noise: ShARK (stage diffusions at t0) misses -lam g' h^2 / 6
    and lam^2 g0 h^2 / 6 of the exact one, shark_t only the second (the ShARKT docstring); both get
    the H component to O(h^3)."""
    lam, g_prime, t0 = 1.0, 10.0, 0.3     # lam g' = 10 against lam^2 g0 = 4: both terms show
    problem = LinearTimeNoise(lam)
    g0 = 1.0 + g_prime * t0
    steps = (0.04, 0.02, 0.01)
    h_errors = {"shark": [], "shark_t": []}
    for h in steps:
        exact_w, exact_h = exact_components(problem, t0, h)
        shark_w, shark_h = noise_components("shark", problem, t0, h)
        t_w, t_h = noise_components("shark_t", problem, t0, h)
        assert shark_w - exact_w == pytest.approx((lam * g_prime - lam ** 2 * g0) * h ** 2 / 6, rel=0.1)
        assert t_w - exact_w == pytest.approx(-lam ** 2 * g0 * h ** 2 / 6, rel=0.1)
        h_errors["shark"].append(abs(shark_h - exact_h))
        h_errors["shark_t"].append(abs(t_h - exact_h))
    for name, errors in h_errors.items():
        assert fitted_slope(list(steps), errors) > 2.7, (name, errors)
