r"""Diffusion SDEs derived from their marginals, their reverse SDEs and probability-flow ODEs.

A diffusion process is fixed by its perturbation kernel

.. math:: p(x_t \mid x_0) = \mathcal N\bigl(\alpha(t) x_0,\ \sigma(t)^2 I\bigr),

and the linear Itô SDE :math:`dx = f(t)\, x\, dt + g(t)\, dw` with that kernel has

.. math::
    f(t) = \frac{d \log\alpha}{dt}, \qquad
    g(t)^2 = \frac{d\sigma^2}{dt} - 2 f(t)\, \sigma(t)^2
           = -2\sigma^2 \frac{d\lambda}{dt}, \qquad \lambda(t) = \log\frac{\alpha(t)}{\sigma(t)}

(Song et al., *Score-Based Generative Modeling through SDEs*, ICLR 2021, eq. 5 and App. B;
Kingma et al., *Variational Diffusion Models*, 2021, for the log-SNR :math:`\lambda`). A schedule is
valid when :math:`\alpha, \sigma > 0` and :math:`\lambda` strictly decreases (equivalently
:math:`g^2 > 0`). Given the score :math:`s = \nabla_x \log p_t`, the reverse-time SDE (Anderson 1982)
and the probability-flow ODE are

.. math::
    dx = [f x - g^2 s(t, x)]\, dt + g\, d\bar w, \qquad
    \frac{dx}{dt} = f x - \tfrac12 g^2 s(t, x),

both integrated from ``t_max`` down to ``t_min`` (``sdekit.solve(..., t0=sde.t_max, t1=sde.t_min)``).

Times: every coefficient accepts ``t`` as a 0-d tensor or a tensor of any shape (one value per
element). ``drift``/``diffusion`` broadcast a ``(batch,)`` time over the trailing dimensions of
``x``. Public coefficient methods (``alpha``, ``sigma``, ``f``, ...) check that ``t`` lies in
``[t_min, t_max]``; ``drift`` and ``diffusion`` do not (they sit in the solvers' hot loop).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

import sdekit

from .schedules import (CosineSchedule, DiscreteSchedule, LinearSDESchedule, MarginalSchedule,
                        Schedule, SubVPSchedule, VESchedule, VPSchedule)

TimeFunction = Callable[[torch.Tensor], torch.Tensor]
ScoreFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_TIME_TOLERANCE = 1e-6      # relative slack of check_time (covers float32 rounding of t_max)


# ----------------------------------------------------------------------------------------------
# helpers

def _as_time(t, like: torch.Tensor | None = None) -> torch.Tensor:
    """``t`` as a tensor (on ``like``'s device/dtype when ``t`` is a Python number)."""
    if isinstance(t, torch.Tensor):
        return t
    if like is not None:
        return torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return torch.as_tensor(t, dtype=torch.get_default_dtype())


def append_dims(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-sample coefficient ``c`` of shape ``()`` or ``(batch,)``, broadcastable against ``x``
    and in ``x``'s dtype (k-diffusion's ``append_dims``): times and schedules are computed in the
    time dtype (``sdekit.problems.time_dtype``, float64 on CPU) and cast here, where they meet the
    state, so a bfloat16 state is not promoted (a mask or an integer ``c`` keeps its dtype)."""
    if c.is_floating_point() and x.is_floating_point():
        c = c.to(x.dtype)
    if c.dim() == 0:
        return c
    return c.reshape(c.shape[0], *([1] * (x.dim() - 1)))




def batch_time(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` as shape ``(batch,)`` for a state ``x`` of shape ``(batch, *dims)``."""
    t = _as_time(t, x)
    if t.dim() == 0:
        return t.expand(x.shape[0])
    if tuple(t.shape) != (x.shape[0],):
        raise sdekit.ShapeError(f"time of shape {tuple(t.shape)} does not match a state of shape "
                                f"{tuple(x.shape)}; pass a 0-d time or one time per sample, "
                                f"shape ({x.shape[0]},)")
    return t


# ----------------------------------------------------------------------------------------------
# the forward SDE

class DiffusionSDE(sdekit.SDE):
    r"""The forward SDE :math:`dx = f(t)\,x\,dt + g(t)\,dw` of a Gaussian marginal (module docstring).

    Holds a :class:`~sdekit_diffusion.schedules.Schedule` as ``schedule`` (unchecked, vectorised
    coefficients for loops); the methods here (``alpha``, ``sigma``, ``log_snr``, ``f``, ``g2``,
    ``inverse_log_snr``) check that times lie in ``[t_min, t_max]``. Build one with
    :meth:`from_marginal` (``alpha``, ``sigma``; ``f`` and ``g^2`` by autograd),
    :meth:`from_linear_sde` (``f``, ``g``; ``alpha``, ``sigma`` by quadrature),
    :meth:`from_alphas_cumprod` / :meth:`from_betas` (a discrete DDPM table), a preset
    (:class:`VPSDE`, :class:`SubVPSDE`, :class:`VESDE`, :class:`CosineVPSDE`), or
    ``DiffusionSDE(schedule)``.

    ``noise_type`` is ``"additive"``: ``diffusion(t, x) = g(t)`` broadcast to ``x.shape`` (elementwise,
    independent of ``x``), so every diagonal-noise solver and the additive-noise ones (SRA1) apply.
    ``batched_time = True``: ``t`` may be 0-d or ``(batch,)``.

    The prior is :math:`\mathcal N(0, \sigma(t_{max})^2 I)`: it assumes
    :math:`\alpha(t_{max}) x_0` is negligible next to :math:`\sigma(t_{max})` (for VE the prior
    std is ``sigma_max``; for VP it is :math:`\sqrt{1 - \alpha(1)^2} \approx 1`).
    """

    noise_type = "additive"
    batched_time = True

    def __init__(self, schedule, sigma: TimeFunction | None = None, t_min: float = 1e-3,
                 t_max: float = 1.0, *, validate: bool = True):
        if isinstance(schedule, Schedule):
            if sigma is not None:
                raise TypeError("give a Schedule alone, or the two functions alpha and sigma")
        else:
            schedule = MarginalSchedule(schedule, sigma, t_min, t_max)
        self.schedule = schedule
        if validate:
            schedule.validate(type(self).__name__)

    @property
    def t_min(self) -> float:
        return self.schedule.t_min

    @property
    def t_max(self) -> float:
        return self.schedule.t_max

    # -- constructors --------------------------------------------------------------------------
    @classmethod
    def from_marginal(cls, alpha: TimeFunction, sigma: TimeFunction, t_min: float = 1e-3,
                      t_max: float = 1.0) -> "DiffusionSDE":
        r"""The SDE whose marginal is :math:`\mathcal N(\alpha(t) x_0, \sigma(t)^2 I)`.

        ``alpha`` and ``sigma`` map a time tensor of any shape to a tensor of the same shape,
        elementwise and differentiably with torch operations (``f`` and ``g^2`` come from
        autograd; a detached, numpy or otherwise non-differentiable function is refused). The
        schedule is checked on a grid of ``[t_min, t_max]``; a :class:`ValueError` names the first
        bad time.
        """
        return DiffusionSDE(MarginalSchedule(alpha, sigma, t_min, t_max))

    @classmethod
    def from_linear_sde(cls, f: TimeFunction, g: TimeFunction, t_min: float = 1e-3,
                        t_max: float = 1.0) -> "DiffusionSDE":
        r"""The marginal of :math:`dx = f(t)\,x\,dt + g(t)\,dw` started at :math:`t = 0`.

        :math:`\alpha(t) = \exp\int_0^t f`, :math:`\sigma(t)^2 = \alpha(t)^2 \int_0^t g^2/\alpha^2`,
        by composite Gauss–Legendre quadrature (see :class:`LinearSDESchedule`). Note that
        ``sigma(0) = 0`` here: the VE SDE of Song et al. maps to
        ``sigma^2 = sigma_min^2 ((sigma_max/sigma_min)^{2t} - 1)``, not to :class:`VESDE`.
        """
        return DiffusionSDE(LinearSDESchedule(f, g, t_max, t_min=t_min))

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod, *, quantize: bool = False) -> "DiffusionSDE":
        r"""A discrete DDPM schedule (:class:`~sdekit_diffusion.schedules.DiscreteSchedule`):
        timestep ``n`` at :math:`t = (n+1)/N`, :math:`\log\alpha` piecewise linear in ``t``,
        ``t_min = 1/N``, ``t_max = 1``; ``sde.schedule.model_time(t) = N t - 1`` is the network's
        timestep input (rounded with ``quantize=True``). E.g.
        ``DiffusionSDE.from_alphas_cumprod(scheduler.alphas_cumprod)`` for a diffusers scheduler."""
        return DiffusionSDE(DiscreteSchedule(alphas_cumprod, quantize=quantize))

    @classmethod
    def from_betas(cls, betas, *, quantize: bool = False) -> "DiffusionSDE":
        r"""A discrete DDPM schedule from its :math:`\beta_n` (see :meth:`from_alphas_cumprod`)."""
        return DiffusionSDE(DiscreteSchedule.from_betas(betas, quantize=quantize))

    # -- public coefficients (checked) ---------------------------------------------------------
    def check_time(self, t) -> torch.Tensor:
        """``t`` as a tensor; :class:`ValueError` if some value lies outside ``[t_min, t_max]``."""
        t = _as_time(t)
        slack = _TIME_TOLERANCE * max(1.0, abs(self.t_max))
        bad = (t < self.t_min - slack) | (t > self.t_max + slack) | torch.isnan(t)
        if bool(bad.any()):
            value = t[bad].flatten()[0].item()
            raise ValueError(
                f"time {value!r} is outside [t_min, t_max] = [{self.t_min}, {self.t_max}] of "
                f"{type(self).__name__}; pass times in that range (or build the SDE with a wider "
                "t_min/t_max where its schedule is valid)")
        return t

    def alpha(self, t) -> torch.Tensor:
        r"""Mean scale :math:`\alpha(t)` (same shape as ``t``)."""
        return self.schedule.alpha(self.check_time(t))

    def sigma(self, t) -> torch.Tensor:
        r"""Noise std :math:`\sigma(t)`."""
        return self.schedule.sigma(self.check_time(t))

    def log_snr(self, t) -> torch.Tensor:
        r"""Log signal-to-noise ratio :math:`\lambda(t) = \log(\alpha/\sigma)`, strictly decreasing."""
        return self.schedule.log_snr(self.check_time(t))

    def f(self, t) -> torch.Tensor:
        r"""Drift coefficient :math:`f(t) = d\log\alpha/dt`."""
        return self.schedule.f(self.check_time(t))

    def g2(self, t) -> torch.Tensor:
        r"""Squared diffusion :math:`g(t)^2 = d\sigma^2/dt - 2 f \sigma^2`."""
        return self.schedule.g2(self.check_time(t))

    def g(self, t) -> torch.Tensor:
        r"""Diffusion coefficient :math:`g(t) = \sqrt{g^2}`."""
        return torch.sqrt(self.g2(t))

    def inverse_log_snr(self, lam) -> torch.Tensor:
        r"""The time :math:`t \in [t_{min}, t_{max}]` with :math:`\lambda(t) = ` ``lam`` (elementwise).

        :class:`ValueError` when ``lam`` leaves :math:`[\lambda(t_{max}), \lambda(t_{min})]`.
        """
        lam = _as_time(lam)
        ends = self.schedule.log_snr(torch.tensor([self.t_max, self.t_min], dtype=lam.dtype,
                                                  device=lam.device))
        slack = 1e-9 * (1 + ends.abs()) if lam.dtype == torch.float64 else 1e-5 * (1 + ends.abs())
        bad = (lam < ends[0] - slack[0]) | (lam > ends[1] + slack[1]) | torch.isnan(lam)
        if bool(bad.any()):
            raise ValueError(
                f"log-SNR {lam[bad].flatten()[0].item()!r} is outside the range "
                f"[{ends[0].item()}, {ends[1].item()}] of {type(self).__name__} on "
                f"[t_min, t_max] = [{self.t_min}, {self.t_max}]")
        return self.schedule.t_of_log_snr(lam).clamp(self.t_min, self.t_max)

    # -- the SDE -------------------------------------------------------------------------------
    def drift(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``f(t) x``; ``t`` 0-d or ``(batch,)``."""
        return append_dims(self.schedule.f(_as_time(t, x)), x) * x

    def diffusion(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``g(t)`` broadcast to ``x.shape``."""
        g = torch.sqrt(self.schedule.g2(_as_time(t, x)))
        return append_dims(g, x).expand(x.shape)

    def marginal_prob(self, x0: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Mean :math:`\alpha(t) x_0` (shape of ``x0``) and std :math:`\sigma(t)` (shape ``()`` or
        ``(batch, 1, ..., 1)``, broadcastable against ``x0``) of :math:`p(x_t \mid x_0)`."""
        t = self.check_time(_as_time(t, x0))
        alpha = append_dims(self.schedule.alpha(t), x0)
        sigma = append_dims(self.schedule.sigma(t), x0)
        return alpha * x0, sigma

    @property
    def prior_std(self) -> float:
        r""":math:`\sigma(t_{max})`, the std of the prior."""
        return float(self.schedule.sigma(torch.tensor(self.t_max, dtype=torch.float64)))

    def prior_sample(self, shape, generator: torch.Generator | None = None, *,
                     dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
        r"""Samples of the prior :math:`\mathcal N(0, \sigma(t_{max})^2 I)`, of ``shape``.

        ``device`` defaults to the generator's device (CPU without a generator)."""
        if device is None and generator is not None:
            device = generator.device
        z = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
        return z * self.prior_std

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density of the prior at ``z`` (shape ``(batch, *dims)``), summed over ``dims``."""
        dims = int(np.prod(z.shape[1:]))
        var = self.prior_std ** 2
        return (-0.5 * dims * math.log(2 * math.pi * var)
                - 0.5 * z.pow(2).flatten(1).sum(1) / var)

    def reverse(self, score_fn: ScoreFunction) -> "ReverseSDE":
        """The reverse-time SDE for ``score_fn(t, x)`` (see :class:`ReverseSDE`)."""
        return ReverseSDE(self, score_fn)

    def probability_flow(self, score_fn: ScoreFunction) -> "ProbabilityFlowODE":
        """The probability-flow ODE for ``score_fn(t, x)`` (see :class:`ProbabilityFlowODE`)."""
        return ProbabilityFlowODE(self, score_fn)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.schedule!r})"


# ----------------------------------------------------------------------------------------------
# presets: thin wrappers of the closed-form schedules

class VPSDE(DiffusionSDE):
    r"""Variance preserving (:class:`~sdekit_diffusion.schedules.VPSchedule`):
    :math:`\beta(t) = \beta_{min} + t(\beta_{max} - \beta_{min})`, :math:`f = -\beta/2`,
    :math:`g^2 = \beta`, :math:`\sigma^2 = 1 - \alpha^2`.

    Defaults ``beta_min=0.1, beta_max=20`` and ``t_min=1e-3`` are those of Song et al. (2021)
    (score_sde ``VPSDE`` and its sampling ``eps``); ``t_max=1``.
    """

    schedule_class = VPSchedule

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3,
                 t_max: float = 1.0):
        super().__init__(self.schedule_class(beta_min, beta_max, t_min, t_max))
        self.beta_min, self.beta_max = self.schedule.beta_min, self.schedule.beta_max

    def ddpm_betas(self, N: int) -> torch.Tensor:
        r"""The DDPM chain of ``N`` steps, :math:`\beta_i = (\beta_{min} + (\beta_{max}-\beta_{min})
        \tfrac{i}{N-1}) / N`, ``i = 0..N-1`` (score_sde ``VPSDE.discrete_betas``)."""
        return torch.linspace(self.beta_min / N, self.beta_max / N, N, dtype=torch.float64)

    def __repr__(self):
        return (f"{type(self).__name__}(beta_min={self.beta_min}, beta_max={self.beta_max}, "
                f"t_min={self.t_min}, t_max={self.t_max})")


class SubVPSDE(VPSDE):
    r"""Sub-VP (Song et al. 2021, eq. 29; :class:`~sdekit_diffusion.schedules.SubVPSchedule`): the
    VP :math:`\alpha`, :math:`\sigma = 1 - \alpha^2`, :math:`g^2 = \beta (1 - \alpha^4)`. Its
    variance stays below VP's."""

    schedule_class = SubVPSchedule

    def ddpm_betas(self, N: int) -> torch.Tensor:
        raise NotImplementedError("the sub-VP SDE has no DDPM chain; use VPSDE.ddpm_betas")


class VESDE(DiffusionSDE):
    r"""Variance exploding (SMLD; :class:`~sdekit_diffusion.schedules.VESchedule`): :math:`\alpha = 1`,
    :math:`\sigma = \sigma_{min} (\sigma_{max}/\sigma_{min})^t`, :math:`f = 0`,
    :math:`g^2 = 2 \sigma^2 \log(\sigma_{max}/\sigma_{min})`.

    Defaults ``sigma_min=0.01, sigma_max=50, t_min=1e-5`` follow score_sde's CIFAR-10 VE configs.
    The prior std is :math:`\sigma(1) = \sigma_{max}`.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 1e-5,
                 t_max: float = 1.0):
        super().__init__(VESchedule(sigma_min, sigma_max, t_min, t_max))
        self.sigma_min, self.sigma_max = self.schedule.sigma_min, self.schedule.sigma_max

    def smld_sigmas(self, N: int) -> torch.Tensor:
        r"""The SMLD noise levels, ``N`` geometric steps from ``sigma_min`` to ``sigma_max``
        (score_sde ``VESDE.discrete_sigmas``)."""
        return torch.exp(torch.linspace(math.log(self.sigma_min), math.log(self.sigma_max), N,
                                        dtype=torch.float64))

    def __repr__(self):
        return (f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, "
                f"t_min={self.t_min}, t_max={self.t_max})")


class CosineVPSDE(DiffusionSDE):
    r"""The cosine schedule of Improved DDPM (Nichol & Dhariwal 2021, eq. 17;
    :class:`~sdekit_diffusion.schedules.CosineSchedule`) in continuous time:
    :math:`\alpha(t) = \cos\phi(t)/\cos\phi(0)`, :math:`\phi(t) = \tfrac{\pi}{2}\tfrac{t+s}{1+s}`,
    :math:`f = -\tfrac{\pi}{2(1+s)} \tan\phi`, :math:`g^2 = -2f`. ``s = 0.008`` is the paper's
    offset. :math:`\alpha(1) = 0` makes ``f`` blow up, so ``t_max = 0.9946`` (DPM-Solver's choice,
    Lu et al. 2022, where :math:`\lambda \approx -4.8` and :math:`\alpha \approx 8.4\cdot10^{-3}`,
    slightly above VP's :math:`\alpha(1) \approx 6.6\cdot10^{-3}`); ``t_min = 1e-3``.
    """

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946):
        super().__init__(CosineSchedule(s, t_min, t_max))
        self.s = self.schedule.s

    def ddpm_betas(self, N: int) -> torch.Tensor:
        r"""Improved DDPM's discrete betas :math:`\beta_i = \min(1 - \bar\alpha_{i+1}/\bar\alpha_i,
        0.999)` with :math:`\bar\alpha_i = \alpha(i/N)^2` (the 0.999 clip is the paper's)."""
        t = torch.arange(N + 1, dtype=torch.float64) / N
        alpha_bar = self.schedule.alpha(t) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)

    def __repr__(self):
        return f"CosineVPSDE(s={self.s}, t_min={self.t_min}, t_max={self.t_max})"


# ----------------------------------------------------------------------------------------------
# reverse SDE and probability-flow ODE

class _ScoreProblem:
    """Shared by the reverse SDE and the probability-flow ODE: a forward SDE and a score."""

    batched_time = True

    def __init__(self, sde: DiffusionSDE, score_fn: ScoreFunction):
        if not callable(score_fn):
            raise TypeError("score_fn must be a callable score_fn(t, x) with t of shape (batch,)")
        self.sde = sde
        self.score_fn = score_fn
        self.t_min, self.t_max = sde.t_min, sde.t_max

    def score(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``score_fn(t, x)`` with ``t`` expanded to ``(batch,)`` (in the solver's time dtype,
        float64 on CPU), returned in ``x``'s dtype; :class:`sdekit.ShapeError` unless the result
        has ``x``'s shape."""
        s = self.score_fn(batch_time(t, x), x)
        if not isinstance(s, torch.Tensor) or s.shape != x.shape:
            got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise sdekit.ShapeError(
                f"score_fn returned {got} for a state of shape {tuple(x.shape)}; expected shape "
                f"{tuple(x.shape)} (the score is the gradient of log p_t, one value per element)")
        return s if s.dtype == x.dtype else s.to(x.dtype)

    def _coefficients(self, t, x):
        t = _as_time(t, x)
        if t.dim() != 0:
            t = batch_time(t, x)
        f, g2 = self.sde.schedule.f_g2(t)
        return append_dims(f, x), append_dims(g2, x), t


class ReverseSDE(_ScoreProblem, sdekit.SDE):
    r"""The reverse-time SDE :math:`dx = [f x - g^2 s(t, x)]\,dt + g\,d\bar w` (Anderson 1982).

    Integrate it backwards, ``sdekit.solve(rev, x_T, t0=sde.t_max, t1=sde.t_min, ...)``. Offers
    ``score(t, x)`` for predictor–corrector solvers. Additive noise: ``g`` depends on ``t`` only.
    """

    noise_type = "additive"

    def drift(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        f, g2, t = self._coefficients(t, x)
        return f * x - g2 * self.score(t, x)

    def diffusion(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        g = torch.sqrt(self.sde.schedule.g2(_as_time(t, x)))
        return append_dims(g, x).expand(x.shape)


class ProbabilityFlowODE(_ScoreProblem, sdekit.ODE):
    r"""The probability-flow ODE :math:`dx/dt = f x - \tfrac12 g^2 s(t, x)` (Song et al. 2021,
    eq. 13): same marginals as the forward SDE, deterministic."""

    def drift(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        f, g2, t = self._coefficients(t, x)
        return f * x - 0.5 * g2 * self.score(t, x)
