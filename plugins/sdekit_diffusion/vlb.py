r"""The discrete variational bound of a diffusion model, term by term, in bits per dimension.

On a :class:`~sdekit_diffusion.chain.DiscreteChain` of ``T`` timesteps (data below timestep 0) the
reverse model is :math:`p_\theta(x_{n-1} \mid x_n) = \mathcal N(\mu_\theta(x_n, n), \Sigma_\theta(x_n, n))`
with the posterior mean of the network's data prediction,
:math:`\mu_\theta = \tilde\mu_n(x_n, \hat x_0)`, and a variance that is fixed (:math:`\tilde\beta_n`
or :math:`\beta_n`) or learned (:mod:`sdekit_diffusion.variance`). The negative log-likelihood of
:math:`x_0` is bounded by (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021, "Improved DDPM", eq. 4-7;
their indices are one above the timesteps ``n`` here)

.. math::
    L_{vlb} = \underbrace{-\log p_\theta(x_0 \mid x_{(0)})}_{L_0,\ n = 0}
      + \sum_{n=1}^{T-1} \underbrace{\mathbb E_q\,
        D_{KL}\bigl(q(x_{(n-1)} \mid x_{(n)}, x_0)\,\|\,p_\theta(x_{(n-1)} \mid x_{(n)})\bigr)}_{L_n}
      + \underbrace{D_{KL}\bigl(q(x_{(T-1)} \mid x_0)\,\|\,\mathcal N(0, \sigma(t_{max})^2 I)\bigr)}_{L_T}

(:math:`x_{(n)}` the state at timestep ``n``), each term averaged over the ``D`` dimensions and
divided by :math:`\log 2`: bits per dimension, the unit the paper reports. :math:`L_0` is the
discretized Gaussian decoder of Ho et al. (eq. 13) for ``bits``-bit data scaled to ``[-1, 1]``
(levels :math:`2k/(2^{bits} - 1) - 1`): the probability of the bin of width
:math:`2/(2^{bits}-1)` around :math:`x_0`, the two end bins open to :math:`\pm\infty`, so the
:math:`2^{bits}` bins sum to 1; ``bits=None`` uses the Gaussian density instead (continuous data;
the bound is then on the differential entropy). Deviation from improved-diffusion: the normal CDF is
exact (``torch.special.log_ndtr``, differences taken in log space) rather than the tanh approximation
with a 1e-12 floor.

Conventions taken from improved-diffusion (``gaussian_diffusion.py``): at ``n = 0`` the posterior
variance :math:`\tilde\beta_0 = 0` is replaced by :math:`\tilde\beta_1` in its logarithm, and the
fixed variance ``"beta"`` is :math:`\tilde\beta_1` there ("to get a better decoder log likelihood").

:func:`chain_terms` evaluates the network once for a batch of timesteps and returns the term
:math:`L_n` and the squared error of its prediction (what :func:`~sdekit_diffusion.losses.vlb_loss`,
:func:`~sdekit_diffusion.losses.hybrid_loss` and :func:`~sdekit_diffusion.losses.simple_loss`
train on); :func:`vlb_bits_per_dim` sums every term exactly over ``n`` (one draw of
:math:`x_{(n)} \sim q(x_{(n)} \mid x_0)` per term and sample, as improved-diffusion's
``calc_bpd_loop``), beside the probability-flow :func:`~sdekit_diffusion.bits_per_dim`.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple

import torch

from .chain import DiscreteChain
from .score import PREDICTIONS, network_output
from .sde import DiffusionSDE, append_dims
from .variance import VARIANCES, interpolated_log_variance, split_output

LOG2 = math.log(2.0)


# -- Gaussian pieces ---------------------------------------------------------------------------------

def normal_kl(mean1: torch.Tensor, log_var1: torch.Tensor, mean2: torch.Tensor,
              log_var2: torch.Tensor) -> torch.Tensor:
    r"""Elementwise :math:`D_{KL}(\mathcal N(\mu_1, e^{\ell_1}) \,\|\, \mathcal N(\mu_2, e^{\ell_2}))
    = \tfrac12(-1 + \ell_2 - \ell_1 + e^{\ell_1 - \ell_2} + (\mu_1 - \mu_2)^2 e^{-\ell_2})`, nats."""
    return 0.5 * (-1.0 + log_var2 - log_var1 + torch.exp(log_var1 - log_var2)
                  + (mean1 - mean2) ** 2 * torch.exp(-log_var2))


def _log_normal_interval(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    r""":math:`\log(\Phi(b) - \Phi(a))` for :math:`a < b` (either may be infinite), stable in both tails:
    an interval right of 0 is mirrored to the left, and
    :math:`\log(\Phi(b) - \Phi(a)) = \log\Phi(b) + \log(-\mathrm{expm1}(\log\Phi(a) - \log\Phi(b)))`."""
    mirror = lower > 0
    a = torch.where(mirror, -upper, lower)
    b = torch.where(mirror, -lower, upper)
    log_b = torch.special.log_ndtr(b)
    return log_b + torch.log(-torch.expm1(torch.special.log_ndtr(a) - log_b))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                                        bits: int = 8) -> torch.Tensor:
    r"""Elementwise :math:`\log P(\text{bin of } x)` under :math:`\mathcal N(\text{mean}, e^{2\,\text{log\_scale}})`
    for ``bits``-bit data in ``[-1, 1]`` (module docstring): the bin is
    :math:`[x - \delta, x + \delta]`, :math:`\delta = 1/(2^{bits} - 1)`, with the lowest bin open to
    :math:`-\infty` and the highest to :math:`+\infty`. Computed in float64, returned in ``x``'s dtype."""
    half_bin = 1.0 / (2 ** bits - 1)
    x64, mean64, inv_scale = x.double(), mean.double(), torch.exp(-log_scale.double())
    lower = torch.where(x64 < -1 + half_bin, -math.inf, (x64 - half_bin - mean64) * inv_scale)
    upper = torch.where(x64 > 1 - half_bin, math.inf, (x64 + half_bin - mean64) * inv_scale)
    return _log_normal_interval(lower, upper).to(x.dtype)


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    r"""Elementwise :math:`\log\mathcal N(x; \text{mean}, e^{\text{log\_var}})`, nats."""
    return -0.5 * (math.log(2 * math.pi) + log_var + (x - mean) ** 2 * torch.exp(-log_var))


def quantize(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """``x`` in ``[-1, 1]`` rounded to the nearest of the ``2^bits`` levels ``2k/(2^bits - 1) - 1``."""
    levels = 2 ** _bits(bits) - 1
    return torch.round((x.clamp(-1, 1) + 1) * levels / 2) * 2 / levels - 1


def _bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an integer in 1..16 (the data's bit depth), or None for continuous "
                         f"data, got {bits!r}")
    return int(bits)


def check_quantized(x: torch.Tensor, bits: int | None) -> None:
    """:class:`ValueError` unless ``x`` lies on the ``bits``-bit grid of ``[-1, 1]`` (one host sync)."""
    if bits is None:
        return
    bits = _bits(bits)
    levels = 2 ** bits - 1
    position = (x.double() + 1) * levels / 2
    off = (position - position.round()).abs().max().item() if x.numel() else 0.0
    if x.numel() and (x.min().item() < -1 - 1e-6 or x.max().item() > 1 + 1e-6 or off > 1e-3):
        raise ValueError(f"the discretized decoder needs {bits}-bit data in [-1, 1] (values 2k/{levels} - 1); "
                         f"these are not (range [{x.min().item():.4g}, {x.max().item():.4g}], up to {off:.3g} of a "
                         f"level off the grid). Quantize them with sdekit_diffusion.vlb.quantize(x, {bits}), or "
                         "give bits=None for continuous data")


# -- one reverse step ------------------------------------------------------------------------------

def as_chain(sde_or_chain, steps: int | None = None) -> DiscreteChain:
    """A :class:`DiscreteChain` from a chain (``steps`` must be ``None``) or a :class:`DiffusionSDE`
    (:meth:`DiscreteChain.from_sde`, cached per SDE object and ``steps``)."""
    if isinstance(sde_or_chain, DiscreteChain):
        if steps is not None and steps != sde_or_chain.T:
            raise ValueError(f"a chain of T = {sde_or_chain.T} timesteps was given with steps={steps!r}; "
                             "drop steps= or respace the chain")
        return sde_or_chain
    if isinstance(sde_or_chain, DiffusionSDE):
        key = (id(sde_or_chain), steps)
        cached = _CHAINS.get(key)
        if cached is None or cached[0] is not sde_or_chain:
            cached = (sde_or_chain, DiscreteChain.from_sde(sde_or_chain, steps))
            _CHAINS[key] = cached
        return cached[1]
    raise TypeError(f"expected a DiffusionSDE (e.g. skd.DiffusionSDE.from_betas(betas)) or a DiscreteChain, "
                    f"got {type(sde_or_chain).__name__}")


_CHAINS: dict = {}


def declared_learn_variance(net, learn_variance: bool | None) -> bool:
    """``learn_variance`` if given, else what the network declares in its ``learn_variance`` attribute
    (:class:`ScoreNet` has one), else False."""
    if learn_variance is not None:
        return bool(learn_variance)
    return bool(getattr(net, "learn_variance", False))


def _x0_from_prediction(prediction: str, output: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor,
                        sigma: torch.Tensor) -> torch.Tensor:
    """The data prediction from a network output of kind ``prediction`` (as :mod:`sdekit_diffusion.score`)."""
    if prediction == "x0":
        return output
    if prediction == "eps":
        eps = output
    elif prediction == "v":
        eps = (sigma * x + alpha * output) / (alpha ** 2 + sigma ** 2)
    else:  # "score"
        eps = -sigma * output
    return (x - sigma * eps) / alpha


class ChainTerms(NamedTuple):
    """What :func:`chain_terms` returns (tensors of shape ``(batch,)``): ``vlb``, the term
    :math:`L_n` in bits per dimension; ``mse``, the mean squared error of the prediction against its
    target (noise, data or ``v``); ``log_variance`` and ``mean`` of :math:`p_\\theta` (state's shape)."""

    vlb: torch.Tensor
    mse: torch.Tensor
    mean: torch.Tensor
    log_variance: torch.Tensor


def chain_terms(chain: DiscreteChain, net: Callable, x0: torch.Tensor, n: torch.Tensor, noise: torch.Tensor, *,
                bits: int | None = 8, prediction: str = "eps", learn_variance: bool = False,
                variance: str | None = None, clip_denoised: bool = False,
                stop_gradient_mean: bool = False) -> ChainTerms:
    r"""One network evaluation at :math:`x_{(n)} = \alpha_n x_0 + \sigma_n\epsilon` (``noise`` =
    :math:`\epsilon`, ``n`` of shape ``(batch,)``) and the bound's term :math:`L_n` for each sample.

    ``variance``: ``"learned"`` (needs ``learn_variance``; the default then), ``"beta_tilde"``
    (the default otherwise) or ``"beta"``. ``stop_gradient_mean``: the mean is formed from the
    detached prediction, so :math:`L_n` trains only the variance (Improved DDPM eq. 16).
    ``clip_denoised``: clamp :math:`\hat x_0` to ``[-1, 1]`` first (improved-diffusion's
    ``clip_denoised`` when it evaluates NLL).
    """
    variance = ("learned" if learn_variance else "beta_tilde") if variance is None else variance
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {', '.join(map(repr, VARIANCES))}, got {variance!r}")
    if variance == "learned" and not learn_variance:
        raise ValueError("variance='learned' needs a network that outputs its variance (learn_variance=True)")
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; valid ones are {', '.join(map(repr, PREDICTIONS))}")
    alpha, sigma = chain.at(n, x0, "alpha"), chain.at(n, x0, "sigma")
    x_n = alpha * x0 + sigma * noise
    output = network_output(net(x_n, chain.model_time(n, x0.dtype)))
    if learn_variance:
        output, v = split_output(output, x_n)
    elif output.shape != x_n.shape:
        raise ValueError(f"the network returned shape {tuple(output.shape)} for input {tuple(x_n.shape)}; a "
                         "fixed-variance network must return the input's shape (give learn_variance=True "
                         "for one that returns 2C channels)")
    output = output.to(x0.dtype)
    target = {"eps": noise, "x0": x0, "v": alpha * noise - sigma * x0}.get(prediction)
    mse = (output - target).pow(2).flatten(1).mean(1) if target is not None else None
    x0_hat = _x0_from_prediction(prediction, output.detach() if stop_gradient_mean else output, x_n, alpha, sigma)
    if clip_denoised:
        x0_hat = x0_hat.clamp(-1, 1)
    mean = chain.posterior_mean(x_n, x0_hat, n)
    log_beta_tilde = chain.at(n, x0, "log_beta_tilde")
    first = append_dims(n == 0, x0)
    if variance == "beta_tilde":
        log_variance = log_beta_tilde.expand_as(x0)
    elif variance == "beta":
        log_variance = torch.where(first, log_beta_tilde, chain.at(n, x0, "log_beta")).expand_as(x0)
    else:
        log_variance = interpolated_log_variance(v.to(x0.dtype), chain.at(n, x0, "log_beta"), log_beta_tilde)
    true_mean = chain.posterior_mean(x_n, x0, n)
    kl = normal_kl(true_mean, log_beta_tilde, mean, log_variance)
    if bits is None:
        decoder = -gaussian_log_likelihood(x0, mean, log_variance)
    else:
        decoder = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_variance, bits)
    per_element = torch.where(first, decoder, kl)
    vlb = per_element.flatten(1).mean(1) / LOG2
    if mse is None:
        mse = torch.full_like(vlb, float("nan"))
    return ChainTerms(vlb, mse, mean, log_variance)


def prior_bits_per_dim(chain: DiscreteChain, x0: torch.Tensor) -> torch.Tensor:
    r""":math:`L_T = D_{KL}(q(x_{(T-1)} \mid x_0) \,\|\, \mathcal N(0, \sigma(t_{max})^2 I))` per sample,
    bits per dimension (no network)."""
    mean, std, prior_std = chain.prior_terms(x0)
    kl = normal_kl(mean, 2 * torch.log(std), torch.zeros_like(mean), torch.full_like(mean, 2 * math.log(prior_std)))
    return kl.flatten(1).mean(1) / LOG2


# -- the whole bound -------------------------------------------------------------------------------

class VLBResult(NamedTuple):
    """:func:`vlb_bits_per_dim` with ``return_terms=True`` (bits per dimension, per sample):
    ``total`` ``(batch,)``; ``terms`` ``(batch, T)`` with :math:`L_n` at column ``n`` (NaN where a
    Monte-Carlo subset skipped it); ``prior`` :math:`L_T` ``(batch,)``; ``timesteps``: the ones
    evaluated."""

    total: torch.Tensor
    terms: torch.Tensor
    prior: torch.Tensor
    timesteps: torch.Tensor


@torch.no_grad()
def vlb_bits_per_dim(sde_or_chain, net: Callable, x: torch.Tensor, *, bits: int | None = 8,
                     prediction: str = "eps", learn_variance: bool | None = None, variance: str | None = None,
                     steps: int | None = None, timesteps: int | None = None, clip_denoised: bool = False,
                     generator: torch.Generator | None = None, return_terms: bool = False):
    r"""The discrete variational bound :math:`L_0 + \dots + L_{T-1} + L_T` of ``x`` (module docstring),
    bits per dimension, per sample: a tensor ``(batch,)``, or a :class:`VLBResult`.

    Args:
        sde_or_chain: a :class:`DiffusionSDE` (a discrete table from ``DiffusionSDE.from_betas`` /
            ``from_alphas_cumprod`` uses its own timesteps; a continuous one ``steps`` equal steps,
            default 1000) or a :class:`~sdekit_diffusion.chain.DiscreteChain` (e.g. respaced).
        net: the network ``net(x, model_time)`` (``model_time`` from the chain:
            ``sde.schedule.model_time``), predicting ``prediction``.
        x: data ``(batch, *dims)``; ``bits``-bit values in ``[-1, 1]`` (checked), or any values with
            ``bits=None`` (Gaussian decoder density).
        learn_variance: whether ``net`` outputs ``v`` too (default: what a :class:`ScoreNet`
            declares). ``variance``: ``"learned"``, ``"beta_tilde"`` or ``"beta"`` (default: learned if
            the net learns it, else ``"beta_tilde"``).
        timesteps: ``None`` (default): every term, exactly in ``n``. An int ``K``: a Monte-Carlo
            estimate from ``K`` timesteps drawn uniformly without replacement, :math:`\tfrac TK\sum`.
        clip_denoised: clamp :math:`\hat x_0` to ``[-1, 1]``.
        generator: for the noise (and the subset).

    One network evaluation per term on the whole batch: ``T`` calls (or ``K``).
    """
    chain = as_chain(sde_or_chain, steps)
    learn_variance = declared_learn_variance(net, learn_variance)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError("x must be a floating-point tensor of shape (batch, *dims)")
    check_quantized(x, bits)
    chosen = torch.arange(chain.T)
    if timesteps is not None:
        if isinstance(timesteps, bool) or not isinstance(timesteps, numbers.Integral) or not 1 <= timesteps <= chain.T:
            raise ValueError(f"timesteps must be None (every term) or an integer in 1..{chain.T}, got {timesteps!r}")
        chosen = torch.randperm(chain.T, generator=generator)[:int(timesteps)].sort().values
    terms = torch.full((x.shape[0], chain.T), float("nan"), dtype=x.dtype, device=x.device)
    for n in chosen.tolist():
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        index = torch.full((x.shape[0],), n, dtype=torch.long, device=x.device)
        terms[:, n] = chain_terms(chain, net, x, index, noise, bits=bits, prediction=prediction,
                                  learn_variance=learn_variance, variance=variance,
                                  clip_denoised=clip_denoised).vlb
    prior = prior_bits_per_dim(chain, x)
    total = terms[:, chosen.to(x.device)].sum(1) * (chain.T / len(chosen)) + prior
    if return_terms:
        return VLBResult(total, terms, prior, chosen)
    return total


__all__ = ["normal_kl", "discretized_gaussian_log_likelihood", "gaussian_log_likelihood", "quantize",
           "check_quantized", "chain_terms", "ChainTerms", "prior_bits_per_dim", "vlb_bits_per_dim",
           "VLBResult", "as_chain", "LOG2"]
