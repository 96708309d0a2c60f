r"""EDM's stochastic Heun sampler (Karras et al., *Elucidating the Design Space of Diffusion-Based
Generative Models*, NeurIPS 2022, Algorithm 2), for a general marginal through its VE form.

With :math:`y = x/\alpha` and :math:`\tilde\sigma = \sigma/\alpha = e^{-\lambda}`, any
:math:`(\alpha, \sigma)` probability-flow ODE becomes :math:`dy/d\tilde\sigma = (y - D(y,
\tilde\sigma))/\tilde\sigma` with the denoiser :math:`D = \hat x_0(t(\tilde\sigma), \alpha y)`
(Karras et al. eq. 4 and §4; ``t(\tilde\sigma)`` by ``sde.inverse_log_snr``). On the grid
:math:`\tilde\sigma_i` of the chosen time grid, step ``i``:

.. math::
    \gamma_i &= \min(S_{churn}/N, \sqrt2 - 1) \text{ if } S_{min} \le \tilde\sigma_i \le S_{max}
               \text{ else } 0, \qquad \hat\sigma = \tilde\sigma_i (1 + \gamma_i), \\
    \hat y &= y_i + \sqrt{\hat\sigma^2 - \tilde\sigma_i^2}\, S_{noise}\, z, \qquad
    d = (\hat y - D(\hat y, \hat\sigma))/\hat\sigma, \qquad
    y_{i+1} = \hat y + (\tilde\sigma_{i+1} - \hat\sigma) d, \\
    d' &= (y_{i+1} - D(y_{i+1}, \tilde\sigma_{i+1}))/\tilde\sigma_{i+1}, \qquad
    y_{i+1} = \hat y + (\tilde\sigma_{i+1} - \hat\sigma)\tfrac12 (d + d'),

and :math:`x_{i+1} = \alpha_{i+1} y_{i+1}`. The last :math:`\tilde\sigma_N = \tilde\sigma(t_{min})`
is positive here, so every step (the last included) is a Heun step: 2 score calls per step. With
``final_step="zero"`` the grid ends at :math:`\tilde\sigma = 0` as in Karras et al.: the last step
is their Euler step to 0, :math:`y = D(\hat y, \hat\sigma)` (one score call, ``2N - 1`` in all).
:math:`\hat\sigma` is capped at :math:`\tilde\sigma(t_{max})` (the score is only defined on
:math:`[t_{min}, t_{max}]`). Defaults ``S_churn = 0`` (deterministic: Heun's method in
:math:`\tilde\sigma`, global order 2), ``S_min = 0``, ``S_max = inf``, ``S_noise = 1`` (Karras et al.
Algorithm 2's neutral values; their tuned ImageNet values are ``S_churn=80, S_min=0.05, S_max=50,
S_noise=1.003``, Table 5). The churn's :math:`z` at step ``i`` is ``ctx.step_normal(i, ts)``: a
fresh draw, or :math:`(W(t_{i+1}) - W(t_i))/\sqrt{t_i - t_{i+1}}` of the tree given as
``sample(..., brownian=tree)`` (the path drives the noise; the churned sampler is not a
discretisation of the reverse SDE, so it does not converge to that SDE's solution on the path).
"""
from __future__ import annotations

import math

import torch

from sdekit.validation import finite_number

from ._common import Context, schedule
from .registry import register


@register("edm_heun", calls_per_step=2, order=2, data_prediction=True,
          stochastic=lambda options: options.get("S_churn", 0.0) > 0)
def edm_heun(ctx: Context, x: torch.Tensor, ts: torch.Tensor, S_churn: float = 0.0,
             S_min: float = 0.0, S_max: float = math.inf, S_noise: float = 1.0) -> torch.Tensor:
    """EDM Algorithm 2 (module docstring)."""
    S_churn = finite_number(S_churn, "S_churn", minimum=0)
    S_noise = finite_number(S_noise, "S_noise", minimum=0)
    S_min = finite_number(S_min, "S_min", minimum=0)
    if not (isinstance(S_max, (int, float)) and S_max >= S_min):   # S_max = inf: no upper limit
        raise ValueError(f"S_max must be a number >= S_min = {S_min} (inf for no limit), got {S_max!r}")
    sde = ctx.sde
    alpha, sigma, lam = schedule(sde, ts)
    sigma_ve = torch.exp(-lam)
    steps = len(ts) - 1
    gamma = torch.where((sigma_ve >= S_min) & (sigma_ve <= S_max),
                        torch.full_like(sigma_ve, min(S_churn / steps, math.sqrt(2) - 1)),
                        torch.zeros_like(sigma_ve))
    sigma_hat = torch.minimum(sigma_ve * (1 + gamma), sigma_ve[0])
    churn = S_churn > 0
    if churn:
        t_hat = sde.schedule.t_of_log_snr(-torch.log(sigma_hat)).clamp(sde.t_min, sde.t_max)
        t_hat = torch.where(sigma_hat == sigma_ve, ts, t_hat)
        noise_scale = S_noise * torch.sqrt((sigma_hat ** 2 - sigma_ve ** 2).clamp(min=0))
    else:
        t_hat = ts
    alpha_hat = sde.schedule.alpha(t_hat)

    def denoiser(t, a, y):        # D(y, sigma_ve(t)) = x0_hat(t, alpha(t) y)
        return ctx.data(t, a * y)

    y = x / alpha[0]
    for i in range(steps):
        if churn:
            y = y + noise_scale[i] * ctx.step_normal(i, ts)
        x0 = denoiser(t_hat[i], alpha_hat[i], y)
        if ctx.ends_at_zero(i, ts):   # Euler to sigma = 0: y + (0 - sigma_hat) d = D (Algorithm 1)
            ctx.report(i, x0, ts[i + 1], x0)
            return x0
        d = (y - x0) / sigma_hat[i]
        h = sigma_ve[i + 1] - sigma_hat[i]
        y_next = y + h * d
        d_next = (y_next - denoiser(ts[i + 1], alpha[i + 1], y_next)) / sigma_ve[i + 1]
        y = y + h * 0.5 * (d + d_next)
        ctx.report(i, alpha[i + 1] * y, ts[i + 1], x0)
    return alpha[-1] * y

