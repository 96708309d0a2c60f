r"""Training losses: continuous-time denoising score matching, the discrete DDPM and SMLD losses, and
the discrete-chain objectives of Improved DDPM (:func:`simple_loss`, :func:`vlb_loss`,
:func:`hybrid_loss`, with the importance sampler :class:`LossSecondMomentSampler`).

Denoising score matching (Vincent 2011; Song et al. 2021, eq. 7). With
:math:`x_t = \alpha(t) x_0 + \sigma(t)\epsilon`, the score of the kernel is :math:`-\epsilon/\sigma`, and

.. math::
    \mathcal L = \mathbb E_{t}\, \mathbb E_{x_0, \epsilon}\; w(t)\, \tfrac1D
                 \bigl\| s_\theta(t, x_t) + \epsilon/\sigma(t) \bigr\|^2 ,
    \qquad t \sim \mathcal U(t_{min}, t_{max}),

averaged over the ``D`` elements of a sample (so that ``w = sigma^2`` with an eps-network is exactly the
DDPM mean-squared error of Ho et al. 2020). Weightings: ``"sigma2"`` :math:`w = \sigma^2` (DDPM,
"simple" loss) and ``"likelihood"`` :math:`w = g^2` (Song, Durkan, Murray & Ermon 2021, "Maximum
likelihood training of score-based diffusion models", eq. 10: then ``D`` times the loss integrated over
``t`` bounds the negative log-likelihood up to constants).

Importance sampling (ibid., Sec. 5): the likelihood-weighted integrand behaves like
:math:`g^2/\sigma^2`, so drawing ``t`` from :math:`p(t) \propto g(t)^2/\sigma(t)^2` and dividing by
:math:`(t_{max} - t_{min})\,p(t)` gives an estimate with the *same* expectation as uniform sampling and far
less variance. ``t`` is drawn by inverting the CDF tabulated on a grid (linear interpolation), and the
estimate divides by the density that inversion actually samples (piecewise constant on the grid), so it is
unbiased whatever the grid resolution.

The network's output is compared in its own parameterization, never by dividing by a tiny ``sigma``
first: with :math:`r = s + \epsilon/\sigma`,
``eps``: :math:`r = (\epsilon - \hat\epsilon)/\sigma`; ``x0``: :math:`r = \alpha(\hat x_0 - x_0)/\sigma^2`;
``v``: :math:`r = \alpha(v - \hat v)/(\sigma(\alpha^2 + \sigma^2))`; ``score``: :math:`r = \hat s + \epsilon/\sigma`.
A network receives ``sde.schedule.model_time(t)`` (``t`` itself for continuous schedules, the timestep
for a discrete table), as :func:`~sdekit_diffusion.as_score` feeds it when sampling.

Discrete-chain objectives (Nichol & Dhariwal 2021, "Improved DDPM"), on a
:class:`~sdekit_diffusion.chain.DiscreteChain` of ``T`` timesteps (a discrete table's own, or
``steps`` equal steps of a continuous schedule), with the terms :math:`L_n` in bits per dimension
of :mod:`sdekit_diffusion.vlb`. For a timestep ``n`` drawn per sample (uniformly, or with
probability :math:`p_n` by :class:`LossSecondMomentSampler`, weight :math:`w = 1/(T p_n)`):

- :func:`simple_loss`: :math:`L_{simple} = w\,\tfrac1D\|\epsilon - \epsilon_\theta(x_n, n)\|^2`
  (Ho et al. 2020, eq. 14; the error of an ``x0`` or ``v`` prediction against its own target);
- :func:`vlb_loss`: :math:`L_{vlb} = w\,T L_n + L_T`, an unbiased estimate of the whole bound
  :math:`\sum_n L_n + L_T` (its value estimates the model's bits/dim; :math:`L_T` has no gradient);
- :func:`hybrid_loss`: :math:`L_{hybrid} = L_{simple} + \lambda L_{vlb}` with :math:`\lambda = 0.001`
  and the mean's gradient stopped in :math:`L_{vlb}` (eq. 16: :math:`L_{simple}` trains the mean,
  :math:`L_{vlb}` the variance). With uniform ``n`` this is improved-diffusion's ``RESCALED_MSE``
  loss, ``mse + vb * T / 1000``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .nets import ScoreNet
from .vlb import as_chain, chain_terms, declared_learn_variance, prior_bits_per_dim

WEIGHTINGS = ("sigma2", "likelihood")
PREDICTIONS = ("eps", "x0", "v", "score")
REDUCTIONS = ("mean", "sum", "none")
IMPORTANCE_HISTORY = 10         # Improved DDPM §3.3: the last 10 values of L_t per t
IMPORTANCE_UNIFORM = 0.001      # improved-diffusion LossSecondMomentResampler(uniform_prob=0.001)
HYBRID_WEIGHT = 0.001           # Improved DDPM §3.1: lambda = 0.001
_IMPORTANCE_GRID = 4096  # points of the tabulated CDF (half uniform, half geometric near t_min)


def _broadcast(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return c.reshape(c.shape[0], *([1] * (x.ndim - 1)))


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


class ImportanceSampler:
    r"""Draw ``t`` in ``[t_min, t_max]`` with density :math:`p(t) \propto g(t)^2/\sigma(t)^2`.

    The CDF is tabulated once on a grid (trapezoid rule) and inverted by linear interpolation;
    :meth:`density` returns the density actually sampled (constant on each grid cell).
    """

    def __init__(self, sde, points: int = _IMPORTANCE_GRID):
        t_min, t_max = sde.t_min, sde.t_max
        grid = torch.linspace(t_min, t_max, points // 2, dtype=torch.float64)
        if t_min > 0:
            grid = torch.cat([grid, torch.logspace(math.log10(t_min), math.log10(t_max), points // 2,
                                                   dtype=torch.float64)])
        grid = torch.unique(grid.clamp(t_min, t_max))  # sorted
        ratio = (sde.g2(grid) / sde.sigma(grid) ** 2).detach()
        cells = 0.5 * (ratio[1:] + ratio[:-1]) * (grid[1:] - grid[:-1])
        cdf = torch.cat([cells.new_zeros(1), torch.cumsum(cells, 0)])
        self.grid, self.cdf = grid, cdf / cdf[-1]
        self.cell_density = (self.cdf[1:] - self.cdf[:-1]) / (grid[1:] - grid[:-1])

    def _cell(self, t: torch.Tensor) -> torch.Tensor:
        grid = self.grid.to(t.device)
        return torch.searchsorted(grid, t.contiguous(), right=True).clamp(1, len(grid) - 1) - 1

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """``n`` times (float64) drawn from the tabulated density."""
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
        cdf, grid = self.cdf.to(u.device), self.grid.to(u.device)
        cell = (torch.searchsorted(cdf, u.contiguous(), right=True) - 1).clamp(0, len(grid) - 2)
        fraction = (u - cdf[cell]) / (cdf[cell + 1] - cdf[cell]).clamp_min(1e-300)
        return grid[cell] + fraction.clamp(0, 1) * (grid[cell + 1] - grid[cell])

    def density(self, t: torch.Tensor) -> torch.Tensor:
        """The sampling density at ``t`` (float64)."""
        t = t.to(torch.float64)
        return self.cell_density.to(t.device)[self._cell(t)]


_SAMPLERS: dict[int, tuple[object, ImportanceSampler]] = {}


def importance_sampler(sde) -> ImportanceSampler:
    """The (cached per SDE object) :class:`ImportanceSampler` of ``sde``."""
    key = id(sde)
    if key not in _SAMPLERS or _SAMPLERS[key][0] is not sde:
        _SAMPLERS[key] = (sde, ImportanceSampler(sde))
    return _SAMPLERS[key][1]


def _residual_times_sigma(prediction: str, output: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
                          alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    r""":math:`\sigma\, (s + \epsilon/\sigma)` computed in the network's own parameterization."""
    if prediction == "eps":
        return noise - output
    if prediction == "x0":
        return alpha * (output - x0) / sigma
    if prediction == "v":
        target = alpha * noise - sigma * x0
        return alpha * (target - output) / (alpha ** 2 + sigma ** 2)
    return sigma * output + noise  # "score"


def dsm_loss(sde, score_fn_or_net: Callable | nn.Module, x0: torch.Tensor, *, prediction: str = "eps",
             weighting: str = "sigma2", importance_sampling: bool = False, t: torch.Tensor | None = None,
             generator: torch.Generator | None = None, reduction: str = "mean") -> torch.Tensor:
    r"""Denoising score-matching loss (module docstring) for a batch ``x0`` of shape ``(batch, *dims)``.

    Args:
        sde: a :class:`DiffusionSDE` (needs ``alpha``, ``sigma``, ``g2``, ``t_min``, ``t_max``).
        score_fn_or_net: an ``nn.Module`` called ``net(x, t)`` whose output is a ``prediction``
            (``"eps" | "x0" | "v" | "score"``), or a plain ``score_fn(t, x)`` (then ``prediction``
            must be ``"score"``, its default meaning for callables that are not modules).
        weighting: ``"sigma2"`` (:math:`w = \sigma^2`, DDPM) or ``"likelihood"`` (:math:`w = g^2`).
        importance_sampling: draw ``t`` from :math:`p \propto g^2/\sigma^2` and reweight (same
            expectation as uniform ``t``); only with ``"likelihood"`` weighting is it variance-reducing,
            but it is unbiased for both.
        t: fixed times of shape ``(batch,)`` (then no time is sampled and no reweighting happens).
        generator: for ``t`` and the noise.
        reduction: ``"mean"`` over the batch, ``"sum"``, or ``"none"`` (shape ``(batch,)``).
    """
    _check_choice("weighting", weighting, WEIGHTINGS)
    _check_choice("prediction", prediction, PREDICTIONS)
    _check_choice("reduction", reduction, REDUCTIONS)
    is_net = isinstance(score_fn_or_net, nn.Module)
    if not is_net and prediction != "score":
        prediction = "score"  # a plain callable is a score function score_fn(t, x)
    if is_net and isinstance(score_fn_or_net, ScoreNet) and score_fn_or_net.learn_variance:
        raise ValueError("this network learns its variance (2C output channels); denoising score matching does "
                         "not train them: use hybrid_loss or vlb_loss (Trainer(loss='hybrid'))")
    batch, device, dtype = x0.shape[0], x0.device, x0.dtype
    correction = None
    if t is None:
        if importance_sampling:
            sampler = importance_sampler(sde)
            t64 = sampler.sample(batch, generator=generator, device=device)
            correction = (1.0 / ((sde.t_max - sde.t_min) * sampler.density(t64))).to(dtype)
            t = t64.to(dtype).clamp(sde.t_min, sde.t_max)
        else:
            u = torch.rand(batch, generator=generator, dtype=dtype, device=device)
            t = sde.t_min + (sde.t_max - sde.t_min) * u
    else:
        t = sde.check_time(torch.as_tensor(t, dtype=dtype, device=device)).expand(batch)
    # t is in [t_min, t_max] by construction or checked above: the unchecked schedule methods keep
    # the training step free of host-device syncs
    noise = torch.randn(x0.shape, generator=generator, dtype=dtype, device=device)
    alpha, sigma = _broadcast(sde.schedule.alpha(t), x0), _broadcast(sde.schedule.sigma(t), x0)
    x_t = alpha * x0 + sigma * noise
    output = score_fn_or_net(x_t, sde.schedule.model_time(t)) if is_net else score_fn_or_net(t, x_t)
    if output.shape != x0.shape:
        raise ValueError(f"the network returned shape {tuple(output.shape)} for input {tuple(x0.shape)}; "
                         "it must return the input's shape")
    scaled = _residual_times_sigma(prediction, output.to(dtype), x0, noise, alpha, sigma)
    per_sample = scaled.pow(2).flatten(1).mean(1)  # = sigma^2 |r|^2 / D
    if weighting == "likelihood":
        per_sample = per_sample * (sde.schedule.g2(t) / sde.schedule.sigma(t) ** 2)
    if correction is not None:
        per_sample = per_sample * correction
    return _reduce(per_sample, reduction)


def ddpm_loss(net: nn.Module, x0: torch.Tensor, betas: torch.Tensor, *,
              generator: torch.Generator | None = None, reduction: str = "mean") -> torch.Tensor:
    r"""The discrete DDPM loss (Ho et al. 2020, Algorithm 1): for an ``N``-step chain ``betas``,
    :math:`n \sim \mathcal U\{0..N-1\}`, :math:`\bar\alpha_n = \prod_{i\le n}(1-\beta_i)`,
    :math:`x_n = \sqrt{\bar\alpha_n} x_0 + \sqrt{1-\bar\alpha_n}\epsilon`, loss
    :math:`\tfrac1D\|\epsilon - \epsilon_\theta(x_n, (n+1)/N)\|^2`.

    The network receives the continuous time ``(n + 1) / N`` (the VP SDE's time of step ``n``,
    score_sde's convention), so one eps-network serves both this chain and ``VPSDE``
    (``betas = VPSDE().ddpm_betas(N)``).
    """
    _check_choice("reduction", reduction, REDUCTIONS)
    betas = torch.as_tensor(betas, dtype=torch.float64, device=x0.device)
    steps = betas.shape[0]
    alpha_bar = torch.cumprod(1 - betas, 0)
    n = torch.randint(0, steps, (x0.shape[0],), generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    a = _broadcast(alpha_bar[n].sqrt().to(x0.dtype), x0)
    s = _broadcast((1 - alpha_bar[n]).sqrt().to(x0.dtype), x0)
    output = net(a * x0 + s * noise, ((n + 1).to(x0.dtype) / steps))
    return _reduce((noise - output).pow(2).flatten(1).mean(1), reduction)


def smld_loss(net: nn.Module, x0: torch.Tensor, sigmas: torch.Tensor, *,
              generator: torch.Generator | None = None, reduction: str = "mean") -> torch.Tensor:
    r"""The SMLD / NCSN loss (Song & Ermon 2019, eq. 5-6, weight :math:`\sigma_i^2`): for noise levels
    ``sigmas`` (increasing, length ``L``), :math:`i \sim \mathcal U\{0..L-1\}`,
    :math:`\tilde x = x_0 + \sigma_i z`, loss :math:`\tfrac1D\|\sigma_i s_\theta(\tilde x, i/(L-1)) + z\|^2`.

    ``net`` predicts the score and receives ``i / (L - 1)``: for geometric ``sigmas`` from
    ``VESDE(sigma_min, sigma_max).smld_sigmas(L)`` that is the VE SDE's time of level ``i``.
    """
    _check_choice("reduction", reduction, REDUCTIONS)
    sigmas = torch.as_tensor(sigmas, dtype=x0.dtype, device=x0.device)
    levels = sigmas.shape[0]
    i = torch.randint(0, levels, (x0.shape[0],), generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    sigma = _broadcast(sigmas[i], x0)
    output = net(x0 + sigma * noise, i.to(x0.dtype) / max(levels - 1, 1))
    return _reduce((sigma * output + noise).pow(2).flatten(1).mean(1), reduction)


# -- Improved DDPM: the discrete-chain objectives ------------------------------------------------------

class LossSecondMomentSampler:
    r"""Importance sampling of timesteps for :math:`L_{vlb}` (Improved DDPM §3.3, eq. 18):

    .. math:: L_{vlb} = \mathbb E_{n \sim p}\Bigl[\frac{L_n}{p_n}\Bigr], \qquad
              p_n \propto \sqrt{\mathbb E[L_n^2]}, \qquad \sum_n p_n = 1,

    :math:`\mathbb E[L_n^2]` the mean of the last ``history`` (10) values of :math:`L_n` seen for
    timestep ``n``; uniform until every timestep has ``history`` values. Like improved-diffusion's
    ``LossSecondMomentResampler``, ``uniform`` (0.001) of the probability stays uniform so that no
    timestep is starved. :meth:`sample` returns the timesteps and the weights :math:`1/(T p_n)` that
    keep every expectation unchanged; :meth:`update` records a batch of :math:`L_n`.

    Everything stays on ``device`` (no host sync): the history is a ring buffer per timestep, and a
    batch that repeats a timestep more than ``history`` times keeps its last ``history`` values.
    """

    def __init__(self, T: int, history: int = IMPORTANCE_HISTORY, uniform: float = IMPORTANCE_UNIFORM,
                 device=None):
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ValueError(f"T must be a positive int, got {T!r}")
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise ValueError(f"history must be a positive int, got {history!r}")
        if not 0.0 <= uniform <= 1.0:
            raise ValueError(f"uniform must lie in [0, 1], got {uniform!r}")
        self.T, self.history_size, self.uniform = T, history, float(uniform)
        self.history = torch.zeros(T, history, dtype=torch.float64, device=device)
        self.counts = torch.zeros(T, dtype=torch.long, device=device)

    def warmed_up(self) -> torch.Tensor:
        """0-d bool tensor: whether every timestep has ``history`` values."""
        return (self.counts >= self.history_size).all()

    def probabilities(self) -> torch.Tensor:
        """:math:`p_n` (float64, ``(T,)``): uniform before warm-up, then eq. 18 mixed with ``uniform``."""
        weights = torch.sqrt((self.history ** 2).mean(1))
        weights = weights / weights.sum().clamp_min(1e-300)
        weights = weights * (1 - self.uniform) + self.uniform / self.T
        return torch.where(self.warmed_up(), weights, torch.full_like(weights, 1.0 / self.T))

    def sample(self, batch: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n, weights)``: ``batch`` timesteps drawn from :meth:`probabilities` and :math:`1/(T p_n)`."""
        p = self.probabilities()
        n = torch.multinomial(p, batch, replacement=True, generator=generator)
        return n, 1.0 / (self.T * p[n])

    @torch.no_grad()
    def update(self, n: torch.Tensor, losses: torch.Tensor) -> None:
        """Record the terms ``losses`` (``(batch,)``) of the timesteps ``n``, in order."""
        n, losses = n.to(self.counts.device).long(), losses.detach().to(self.history)
        order = torch.argsort(n, stable=True)
        n_sorted, losses = n[order], losses[order]
        first = torch.searchsorted(n_sorted, n_sorted)                 # first index of each value
        rank = torch.arange(len(n_sorted), device=n_sorted.device) - first
        repeats = torch.bincount(n_sorted, minlength=self.T)
        keep = rank >= repeats[n_sorted] - self.history_size            # the last `history` per timestep
        slot = (self.counts[n_sorted] + rank) % self.history_size
        self.history[n_sorted[keep], slot[keep]] = losses[keep]
        self.counts += repeats

    def state_dict(self) -> dict:
        return {"history": self.history.cpu().clone(), "counts": self.counts.cpu().clone(),
                "uniform": self.uniform}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["history"].shape) != tuple(self.history.shape):
            raise ValueError(f"the importance-sampling history has shape {tuple(state['history'].shape)}, this "
                             f"sampler {tuple(self.history.shape)} (a chain of another length)")
        self.history.copy_(state["history"])
        self.counts.copy_(state["counts"])


def _chain_draws(chain, x0: torch.Tensor, n, importance_sampler, generator):
    """Timesteps, weights and noise for a batch (timesteps first, then noise, from ``generator``)."""
    batch = x0.shape[0]
    if n is not None:
        n = torch.as_tensor(n, device=x0.device).long().expand(batch)
        weights = torch.ones(batch, dtype=x0.dtype, device=x0.device)
    elif importance_sampler is not None:
        if importance_sampler.T != chain.T:
            raise ValueError(f"the importance sampler covers {importance_sampler.T} timesteps, the chain {chain.T}")
        n, weights = importance_sampler.sample(batch, generator)
        n, weights = n.to(x0.device), weights.to(device=x0.device, dtype=x0.dtype)
    else:
        n = torch.randint(0, chain.T, (batch,), generator=generator, device=x0.device)
        weights = torch.ones(batch, dtype=x0.dtype, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    return n, weights, noise


def simple_loss(sde_or_chain, net: nn.Module, x0: torch.Tensor, *, prediction: str = "eps",
                learn_variance: bool | None = None, steps: int | None = None,
                importance_sampler: LossSecondMomentSampler | None = None, n: torch.Tensor | None = None,
                generator: torch.Generator | None = None, reduction: str = "mean") -> torch.Tensor:
    r""":math:`L_{simple}` on the discrete chain (module docstring): per sample
    :math:`\tfrac1D\|\text{target} - \text{prediction}\|^2` at a uniform timestep.

    ``sde_or_chain``: a :class:`DiffusionSDE` (its chain; ``steps`` equal steps for a continuous one,
    default 1000) or a :class:`~sdekit_diffusion.chain.DiscreteChain`; ``prediction``: ``"eps"``,
    ``"x0"`` or ``"v"``; ``learn_variance``: whether ``net`` also outputs ``v`` (its channels get no
    gradient here; default: what the network declares); ``n``: fixed timesteps ``(batch,)``.
    """
    _check_choice("reduction", reduction, REDUCTIONS)
    _check_chain_prediction(prediction)
    chain = as_chain(sde_or_chain, steps)
    n, weights, noise = _chain_draws(chain, x0, n, importance_sampler, generator)
    terms = chain_terms(chain, net, x0, n, noise, prediction=prediction,
                        learn_variance=declared_learn_variance(net, learn_variance))
    return _reduce(weights * terms.mse, reduction)


def vlb_loss(sde_or_chain, net: nn.Module, x0: torch.Tensor, *, bits: int | None = 8, prediction: str = "eps",
             learn_variance: bool | None = None, variance: str | None = None, steps: int | None = None,
             importance_sampler: LossSecondMomentSampler | None = None, n: torch.Tensor | None = None,
             generator: torch.Generator | None = None, reduction: str = "mean") -> torch.Tensor:
    r""":math:`L_{vlb} = w\,T L_n + L_T` (module docstring), bits per dimension per sample: an unbiased
    estimate of the whole bound of :func:`~sdekit_diffusion.vlb_bits_per_dim`.

    ``bits``: the data's bit depth (``x0`` on the ``bits``-bit grid of ``[-1, 1]``, not checked here:
    the trainer checks its data once) or ``None`` (Gaussian decoder density). ``variance``: as in
    :func:`~sdekit_diffusion.vlb.chain_terms` (default: learned if the net learns it, else
    :math:`\tilde\beta`). ``importance_sampler``: draw ``n`` from it (eq. 18) and record this batch's
    :math:`L_n` in it; otherwise uniform. ``n``: fixed timesteps (no sampling, weight 1).
    """
    _check_choice("reduction", reduction, REDUCTIONS)
    chain = as_chain(sde_or_chain, steps)
    n, weights, noise = _chain_draws(chain, x0, n, importance_sampler, generator)
    terms = chain_terms(chain, net, x0, n, noise, bits=bits, prediction=prediction,
                        learn_variance=declared_learn_variance(net, learn_variance), variance=variance)
    if importance_sampler is not None:
        importance_sampler.update(n, terms.vlb)
    return _reduce(weights * chain.T * terms.vlb + prior_bits_per_dim(chain, x0), reduction)


def hybrid_loss(sde_or_chain, net: nn.Module, x0: torch.Tensor, *, vlb_weight: float = HYBRID_WEIGHT,
                bits: int | None = 8, prediction: str = "eps", learn_variance: bool | None = None,
                steps: int | None = None, importance_sampler: LossSecondMomentSampler | None = None,
                n: torch.Tensor | None = None, generator: torch.Generator | None = None,
                reduction: str = "mean") -> torch.Tensor:
    r""":math:`L_{hybrid} = w\,L_{simple} + \lambda (w\,T L_n + L_T)` with the mean's gradient stopped in
    :math:`L_n` (Improved DDPM eq. 16; module docstring), one network evaluation per sample.

    ``net`` must learn its variance (with a fixed one the :math:`L_{vlb}` part has no gradient and this
    is :func:`simple_loss`). ``vlb_weight``: :math:`\lambda` (0.001, the paper's). Other arguments as in
    :func:`vlb_loss`; with ``importance_sampler`` the weights :math:`w` apply to both parts (unbiased
    for both, as improved-diffusion applies its sampler's weights to the whole loss).
    """
    _check_choice("reduction", reduction, REDUCTIONS)
    _check_chain_prediction(prediction)
    if not declared_learn_variance(net, learn_variance):
        raise ValueError("hybrid_loss trains a learned variance through L_vlb (the mean's gradient is stopped "
                         "there); with a fixed variance it is simple_loss: build the network with "
                         "learn_variance=True, or use simple_loss / vlb_loss")
    if not (isinstance(vlb_weight, (int, float)) and not isinstance(vlb_weight, bool)
            and math.isfinite(vlb_weight) and vlb_weight >= 0):
        raise ValueError(f"vlb_weight must be a finite number >= 0, got {vlb_weight!r}")
    chain = as_chain(sde_or_chain, steps)
    n, weights, noise = _chain_draws(chain, x0, n, importance_sampler, generator)
    terms = chain_terms(chain, net, x0, n, noise, bits=bits, prediction=prediction, learn_variance=True,
                        variance="learned", stop_gradient_mean=True)
    if importance_sampler is not None:
        importance_sampler.update(n, terms.vlb)
    vlb = weights * chain.T * terms.vlb + prior_bits_per_dim(chain, x0)
    return _reduce(weights * terms.mse + vlb_weight * vlb, reduction)


def _check_chain_prediction(prediction: str) -> None:
    if prediction not in ("eps", "x0", "v"):
        raise ValueError(f"L_simple compares an 'eps', 'x0' or 'v' prediction with its target, got "
                         f"prediction={prediction!r}")
