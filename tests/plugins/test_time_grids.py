"""Timestep spacings of discrete schedules, explicit grids (sample(ts=...)), the step to sigma = 0
(final_step="zero") and the last-step order options of the multistep samplers, on exact scores.
(diffusers' own schedulers: tests/plugins/test_diffusers.py.)"""
import pytest
import torch

import sdekit_diffusion as skd
from sdekit_diffusion.problems import GaussianMixture
from sdekit_diffusion.time_grids import check_time_grid

N = 1000


def discrete_sde():
    return skd.DiffusionSDE.from_betas(torch.linspace(1e-4, 0.02, N))     # DDPM (Ho et al. 2020)


def data():
    return GaussianMixture([0.4, 0.6], [[-1.5, 0.5], [1.0, -1.0]], [0.3, 0.6])


def timesteps(grid):
    return (grid * N - 1).round().long().tolist()


@pytest.mark.parametrize("kind, offset, expected", [
    ("trailing", 0, [999, 899, 799, 699, 599, 499, 399, 299, 199, 99, 0]),
    ("leading", 1, [901, 811, 721, 631, 541, 451, 361, 271, 181, 91, 0]),    # N // 11 = 90
    ("linspace", 0, [999, 899, 799, 699, 599, 500, 400, 300, 200, 100, 0]),  # round half to even
])
def test_spacings_of_ten_steps(kind, offset, expected):
    grid = skd.time_grid(discrete_sde(), 10, kind, steps_offset=offset)
    assert grid.dtype == torch.float64 and timesteps(grid) == expected
    torch.testing.assert_close(grid, (torch.tensor(expected, dtype=torch.float64) + 1) / N,
                               rtol=0, atol=0)


def test_trailing_at_every_timestep_ends_without_a_zero_length_step():
    grid = skd.time_grid(discrete_sde(), N, "trailing")
    assert timesteps(grid) == list(range(N - 1, -1, -1))          # N points: N - 1 steps
    assert len(skd.time_grid(discrete_sde(), 600, "trailing")) == 601


def test_spacing_errors():
    sde = discrete_sde()
    with pytest.raises(ValueError, match="discrete schedules"):
        skd.time_grid(skd.VPSDE(), 10, "trailing")
    with pytest.raises(ValueError, match="'leading' spacing only"):
        skd.time_grid(sde, 10, "trailing", steps_offset=1)
    with pytest.raises(ValueError, match="covers all N = 1000 timesteps"):
        skd.time_grid(sde, 10, "linspace", t_min=0.01)
    with pytest.raises(ValueError, match="at most 1000 steps"):
        skd.time_grid(sde, 1001, "trailing")
    with pytest.raises(ValueError, match="repeats a timestep"):
        skd.time_grid(sde, N, "leading")                            # N // (N + 1) = 0
    with pytest.raises(ValueError, match="steps_offset applies"):
        skd.time_grid(sde, 10, "logsnr", steps_offset=1)
    with pytest.raises(ValueError, match="'trailing', 'leading', 'linspace'"):
        skd.time_grid(sde, 10, "cosine")


@pytest.mark.parametrize("kind", skd.GRIDS)
def test_continuous_grids_on_a_discrete_schedule(kind):
    sde = discrete_sde()
    grid = skd.time_grid(sde, 16, kind)
    assert grid[0].item() == 1.0 and grid[-1].item() == 1.0 / N
    assert bool((grid[1:] < grid[:-1]).all())
    if kind == "logsnr":     # equal steps in lambda through the piecewise-linear log alpha
        steps = torch.diff(sde.log_snr(grid))
        torch.testing.assert_close(steps, steps.mean().expand(16), rtol=1e-9, atol=0)


def test_explicit_grid_equals_the_named_one():
    sde, score = discrete_sde(), data().score_fn(discrete_sde())
    for solver in ("ddim", "dpm_solver++_3m", "euler", "ancestral"):
        by_name = skd.sample(sde, score, (64, 2), solver=solver, steps=12, time_grid="trailing",
                             seed=3)
        ts = skd.time_grid(sde, 12, "trailing")
        explicit = skd.sample(sde, score, (64, 2), solver=solver, ts=ts, seed=3)
        as_list = skd.sample(sde, score, (64, 2), solver=solver, ts=ts.tolist(), seed=3)
        assert torch.equal(explicit.x, by_name.x) and torch.equal(as_list.x, by_name.x)
        assert explicit.nfe == by_name.nfe and torch.equal(explicit.ts, ts)


def test_explicit_grid_below_t_max_starts_from_the_given_state():
    """SDEdit-style: the exact marginal at t = 0.5 as x_T, integrated by the probability flow. For
    Gaussian data N(mu, s^2) the flow keeps z = (x - alpha mu)/sqrt(alpha^2 s^2 + sigma^2)."""
    sde = skd.VPSDE()
    gauss = GaussianMixture.gaussian(torch.tensor([1.0]), 0.5)
    t0 = torch.tensor(0.5)
    z = torch.randn(500, 1, generator=torch.Generator().manual_seed(0))

    def at(t):
        alpha, sigma = sde.alpha(t), sde.sigma(t)
        return alpha * 1.0 + torch.sqrt(alpha ** 2 * 0.25 + sigma ** 2) * z

    ts = skd.time_grid(sde, 100, "logsnr", t_max=0.5)
    x = skd.sample(sde, gauss.score_fn(sde), x_T=at(t0), solver="dpm_solver++_2m", ts=ts).x
    # measured 3.0e-4 at 100 steps, 1.9e-5 at 400 (order 2)
    torch.testing.assert_close(x, at(torch.tensor(sde.t_min)), atol=1e-3, rtol=0)


def test_explicit_grid_errors():
    sde, score = discrete_sde(), data().score_fn(discrete_sde())
    run = lambda ts, **kw: skd.sample(sde, score, (4, 2), solver=kw.pop("solver", "ddim"), ts=ts, **kw)
    grid = skd.time_grid(sde, 5, "trailing")
    with pytest.raises(ValueError, match="strictly decreasing"):
        run(grid.flip(0))
    with pytest.raises(ValueError, match="strictly decreasing"):
        run(torch.tensor([1.0, 0.5, 0.5, 0.1]))
    with pytest.raises(ValueError, match=r"outside \[t_min, t_max\]"):
        run(torch.tensor([1.0, 0.5, 0.0]))
    with pytest.raises(ValueError, match=r"outside \[t_min, t_max\]"):
        run(torch.tensor([1.5, 0.5, 0.1]))
    with pytest.raises(ValueError, match="at least 3 steps"):
        run(torch.tensor([1.0, 0.5, 0.1]), solver="dpm_solver++_3m")
    with pytest.raises(ValueError, match="NaN"):
        run(torch.tensor([1.0, float("nan"), 0.1]))
    with pytest.raises(ValueError, match="1-D"):
        run(grid[None])
    with pytest.raises(ValueError, match="drop steps=, time_grid="):
        run(grid, steps=5, time_grid="trailing")
    with pytest.raises(ValueError, match="adaptive"):
        run(grid, solver="adaptive_sde")
    with pytest.raises(TypeError, match="1-D tensor"):
        run("trailing")
    # float32 rounding of the ends is accepted (and clamped), a real excursion is not
    assert check_time_grid(sde, torch.tensor([1.0 + 5e-7, 0.5, 0.001 - 5e-10])).tolist() == \
        [1.0, 0.5, 0.001]


# -- the step to sigma = 0 --------------------------------------------------------------------

ZERO_SAMPLERS = [("ddim", {}), ("ddim", {"eta": 1.0}), ("dpm_solver++_2m", {}),
                 ("dpm_solver++_3m", {}), ("edm_heun", {}), ("ancestral", {})]


@pytest.mark.parametrize("solver, options", ZERO_SAMPLERS)
def test_final_step_zero_ends_at_the_data_prediction(solver, options):
    """final_step="zero" on a grid of N steps = the first N - 1 steps, then the data prediction
    x0 = (x + sigma^2 s)/alpha at ts[-2]; no extra score call (edm_heun: one fewer, its last Heun
    correction is not taken, as in Karras et al. Algorithm 1)."""
    sde = discrete_sde()
    score = data().score_fn(sde)
    ts = skd.time_grid(sde, 8, "trailing")
    multistep = solver.startswith("dpm_solver++")
    if multistep:            # the last-step order rule counts the steps: switch it off to compare
        options = dict(options, lower_order_final=False)
    zero = skd.sample(sde, score, (256, 2), solver=solver, ts=ts, final_step="zero", seed=5,
                      **options)
    first = skd.sample(sde, score, (256, 2), solver=solver, ts=ts[:-1], seed=5, **options)
    t = ts[-2].expand(256)
    x0 = skd.score_to_prediction("x0", score(t, first.x), sde, t, first.x)
    torch.testing.assert_close(zero.x, x0, rtol=1e-12, atol=1e-12)
    assert zero.nfe == (15 if solver == "edm_heun" else 8)
    none = skd.sample(sde, score, (256, 2), solver=solver, ts=ts, seed=5, **options)
    assert (none.x - zero.x).abs().max() > 1e-3


def test_final_step_zero_with_lower_order_final_keeps_diffusers_rule():
    """Below 15 steps diffusers also lowers the second-to-last step (3M: order 2 there) and ends
    with the first-order step to sigma = 0. So 3M with final_step="zero" on 8 steps = the state
    after step 7 of an ordinary 8-step 3M run (orders 1, 2, 3, 3, 3, 3, 2, 1), then the data
    prediction there."""
    sde = discrete_sde()
    score = data().score_fn(sde)
    ts = skd.time_grid(sde, 8, "linspace")
    zero = skd.sample(sde, score, (64, 2), solver="dpm_solver++_3m", ts=ts, final_step="zero",
                      seed=0).x
    states = {}
    skd.sample(sde, score, (64, 2), solver="dpm_solver++_3m", ts=ts, seed=0,
               callback=lambda i, x, t, denoised: states.setdefault(i, x))
    before_last = states[6]                       # after step index 6, at ts[-2]
    t = ts[-2].expand(64)
    torch.testing.assert_close(zero, skd.score_to_prediction("x0", score(t, before_last), sde, t,
                                                             before_last), rtol=1e-12, atol=1e-12)
    # the rule matters: order 3 at step index 6 gives another state
    unlowered = skd.sample(sde, score, (64, 2), solver="dpm_solver++_3m", ts=ts[:-1], seed=0,
                           lower_order_final=False).x
    assert (unlowered - before_last).abs().max() > 1e-6


@pytest.mark.parametrize("solver", ["dpm_solver_2", "euler", "euler_maruyama", "pc",
                                    "reverse_diffusion", "adaptive_sde", "dopri5"])
def test_final_step_zero_is_refused_where_it_does_not_apply(solver):
    sde = discrete_sde()
    with pytest.raises(ValueError, match="final_step='zero'.*ddim"):
        skd.sample(sde, data().score_fn(sde), (4, 2), solver=solver,
                   steps=None if solver in ("adaptive_sde", "dopri5") else 4, final_step="zero")


def test_final_step_option_errors():
    sde = discrete_sde()
    with pytest.raises(ValueError, match="drop denoise=True"):
        skd.sample(sde, data().score_fn(sde), (4, 2), solver="ddim", steps=4, final_step="zero",
                   denoise=True)
    with pytest.raises(ValueError, match="'none', 'zero'"):
        skd.sample(sde, data().score_fn(sde), (4, 2), solver="ddim", steps=4, final_step="sigma_min")


# -- lower_order_final / euler_at_final ----------------------------------------------------------

def ddim_step(sde, score, ts, x):
    return skd.sample(sde, score, x_T=x, solver="ddim", ts=ts).x


@pytest.mark.parametrize("solver", ["dpm_solver++_2m", "dpm_solver++_3m"])
def test_last_step_order_options(solver):
    """At 20 steps "auto" (diffusers: below 15 steps only) does not lower the order; True lowers
    the last steps (3M: orders 2 then 1), euler_at_final only the last one (first order = DDIM)."""
    sde = skd.VPSDE()
    score = data().score_fn(sde)
    ts = skd.time_grid(sde, 20, "logsnr")
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(2))
    run = lambda grid, **kw: skd.sample(sde, score, x_T=x_T, solver=solver, ts=grid, **kw).x
    auto, never = run(ts), run(ts, lower_order_final=False)
    assert torch.equal(auto, never)
    euler = run(ts, euler_at_final=True)
    torch.testing.assert_close(euler, ddim_step(sde, score, ts[-2:], run(ts[:-1], lower_order_final=False)),
                               rtol=1e-12, atol=1e-12)
    always = run(ts, lower_order_final=True)
    if solver == "dpm_solver++_2m":
        torch.testing.assert_close(always, euler, rtol=1e-12, atol=1e-12)
    else:
        assert (always - euler).abs().max() > 1e-9      # its second-to-last step is order 2
    assert (always - auto).abs().max() > 1e-9
    # below 15 steps "auto" is True
    short = ts[::2]
    assert torch.equal(run(short), run(short, lower_order_final=True))
    with pytest.raises(ValueError, match="'auto'"):
        run(ts, lower_order_final="yes")
    with pytest.raises(ValueError, match="euler_at_final"):
        run(ts, euler_at_final=1.0)
