"""GaussianMixture: exact scores, densities, samples and the single-Gaussian flow map."""
import math

import pytest
import torch

import sdekit_diffusion as skd
from sdekit_diffusion.problems import GaussianMixture


def mixture_1d():
    return GaussianMixture([0.3, 0.7], [[-2.0], [2.0]], [0.5, 0.8])


def test_score_is_gradient_of_marginal_log_prob():
    gm = GaussianMixture([0.2, 0.5, 0.3], torch.randn(3, 2, 3, 3), [0.3, 1.0, 0.0])
    for sde in (skd.VPSDE(), skd.VESDE(), skd.SubVPSDE(), skd.CosineVPSDE()):
        x = torch.randn(6, 2, 3, 3, requires_grad=True)
        t = torch.linspace(sde.t_min, sde.t_max, 6)
        logp = gm.marginal_log_prob(sde, t, x)
        (grad,) = torch.autograd.grad(logp.sum(), x)
        torch.testing.assert_close(gm.score_fn(sde)(t, x.detach()), grad, rtol=1e-10, atol=1e-10)


def test_score_is_stable_far_from_the_data():
    gm = mixture_1d()
    vp = skd.VPSDE()
    x = torch.tensor([[-1e3], [1e3]])
    s = gm.score_fn(vp)(torch.tensor([vp.t_min, vp.t_min]), x)
    assert torch.isfinite(s).all()


def test_log_prob_matches_torch_distributions():
    gm = mixture_1d()
    x = torch.linspace(-5, 5, 101)[:, None]
    normal = torch.distributions.Normal(torch.tensor([-2.0, 2.0]), torch.tensor([0.5, 0.8]))
    expected = torch.logsumexp(normal.log_prob(x) + torch.tensor([0.3, 0.7]).log(), dim=1)
    torch.testing.assert_close(gm.log_prob(x), expected)
    # the marginal at t with alpha=1, sigma=s is the data convolved with N(0, s^2)
    ve = skd.VESDE()
    t = torch.full((101,), 0.5)
    s = ve.sigma(t)[0]
    widened = torch.distributions.Normal(torch.tensor([-2.0, 2.0]),
                                         torch.sqrt(torch.tensor([0.25, 0.64]) + s ** 2))
    expected = torch.logsumexp(widened.log_prob(x) + torch.tensor([0.3, 0.7]).log(), dim=1)
    torch.testing.assert_close(gm.marginal_log_prob(ve, t, x), expected)


def test_sample_moments():
    gm = mixture_1d()
    x = gm.sample(200_000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (200_000, 1)
    mean = 0.3 * -2 + 0.7 * 2
    second = 0.3 * (4 + 0.25) + 0.7 * (4 + 0.64)
    assert x.mean().item() == pytest.approx(mean, abs=0.02)
    assert (x ** 2).mean().item() == pytest.approx(second, abs=0.05)
    assert (x > 0).double().mean().item() == pytest.approx(0.7, abs=0.005)


def test_exact_flow_is_an_invertible_map_of_marginals():
    gm = GaussianMixture.gaussian(torch.tensor([1.0, -1.0]), 0.5)
    vp = skd.VPSDE()
    x_T = torch.randn(4, 2)
    x_0 = gm.exact_flow(vp, x_T, vp.t_max, vp.t_min)
    torch.testing.assert_close(gm.exact_flow(vp, x_0, vp.t_min, vp.t_max), x_T)
    with pytest.raises(ValueError, match="single Gaussian"):
        mixture_1d().exact_flow(vp, x_T[:, :1], vp.t_max, vp.t_min)


def test_invalid_mixtures_are_refused():
    with pytest.raises(ValueError, match="shape"):
        GaussianMixture([0.5, 0.5], [[0.0], [1.0], [2.0]], [1.0, 1.0])
    with pytest.raises(ValueError, match="positive"):
        GaussianMixture([0.5, -0.5], [[0.0], [1.0]], 1.0)
    with pytest.raises(ValueError, match="K, \\*dims"):
        GaussianMixture([1.0], [0.0], 1.0)
