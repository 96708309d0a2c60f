r"""Predictor-corrector sampling (Song et al., *Score-Based Generative Modeling through SDEs*,
ICLR 2021, §4.2, Algorithms 2-3 and score_sde ``sampling.py``), for a general marginal.

At each grid time :math:`t_i` (``i = 0..N-1``) the corrector runs ``n_corrector_steps`` Langevin
steps on :math:`p_{t_i}`, then the predictor moves to :math:`t_{i+1}` (score_sde's order:
``pc_sampler`` calls ``corrector_update_fn`` then ``predictor_update_fn``).

Predictors: ``reverse_diffusion`` and ``ancestral`` (see :mod:`.ancestral`), ``euler_maruyama``
(the reverse SDE, :math:`x_s = x_t - [f x_t - g^2 s]\Delta + g\sqrt{\Delta} z`,
:math:`\Delta = t - s`), or ``"none"`` (corrector only, score_sde's ``NonePredictor``).

Correctors, with :math:`a_i = (\alpha(t_i)/\alpha(t_{i+1}))^2` — the discretised
:math:`1 - \beta_i` of score_sde's VP-only ``alpha = sde.alphas[timestep]``, written through the
ratio of :math:`\alpha` so that it holds for sub-VP, cosine and custom marginals (and is 1 for VE):

- ``langevin`` (score_sde ``LangevinCorrector``, Algorithm 5): :math:`z \sim \mathcal N(0, I)`,
  :math:`\epsilon = 2 a_i (\mathrm{snr}\,\lVert z\rVert / \lVert s\rVert)^2`,
  :math:`x \leftarrow x + \epsilon s + \sqrt{2\epsilon} z`. The norms are averaged over the batch
  by default, as score_sde does (so a sample depends on its batch); ``per_sample=True`` takes them
  per sample (samples independent of the batch). With few dimensions per sample the per-sample ratio
  :math:`\lVert z\rVert^2/\lVert s\rVert^2` is heavy-tailed (an F distribution) and occasional
  huge steps inflate the variance; on images (thousands of dimensions) it concentrates.
- ``ald`` (annealed Langevin dynamics, Song & Ermon 2019; score_sde
  ``AnnealedLangevinDynamics``): :math:`\epsilon = 2 a_i (\mathrm{snr}\,\sigma(t_i))^2`, same update.
- ``"none"``.

``snr = 0.16`` is score_sde's default (``configs/default_cifar10_configs.py``, ``sampling.snr``).
Score calls per step: 1 (predictor) + ``n_corrector_steps``.

Noise: the predictor's normal at step ``i`` is ``ctx.step_normal(i, ts)`` and the ``k``-th
corrector step's ``ctx.split_normal(i, ts, k, n_corrector_steps)``: fresh per-sample draws, or,
with ``sample(..., brownian=tree)``, the predictor's :math:`(W(t_{i+1}) - W(t_i))/\sqrt{t_i -
t_{i+1}}` and the corrector's the Lévy-area normals of ``n_corrector_steps`` equal parts of the
step (independent of every increment: :class:`~sdekit_diffusion.samplers._common.PathNoise`), so
the samples are a function of the path.
"""
from __future__ import annotations

import torch

from ._common import Context, schedule
from .ancestral import ancestral_step, reverse_diffusion_step, transition
from .registry import register

PREDICTORS = ("reverse_diffusion", "ancestral", "euler_maruyama", "none")
CORRECTORS = ("langevin", "ald", "none")
SNR = 0.16   # score_sde configs/default_cifar10_configs.py


def _euler_maruyama_step(ctx: Context, i, ts, x):
    t, s = ts[i], ts[i + 1]
    f, g2 = ctx.sde.schedule.f_g2(t)
    dt = t - s
    mean = x - (f * x - g2 * ctx.score(t, x)) * dt
    return mean + torch.sqrt(g2 * dt) * ctx.step_normal(i, ts), mean


def _per_sample(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return c.reshape(-1, *([1] * (x.dim() - 1)))


def _calls_per_step(options: dict) -> int:
    predictor = 0 if options.get("predictor", "reverse_diffusion") == "none" else 1
    corrector = 0 if options.get("corrector", "langevin") == "none" else options.get("n_corrector_steps", 1)
    return predictor + corrector


@register("pc", calls_per_step=_calls_per_step, stochastic=True, order=1)
def pc(ctx: Context, x: torch.Tensor, ts: torch.Tensor, predictor: str = "reverse_diffusion",
       corrector: str = "langevin", snr: float = SNR, n_corrector_steps: int = 1,
       per_sample: bool = False) -> torch.Tensor:
    """Predictor-corrector sampler (module docstring)."""
    if predictor not in PREDICTORS:
        raise ValueError(f"unknown predictor {predictor!r}; valid ones are {', '.join(PREDICTORS)}")
    if corrector not in CORRECTORS:
        raise ValueError(f"unknown corrector {corrector!r}; valid ones are {', '.join(CORRECTORS)}")
    if not snr > 0:
        raise ValueError(f"snr must be positive, got {snr}")
    if isinstance(n_corrector_steps, bool) or not isinstance(n_corrector_steps, int) \
            or n_corrector_steps < 0:
        raise ValueError(f"n_corrector_steps must be a non-negative int, got {n_corrector_steps!r}")
    if corrector == "none":
        n_corrector_steps = 0
    alpha_ts, sigma2_ts, (alpha, sigma, _) = transition(ctx, ts)
    a = alpha_ts ** 2           # (alpha(t_i) / alpha(t_{i+1}))^2 <= 1, = 1 for VE
    for i in range(len(ts) - 1):
        t = ts[i]
        for k in range(n_corrector_steps):
            score = ctx.score(t, x)
            z = ctx.split_normal(i, ts, k, n_corrector_steps)
            if corrector == "langevin":
                noise_norm, score_norm = z.flatten(1).norm(dim=1), score.flatten(1).norm(dim=1)
                if not per_sample:
                    noise_norm, score_norm = noise_norm.mean(), score_norm.mean()
                ratio = noise_norm / score_norm
                step = 2 * a[i] * (snr * ratio) ** 2
                step = _per_sample(step, x) if per_sample else step
            else:
                step = 2 * a[i] * (snr * sigma[i]) ** 2
            x = x + step * score + torch.sqrt(2 * step) * z
        if predictor == "reverse_diffusion":
            x, _ = reverse_diffusion_step(ctx, i, ts, x, alpha_ts, sigma2_ts)
        elif predictor == "ancestral":
            x, _ = ancestral_step(ctx, i, ts, x, alpha_ts, sigma2_ts, sigma)
        elif predictor == "euler_maruyama":
            x, _ = _euler_maruyama_step(ctx, i, ts, x)
        ctx.report(i, x, ts[i + 1], None)
    return x

