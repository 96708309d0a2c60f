"""Improved DDPM's discrete bound against closed forms: Gaussian KL, the discretized decoder, the chain's
posteriors, the whole VLB of Gaussian data under the exact reverse chain, importance weights, and the
hybrid objective's stop-gradient."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sdekit_diffusion as skd
from sdekit_diffusion.chain import DiscreteChain, respaced_timesteps
from sdekit_diffusion.losses import LossSecondMomentSampler, hybrid_loss, simple_loss, vlb_loss
from sdekit_diffusion.vlb import (LOG2, chain_terms, discretized_gaussian_log_likelihood, normal_kl, quantize,
                                  vlb_bits_per_dim)

BETAS = torch.linspace(0.01, 0.2, 30, dtype=torch.float64)   # a short VP chain that keeps some signal


# -- Gaussian pieces ---------------------------------------------------------------------------------

def test_normal_kl_matches_torch_distributions():
    generator = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(1000, generator=generator), torch.randn(1000, generator=generator)
    l1, l2 = torch.randn(1000, generator=generator), torch.randn(1000, generator=generator)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * l1).exp()),
                                                 torch.distributions.Normal(m2, (0.5 * l2).exp()))
    torch.testing.assert_close(normal_kl(m1, l1, m2, l2), expected, rtol=1e-12, atol=1e-12)
    assert normal_kl(m1, l1, m1, l1).abs().max() < 1e-15


@pytest.mark.parametrize("bits", [1, 2, 5, 8])
def test_discretized_decoder_sums_to_one_over_the_bins(bits):
    """Every mean and scale: the 2^bits bin probabilities sum to 1 (the end bins reach +-inf), and each
    interior bin is Phi(b) - Phi(a) of its edges."""
    levels = 2 ** bits
    x = (2 * torch.arange(levels, dtype=torch.float64) / (levels - 1) - 1)[:, None]
    generator = torch.Generator().manual_seed(bits)
    mean = (3 * torch.rand(1, 50, generator=generator, dtype=torch.float64) - 1.5).expand(levels, 50)
    log_scale = (torch.rand(1, 50, generator=generator, dtype=torch.float64) * 7 - 6).expand(levels, 50)
    log_p = discretized_gaussian_log_likelihood(x.expand(levels, 50), mean, log_scale, bits)
    torch.testing.assert_close(torch.logsumexp(log_p, 0), torch.zeros(50, dtype=torch.float64), atol=1e-10, rtol=0)
    normal = torch.distributions.Normal(mean[0], log_scale[0].exp())
    half = 1.0 / (levels - 1)
    k = levels // 2
    direct = normal.cdf(x[k] + half) - normal.cdf(x[k] - half) if levels > 2 else 1 - normal.cdf(x[k] - half)
    torch.testing.assert_close(log_p[k].exp(), direct, rtol=1e-9, atol=1e-12)


def test_decoder_is_stable_far_in_the_tails():
    x = torch.tensor([0.5, -0.5, 1.0], dtype=torch.float64)
    log_p = discretized_gaussian_log_likelihood(x, torch.tensor([-30.0, 30.0, -30.0], dtype=torch.float64),
                                                torch.zeros(3, dtype=torch.float64), 8)
    assert torch.isfinite(log_p).all() and (log_p < -300).all()   # float64 underflow would give -inf


def test_quantize_and_the_bit_check():
    x = quantize(torch.linspace(-1.2, 1.2, 101), 3)
    assert set(torch.round((x + 1) * 7 / 2).tolist()) <= set(range(8)) and x.min() == -1 and x.max() == 1
    net = skd.nets.MLP(2, hidden=8, depth=1)
    with pytest.raises(ValueError, match="8-bit data.*quantize"):
        vlb_bits_per_dim(skd.DiffusionSDE.from_betas(BETAS), net, torch.full((4, 2), 0.3))


# -- the chain -----------------------------------------------------------------------------------------

def test_chain_of_a_table_has_ddpms_posteriors():
    """beta, beta~ and the posterior mean coefficients of a VP table are DDPM's (improved-diffusion's
    gaussian_diffusion.py), from the marginals alone."""
    chain = DiscreteChain.from_sde(skd.DiffusionSDE.from_betas(BETAS))
    abar = torch.cumprod(1 - BETAS, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    torch.testing.assert_close(chain.beta, BETAS, rtol=1e-10, atol=0)
    torch.testing.assert_close(chain.beta_tilde, BETAS * (1 - abar_prev) / (1 - abar), rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(chain.coef_x0, BETAS * abar_prev.sqrt() / (1 - abar), rtol=1e-10, atol=0)
    torch.testing.assert_close(chain.coef_x, (1 - abar_prev) * (1 - BETAS).sqrt() / (1 - abar), rtol=1e-10, atol=0)
    assert chain.log_beta_tilde[0] == chain.log_beta_tilde[1] == math.log(chain.beta_tilde[1])
    assert chain.T == 30 and torch.equal(chain.model_time(torch.arange(30)), torch.arange(30, dtype=torch.float32))


def test_respaced_chain_recomputes_betas_from_alphas_cumprod():
    """Improved DDPM §4: beta_{S_i} = 1 - abar_{S_i} / abar_{S_{i-1}} on a subsequence S; and the
    subsequence of K steps is improved-diffusion's space_timesteps(T, [K])."""
    assert respaced_timesteps(1000, 25)[:6].tolist() == [0, 42, 83, 125, 166, 208]
    assert respaced_timesteps(1000, 50)[-3:].tolist() == [958, 979, 999]
    assert len(respaced_timesteps(4000, 100)) == 100 and respaced_timesteps(100, 10).tolist()[1] == 11
    betas = skd.VPSDE().ddpm_betas(1000)
    chain = DiscreteChain.from_sde(skd.DiffusionSDE.from_betas(betas))
    S = respaced_timesteps(1000, 25)
    respaced = chain.respace(S)
    abar = torch.cumprod(1 - betas, 0)[S]
    expected = 1 - abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    torch.testing.assert_close(respaced.beta, expected, rtol=1e-9, atol=0)
    assert torch.equal(respaced.timesteps, torch.from_numpy(S)) and respaced.T == 25
    torch.testing.assert_close(respaced.model_time(torch.arange(25)), torch.from_numpy(S).float())
    # the ancestral sampler's step on that grid has exactly these betas and posterior variances
    from types import SimpleNamespace
    from sdekit_diffusion.samplers.ancestral import step_log_variances, transition
    _, sigma2_ts, (_, sigma, _) = transition(SimpleNamespace(sde=chain.sde), respaced.sampling_grid())
    log_beta, log_beta_tilde = step_log_variances(sigma2_ts, sigma)
    torch.testing.assert_close(log_beta, respaced.log_beta.flip(0)[:-1], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(log_beta_tilde, respaced.log_beta_tilde.flip(0)[:-1], rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="increasing"):
        chain.respace([5, 3])


def test_chain_of_a_continuous_sde_spans_its_time_range():
    chain = DiscreteChain.from_sde(skd.VESDE(), steps=50)
    assert chain.times[0] == skd.VESDE().t_min and chain.times[-1] == 1.0 and chain.T == 50
    sigma = chain.sigma
    torch.testing.assert_close(chain.beta[1:], sigma[1:] ** 2 - sigma[:-1] ** 2, rtol=1e-9, atol=0)   # SMLD's
    with pytest.raises(ValueError, match="steps"):
        DiscreteChain.from_sde(skd.DiffusionSDE.from_betas(BETAS), steps=10)


# -- the whole bound of Gaussian data ----------------------------------------------------------------

MU, S, D = 0.3, 0.5, 3


def exact_reverse_net(chain: DiscreteChain):
    """The exact reverse chain of data N(MU, S^2 I) as a learned-variance eps-network: mean E[x_{n-1} | x_n]
    and variance Var[x_{n-1} | x_n] = beta~_n + coef_x0_n^2 Var[x0 | x_n] (n >= 1), Var[x0 | x_(0)] (n = 0),
    written as v of eq. 15."""
    class Exact(torch.nn.Module):
        learn_variance = True

        def forward(self, x, model_time):
            n = model_time.round().long()
            a, s = chain.at(n, x, "alpha"), chain.at(n, x, "sigma")
            x0_hat = MU + a * S ** 2 / (a ** 2 * S ** 2 + s ** 2) * (x - a * MU)
            var_x0 = S ** 2 * s ** 2 / (a ** 2 * S ** 2 + s ** 2)
            first = (n == 0)[:, None]
            variance = torch.where(first, var_x0, chain.at(n, x, "beta_tilde") + chain.at(n, x, "coef_x0") ** 2 * var_x0)
            low, high = chain.at(n, x, "log_beta_tilde"), chain.at(n, x, "log_beta")
            v = 2 * (variance.log() - low) / (high - low) - 1
            return torch.cat([(x - a * x0_hat) / s, v.expand_as(x)], dim=1)
    return Exact()


def test_vlb_of_gaussian_data_under_the_exact_reverse_chain():
    """With p(x_{n-1} | x_n) the true reverse conditionals of data N(MU, S^2), E[L_n] = 1/2 log(V_n / beta~_n)
    for the KL terms, 1/2 log(2 pi e V_0) for the (continuous) decoder, and the whole bound is
    H(x0) + KL(q(x_(T-1)) || prior): the chain rule of KL, with every other gap zero."""
    sde = skd.DiffusionSDE.from_betas(BETAS)
    chain = DiscreteChain.from_sde(sde)
    generator = torch.Generator().manual_seed(0)
    x0 = MU + S * torch.randn(20000, D, generator=generator, dtype=torch.float64)
    result = vlb_bits_per_dim(sde, exact_reverse_net(chain), x0, bits=None, generator=generator, return_terms=True)
    a2, s2 = chain.alpha ** 2, chain.sigma ** 2
    var_x0 = S ** 2 * s2 / (a2 * S ** 2 + s2)
    expected = torch.empty(chain.T, dtype=torch.float64)
    expected[0] = 0.5 * math.log(2 * math.pi * math.e * var_x0[0])
    expected[1:] = 0.5 * torch.log((chain.beta_tilde[1:] + chain.coef_x0[1:] ** 2 * var_x0[1:]) / chain.beta_tilde[1:])
    expected /= LOG2
    error = result.terms.std(0) / math.sqrt(len(x0))
    assert ((result.terms.mean(0) - expected).abs() < 4 * error + 1e-9).all()
    a_T, s_T, prior = chain.alpha[-1].item(), chain.sigma[-1].item(), sde.prior_std
    marginal_var = a_T ** 2 * S ** 2 + s_T ** 2
    kl_marginal = 0.5 * (math.log(prior ** 2 / marginal_var) - 1 + (marginal_var + (a_T * MU) ** 2) / prior ** 2)
    total = (0.5 * math.log(2 * math.pi * math.e * S ** 2) + kl_marginal) / LOG2
    assert abs(expected.sum().item() + result.prior.mean().item() - total) < 2e-3   # the identity itself
    assert abs(result.total.mean().item() - total) < 4 * result.total.std().item() / math.sqrt(len(x0))
    # a Monte-Carlo subset of the timesteps estimates the same bound
    subset = vlb_bits_per_dim(sde, exact_reverse_net(chain), x0, bits=None, timesteps=10,
                              generator=torch.Generator().manual_seed(1), return_terms=True)
    assert len(subset.timesteps) == 10 and torch.isnan(subset.terms).any()


def test_fixed_variances_bound_the_exact_one_from_above():
    """The exact reverse variance minimises each KL term: beta~ and beta give larger terms; on 8-bit data the
    bound is a proper code length: no lower than the data's entropy (the plug-in estimate, biased low)."""
    sde = skd.DiffusionSDE.from_betas(BETAS)
    chain = DiscreteChain.from_sde(sde)
    generator = torch.Generator().manual_seed(2)
    x0 = quantize(MU + S * torch.randn(4000, D, generator=generator, dtype=torch.float64), 8)
    net = exact_reverse_net(chain)
    terms = {variance: vlb_bits_per_dim(sde, net, x0, variance=variance, generator=torch.Generator().manual_seed(3),
                                        return_terms=True).terms.mean(0) for variance in ("learned", "beta_tilde", "beta")}
    assert (terms["beta_tilde"][1:] >= terms["learned"][1:] - 1e-6).all()
    assert (terms["beta"][1:] >= terms["learned"][1:] - 1e-6).all()
    counts = torch.bincount(torch.round((x0.flatten() + 1) * 255 / 2).long(), minlength=256).double()
    frequencies = counts[counts > 0] / counts.sum()
    entropy = -(frequencies * frequencies.log2()).sum().item()
    bound = terms["learned"].sum().item() + skd.vlb.prior_bits_per_dim(chain, x0).mean().item()
    assert entropy - 0.05 < bound < entropy + 0.5


# -- importance sampling (eq. 18) ---------------------------------------------------------------------

def test_importance_sampler_is_uniform_until_filled_then_follows_the_second_moment():
    sampler = LossSecondMomentSampler(4, history=3, uniform=0.01)
    values = torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    for _ in range(2):
        sampler.update(torch.arange(4), values)
    assert not sampler.warmed_up() and torch.equal(sampler.probabilities(), torch.full((4,), 0.25, dtype=torch.float64))
    sampler.update(torch.arange(3), values[:3])     # timestep 3 still has 2 of 3
    assert not sampler.warmed_up()
    sampler.update(torch.tensor([3]), values[3:])
    p = sampler.probabilities()
    expected = 0.99 * values / values.sum() + 0.01 / 4     # sqrt(E[L^2]) = L for a constant history
    torch.testing.assert_close(p, expected)
    n, weights = sampler.sample(200_000, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(n, minlength=4).double() / len(n)
    assert (frequencies - p).abs().max() < 4 * math.sqrt(0.25 / len(n))
    torch.testing.assert_close(weights, 1 / (4 * p[n]))
    # unbiased: E_{n ~ p}[w_n L_n] = mean_n L_n, with a smaller variance than uniform draws
    estimate = weights * values[n]
    assert abs(estimate.mean().item() - values.mean().item()) < 4 * estimate.std().item() / math.sqrt(len(n))
    assert estimate.std() < 0.5 * values.std(unbiased=False)


def test_importance_history_keeps_the_last_values_per_timestep():
    sampler = LossSecondMomentSampler(3, history=4)
    sampler.update(torch.tensor([0] * 6 + [2]), torch.arange(7, dtype=torch.float64))   # 6 values for timestep 0
    assert sorted(sampler.history[0].tolist()) == [2.0, 3.0, 4.0, 5.0] and sampler.counts.tolist() == [6, 0, 1]
    sampler.update(torch.tensor([0, 0]), torch.tensor([10.0, 11.0], dtype=torch.float64))
    assert sorted(sampler.history[0].tolist()) == [4.0, 5.0, 10.0, 11.0]
    state = sampler.state_dict()
    copy = LossSecondMomentSampler(3, history=4)
    copy.load_state_dict(state)
    assert torch.equal(copy.history, sampler.history) and torch.equal(copy.counts, sampler.counts)
    with pytest.raises(ValueError, match="another length"):
        LossSecondMomentSampler(5, history=4).load_state_dict(state)


# -- the losses ----------------------------------------------------------------------------------------

class TwoHeads(torch.nn.Module):
    """eps and v from separate parameters, to see where each loss's gradient goes."""
    learn_variance = True

    def __init__(self):
        super().__init__()
        self.eps = torch.nn.Linear(3, 2, dtype=torch.float64)
        self.v = torch.nn.Linear(3, 2, dtype=torch.float64)

    def forward(self, x, t):
        features = torch.cat([x, t[:, None].to(x.dtype) / 30], dim=1)
        return torch.cat([self.eps(features), torch.tanh(self.v(features))], dim=1)


def gradients(loss, net):
    net.zero_grad()
    loss.backward()
    return {name: p.grad.clone() for name, p in net.named_parameters()}


def test_hybrid_is_simple_plus_weighted_vlb_with_the_mean_gradient_stopped():
    sde = skd.DiffusionSDE.from_betas(BETAS)
    torch.manual_seed(0)
    net = TwoHeads()
    x0 = quantize(torch.rand(256, 2, dtype=torch.float64) * 2 - 1)

    def draw(loss, **options):
        return loss(sde, net, x0, generator=torch.Generator().manual_seed(7), **options)

    hybrid, simple, vlb = draw(hybrid_loss), draw(simple_loss), draw(vlb_loss)
    torch.testing.assert_close(hybrid, simple + 0.001 * vlb)     # same timesteps and noise from one seed
    grad_hybrid, grad_simple, grad_vlb = gradients(draw(hybrid_loss), net), gradients(draw(simple_loss), net), \
        gradients(draw(vlb_loss), net)
    for name in ("eps.weight", "eps.bias"):   # L_vlb does not reach the mean
        torch.testing.assert_close(grad_hybrid[name], grad_simple[name])
    for name in ("v.weight", "v.bias"):       # the variance learns from L_vlb only
        torch.testing.assert_close(grad_hybrid[name], 0.001 * grad_vlb[name])
        assert grad_simple[name].abs().max() == 0 and grad_hybrid[name].abs().max() > 0
    assert grad_vlb["eps.weight"].abs().max() > 0    # L_vlb alone trains the mean too
    with pytest.raises(ValueError, match="learn_variance=True"):
        hybrid_loss(sde, skd.nets.MLP(2, hidden=8, depth=1), x0.float())


def test_vlb_loss_estimates_the_whole_bound():
    """E[vlb_loss] = sum_n L_n + L_T: at fixed timesteps each per-sample value is T L_n + L_T."""
    sde = skd.DiffusionSDE.from_betas(BETAS)
    chain = DiscreteChain.from_sde(sde)
    x0 = MU + S * torch.randn(4000, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    net = exact_reverse_net(chain)
    bound = vlb_bits_per_dim(sde, net, x0, bits=None, generator=torch.Generator().manual_seed(5)).mean().item()
    losses = vlb_loss(sde, net, x0, bits=None, generator=torch.Generator().manual_seed(6), reduction="none")
    assert abs(losses.mean().item() - bound) < 4 * losses.std().item() / math.sqrt(len(x0))
    n = torch.full((len(x0),), 7)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    at_seven = chain_terms(chain, net, x0, n, noise, bits=None, learn_variance=True).vlb
    fixed = vlb_loss(chain, net, x0, bits=None, n=7, generator=torch.Generator().manual_seed(8), reduction="none")
    torch.testing.assert_close(fixed, chain.T * at_seven + skd.vlb.prior_bits_per_dim(chain, x0))
