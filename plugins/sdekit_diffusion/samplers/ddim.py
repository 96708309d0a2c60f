r"""DDIM (Song, Meng & Ermon, *Denoising Diffusion Implicit Models*, ICLR 2021, eq. 12), written for
a general marginal :math:`\mathcal N(\alpha_t x_0, \sigma_t^2 I)`.

From :math:`t = t_i` to :math:`s = t_{i+1}`, with :math:`\hat x_0, \hat\epsilon` from one score call,

.. math::
    x_s = \alpha_s \hat x_0 + \sqrt{\sigma_s^2 - c^2}\,\hat\epsilon + c\, z, \qquad
    c = \eta\, \sigma_s \sqrt{1 - e^{2(\lambda_t - \lambda_s)}},

the paper's :math:`\sigma_t(\eta)` (eq. 16) in this notation: :math:`c^2 = \eta^2
\sigma_{t|s}^2 \sigma_s^2/\sigma_t^2` is :math:`\eta^2` times the variance of the DDPM posterior
:math:`q(x_s \mid x_t, x_0)`. ``eta = 0`` (default) is deterministic and equals first-order
DPM-Solver, :math:`x_s = \tfrac{\alpha_s}{\alpha_t} x_t - \sigma_s (e^{h} - 1)\hat\epsilon`,
:math:`h = \lambda_s - \lambda_t` (Lu et al. 2022, §4.1): an exponential-integrator discretisation
of the probability-flow ODE, global order 1. ``eta = 1`` is ancestral (DDPM) sampling. One score
call per step. The normal :math:`z` of step ``i`` is ``ctx.step_normal(i, ts)`` (a fresh draw,
or :math:`\Delta W/\sqrt{t - s}` of the tree given as ``sample(..., brownian=tree)``). With
``final_step="zero"`` the last step goes to :math:`\sigma_s = 0`, :math:`x_s = \hat x_0`
(diffusers' ``DDIMScheduler`` with ``set_alpha_to_one=True``).
"""
from __future__ import annotations

import torch

from ._common import Context, schedule
from .registry import register


@register("ddim", order=1, stochastic=lambda options: options.get("eta", 0.0) != 0,
          data_prediction=True)
def ddim(ctx: Context, x: torch.Tensor, ts: torch.Tensor, eta: float = 0.0) -> torch.Tensor:
    """DDIM with ``eta`` in [0, 1] (module docstring)."""
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    alpha, sigma, lam = schedule(ctx.sde, ts)
    c = eta * sigma[1:] * torch.sqrt(-torch.expm1(2 * (lam[:-1] - lam[1:])))
    c = torch.minimum(c, sigma[1:])
    direction = torch.sqrt(sigma[1:] ** 2 - c ** 2)
    for i in range(len(ts) - 1):
        score = ctx.score(ts[i], x)
        x0 = (x + sigma[i] ** 2 * score) / alpha[i]
        if ctx.ends_at_zero(i, ts):
            x = x0              # to sigma_s = 0: the data prediction (c = 0, no eps direction)
        else:
            eps = -sigma[i] * score
            x = alpha[i + 1] * x0 + direction[i] * eps
            if eta != 0:
                x = x + c[i] * ctx.step_normal(i, ts)
        ctx.report(i, x, ts[i + 1], x0)
    return x

