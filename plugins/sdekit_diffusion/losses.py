r"""Training losses: continuous-time denoising score matching and the discrete DDPM and SMLD losses.

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
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

WEIGHTINGS = ("sigma2", "likelihood")
PREDICTIONS = ("eps", "x0", "v", "score")
REDUCTIONS = ("mean", "sum", "none")
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
    output = score_fn_or_net(x_t, t) if is_net else score_fn_or_net(t, x_t)
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
