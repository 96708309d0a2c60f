"""Schedules: closed forms of the presets against the autograd derivation, quadrature of a linear
SDE, log-SNR inversion, discrete chains and schedule validation."""
import math

import numpy as np

import pytest
import torch

import sdekit_diffusion as skd

PRESETS = {
    "vp": lambda: skd.VPSDE(),
    "subvp": lambda: skd.SubVPSDE(),
    "ve": lambda: skd.VESDE(),
    "cosine": lambda: skd.CosineVPSDE(),
}


def times(sde, n=1000):
    return torch.linspace(sde.t_min, sde.t_max, n)


def assert_rel(actual, expected, tol):
    err = ((actual - expected).abs() / expected.abs().clamp_min(1e-300)).max().item()
    assert err < tol, f"relative error {err:.3g} >= {tol}"


def closed_form(name, sde, t):
    """Textbook (alpha, sigma, f, g^2) written independently of the presets' code."""
    if name in ("vp", "subvp"):
        b0, b1 = sde.beta_min, sde.beta_max
        beta = b0 + t * (b1 - b0)
        integral = b0 * t + 0.5 * (b1 - b0) * t ** 2
        alpha = torch.exp(-0.5 * integral)
        if name == "vp":
            return alpha, torch.sqrt(1 - torch.exp(-integral)), -beta / 2, beta
        return alpha, 1 - torch.exp(-integral), -beta / 2, beta * (1 - torch.exp(-2 * integral))
    if name == "ve":
        sigma = sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
        return (torch.ones_like(t), sigma, torch.zeros_like(t),
                sigma ** 2 * 2 * math.log(sde.sigma_max / sde.sigma_min))
    s = sde.s
    phi = math.pi / 2 * (t + s) / (1 + s)
    alpha = torch.cos(phi) / math.cos(math.pi / 2 * s / (1 + s))
    f = -math.pi / (2 * (1 + s)) * torch.tan(phi)
    return alpha, torch.sqrt(1 - alpha ** 2), f, -2 * f


@pytest.mark.parametrize("name", PRESETS)
def test_preset_matches_autograd_derivation(name):
    sde = PRESETS[name]()
    derived = skd.DiffusionSDE.from_marginal(sde.alpha, sde.sigma, sde.t_min, sde.t_max)
    t = times(sde)
    if name == "ve":
        assert derived.f(t).abs().max() == 0
    else:
        assert_rel(derived.f(t), sde.f(t), 1e-8)
    assert_rel(derived.g2(t), sde.g2(t), 1e-8)
    assert_rel(derived.log_snr(t), sde.log_snr(t), 1e-8)
    assert_rel(derived.g(t), sde.g(t), 1e-8)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_equals_textbook_closed_form(name):
    sde = PRESETS[name]()
    t = times(sde)
    alpha, sigma, f, g2 = closed_form(name, sde, t)
    tol = 1e-6 if name == "cosine" else 1e-10   # 1 - alpha^2 cancels near t_min for cosine
    assert_rel(sde.alpha(t), alpha, 1e-12)
    assert_rel(sde.sigma(t), sigma, tol)
    assert_rel(sde.g2(t), g2, 1e-10)
    if name != "ve":
        assert_rel(sde.f(t), f, 1e-12)


@pytest.mark.parametrize("name", PRESETS)
def test_marginal_prob_and_prior_logp(name):
    sde = PRESETS[name]()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 3, 4, 4, generator=g)
    t = torch.rand(5, generator=g) * (sde.t_max - sde.t_min) + sde.t_min
    alpha, sigma, _, _ = closed_form(name, sde, t)
    mean, std = sde.marginal_prob(x0, t)
    assert mean.shape == x0.shape and std.shape == (5, 1, 1, 1)
    torch.testing.assert_close(mean, alpha[:, None, None, None] * x0, rtol=1e-12, atol=0)
    torch.testing.assert_close(std.flatten(), sigma, rtol=1e-6, atol=0)
    mean0, std0 = sde.marginal_prob(x0, torch.tensor(0.5))   # a 0-d time
    assert std0.dim() == 0 and mean0.shape == x0.shape

    z = sde.prior_sample((4, 3, 2), generator=g)
    prior_std = closed_form(name, sde, torch.tensor(sde.t_max))[1]
    expected = torch.distributions.Normal(0.0, prior_std).log_prob(z).flatten(1).sum(1)
    torch.testing.assert_close(sde.prior_logp(z), expected, rtol=1e-12, atol=1e-12)
    if name == "ve":
        assert sde.prior_std == pytest.approx(50.0, rel=1e-12)
    big = sde.prior_sample((200_000,), generator=g)
    assert big.std().item() == pytest.approx(sde.prior_std, rel=0.01)


@pytest.mark.parametrize("name", PRESETS)
def test_inverse_log_snr(name):
    sde = PRESETS[name]()
    t = times(sde)
    lam = sde.log_snr(t)
    torch.testing.assert_close(sde.inverse_log_snr(lam), t, rtol=1e-10, atol=1e-12)
    # the generic bisection agrees with the closed form
    torch.testing.assert_close(skd.schedules.Schedule.t_of_log_snr(sde.schedule, lam), t, rtol=1e-10, atol=1e-13)
    assert (lam[1:] < lam[:-1]).all()
    with pytest.raises(ValueError, match="outside the range"):
        sde.inverse_log_snr(lam[0] + 1.0)


def test_from_linear_sde_round_trips_vp():
    vp = skd.VPSDE()
    beta = lambda t: 0.1 + t * (20.0 - 0.1)
    lin = skd.DiffusionSDE.from_linear_sde(lambda t: -0.5 * beta(t), lambda t: beta(t).sqrt(),
                                           vp.t_min, vp.t_max)
    t = times(vp, 777)
    assert_rel(lin.alpha(t), vp.alpha(t), 1e-6)
    assert_rel(lin.sigma(t), vp.sigma(t), 1e-6)
    assert_rel(lin.f(t), vp.f(t), 1e-12)
    assert_rel(lin.g2(t), vp.g2(t), 1e-12)
    torch.testing.assert_close(lin.inverse_log_snr(lin.log_snr(t)), t, rtol=1e-9, atol=1e-12)


def test_from_linear_sde_round_trips_cosine():
    """A non-polynomial f with a pole just beyond t_max: the quadrature still holds 1e-6."""
    cos = skd.CosineVPSDE()
    f = lambda t: -math.pi / (2 * 1.008) * torch.tan(math.pi / 2 * (t + 0.008) / 1.008)
    # f and g are integrated from t = 0, below t_min: pass functions defined there
    lin = skd.DiffusionSDE.from_linear_sde(f, lambda t: torch.sqrt(-2 * f(t)), cos.t_min, cos.t_max)
    t = times(cos, 501)
    assert_rel(lin.alpha(t), cos.alpha(t), 1e-6)
    assert_rel(lin.sigma(t), cos.sigma(t), 1e-6)


def test_from_linear_sde_ve_has_zero_initial_variance():
    ve = skd.VESDE()
    log_ratio = math.log(ve.sigma_max / ve.sigma_min)
    g = lambda t: ve.sigma_min * torch.exp(t * log_ratio) * math.sqrt(2 * log_ratio)
    lin = skd.DiffusionSDE.from_linear_sde(lambda t: 0.0 * t, g, ve.t_min, ve.t_max)
    t = times(ve, 101)
    expected = ve.sigma_min * torch.sqrt((ve.sigma_max / ve.sigma_min) ** (2 * t) - 1)
    assert_rel(lin.sigma(t), expected, 1e-6)


def test_custom_marginal_coefficients():
    """alpha = 1 - t, sigma = t: f = -1/(1-t), g^2 = 2t/(1-t)."""
    sde = skd.DiffusionSDE.from_marginal(lambda t: 1 - t, lambda t: t, 1e-3, 0.999)
    t = times(sde)
    assert_rel(sde.f(t), -1 / (1 - t), 1e-12)
    assert_rel(sde.g2(t), 2 * t / (1 - t), 1e-12)
    x = torch.randn(1000, 2)
    torch.testing.assert_close(sde.drift(t, x), (-1 / (1 - t))[:, None] * x)
    torch.testing.assert_close(sde.diffusion(t, x), (2 * t / (1 - t)).sqrt()[:, None].expand(1000, 2))
    assert sde.drift(torch.tensor(0.5), x).shape == x.shape


def test_constant_alpha_is_accepted():
    sde = skd.DiffusionSDE.from_marginal(lambda t: 1.0, lambda t: 0.5 + t)
    assert sde.f(torch.tensor([0.2, 0.3])).abs().max() == 0
    torch.testing.assert_close(sde.g2(torch.tensor([0.2])), torch.tensor([2 * 0.7]))


def test_coefficients_work_under_inference_mode():
    sde = skd.DiffusionSDE.from_marginal(lambda t: 1 - t, lambda t: t, 1e-3, 0.999)
    with torch.inference_mode():
        g2 = sde.g2(torch.tensor([0.5]))
    torch.testing.assert_close(g2, torch.tensor([2.0]))


@pytest.mark.parametrize("alpha, sigma, t_min, t_max, message", [
    (lambda t: t, lambda t: 1 - t, 1e-3, 0.999, "log-SNR"),                  # SNR increasing
    (lambda t: 1 - t, lambda t: t - 0.5, 1e-3, 0.999, r"sigma\(t\) <= 0"),    # sigma <= 0
    (lambda t: 1 - t, lambda t: t, 1e-3, 1.2, r"alpha\(t\) <= 0"),            # alpha <= 0
    (lambda t: torch.ones_like(t), lambda t: 1 + 0.1 * torch.sin(20 * t), 1e-3, 1.0, "log-SNR"),
    (lambda t: 1 - t, lambda t: torch.sqrt(t - 0.5), 0.5, 1.0, "sigma"),     # sigma(t_min) = 0
    (lambda t: torch.log(t - 0.5), lambda t: t, 1e-3, 0.9, "alpha"),          # NaN
])
def test_invalid_schedules_are_refused(alpha, sigma, t_min, t_max, message):
    with pytest.raises(ValueError, match=message) as info:
        skd.DiffusionSDE.from_marginal(alpha, sigma, t_min, t_max)
    assert "at t = " in str(info.value)


def test_invalid_schedule_names_first_bad_time():
    with pytest.raises(ValueError, match=r"alpha\(t\) <= 0 at t = 0\.50"):
        skd.DiffusionSDE.from_marginal(lambda t: 0.5 - t, lambda t: t, 1e-3, 0.9)
    with pytest.raises(ValueError, match=r"log-SNR .* not strictly decreasing .* at t = 0\.4"):
        skd.DiffusionSDE.from_marginal(lambda t: torch.ones_like(t), lambda t: t * (0.8 - t), 0.1, 1)


def test_cosine_beyond_its_pole_is_refused():
    with pytest.raises(ValueError, match="t_max < 1"):
        skd.CosineVPSDE(t_max=1.0)


@pytest.mark.parametrize("bad", [0.0, 1.5, -1.0, float("nan")])
def test_times_outside_range_are_refused(bad):
    vp = skd.VPSDE()
    with pytest.raises(ValueError, match=r"outside \[t_min, t_max\]"):
        vp.alpha(torch.tensor([0.5, bad]))
    with pytest.raises(ValueError, match="outside"):
        vp.marginal_prob(torch.zeros(2, 3), torch.tensor([0.5, bad]))
    vp.sigma(torch.tensor(1.0 + 1e-9))   # rounding slack


def test_ddpm_and_smld_chains():
    vp = skd.VPSDE()
    betas = vp.ddpm_betas(1000)
    assert betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    # the chain's cumulative product approximates alpha(t)^2 on the grid i/N
    alpha_bar = torch.cumprod(1 - betas, 0)
    t = torch.arange(1, 1001) / 1000
    assert (alpha_bar - vp.alpha(t) ** 2).abs().max() < 5e-3
    sigmas = skd.VESDE().smld_sigmas(10)
    assert sigmas[0].item() == pytest.approx(0.01) and sigmas[-1].item() == pytest.approx(50.0)
    ratios = sigmas[1:] / sigmas[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, ratios[0].item()))
    cos_betas = skd.CosineVPSDE().ddpm_betas(1000)
    assert (cos_betas > 0).all() and cos_betas.max() <= 0.999


def test_float32_coefficients_keep_dtype():
    vp = skd.VPSDE()
    t = torch.tensor([0.1, 0.5], dtype=torch.float32)
    x = torch.ones(2, 3, dtype=torch.float32)
    assert vp.drift(t, x).dtype == torch.float32
    assert vp.diffusion(t, x).dtype == torch.float32
    lin = skd.DiffusionSDE.from_marginal(lambda t: 1 - t, lambda t: t, 1e-3, 0.999)
    assert lin.drift(t, x).dtype == torch.float32


# ----------------------------------------------------------------------------------------------
# schedule objects

def linear_betas(N=1000):
    return torch.linspace(1e-4, 0.02, N, dtype=torch.float64)     # DDPM (Ho et al. 2020)


def test_every_sde_holds_a_schedule_and_checked_methods_agree():
    for sde in [f() for f in PRESETS.values()] + [
            skd.DiffusionSDE.from_marginal(lambda t: 1 - t, lambda t: t, 1e-3, 0.98),
            skd.DiffusionSDE.from_betas(linear_betas())]:
        schedule = sde.schedule
        assert isinstance(schedule, skd.Schedule)
        assert (schedule.t_min, schedule.t_max) == (sde.t_min, sde.t_max)
        t = times(sde, 50)
        for name in ("alpha", "sigma", "log_snr", "f", "g2"):
            torch.testing.assert_close(getattr(sde, name)(t), getattr(schedule, name)(t))
        f, g2 = schedule.f_g2(t)
        torch.testing.assert_close(f, schedule.f(t))
        torch.testing.assert_close(g2, schedule.g2(t))
        torch.testing.assert_close(schedule.t_of_log_snr(schedule.log_snr(t)), t, rtol=1e-9, atol=1e-9)


def test_discrete_schedule_follows_dpm_solver_convention():
    betas = linear_betas()
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    sde = skd.DiffusionSDE.from_alphas_cumprod(alphas_cumprod)
    schedule = sde.schedule
    N = 1000
    assert isinstance(schedule, skd.DiscreteSchedule) and schedule.N == N
    assert sde.t_min == pytest.approx(1 / N) and sde.t_max == 1.0
    n = torch.arange(N)
    t_n = (n + 1) / N
    torch.testing.assert_close(schedule.timestep_time(n), t_n.double())
    # on the grid points: the table exactly, and the network's timestep n
    torch.testing.assert_close(schedule.alpha(t_n) ** 2, alphas_cumprod, rtol=1e-12, atol=0)
    torch.testing.assert_close(schedule.model_time(t_n), n.double(), rtol=0, atol=1e-9)
    # log alpha is linear between the grid points; f is N times the table's difference, g^2 = -2f
    log_alpha = 0.5 * torch.log(alphas_cumprod)
    mid = (t_n[:-1] + t_n[1:]) / 2
    torch.testing.assert_close(schedule.log_alpha(mid), (log_alpha[:-1] + log_alpha[1:]) / 2)
    f, g2 = schedule.f_g2(mid)
    torch.testing.assert_close(f, N * (log_alpha[1:] - log_alpha[:-1]))
    torch.testing.assert_close(g2, -2 * f)
    torch.testing.assert_close(schedule.sigma(mid) ** 2 + schedule.alpha(mid) ** 2,
                               torch.ones_like(mid))
    # the quantized model time rounds to the nearest timestep
    q = skd.DiffusionSDE.from_betas(betas, quantize=True).schedule
    assert q.model_time(torch.tensor([0.5004, 0.5006])).tolist() == [499.0, 500.0]
    # from_betas is the cumulative product
    torch.testing.assert_close(skd.DiffusionSDE.from_betas(betas).schedule.alphas_cumprod,
                               alphas_cumprod)


def test_discrete_schedule_log_snr_inverse_between_grid_points():
    schedule = skd.DiffusionSDE.from_betas(linear_betas(), quantize=False).schedule
    t = torch.rand(500, generator=torch.Generator().manual_seed(0)) * (1 - 1e-3) + 1e-3
    torch.testing.assert_close(schedule.t_of_log_snr(schedule.log_snr(t)), t, rtol=1e-10, atol=1e-12)


def test_discrete_schedule_handles_zero_terminal_snr():
    alphas_cumprod = torch.cumprod(1 - linear_betas(), 0)
    alphas_cumprod[-1] = 0.0                        # rescale_zero_terminal_snr's last entry
    sde = skd.DiffusionSDE.from_alphas_cumprod(alphas_cumprod)
    assert sde.schedule.zero_terminal_snr
    one = torch.tensor([1.0])
    assert torch.isfinite(sde.log_snr(one)).all() and torch.isfinite(sde.f(one)).all()
    assert sde.alpha(one).item() ** 2 == pytest.approx(2.0 ** -24)
    assert sde.prior_std == pytest.approx(1.0, abs=1e-7)
    data = skd.GaussianMixture.gaussian(torch.tensor([0.5, -1.0]), 0.5)
    x = skd.sample(sde, data.score_fn(sde), (4000, 2), solver="ddim", steps=50, seed=0).x
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x.mean(0), torch.tensor([0.5, -1.0]), atol=0.05, rtol=0)


@pytest.mark.parametrize("table, match", [
    ([0.9, 0.95, 0.5], "strictly decreasing"),
    ([0.9], "at least 2"),
    ([1.0, 0.5], "below 1"),
    ([0.9, float("nan")], "finite"),
    ([0.9, 1.5], r"in \[0, 1\]"),
])
def test_discrete_schedule_refuses_bad_tables(table, match):
    with pytest.raises(ValueError, match=match):
        skd.DiffusionSDE.from_alphas_cumprod(torch.tensor(table))


def test_from_betas_refuses_betas_outside_unit_interval():
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        skd.DiffusionSDE.from_betas(torch.tensor([0.1, -0.1]))


@pytest.mark.parametrize("alpha, why", [
    (lambda t: (1 - t).detach(), "detached"),
    (lambda t: torch.as_tensor(np.asarray(1 - t.detach().numpy())), "numpy"),
    (lambda t: torch.as_tensor(np.interp(t.detach().numpy(), [0, 1], [1, 0])), "np.interp"),
])
def test_from_marginal_refuses_non_differentiable_functions(alpha, why):
    with pytest.raises(ValueError, match="autograd"):
        skd.DiffusionSDE.from_marginal(alpha, lambda t: t, t_min=1e-3, t_max=0.98)


def test_from_marginal_refuses_no_grad_and_accepts_constants():
    def alpha_no_grad(t):
        with torch.no_grad():
            return 1 - t
    with pytest.raises(ValueError, match="autograd"):
        skd.DiffusionSDE.from_marginal(alpha_no_grad, lambda t: t, t_min=1e-3, t_max=0.98)
    # alpha = 1 (VE) has f = 0 legitimately
    sde = skd.DiffusionSDE.from_marginal(lambda t: 1.0, lambda t: 0.01 * 5000 ** t, t_min=1e-5)
    assert sde.f(torch.tensor([0.5])).item() == 0.0


def test_marginal_schedule_cache_gives_the_autograd_values():
    vp = skd.VPSDE()
    custom = skd.DiffusionSDE.from_marginal(lambda t: vp.schedule.alpha(t), lambda t: vp.schedule.sigma(t))
    schedule = custom.schedule
    grid = torch.linspace(1.0, 1e-3, 101)
    schedule.precompute(grid)
    for t in grid[::10]:
        f, g2 = schedule.f_g2(t)                    # a cache hit
        torch.testing.assert_close(f, vp.schedule.f(t), rtol=1e-12, atol=0)
        torch.testing.assert_close(g2, vp.schedule.g2(t), rtol=1e-12, atol=0)
    t = torch.tensor(0.123456)                      # a miss: computed, then cached
    torch.testing.assert_close(schedule.f_g2(t)[1], vp.schedule.g2(t), rtol=1e-12, atol=0)
    torch.testing.assert_close(schedule.f_g2(t)[1], vp.schedule.g2(t), rtol=1e-12, atol=0)
    # a float32 grid is cached under its float32 values too
    schedule.precompute(grid.float())
    torch.testing.assert_close(schedule.f_g2(grid.float()[3])[0], vp.schedule.f(grid.float()[3]),
                               rtol=1e-6, atol=0)
