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

Noise: the normal :math:`z` of step ``i`` is ``ctx.step_normal(i, ts)``: a fresh per-sample
draw, or :math:`(W(t_{i+1}) - W(t_i))/\sqrt{t_i - t_{i+1}}` of the Brownian tree given as
``sample(..., brownian=tree)``, for which the noise terms :math:`\sigma_{t|s} z` and
:math:`\tfrac{\sigma_{t|s}\sigma_s}{\sigma_t} z` are :math:`g\,\Delta W (1 + O(t - s))`: both
samplers then converge to the reverse SDE's solution driven by that path.

``ancestral``'s ``variance`` (Nichol & Dhariwal 2021, "Improved DDPM", §3.1): with
:math:`\beta = \sigma_{t|s}^2` and :math:`\tilde\beta = \sigma_{t|s}^2\sigma_s^2/\sigma_t^2` the noise
variance of a step is ``"beta_tilde"`` :math:`\tilde\beta` (the default, the posterior's; DDPM's
"fixed small"), ``"beta"`` :math:`\beta` (DDPM's "fixed large") or ``"learned"``
:math:`\exp(v'\log\beta + (1 - v')\log\tilde\beta)`, :math:`v' = (v + 1)/2` (eq. 15), with the
network's ``v`` from the same call as the score: ``score_fn`` must then be a
:class:`~sdekit_diffusion.variance.LearnedVarianceScore` (e.g. ``Trainer.score_fn()`` of a network
built with ``learn_variance=True``), whose ``last_v`` is read after each score call.

Respaced chains (Improved DDPM §4): on a discrete schedule, a grid ``ts`` of the times of a subsequence
:math:`S` of timesteps makes :math:`\beta = 1 - \bar\alpha_{S_i}/\bar\alpha_{S_{i-1}}`, the betas of
the respaced chain recomputed from ``alphas_cumprod``, and :math:`\tilde\beta` its posterior
variance; the learned ``v`` interpolates between those, as improved-diffusion's
``SpacedDiffusion`` does. ``ts=DiscreteChain.from_sde(sde).respace(S).sampling_grid()`` with
``denoise=True`` is that chain's whole reverse process (:mod:`sdekit_diffusion.chain`).

``clip_denoised=True`` (for data in ``[-1, 1]``): the mean is the posterior mean of the clamped data
prediction, :math:`\frac{\alpha_{t|s}\sigma_s^2}{\sigma_t^2} x_t + \frac{\alpha_s\sigma_{t|s}^2}{\sigma_t^2}
\mathrm{clip}(\hat x_0, -1, 1)` (equal to the mean above when nothing is clipped), as improved-diffusion's
``p_sample(clip_denoised=True)``, its default, and diffusers' ``clip_sample=True``. Near the end of a
schedule whose :math:`\alpha_{t_{max}}` is tiny (the cosine table's last timestep has
:math:`\alpha \approx 5\cdot10^{-5}`) an eps-network's error is amplified by :math:`1/\alpha` in
:math:`\hat x_0`, and the first unclipped steps can throw the state far off; the final ``denoise=True``
step of :func:`~sdekit_diffusion.sample` is not clipped (clamp the samples, or use ``final_step="zero"``).
"""
from __future__ import annotations

import torch

from ..variance import VARIANCES, LearnedVarianceScore, interpolated_log_variance
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
    return (mean + torch.sqrt(sigma2_ts[i]) * ctx.step_normal(i, ts) if noise else mean), mean


def ancestral_step(ctx, i, ts, x, alpha_ts, sigma2_ts, sigma, noise=True, log_variances=None,
                   learned: LearnedVarianceScore | None = None, clip_denoised: bool = False):
    r"""One ancestral (DDPM-posterior) step from ``ts[i]`` to ``ts[i+1]``; returns ``(x, mean)``.

    The noise has variance :math:`\tilde\beta` unless ``log_variances`` gives the per-step
    ``(log beta, log beta_tilde)`` of :func:`step_log_variances` and ``learned`` is ``None`` (then
    :math:`\beta`) or the learned-variance score whose ``v`` interpolates them. ``clip_denoised``:
    the posterior mean of the clamped data prediction (module docstring)."""
    score = ctx.score(ts[i], x)
    if clip_denoised:
        alpha_t, _ = ctx.alpha_sigma(ts[i], x)
        ratio = (sigma[i + 1] / sigma[i]) ** 2
        data = ((x + sigma[i] ** 2 * score) / alpha_t).clamp(-1, 1)
        mean = alpha_ts[i] * ratio * x + (alpha_t / alpha_ts[i]) * (sigma2_ts[i] / sigma[i] ** 2) * data
    else:
        mean = (x + sigma2_ts[i] * score) / alpha_ts[i]
    if log_variances is None:
        std = torch.sqrt(sigma2_ts[i]) * sigma[i + 1] / sigma[i]
    elif learned is None:
        std = torch.sqrt(sigma2_ts[i])
    else:
        log_beta, log_beta_tilde = log_variances
        std = torch.exp(0.5 * interpolated_log_variance(learned.last_v, log_beta[i], log_beta_tilde[i]))
    return (mean + std * ctx.step_normal(i, ts) if noise else mean), mean


def step_log_variances(sigma2_ts: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per step of the grid: :math:`\log\beta = \log\sigma_{t|s}^2` and
    :math:`\log\tilde\beta = \log\beta + 2\log(\sigma_s/\sigma_t)`."""
    log_beta = torch.log(sigma2_ts)
    return log_beta, log_beta + 2 * (torch.log(sigma[1:]) - torch.log(sigma[:-1]))


def _learned_source(ctx: Context) -> LearnedVarianceScore:
    source = ctx.score.score_fn
    if not isinstance(source, LearnedVarianceScore):
        raise ValueError(
            "ancestral with variance='learned' reads the variance channels v of the network's output; "
            "score_fn must be a LearnedVarianceScore (Trainer.score_fn() of a network built with "
            "learn_variance=True, or skd.variance.LearnedVarianceScore(net, sde, prediction)), got "
            f"{type(source).__name__}; for a fixed variance use variance='beta_tilde' or 'beta'")
    return source


@register("reverse_diffusion", stochastic=True, order=1)
def reverse_diffusion(ctx: Context, x: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """The reverse-diffusion predictor alone (module docstring)."""
    alpha_ts, sigma2_ts, _ = transition(ctx, ts)
    for i in range(len(ts) - 1):
        x, _ = reverse_diffusion_step(ctx, i, ts, x, alpha_ts, sigma2_ts)
        ctx.report(i, x, ts[i + 1], None)
    return x


@register("ancestral", stochastic=True, order=1, data_prediction=True)
def ancestral(ctx: Context, x: torch.Tensor, ts: torch.Tensor, variance: str = "beta_tilde",
              clip_denoised: bool = False) -> torch.Tensor:
    """Ancestral sampling (module docstring); ``variance``: ``"beta_tilde"``, ``"beta"`` or ``"learned"``;
    ``clip_denoised``: clamp the data prediction to ``[-1, 1]``."""
    if not isinstance(clip_denoised, bool):
        raise ValueError(f"clip_denoised must be True or False, got {clip_denoised!r}")
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {', '.join(map(repr, VARIANCES))}, got {variance!r}")
    learned = _learned_source(ctx) if variance == "learned" else None
    alpha_ts, sigma2_ts, (_, sigma, _) = transition(ctx, ts)
    log_variances = None if variance == "beta_tilde" else step_log_variances(sigma2_ts, sigma)
    for i in range(len(ts) - 1):
        if ctx.ends_at_zero(i, ts):   # the posterior q(x_s | x_t, x0) at sigma_s = 0 is x0 itself
            x = ctx.data(ts[i], x)
            x = x.clamp(-1, 1) if clip_denoised else x
            ctx.report(i, x, ts[i + 1], x)
            break
        x, _ = ancestral_step(ctx, i, ts, x, alpha_ts, sigma2_ts, sigma, log_variances=log_variances,
                              learned=learned, clip_denoised=clip_denoised)
        ctx.report(i, x, ts[i + 1], None)
    return x

