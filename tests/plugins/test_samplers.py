"""Diffusion samplers (``skd.sample``) and time grids, on Gaussian-mixture data with an exact score.

Deterministic samplers are checked for their convergence order against a tight dopri5 solution
of the same probability-flow ODE; stochastic ones for a distribution error that falls with the
step count; every sampler for an exact NFE count, batch-size-independent samples and clear errors.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sdekit
import sdekit_diffusion as skd
from sdekit_diffusion.samplers import available

T_MIN = 0.02   # order tests stop here: the asymptotic regime is reached with few steps
MIXTURE = dict(weights=[0.3, 0.7], means=[[-1.0, 0.5], [1.5, 0.0]], stds=[0.5, 0.65])


def custom_sde():
    """A marginal that is neither VP nor VE: alpha = 1 - t, sigma = t (a linear interpolant)."""
    return skd.DiffusionSDE.from_marginal(lambda t: 1 - t, lambda t: t, t_min=0.01, t_max=0.99)


SDES = {
    "vp": lambda: skd.VPSDE(),
    "ve": lambda: skd.VESDE(sigma_min=0.01, sigma_max=20.0),
    "subvp": lambda: skd.SubVPSDE(),
    "custom": custom_sde,
}


def mixture():
    return skd.GaussianMixture(MIXTURE["weights"], torch.tensor(MIXTURE["means"]), MIXTURE["stds"])


_REFERENCES: dict = {}


def reference(sde_name: str):
    """(sde, score, x_T, x at T_MIN by dopri5 at rtol = atol = 1e-10), cached per SDE."""
    if sde_name not in _REFERENCES:
        sde = SDES[sde_name]()
        score = mixture().score_fn(sde)
        x_T = sde.prior_std * torch.randn(16, 2, generator=torch.Generator().manual_seed(0),
                                          dtype=torch.float64)
        exact = skd.sample(sde, score, x_T=x_T, solver="dopri5", rtol=1e-10, atol=1e-10,
                           t_min=T_MIN).x
        _REFERENCES[sde_name] = (sde, score, x_T, exact)
    return _REFERENCES[sde_name]


def slope(steps, errors) -> float:
    """Least-squares slope of -log(error) against log(steps)."""
    return -float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


# -- convergence orders ------------------------------------------------------------------------

ORDER_CASES = [
    # (sde, sampler, steps, order); logsnr grid (DPM-Solver's recommendation)
    ("vp", "ddim", (16, 32, 64), 1),
    ("vp", "dpm_solver_2", (8, 16, 32), 2),
    ("vp", "dpm_solver_3", (8, 16, 32), 3),
    ("vp", "dpm_solver++_2m", (16, 32, 64), 2),
    ("vp", "dpm_solver++_3m", (32, 64, 128), 3),
    ("vp", "edm_heun", (16, 32, 64), 2),
    ("ve", "ddim", (16, 32, 64), 1),
    ("ve", "dpm_solver_3", (8, 16, 32), 3),
    ("ve", "dpm_solver++_2m", (16, 32, 64), 2),
    ("ve", "edm_heun", (16, 32, 64), 2),
    ("custom", "dpm_solver_2", (8, 16, 32), 2),
    ("custom", "dpm_solver++_3m", (32, 64, 128), 3),
    ("custom", "edm_heun", (16, 32, 64), 2),
]


@pytest.mark.parametrize("sde_name,solver,steps,order", ORDER_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in ORDER_CASES])
def test_deterministic_order(sde_name, solver, steps, order):
    sde, score, x_T, exact = reference(sde_name)
    errors = [(skd.sample(sde, score, x_T=x_T, solver=solver, steps=n, time_grid="logsnr",
                          t_min=T_MIN).x - exact).abs().max().item() for n in steps]
    assert errors[-1] < errors[0]
    measured = slope(steps, errors)
    assert abs(measured - order) <= 0.3, (solver, sde_name, errors, measured)


@pytest.mark.parametrize("solver,order", [("heun", 2), ("rk4", 4)])
def test_core_ode_solver_order_on_probability_flow(solver, order):
    sde, score, x_T, exact = reference("vp")
    steps = (32, 64, 128) if order == 2 else (16, 32, 64)
    errors = [(skd.sample(sde, score, x_T=x_T, solver=solver, steps=n, time_grid="logsnr",
                          t_min=T_MIN).x - exact).abs().max().item() for n in steps]
    assert abs(slope(steps, errors) - order) <= 0.3, errors


def test_torchdiffeq_backend_matches_core_dopri5():
    pytest.importorskip("torchdiffeq")
    sde, score, x_T, exact = reference("vp")
    solution = skd.sample(sde, score, x_T=x_T, solver="dopri5", backend="torchdiffeq", rtol=1e-8,
                          atol=1e-8, t_min=T_MIN)
    assert torch.allclose(solution.x, exact, atol=1e-5)
    assert solution.nfe > 0


# -- stochastic samplers: distribution error falls with steps ----------------------------------

# 64 dimensions: the Langevin corrector's snr rule (per-sample norms) concentrates, as on images;
# in a few dimensions it is biased (see its docs), as is adaptive_sde with noise="fresh" (the test
# of its default Brownian-path noise below is in 2 dimensions)
GAUSSIAN_MEAN, GAUSSIAN_STD, DIMS = 1.0, 0.5, 64


def gaussian_error(sde, solver, steps, n=1000, **options):
    """Max abs error of the per-coordinate mean and variance at t_min vs the exact marginal
    N(alpha mu, alpha^2 s^2 + sigma^2) of Gaussian data (DIMS coordinates pooled)."""
    data = skd.GaussianMixture.gaussian(torch.full((DIMS,), GAUSSIAN_MEAN), GAUSSIAN_STD)
    kwargs = {} if steps is None else {"steps": steps}
    x = skd.sample(sde, data.score_fn(sde), (n, DIMS), solver=solver, seed=1, **kwargs,
                   **options).x
    t = torch.tensor(sde.t_min)
    alpha, sigma = sde.alpha(t).item(), sde.sigma(t).item()
    mean, var = alpha * GAUSSIAN_MEAN, alpha ** 2 * GAUSSIAN_STD ** 2 + sigma ** 2
    return max(abs(x.mean().item() - mean), abs(x.var(0).mean().item() - var))


STOCHASTIC_CASES = [
    ("vp", "euler_maruyama", {}),
    ("vp", "reverse_diffusion", {}),
    ("vp", "ancestral", {}),
    ("ve", "ancestral", {}),
    ("vp", "ddim", {"eta": 1.0}),
    ("vp", "pc", {"corrector": "langevin"}),
    ("subvp", "pc", {"corrector": "langevin"}),
    ("vp", "pc", {"corrector": "ald", "predictor": "ancestral"}),
    ("ve", "pc", {"corrector": "ald"}),
    ("vp", "pc", {"predictor": "euler_maruyama", "corrector": "none"}),
    ("vp", "sra1", {}),
    ("vp", "edm_heun", {"S_churn": 10.0}),
]


@pytest.mark.parametrize("sde_name,solver,options", STOCHASTIC_CASES,
                         ids=[f"{c[0]}-{c[1]}-{'-'.join(map(str, c[2].values()))}"
                              for c in STOCHASTIC_CASES])
def test_stochastic_error_decreases(sde_name, solver, options):
    sde = SDES[sde_name]()
    coarse = gaussian_error(sde, solver, 5, **options)
    fine = gaussian_error(sde, solver, 80, **options)
    assert fine < coarse, (coarse, fine)
    assert fine < 0.05, (coarse, fine)


def test_adaptive_sde_error_decreases_with_tolerance():
    """128 samples of 64 coordinates (Monte Carlo standard errors 0.006 on the mean, 0.004 on the
    variance; measured 0.044 loose, 0.0015 default): the per-sample Brownian-tree queries make
    1000 samples take 25 s here."""
    sde = skd.VPSDE()
    loose = gaussian_error(sde, "adaptive_sde", None, n=128, rtol=0.5, atol=0.5)
    default = gaussian_error(sde, "adaptive_sde", None, n=128)     # the paper's tolerances
    assert default < loose and default < 0.02, (loose, default)


def test_adaptive_sde_on_a_brownian_path_has_the_exact_moments_in_two_dimensions():
    """In 2-D the error norm does not concentrate: redrawing fresh noise after a rejection (the
    paper's rule) keeps the draws that make small errors, too little noise; retrying on the same
    Brownian path (the default) removes that bias. Mean and variance of 2-D Gaussian data at t_min
    (coordinates pooled) against the exact marginal, in Monte Carlo standard errors."""
    sde, n, dims = skd.VPSDE(), 1000, 2
    data = skd.GaussianMixture.gaussian(torch.full((dims,), GAUSSIAN_MEAN), GAUSSIAN_STD)
    t = torch.tensor(sde.t_min)
    alpha, sigma = sde.alpha(t).item(), sde.sigma(t).item()
    mean, var = alpha * GAUSSIAN_MEAN, alpha ** 2 * GAUSSIAN_STD ** 2 + sigma ** 2
    mean_se, var_se = math.sqrt(var / (n * dims)), var * math.sqrt(2 / ((n - 1) * dims))

    def z_scores(**options):
        x = skd.sample(sde, data.score_fn(sde), (n, dims), solver="adaptive_sde", seed=2,
                       **options).x
        return (x.mean().item() - mean) / mean_se, (x.var(0).mean().item() - var) / var_se

    z_mean, z_var = z_scores()  # noise="path", the paper's tolerances
    assert abs(z_mean) < 4 and abs(z_var) < 4, (z_mean, z_var)
    z_mean, z_var = z_scores(noise="fresh")  # measured z = 8.0 and 8.5: the bias the path removes
    assert z_mean > 4 and z_var > 4, (z_mean, z_var)


def test_adaptive_sde_noise_options():
    sde = skd.VPSDE()
    score = mixture().score_fn(sde)
    large = skd.sample(sde, score, (5, 2), solver="adaptive_sde", seed=3, noise="fresh").x
    tail = skd.sample(sde, score, (2, 2), solver="adaptive_sde", seed=3, noise="fresh",
                      sample_offset=3).x
    assert torch.allclose(tail, large[3:], atol=1e-12)
    path = skd.sample(sde, score, (5, 2), solver="adaptive_sde", seed=3).x
    assert not torch.allclose(path, large)
    with pytest.raises(ValueError, match="noise"):
        skd.sample(sde, score, (2, 2), solver="adaptive_sde", noise="brownian")


def test_adaptive_sde_checks_t_min():
    """t_min above the start (nothing to integrate) or below the schedule is refused, not returned
    as the prior noise: by sample() and by the sampler itself on the grid [t_max, t_end] it is
    given, with the same message."""
    from sdekit_diffusion.samplers._common import Context, CountedScore, NormalStream
    from sdekit_diffusion.samplers.adaptive import adaptive_sde

    sde = skd.VPSDE()
    score = mixture().score_fn(sde)
    in_range = r"t_min=.* must lie in \[sde.t_min, sde.t_max\) = \[0.001, 1.0\)"
    bad = ((2.0, in_range), (sde.t_max, in_range), (0.1 * sde.t_min, in_range),
           (float("nan"), "t_min must be a finite number"))
    for t_min, message in bad:
        with pytest.raises(ValueError, match=message):
            skd.sample(sde, score, (2, 2), solver="adaptive_sde", seed=0, t_min=t_min)
        counted = CountedScore(score, sde)
        ctx = Context(sde, counted, NormalStream((2, 2), 0, 0, torch.float64, None), 0, 0)
        with pytest.raises(ValueError, match=message):
            adaptive_sde(ctx, torch.zeros(2, 2, dtype=torch.float64),
                         torch.tensor([sde.t_max, t_min], dtype=torch.float64))
        assert counted.calls == 0
    solution = skd.sample(sde, score, (2, 2), solver="adaptive_sde", seed=0, t_min=0.5)
    assert solution.nfe > 0 and solution.ts.tolist() == [1.0, 0.5]


def test_adaptive_sde_takes_a_brownian_tree():
    """brownian= replaces the seeded path: the default path passed explicitly gives the same
    samples, and on a given tree adaptive_sde converges to the core's solution of the reverse SDE on
    that tree (SRA1, fine grid) as the tolerances tighten."""
    from sdekit_diffusion.samplers._common import PATH_SEED_TAG

    sde = skd.VPSDE()
    score = mixture().score_fn(sde)
    x_T = sde.prior_std * torch.randn(8, 2, generator=torch.Generator().manual_seed(1),
                                      dtype=torch.float64)
    default = skd.sample(sde, score, x_T=x_T, solver="adaptive_sde", seed=7)
    same = sdekit.BrownianTree(sde.t_min, sde.t_max, (8, 2), seed=7 + (PATH_SEED_TAG << 64),
                               dtype=torch.float64)
    given = skd.sample(sde, score, x_T=x_T, solver="adaptive_sde", seed=7, brownian=same)
    assert torch.equal(given.x, default.x) and given.nfe == default.nfe
    tree = sdekit.BrownianTree(sde.t_min, sde.t_max, (8, 2), seed=11, dtype=torch.float64)
    exact = sdekit.solve(sde.reverse(score), x_T, sde.t_max, sde.t_min, solver="sra1", steps=256,
                         brownian=tree).x              # strong order 1.5: 2.4e-4 from 512 steps
    # measured: 9.6e-2 and 2.0e-2 (96 and 408 NFE); another path is O(1) (2.3) away
    errors = [(skd.sample(sde, score, x_T=x_T, solver="adaptive_sde", rtol=tol, atol=tol,
                          brownian=tree).x - exact).norm(dim=1).mean().item() for tol in (1e-1, 1e-2)]
    other = (default.x - exact).norm(dim=1).mean().item()
    assert errors[1] < errors[0] / 3 and errors[1] < 4e-2 and 10 * errors[0] < other, (errors, other)
    with pytest.raises(sdekit.ShapeError, match="shape"):
        skd.sample(sde, score, (4, 2), solver="adaptive_sde", brownian=tree)
    with pytest.raises(ValueError, match="noise"):
        skd.sample(sde, score, x_T=x_T, solver="adaptive_sde", brownian=tree, noise="fresh")
    short = sdekit.BrownianTree(0.5, sde.t_max, (8, 2), seed=11, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"lives on \[0.5, 1.0\]"):
        skd.sample(sde, score, x_T=x_T, solver="adaptive_sde", brownian=short)
    single = sdekit.BrownianTree(sde.t_min, sde.t_max, (8, 2), seed=11, dtype=torch.float32)
    with pytest.raises(ValueError, match="dtype"):
        skd.sample(sde, score, x_T=x_T, solver="adaptive_sde", brownian=single)


@pytest.mark.parametrize("noise", ["path", "fresh"])
def test_adaptive_sde_non_finite_score_fails_at_once(noise):
    """An infinite score below t = 0.5 rejects the step and zeroes it (E = inf); the sampler raises
    NonFiniteError naming the score's first bad call instead of spinning or querying NaN times."""
    sde = skd.VPSDE()
    inner = mixture().score_fn(sde)

    def score(t, x):
        return torch.where((t < 0.5)[:, None], torch.full_like(x, float("inf")), inner(t, x))

    counted = []
    with pytest.raises(sdekit.NonFiniteError, match="score_fn returned NaN or infinite"):
        skd.sample(sde, lambda t, x: counted.append(1) or score(t, x), (4, 2),
                   solver="adaptive_sde", seed=0, noise=noise)
    assert len(counted) < 200


def test_adaptive_sde_steps_are_the_controllers():
    """adaptive_sde's step rule is sdekit.PIDController's (samplers.adaptive.controller): the
    paper's theta h E^-r with its options, and bad options are refused up front."""
    from sdekit_diffusion.samplers.adaptive import controller

    control = controller(rtol=0.05, atol=0.0078, safety=0.8, exponent=0.5)
    assert isinstance(control, sdekit.PIDController) and control.per_sample
    h, state = control.init(torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
                            torch.ones(2, 1, dtype=torch.float64), dt0=0.01)
    ratio = torch.tensor([0.25, 4.0], dtype=torch.float64)
    accept, h_next, _ = control.adapt_step_size(h, ratio, state)
    assert accept.tolist() == [True, False]
    assert h_next.tolist() == pytest.approx((0.01 * 0.8 * ratio ** -0.5).tolist(), rel=1e-14)
    sde = skd.VPSDE()
    score = mixture().score_fn(sde)
    for options in ({"exponent": 0.0}, {"safety": 1.5}, {"h_init": 0.0}, {"rtol": float("nan")},
                    {"max_steps": 0}):
        with pytest.raises(ValueError):
            skd.sample(sde, score, (2, 2), solver="adaptive_sde", **options)


def test_pc_langevin_on_subvp_uses_general_alpha():
    """The corrector's a_i = (alpha(t_i)/alpha(t_{i+1}))^2 is below 1 for sub-VP, 1 for VE."""
    from sdekit_diffusion.samplers.ancestral import transition

    for sde, expect_one in ((skd.SubVPSDE(), False), (skd.VESDE(), True)):
        ts = skd.time_grid(sde, 10)
        alpha_ts, sigma2_ts, _ = transition(type("C", (), {"sde": sde})(), ts)
        a = alpha_ts ** 2
        assert bool((a <= 1).all()) and bool((sigma2_ts > 0).all())
        assert torch.allclose(a, torch.ones_like(a)) == expect_one


def _first_normal(x_T, seed):
    """The first draw of the per-sample stream a sampler started from x_T uses."""
    from sdekit_diffusion.samplers._common import NormalStream
    return NormalStream(x_T.shape, seed, 0, x_T.dtype, x_T.device)()


def test_one_step_reduces_to_the_classical_updates():
    """ancestral on VE = score_sde's SMLD update; reverse_diffusion on VP = score_sde's DDPM-chain
    reverse step (x + beta s)... with 1 - beta = alpha(t)^2 / alpha(s)^2."""
    x_T = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    z = _first_normal(x_T, 4)
    ve = skd.VESDE(sigma_min=0.01, sigma_max=5.0)
    score = mixture().score_fn(ve)
    t, s = torch.tensor(1.0), torch.tensor(0.5)
    got = skd.sample(ve, score, x_T=x_T, solver="ancestral", steps=1, t_min=0.5, seed=4).x
    sig_t, sig_s = ve.sigma(t), ve.sigma(s)
    smld = (x_T + (sig_t ** 2 - sig_s ** 2) * score(t.expand(6), x_T)
            + torch.sqrt((sig_t ** 2 - sig_s ** 2) * sig_s ** 2 / sig_t ** 2) * z)
    assert torch.allclose(got, smld)
    vp = skd.VPSDE()
    score = mixture().score_fn(vp)
    got = skd.sample(vp, score, x_T=x_T, solver="reverse_diffusion", steps=1, t_min=0.5, seed=4).x
    beta = 1 - vp.alpha(t) ** 2 / vp.alpha(s) ** 2
    ddpm = (x_T - (torch.sqrt(1 - beta) - 1) * x_T + beta * score(t.expand(6), x_T)
            + torch.sqrt(beta) * z)
    assert torch.allclose(got, ddpm)


def test_ancestral_equals_ddim_eta_one():
    sde = skd.VPSDE()
    score = mixture().score_fn(sde)
    a = skd.sample(sde, score, (50, 2), solver="ancestral", steps=20, seed=3).x
    b = skd.sample(sde, score, (50, 2), solver="ddim", eta=1.0, steps=20, seed=3).x
    assert torch.allclose(a, b, atol=1e-10)


def test_denoise_is_tweedie():
    sde = skd.VPSDE()
    data = skd.GaussianMixture.gaussian(torch.tensor([1.0, -1.0]), 0.5)
    score = data.score_fn(sde)
    plain = skd.sample(sde, score, (20, 2), solver="ddim", steps=10, seed=0)
    denoised = skd.sample(sde, score, (20, 2), solver="ddim", steps=10, seed=0, denoise=True)
    t = torch.full((20,), sde.t_min)
    alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    expected = (plain.x + sigma ** 2 * score(t, plain.x)) / alpha
    assert torch.allclose(denoised.x, expected)
    assert denoised.nfe == plain.nfe + 1


# -- NFE, reproducibility, callbacks ----------------------------------------------------------

CORE_ADAPTIVE_SDE = [info["name"] for info in sdekit.solvers.available() if info["kind"] == "sde" and info["adaptive"]]


def _options(solver):
    if solver == "dopri5":
        return {"rtol": 1e-4, "atol": 1e-4}
    if solver in CORE_ADAPTIVE_SDE:
        return {"rtol": 0.1, "atol": 0.1}
    if solver == "adaptive_sde":
        return {}
    return {"steps": 6}


@pytest.mark.parametrize("solver", available())
@pytest.mark.parametrize("denoise", [False, True])
def test_nfe_counts_score_calls(solver, denoise):
    sde = skd.VPSDE()
    inner = mixture().score_fn(sde)
    calls = []

    def score(t, x):
        calls.append(t.shape)
        assert t.shape == (x.shape[0],)
        return inner(t, x)

    solution = skd.sample(sde, score, (5, 2), solver=solver, seed=0, denoise=denoise,
                          **_options(solver))
    assert solution.nfe == len(calls) > 0
    assert isinstance(solution, sdekit.Solution) and solution.x.shape == (5, 2)
    assert bool(torch.isfinite(solution.x).all())


REPRODUCIBLE = [name for name in available() if name not in ("dopri5", "core_pc")]


@pytest.mark.parametrize("solver", REPRODUCIBLE)
def test_same_sample_whatever_the_batch_size(solver):
    sde = skd.VPSDE()
    score = mixture().score_fn(sde)
    options = {"edm_heun": {"S_churn": 5.0}, "pc": {"per_sample": True}}.get(solver, {})
    small = skd.sample(sde, score, (3, 2), solver=solver, seed=11, **_options(solver), **options).x
    large = skd.sample(sde, score, (7, 2), solver=solver, seed=11, **_options(solver), **options).x
    assert torch.allclose(small, large[:3], atol=1e-12)
    tail = skd.sample(sde, score, (4, 2), solver=solver, seed=11, sample_offset=3,
                      **_options(solver), **options).x
    assert torch.allclose(tail, large[3:], atol=1e-12)


def test_generator_gives_reproducible_samples():
    sde = skd.VPSDE()
    score = mixture().score_fn(sde)
    run = lambda seed: skd.sample(sde, score, (4, 2), solver="euler_maruyama", steps=10,  # noqa
                                  generator=torch.Generator().manual_seed(seed)).x
    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_prior_has_the_prior_law():
    sde = skd.VESDE(sigma_min=0.01, sigma_max=5.0)
    seen = []
    score = mixture().score_fn(sde)

    def spy(t, x):
        seen.append(x.clone())
        return score(t, x)

    skd.sample(sde, spy, (20000, 2), solver="ddim", steps=1, seed=0)
    assert abs(seen[0].std().item() - sde.prior_std) < 0.05 * sde.prior_std


def test_callback_and_progress():
    sde = skd.VPSDE()
    score = mixture().score_fn(sde)
    seen = []
    solution = skd.sample(sde, score, (4, 2), solver="dpm_solver++_2m", steps=7, seed=0,
                          progress=True, callback=lambda i, x, t, d: seen.append((i, float(t))))
    assert [i for i, _ in seen] == list(range(7))
    assert np.allclose([t for _, t in seen], solution.grid[1:].tolist())
    seen.clear()
    skd.sample(sde, score, (4, 2), solver="heun", steps=5, seed=0,
               callback=lambda i, x, t, d: seen.append(i))
    assert seen == list(range(5))


def test_a_callback_does_not_change_a_core_solve():
    """A core SDE sampler with a callback runs one sdekit.solve (its callback= per step, no solve
    per step): the same samples as without, and the callback sees each step's state and time."""
    sde = skd.VPSDE()
    score = mixture().score_fn(sde)
    plain = skd.sample(sde, score, (64, 2), solver="euler_maruyama", steps=40, seed=3)
    seen = []
    watched = skd.sample(sde, score, (64, 2), solver="euler_maruyama", steps=40, seed=3,
                         callback=lambda i, x, t, d: seen.append((i, t, x)))
    assert torch.equal(watched.x, plain.x) and watched.nfe == plain.nfe == 40
    assert [i for i, _, _ in seen] == list(range(40)) and torch.equal(seen[-1][2], plain.x)
    assert torch.equal(torch.stack([t for _, t, _ in seen]), plain.grid[1:])


# -- time grids --------------------------------------------------------------------------------

@pytest.mark.parametrize("sde_name", ["vp", "ve", "subvp", "custom"])
@pytest.mark.parametrize("kind", skd.GRIDS)
def test_time_grid(sde_name, kind):
    sde = SDES[sde_name]()
    grid = skd.time_grid(sde, 12, kind)
    assert grid.shape == (13,)
    assert grid[0].item() == sde.t_max and grid[-1].item() == sde.t_min
    assert bool((grid[1:] < grid[:-1]).all())
    if kind == "quadratic":
        spacing = grid.sqrt().diff()
    elif kind == "logsnr":
        spacing = sde.log_snr(grid).diff()
    elif kind == "karras":
        spacing = torch.exp(-sde.log_snr(grid) / 7).diff()
    else:
        spacing = grid.diff()
    assert torch.allclose(spacing, spacing.mean().expand_as(spacing), rtol=1e-6, atol=1e-9)


def test_time_grid_range_and_errors():
    sde = skd.VPSDE()
    grid = skd.time_grid(sde, 4, "logsnr", t_min=0.1, t_max=0.5)
    assert grid[0].item() == 0.5 and grid[-1].item() == 0.1
    with pytest.raises(ValueError, match="uniform.*quadratic.*logsnr.*karras"):
        skd.time_grid(sde, 4, "cosine")
    with pytest.raises(ValueError):
        skd.time_grid(sde, 0)


# -- bad input ---------------------------------------------------------------------------------

def test_bad_input_errors():
    sde = skd.VPSDE()
    score = mixture().score_fn(sde)
    with pytest.raises(ValueError, match="unknown sampler 'dpm_solver_4'.*ddim"):
        skd.sample(sde, score, (2, 2), solver="dpm_solver_4", steps=4)
    with pytest.raises(ValueError, match="unknown time grid 'linear'.*logsnr"):
        skd.sample(sde, score, (2, 2), solver="ddim", steps=4, time_grid="linear")
    with pytest.raises(ValueError, match="steps >= 3"):
        skd.sample(sde, score, (2, 2), solver="dpm_solver++_3m", steps=2)
    with pytest.raises(ValueError, match="adaptive"):
        skd.sample(sde, score, (2, 2), solver="adaptive_sde", steps=10)
    with pytest.raises(ValueError, match="shape"):
        skd.sample(sde, score, solver="ddim", steps=4)
    with pytest.raises(TypeError, match="unknown option 'etta'.*accepts eta"):
        skd.sample(sde, score, (2, 2), solver="ddim", steps=4, etta=1.0)
    with pytest.raises(TypeError, match="'rel_tol' is now called 'rtol'"):
        skd.sample(sde, score, (2, 2), solver="adaptive_sde", rel_tol=0.1)
    with pytest.raises(TypeError, match="fixed steps.*adaptive sampler: .*adaptive_sde"):
        skd.sample(sde, score, (2, 2), solver="ddim", steps=4, rtol=0.1)
    with pytest.raises(TypeError, match="unknown option 'etta'.*rtol, atol"):
        skd.sample(sde, score, (2, 2), solver="dopri5", etta=1.0)
    with pytest.raises(ValueError, match="corrector"):
        skd.sample(sde, score, (2, 2), solver="pc", steps=4, corrector="gibbs")
    with pytest.raises(sdekit.ShapeError, match="score_fn returned"):
        skd.sample(sde, lambda t, x: x[:, :1], (2, 2), solver="ddim", steps=4)
    with pytest.raises(sdekit.ShapeError):
        skd.sample(sde, lambda t, x: x[:, :1], (2, 2), solver="euler", steps=4)
    with pytest.raises(sdekit.NonFiniteError, match="NaN"):
        skd.sample(sde, lambda t, x: x * float("nan"), (2, 2), solver="dpm_solver_2", steps=4)
    with pytest.raises(sdekit.NonFiniteError):
        skd.sample(sde, lambda t, x: x * float("nan"), (2, 2), solver="euler_maruyama", steps=4)
