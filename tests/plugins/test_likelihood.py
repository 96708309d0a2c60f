"""Log-likelihoods through the probability-flow ODE against analytic Gaussian-mixture densities."""
import math

import pytest
import torch

import sdekit
import sdekit_diffusion as skd
from sdekit_diffusion.likelihood import LikelihoodResult, bits_per_dim, log_likelihood

SDES = {"vp": skd.VPSDE, "ve": skd.VESDE}


def mixture(d: int, seed: int = 0) -> skd.GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    return skd.GaussianMixture([0.3, 0.7], torch.randn(2, d, generator=g), [0.5, 0.8])


def data(gm: skd.GaussianMixture, n: int = 6, seed: int = 1) -> torch.Tensor:
    return gm.sample(n, torch.Generator().manual_seed(seed))


def exact_prior(gm, sde):
    return lambda z: gm.marginal_log_prob(sde, sde.t_max, z)


@pytest.mark.parametrize("name", ["vp", "ve"])
@pytest.mark.parametrize("d", [2, 3])
def test_exact_trace_matches_analytic_density(name, d):
    sde, gm = SDES[name](), mixture(d)
    x = data(gm)
    result = log_likelihood(sde, gm.score_fn(sde), x, exact_trace=True, rtol=1e-6, atol=1e-6,
                            prior_logp=exact_prior(gm, sde), return_details=True)
    assert isinstance(result, LikelihoodResult) and result.log_p.shape == (x.shape[0],)
    # the identity is exact for p_{t_min}; the data density differs by the t_min smoothing only
    marginal = gm.marginal_log_prob(sde, sde.t_min, x)
    assert torch.allclose(result.log_p, marginal, atol=1e-4, rtol=0)
    assert (result.log_p - gm.log_prob(x)).abs().max() / d < 1e-3
    assert result.nfe > 0 and result.n_steps > 0


@pytest.mark.parametrize("name,make", [("vp", lambda: skd.VPSDE(beta_max=40.0)),
                                       ("ve", lambda: skd.VESDE(sigma_max=2000.0))])
def test_default_prior_matches_analytic_density_when_the_prior_fits(name, make):
    # alpha(t_max) mu negligible next to sigma(t_max): exp(-10) for VP, 1/2000 for VE
    sde, gm = make(), mixture(2)
    x = data(gm)
    log_p = log_likelihood(sde, gm.score_fn(sde), x, exact_trace=True, rtol=1e-6, atol=1e-6)
    assert (log_p - gm.log_prob(x)).abs().max() / 2 < 1e-3


def test_default_prior_mismatch_is_the_prior_difference():
    sde, gm = skd.VPSDE(), mixture(2)
    x = data(gm)
    r = log_likelihood(sde, gm.score_fn(sde), x, exact_trace=True, rtol=1e-6, atol=1e-6,
                       return_details=True)
    gap = r.log_p - gm.marginal_log_prob(sde, sde.t_min, x)
    expected = sde.prior_logp(r.z) - gm.marginal_log_prob(sde, sde.t_max, r.z)
    assert torch.allclose(gap, expected, atol=1e-4, rtol=0)
    assert gap.abs().max() < 0.1  # alpha(1) ~ 6.6e-3: a small bias


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_agrees_within_standard_errors(probe):
    sde, gm = skd.VPSDE(), mixture(3)
    x = data(gm, n=3)
    score, prior = gm.score_fn(sde), exact_prior(gm, sde)
    exact = log_likelihood(sde, score, x, exact_trace=True, rtol=1e-6, atol=1e-6,
                           prior_logp=prior)
    repeats = 24  # independent probes per sample: each copy of x draws its own
    x_rep = x.repeat(repeats, 1)
    estimate = log_likelihood(sde, score, x_rep, hutchinson=probe, n_probes=2, rtol=1e-6,
                              atol=1e-6, prior_logp=prior,
                              generator=torch.Generator().manual_seed(3))
    estimate = estimate.reshape(repeats, x.shape[0])
    mean = estimate.mean(0)
    standard_error = estimate.std(0) / math.sqrt(repeats)
    assert bool((standard_error > 0).all())   # really stochastic
    assert bool(((mean - exact).abs() <= 4 * standard_error + 1e-4).all())


def test_hutchinson_is_exact_for_a_single_gaussian_with_rademacher_probes():
    # v is linear in x with a diagonal Jacobian: eps^T J eps = tr J for +-1 probes
    sde = skd.VPSDE()
    gm = skd.GaussianMixture.gaussian(torch.tensor([0.5, -1.0, 2.0]), 0.7)
    x = data(gm)
    kwargs = dict(rtol=1e-6, atol=1e-6, prior_logp=exact_prior(gm, sde))
    exact = log_likelihood(sde, gm.score_fn(sde), x, exact_trace=True, **kwargs)
    estimate = log_likelihood(sde, gm.score_fn(sde), x, generator=torch.Generator().manual_seed(0),
                              **kwargs)
    assert torch.allclose(estimate, exact, atol=1e-6, rtol=0)


def test_t_min_effect_is_small_and_exact():
    sde, gm = skd.VPSDE(), mixture(2)
    x = data(gm)
    prior = exact_prior(gm, sde)
    values = {}
    for t_min in (sde.t_min, 1e-2):
        values[t_min] = log_likelihood(sde, gm.score_fn(sde), x, t_min=t_min, exact_trace=True,
                                       rtol=1e-6, atol=1e-6, prior_logp=prior)
        assert torch.allclose(values[t_min], gm.marginal_log_prob(sde, t_min, x), atol=1e-4, rtol=0)
    shift = (values[1e-2] - values[sde.t_min]).abs().max()
    assert 0 < shift < 0.05 * 2


def test_bits_per_dim_formula():
    sde, gm = skd.VPSDE(), mixture(2)
    x = data(gm, n=3)
    kwargs = dict(exact_trace=True, rtol=1e-6, atol=1e-6)
    log_p = log_likelihood(sde, gm.score_fn(sde), x, **kwargs)
    continuous = bits_per_dim(sde, gm.score_fn(sde), x, **kwargs)
    assert torch.allclose(continuous, -log_p / (2 * math.log(2)))
    discrete = bits_per_dim(sde, gm.score_fn(sde), x, n_bits=8, data_range=2.0, **kwargs)
    assert torch.allclose(discrete, continuous + 7.0)   # 8-bit data on [-1, 1]: score_sde's offset
    assert torch.allclose(bits_per_dim(sde, gm.score_fn(sde), x, n_bits=8, data_range=1.0,
                                       **kwargs), continuous + 8.0)


def test_exports():
    assert skd.log_likelihood is log_likelihood and skd.bits_per_dim is bits_per_dim


def test_bad_inputs_raise_clear_errors():
    sde, gm = skd.VPSDE(), mixture(2)
    score = gm.score_fn(sde)
    with pytest.raises(sdekit.ShapeError, match=r"x\[None\]"):
        log_likelihood(sde, score, torch.zeros(2))
    with pytest.raises(sdekit.ShapeError, match="shape"):
        log_likelihood(sde, score, torch.zeros(4, 3), exact_trace=True)   # 3-D data, 2-D score
    with pytest.raises(TypeError):
        log_likelihood(sde, score, torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(sdekit.NonFiniteError):
        log_likelihood(sde, score, torch.full((4, 2), float("nan")))
    with pytest.raises(ValueError, match="hutchinson"):
        log_likelihood(sde, score, torch.zeros(4, 2), hutchinson="normal")
    with pytest.raises(ValueError, match="n_probes"):
        log_likelihood(sde, score, torch.zeros(4, 2), n_probes=0)
    with pytest.raises(ValueError, match="t_min"):
        log_likelihood(sde, score, torch.zeros(4, 2), t_min=1.0)


def test_refuses_a_score_autograd_cannot_differentiate():
    """A no_grad, detached or numpy score makes the divergence wrong (0.1 measured -12.11 nats
    where the exact value is -0.124): it is refused before the solve."""
    import numpy as np

    sde, gm = skd.VPSDE(), mixture(2)
    score = gm.score_fn(sde)

    def no_grad(t, x):
        with torch.no_grad():
            return score(t, x)

    bad = {"no_grad": no_grad,
           "detached": lambda t, x: score(t, x.detach()),
           "numpy": lambda t, x: torch.as_tensor(np.asarray(score(t, x).detach().numpy())),
           "half detached": lambda t, x: 0.5 * score(t, x) + 0.5 * score(t, x).detach()}
    for name, fn in bad.items():
        with pytest.raises(ValueError, match="autograd"):
            log_likelihood(sde, fn, data(gm), exact_trace=True)
    # a differentiable score in float32 passes the check
    log_likelihood(sde, score, data(gm).float(), rtol=1e-3, atol=1e-3)


def test_float32_runs():
    sde, gm = skd.VPSDE(), mixture(2)
    x = data(gm).float()
    log_p = log_likelihood(sde, gm.score_fn(sde), x, exact_trace=True, rtol=1e-4, atol=1e-4)
    assert log_p.dtype == torch.float32
    assert (log_p.double() - gm.log_prob(x.double())).abs().max() < 0.1


def test_runs_under_inference_mode():
    sde, gm = skd.VPSDE(), mixture(2)
    x = data(gm, n=2)
    kwargs = dict(exact_trace=True, rtol=1e-5, atol=1e-5)
    expected = log_likelihood(sde, gm.score_fn(sde), x, **kwargs)
    with torch.inference_mode():
        got = log_likelihood(sde, gm.score_fn(sde), x.clone(), **kwargs)
    assert torch.allclose(got, expected)
