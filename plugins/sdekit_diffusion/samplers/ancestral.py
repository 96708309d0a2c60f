r"""Discrete reverse-chain predictors of Song et al. (2021): ``reverse_diffusion`` and ``ancestral``,
for a general marginal (notation in :mod:`._common`; one step from :math:`t = t_i` down to
:math:`s = t_{i+1}`, :math:`\alpha_{t|s} = \alpha_t/\alpha_s`, :math:`\sigma_{t|s}^2 = \sigma_t^2 -
\alpha_{t|s}^2\sigma_s^2`).

``reverse_diffusion`` (score_sde ``ReverseDiffusionPredictor``, Song et al. 2021 App. E, eq. 46):
reverse the forward chain :math:`x_t = x_s + f_i + G_i z` with :math:`f_i = (\alpha_{t|s} - 1) x`,
:math:`G_i^2 = \sigma_{t|s}^2` (the exact transition; score_sde's ``VPSDE.discretize`` and
``VESDE.discretize`` are this for VP and VE):

.. math:: x_s = x_t - (\alpha_{t|s} - 1) x_t + \sigma_{t|s}^2\, s(t, x_t) + \sigma_{t|s} z.

``ancestral``: sample the DDPM posterior :math:`q(x_s \mid x_t, x_0)` with :math:`x_0` replaced by
:math:`\hat x_0 = (x_t + \sigma_t^2 s)/\alpha_t` (Ho et al. 2020, eq. 6-7):

.. math:: x_s = \frac{x_t + \sigma_{t|s}^2 s(t, x_t)}{\alpha_{t|s}}
          + \frac{\sigma_{t|s}\sigma_s}{\sigma_t} z,

which is DDPM ancestral sampling for VP (mean :math:`(x + \beta s)/\sqrt{1-\beta}`, with the
posterior variance :math:`\tilde\beta`) and exactly the SMLD ancestral update of score_sde
(``AncestralSamplingPredictor.vesde_update_fn``: mean :math:`x + (\sigma_t^2 - \sigma_s^2) s`,
variance :math:`(\sigma_t^2-\sigma_s^2)\sigma_s^2/\sigma_t^2`) for VE. It equals DDIM with
``eta = 1``. Both: one score call per step; weak order 1. ``ancestral`` with ``final_step="zero"``
ends at :math:`\sigma_s = 0`, where the posterior is the point :math:`\hat x_0` (no noise).
"""
from __future__ import annotations

import torch

from ._common import Context, schedule
from .registry import register


def transition(ctx: Context, ts: torch.Tensor):
    r""":math:`\alpha_{t|s}` and :math:`\sigma_{t|s}^2` for each step of ``ts`` (shape ``(N,)``),
    plus the schedule."""
    alpha, sigma, lam = schedule(ctx.sde, ts)
    alpha_ts = alpha[:-1] / alpha[1:]
    sigma2_ts = -(sigma[:-1] ** 2) * torch.expm1(2 * (lam[:-1] - lam[1:]))
    return alpha_ts, sigma2_ts, (alpha, sigma, lam)


def reverse_diffusion_step(ctx, i, ts, x, alpha_ts, sigma2_ts, noise=True):
    """One reverse-diffusion step from ``ts[i]`` to ``ts[i+1]``; returns ``(x, mean)``."""
    mean = (2 - alpha_ts[i]) * x + sigma2_ts[i] * ctx.score(ts[i], x)
    return (mean + torch.sqrt(sigma2_ts[i]) * ctx.normal() if noise else mean), mean


def ancestral_step(ctx, i, ts, x, alpha_ts, sigma2_ts, sigma, noise=True):
    """One ancestral (DDPM-posterior) step from ``ts[i]`` to ``ts[i+1]``; returns ``(x, mean)``."""
    mean = (x + sigma2_ts[i] * ctx.score(ts[i], x)) / alpha_ts[i]
    std = torch.sqrt(sigma2_ts[i]) * sigma[i + 1] / sigma[i]
    return (mean + std * ctx.normal() if noise else mean), mean


@register("reverse_diffusion", stochastic=True, order=1)
def reverse_diffusion(ctx: Context, x: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """The reverse-diffusion predictor alone (module docstring)."""
    alpha_ts, sigma2_ts, _ = transition(ctx, ts)
    for i in range(len(ts) - 1):
        x, _ = reverse_diffusion_step(ctx, i, ts, x, alpha_ts, sigma2_ts)
        ctx.report(i, x, ts[i + 1], None)
    return x


@register("ancestral", stochastic=True, order=1, data_prediction=True)
def ancestral(ctx: Context, x: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """Ancestral sampling (module docstring)."""
    alpha_ts, sigma2_ts, (_, sigma, _) = transition(ctx, ts)
    for i in range(len(ts) - 1):
        if ctx.ends_at_zero(i, ts):   # the posterior q(x_s | x_t, x0) at sigma_s = 0 is x0 itself
            x = ctx.data(ts[i], x)
            ctx.report(i, x, ts[i + 1], x)
            break
        x, _ = ancestral_step(ctx, i, ts, x, alpha_ts, sigma2_ts, sigma)
        ctx.report(i, x, ts[i + 1], None)
    return x

