r"""Diffusion problems with exact answers: Gaussian-mixture data.

For data :math:`x_0 \sim \sum_k w_k \mathcal N(\mu_k, s_k^2 I)` and the kernel
:math:`\mathcal N(\alpha x_0, \sigma^2 I)`, the marginal at every :math:`t` is again a mixture,

.. math:: p_t = \sum_k w_k\, \mathcal N\bigl(\alpha\mu_k,\ v_k I\bigr), \qquad v_k = \alpha^2 s_k^2 + \sigma^2,

so the score :math:`\nabla\log p_t(x) = -\sum_k r_k(x) (x - \alpha\mu_k)/v_k` (responsibilities
:math:`r_k` by a softmax of the component log-densities) is exact. For one Gaussian the
probability-flow ODE keeps :math:`z = (x - \alpha\mu)/\sqrt{v}` constant, an exact flow map.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

import sdekit

from .sde import DiffusionSDE, ScoreFunction, _as_time, append_dims, batch_time


class GaussianMixture:
    """Isotropic Gaussian mixture ``sum_k weights[k] N(means[k], stds[k]^2 I)``.

    ``weights``: ``(K,)`` positive (normalised here). ``means``: ``(K, *dims)`` (e.g. ``(K, d)`` or
    ``(K, C, H, W)``). ``stds``: ``(K,)`` or a scalar, ``>= 0`` (``0`` is a point mass: the score is
    still exact for ``sigma(t) > 0``, :meth:`log_prob` is not defined). Dtype and device follow
    ``means``.
    """

    def __init__(self, weights: Sequence[float] | torch.Tensor, means: Sequence | torch.Tensor,
                 stds: Sequence[float] | torch.Tensor | float):
        means = torch.as_tensor(means)
        if not means.is_floating_point():
            means = means.to(torch.get_default_dtype())
        if means.dim() < 2:
            raise ValueError(f"means must have shape (K, *dims), got {tuple(means.shape)}; "
                             "for 1-D data pass shape (K, 1)")
        K = means.shape[0]
        weights = torch.as_tensor(weights, dtype=means.dtype, device=means.device)
        stds = torch.as_tensor(stds, dtype=means.dtype, device=means.device)
        if stds.dim() == 0:
            stds = stds.expand(K)
        if weights.shape != (K,) or stds.shape != (K,):
            raise ValueError(f"weights and stds must have shape (K,) = ({K},) to match means "
                             f"{tuple(means.shape)}; got {tuple(weights.shape)}, {tuple(stds.shape)}")
        if not bool((weights > 0).all()) or not bool((stds >= 0).all()):
            raise ValueError("weights must be positive and stds non-negative")
        self.weights = weights / weights.sum()
        self.means = means
        self.stds = stds.clone()

    @classmethod
    def gaussian(cls, mean, std) -> "GaussianMixture":
        """A single Gaussian ``N(mean, std^2 I)`` (``mean`` of shape ``dims``)."""
        mean = torch.as_tensor(mean)
        return cls([1.0], mean[None], [float(std)])

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(self.means.shape[1:])

    @property
    def size(self) -> int:
        """Number of elements of one sample."""
        return math.prod(self.dims)

    def _to(self, x: torch.Tensor):
        return (self.weights.to(x.device, x.dtype), self.means.to(x.device, x.dtype),
                self.stds.to(x.device, x.dtype))

    def _component_logp(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor):
        """``(log w_k + log N(x; alpha mu_k, v_k I)`` of shape ``(batch, K)``, the differences
        ``x - alpha mu_k`` ``(batch, K, *dims)`` and ``v_k`` ``(batch, K)``; alpha, sigma ``(batch,)``.
        :class:`sdekit.ShapeError` unless ``x`` has shape ``(batch, *dims)``."""
        if tuple(x.shape[1:]) != self.dims:
            raise sdekit.ShapeError(f"the mixture's samples have shape {self.dims}; got states of shape "
                                    f"{tuple(x.shape)}, expected (batch, {', '.join(map(str, self.dims))})")
        weights, means, stds = self._to(x)
        diff = x[:, None] - alpha.reshape(-1, 1, *([1] * len(self.dims))) * means[None]
        var = alpha[:, None] ** 2 * stds[None] ** 2 + sigma[:, None] ** 2
        sq = diff.pow(2).flatten(2).sum(-1)
        logp = (weights.log()[None] - 0.5 * self.size * torch.log(2 * math.pi * var)
                - 0.5 * sq / var)
        return logp, diff, var

    def _marginal(self, sde: DiffusionSDE, t, x):
        t = batch_time(_as_time(t, x), x)
        return self._component_logp(x, sde.schedule.alpha(t), sde.schedule.sigma(t))

    def score_fn(self, sde: DiffusionSDE) -> ScoreFunction:
        """The exact score ``score_fn(t, x)`` of the marginal ``p_t`` of ``sde`` (``t``: ``(batch,)``
        or 0-d), computed stably (softmax of log-densities)."""
        def score(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            logp, diff, var = self._marginal(sde, t, x)
            resp_over_var = torch.softmax(logp, dim=1) / var
            return -(resp_over_var.reshape(*resp_over_var.shape, *([1] * len(self.dims)))
                     * diff).sum(1).to(x.dtype)   # float64 times would promote a float32 x
        return score

    def marginal_log_prob(self, sde: DiffusionSDE, t, x: torch.Tensor) -> torch.Tensor:
        """``log p_t(x)`` under ``sde``, shape ``(batch,)``."""
        return torch.logsumexp(self._marginal(sde, t, x)[0], dim=1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of the data at ``x`` (shape ``(batch, *dims)``), shape ``(batch,)``."""
        if not bool((self.stds > 0).all()):
            raise ValueError("log_prob needs stds > 0 (a point mass has no density)")
        ones = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        return torch.logsumexp(self._component_logp(x, ones, 0 * ones)[0], dim=1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples, shape ``(n, *dims)``, on the device of ``means`` (and of ``generator``)."""
        device = generator.device if generator is not None else self.means.device
        weights, means, stds = (self.weights.to(device), self.means.to(device), self.stds.to(device))
        k = torch.multinomial(weights, n, replacement=True, generator=generator)
        noise = torch.randn((n, *self.dims), generator=generator, dtype=means.dtype, device=device)
        return means[k] + stds[k].reshape(n, *([1] * len(self.dims))) * noise

    def exact_flow(self, sde: DiffusionSDE, x: torch.Tensor, t_from, t_to) -> torch.Tensor:
        r"""The probability-flow map from ``t_from`` to ``t_to`` for single-Gaussian data:
        :math:`x_{to} = \alpha_{to}\mu + \sqrt{v_{to}}\,(x - \alpha_{from}\mu)/\sqrt{v_{from}}`."""
        if self.weights.shape[0] != 1:
            raise ValueError("exact_flow is known for a single Gaussian only (K = 1); "
                             f"this mixture has K = {self.weights.shape[0]}")
        _, means, stds = self._to(x)

        def mean_std(t):
            t = batch_time(sde.check_time(_as_time(t, x)), x)
            alpha, sigma = sde.schedule.alpha(t), sde.schedule.sigma(t)
            std = torch.sqrt(alpha ** 2 * stds[0] ** 2 + sigma ** 2)
            return append_dims(alpha, x) * means[0], append_dims(std, x)

        mean_from, std_from = mean_std(t_from)
        mean_to, std_to = mean_std(t_to)
        return mean_to + std_to * (x - mean_from) / std_from
