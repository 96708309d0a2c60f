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

TimeFunction = Callable[[torch.Tensor], torch.Tensor]
ScoreFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_VALIDATION_POINTS = 2001   # grid on which a schedule is checked when it is built
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


def _evaluate(fn: TimeFunction, t: torch.Tensor) -> torch.Tensor:
    """``fn(t)`` as a tensor of ``t``'s shape (constants such as ``alpha = 1`` are broadcast)."""
    value = fn(t)
    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(value, dtype=t.dtype, device=t.device)
    return value.to(dtype=t.dtype).broadcast_to(t.shape)


def _broadcast_time(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-sample coefficient ``c`` of shape ``()`` or ``(batch,)``, broadcastable against ``x``."""
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


def _derivative(fn: TimeFunction, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fn(t), d fn/dt)`` elementwise by autograd (``fn`` must act elementwise on ``t``)."""
    with torch.inference_mode(False), torch.enable_grad():
        t_leaf = t.detach().clone().requires_grad_(True)
        value = _evaluate(fn, t_leaf)
        if not value.requires_grad:  # fn does not depend on t (e.g. alpha = 1)
            return value.detach(), torch.zeros_like(value)
        (grad,) = torch.autograd.grad(value.sum(), t_leaf, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(value)
    return value.detach(), grad


# ----------------------------------------------------------------------------------------------
# the forward SDE

class DiffusionSDE(sdekit.SDE):
    r"""The forward SDE :math:`dx = f(t)\,x\,dt + g(t)\,dw` of a Gaussian marginal (module docstring).

    Build one with :meth:`from_marginal` (``alpha``, ``sigma``; ``f`` and ``g^2`` by autograd),
    :meth:`from_linear_sde` (``f``, ``g``; ``alpha``, ``sigma`` by quadrature) or a preset
    (:class:`VPSDE`, :class:`SubVPSDE`, :class:`VESDE`, :class:`CosineVPSDE`).

    ``noise_type`` is ``"additive"``: ``diffusion(t, x) = g(t)`` broadcast to ``x.shape`` (elementwise,
    independent of ``x``), so every diagonal-noise solver and the additive-noise ones (SRA1) apply.
    ``batched_time = True``: ``t`` may be 0-d or ``(batch,)``.

    The prior is :math:`\mathcal N(0, \sigma(t_{max})^2 I)`: it assumes
    :math:`\alpha(t_{max}) x_0` is negligible next to :math:`\sigma(t_{max})` (for VE the prior
    std is ``sigma_max``; for VP it is :math:`\sqrt{1 - \alpha(1)^2} \approx 1`).
    """

    noise_type = "additive"
    batched_time = True

    def __init__(self, alpha: TimeFunction, sigma: TimeFunction, t_min: float = 1e-3,
                 t_max: float = 1.0, *, validate: bool = True):
        if not (callable(alpha) and callable(sigma)):
            raise TypeError("alpha and sigma must be callables mapping a time tensor to a tensor")
        if not (0.0 <= t_min < t_max) or not math.isfinite(t_max):
            raise ValueError(f"need 0 <= t_min < t_max < inf, got t_min={t_min}, t_max={t_max}")
        self._alpha_fn = alpha
        self._sigma_fn = sigma
        self.t_min = float(t_min)
        self.t_max = float(t_max)
        if validate:
            self._validate()

    # -- constructors --------------------------------------------------------------------------
    @classmethod
    def from_marginal(cls, alpha: TimeFunction, sigma: TimeFunction, t_min: float = 1e-3,
                      t_max: float = 1.0) -> "DiffusionSDE":
        r"""The SDE whose marginal is :math:`\mathcal N(\alpha(t) x_0, \sigma(t)^2 I)`.

        ``alpha`` and ``sigma`` map a time tensor of any shape to a tensor of the same shape,
        elementwise and differentiably (``f`` and ``g^2`` come from autograd). The schedule is
        checked on a grid of ``[t_min, t_max]``; a :class:`ValueError` names the first bad time.
        """
        return DiffusionSDE(alpha, sigma, t_min, t_max)

    @classmethod
    def from_linear_sde(cls, f: TimeFunction, g: TimeFunction, t_min: float = 1e-3,
                        t_max: float = 1.0) -> "DiffusionSDE":
        r"""The marginal of :math:`dx = f(t)\,x\,dt + g(t)\,dw` started at :math:`t = 0`.

        :math:`\alpha(t) = \exp\int_0^t f`, :math:`\sigma(t)^2 = \alpha(t)^2 \int_0^t g^2/\alpha^2`,
        by composite Gauss–Legendre quadrature (see :class:`LinearSDESchedule`). Note that
        ``sigma(0) = 0`` here: the VE SDE of Song et al. maps to
        ``sigma^2 = sigma_min^2 ((sigma_max/sigma_min)^{2t} - 1)``, not to :class:`VESDE`.
        """
        return _LinearDiffusionSDE(f, g, t_min, t_max)

    # -- coefficients (private: no time check, used by the hot loop) ---------------------------
    def _alpha(self, t: torch.Tensor) -> torch.Tensor:
        return _evaluate(self._alpha_fn, t)

    def _sigma(self, t: torch.Tensor) -> torch.Tensor:
        return _evaluate(self._sigma_fn, t)

    def _log_snr(self, t: torch.Tensor) -> torch.Tensor:
        return torch.log(self._alpha(t)) - torch.log(self._sigma(t))

    def _f_g2(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, dalpha = _derivative(self._alpha_fn, t)
        sigma, dsigma = _derivative(self._sigma_fn, t)
        f = dalpha / alpha
        g2 = 2 * sigma * dsigma - 2 * f * sigma * sigma
        return f, g2

    def _f(self, t: torch.Tensor) -> torch.Tensor:
        return self._f_g2(t)[0]

    def _g2(self, t: torch.Tensor) -> torch.Tensor:
        return self._f_g2(t)[1]

    def _inverse_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """Vectorised bisection on ``[t_min, t_max]`` (log-SNR is strictly decreasing)."""
        lo = torch.full_like(lam, self.t_min)
        hi = torch.full_like(lam, self.t_max)
        iterations = 64 if lam.dtype == torch.float64 else 40
        for _ in range(iterations):  # fixed count: no host sync
            mid = 0.5 * (lo + hi)
            above = self._log_snr(mid) > lam   # lambda(mid) > lam  =>  the root lies right of mid
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    # -- public coefficients -------------------------------------------------------------------
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
        return self._alpha(self.check_time(t))

    def sigma(self, t) -> torch.Tensor:
        r"""Noise std :math:`\sigma(t)`."""
        return self._sigma(self.check_time(t))

    def log_snr(self, t) -> torch.Tensor:
        r"""Log signal-to-noise ratio :math:`\lambda(t) = \log(\alpha/\sigma)`, strictly decreasing."""
        return self._log_snr(self.check_time(t))

    def f(self, t) -> torch.Tensor:
        r"""Drift coefficient :math:`f(t) = d\log\alpha/dt`."""
        return self._f(self.check_time(t))

    def g2(self, t) -> torch.Tensor:
        r"""Squared diffusion :math:`g(t)^2 = d\sigma^2/dt - 2 f \sigma^2`."""
        return self._g2(self.check_time(t))

    def g(self, t) -> torch.Tensor:
        r"""Diffusion coefficient :math:`g(t) = \sqrt{g^2}`."""
        return torch.sqrt(self.g2(t))

    def inverse_log_snr(self, lam) -> torch.Tensor:
        r"""The time :math:`t \in [t_{min}, t_{max}]` with :math:`\lambda(t) = ` ``lam`` (elementwise).

        :class:`ValueError` when ``lam`` leaves :math:`[\lambda(t_{max}), \lambda(t_{min})]`.
        """
        lam = _as_time(lam)
        ends = self._log_snr(torch.tensor([self.t_max, self.t_min], dtype=lam.dtype,
                                          device=lam.device))
        slack = 1e-9 * (1 + ends.abs()) if lam.dtype == torch.float64 else 1e-5 * (1 + ends.abs())
        bad = (lam < ends[0] - slack[0]) | (lam > ends[1] + slack[1]) | torch.isnan(lam)
        if bool(bad.any()):
            raise ValueError(
                f"log-SNR {lam[bad].flatten()[0].item()!r} is outside the range "
                f"[{ends[0].item()}, {ends[1].item()}] of {type(self).__name__} on "
                f"[t_min, t_max] = [{self.t_min}, {self.t_max}]")
        return self._inverse_log_snr(lam).clamp(self.t_min, self.t_max)

    # -- the SDE -------------------------------------------------------------------------------
    def drift(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``f(t) x``; ``t`` 0-d or ``(batch,)``."""
        return _broadcast_time(self._f(_as_time(t, x)), x) * x

    def diffusion(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``g(t)`` broadcast to ``x.shape``."""
        g = torch.sqrt(self._g2(_as_time(t, x)))
        return _broadcast_time(g, x).expand(x.shape)

    def marginal_prob(self, x0: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Mean :math:`\alpha(t) x_0` (shape of ``x0``) and std :math:`\sigma(t)` (shape ``()`` or
        ``(batch, 1, ..., 1)``, broadcastable against ``x0``) of :math:`p(x_t \mid x_0)`."""
        t = self.check_time(_as_time(t, x0))
        alpha = _broadcast_time(self._alpha(t), x0)
        sigma = _broadcast_time(self._sigma(t), x0)
        return alpha * x0, sigma

    @property
    def prior_std(self) -> float:
        r""":math:`\sigma(t_{max})`, the std of the prior."""
        return float(self._sigma(torch.tensor(self.t_max, dtype=torch.float64)))

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

    # -- schedule validation -------------------------------------------------------------------
    def _validate(self) -> None:
        t = torch.linspace(self.t_min, self.t_max, _VALIDATION_POINTS, dtype=torch.float64)
        if self.t_min == 0.0:
            t = t[1:]  # alpha, sigma > 0 is required on (t_min, t_max] only
        name = type(self).__name__
        with torch.no_grad():
            alpha, sigma = self._alpha(t), self._sigma(t)
            f, g2 = self._f_g2(t)
            lam = torch.log(alpha) - torch.log(sigma)
        decreasing = torch.ones_like(t, dtype=torch.bool)
        decreasing[1:] = lam[1:] < lam[:-1]
        checks = [  # (violated where, condition, fix); ties in time go to the earlier entry
            (~torch.isfinite(alpha), "alpha(t) is not finite",
             "alpha must be a finite function of t on [t_min, t_max]"),
            (~torch.isfinite(sigma), "sigma(t) is not finite",
             "sigma must be a finite function of t on [t_min, t_max]"),
            (~(alpha > 0), "alpha(t) <= 0",
             "alpha must stay positive; lower t_max below the first time alpha reaches 0"),
            (~(sigma > 0), "sigma(t) <= 0",
             "sigma must stay positive; raise t_min above the times where sigma vanishes "
             "(sigma(0) = 0 is typical)"),
            (~(torch.isfinite(f) & torch.isfinite(g2)), "f(t) or g(t)^2 is not finite",
             "alpha and sigma must be differentiable there; lower t_max or raise t_min"),
            (~(g2 > 0) | ~decreasing,
             "log-SNR log(alpha/sigma) is not strictly decreasing (g(t)^2 = d sigma^2/dt - "
             "2 f sigma^2 <= 0)",
             "the noise must grow relative to the signal with t: check alpha and sigma are not "
             "swapped, or restrict [t_min, t_max] to where the SNR falls"),
        ]
        first = [int(bad.nonzero()[0]) if bool(bad.any()) else len(t) for bad, _, _ in checks]
        index = min(first)
        if index < len(t):
            _, condition, fix = checks[first.index(index)]
            raise ValueError(f"invalid schedule for {name}: {condition} at t = "
                             f"{t[index].item():.6g}; {fix}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(t_min={self.t_min}, t_max={self.t_max})"


# ----------------------------------------------------------------------------------------------
# from a linear SDE: quadrature

class LinearSDESchedule:
    r""":math:`\alpha(t) = e^{F(t)}`, :math:`\sigma(t)^2 = \alpha^2 G(t)` with
    :math:`F = \int_0^t f` and :math:`G = \int_0^t g^2 e^{-2F}`.

    :math:`[0, t_{max}]` is cut into ``panels`` equal panels; ``F`` and ``G`` are tabulated at the
    panel edges with ``nodes``-point Gauss–Legendre rules (exact for polynomials of degree
    ``2 nodes - 1``). At any ``t``, the remainder from the panel's left edge is integrated with the
    same rule (``F`` at the inner nodes of ``G``'s rule by a nested rule). Computed in float64.
    """

    def __init__(self, f: TimeFunction, g: TimeFunction, t_max: float, panels: int = 256,
                 nodes: int = 8):
        self.f, self.g = f, g
        x, w = np.polynomial.legendre.leggauss(nodes)
        self._x = torch.tensor(x, dtype=torch.float64)
        self._w = torch.tensor(w, dtype=torch.float64)
        self.edges = torch.linspace(0.0, t_max, panels + 1, dtype=torch.float64)
        left, right = self.edges[:-1], self.edges[1:]
        F_panels = self._quad(lambda u: _evaluate(f, u), left, right)
        self.F_edges = torch.cat([torch.zeros(1, dtype=torch.float64), F_panels.cumsum(0)])
        G_panels = self._quad(lambda u: self._G_integrand(u, left[:, None], self.F_edges[:-1, None]),
                              left, right)
        self.G_edges = torch.cat([torch.zeros(1, dtype=torch.float64), G_panels.cumsum(0)])

    def _quad(self, fn: TimeFunction, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Gauss–Legendre rule for :math:`\\int_a^b fn` (``a``, ``b`` of one shape)."""
        half = (b - a)[..., None] / 2
        u = (a + b)[..., None] / 2 + half * self._x
        return (fn(u) * self._w * half).sum(-1)

    def _G_integrand(self, u: torch.Tensor, left: torch.Tensor, F_left: torch.Tensor):
        """:math:`g(u)^2 e^{-2F(u)}` with :math:`F(u) = F(left) + \\int_{left}^u f`."""
        F_u = F_left + self._quad(lambda v: _evaluate(self.f, v), left.expand_as(u), u)
        return _evaluate(self.g, u) ** 2 * torch.exp(-2 * F_u)

    def _locate(self, t: torch.Tensor):
        index = (torch.searchsorted(self.edges, t.contiguous(), right=True) - 1)
        index = index.clamp(0, len(self.edges) - 2)
        return self.edges[index], index

    def _to(self, device: torch.device) -> None:
        """Keep the tables on the device of the times asked for (no host round trip)."""
        if self.edges.device != device:
            for name in ("_x", "_w", "edges", "F_edges", "G_edges"):
                setattr(self, name, getattr(self, name).to(device))

    def F_G(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:math:`F(t)` and :math:`G(t)` (float64 inside, returned in ``t``'s dtype)."""
        self._to(t.device)
        t64 = t.detach().to(torch.float64)
        left, index = self._locate(t64)
        F_left = self.F_edges[index]
        F = F_left + self._quad(lambda u: _evaluate(self.f, u), left, t64)
        G = self.G_edges[index] + self._quad(
            lambda u: self._G_integrand(u, left[..., None], F_left[..., None]), left, t64)
        return F.to(t.dtype), G.to(t.dtype)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.F_G(t)[0])

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        F, G = self.F_G(t)
        return torch.exp(F) * torch.sqrt(G)


class _LinearDiffusionSDE(DiffusionSDE):
    """A :class:`DiffusionSDE` given by ``f`` and ``g`` (see :meth:`DiffusionSDE.from_linear_sde`)."""

    def __init__(self, f: TimeFunction, g: TimeFunction, t_min: float, t_max: float):
        self._f_fn, self._g_fn = f, g
        self.schedule = LinearSDESchedule(f, g, t_max)
        super().__init__(self.schedule.alpha, self.schedule.sigma, t_min, t_max)

    def _log_snr(self, t):
        F, G = self.schedule.F_G(t)
        return -0.5 * torch.log(G)

    def _f_g2(self, t):
        return _evaluate(self._f_fn, t), _evaluate(self._g_fn, t) ** 2


# ----------------------------------------------------------------------------------------------
# presets (closed forms from Song et al. 2021, score_sde/sde_lib.py, and Nichol & Dhariwal 2021)

class VPSDE(DiffusionSDE):
    r"""Variance preserving: :math:`\beta(t) = \beta_{min} + t(\beta_{max} - \beta_{min})`,
    :math:`\log\alpha = -\tfrac14 t^2 (\beta_{max}-\beta_{min}) - \tfrac12 t \beta_{min}`,
    :math:`\sigma^2 = 1 - \alpha^2`, :math:`f = -\beta/2`, :math:`g^2 = \beta`.

    Defaults ``beta_min=0.1, beta_max=20`` and ``t_min=1e-3`` are those of Song et al. (2021)
    (score_sde ``VPSDE`` and its sampling ``eps``); ``t_max=1``.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3,
                 t_max: float = 1.0):
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        super().__init__(self._alpha, self._sigma, t_min, t_max)

    def _log_alpha(self, t):
        return -0.25 * t * t * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def _beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _alpha(self, t):
        return torch.exp(self._log_alpha(t))

    def _sigma(self, t):
        return torch.sqrt(-torch.expm1(2 * self._log_alpha(t)))

    def _log_snr(self, t):
        log_alpha = self._log_alpha(t)
        return log_alpha - 0.5 * torch.log(-torch.expm1(2 * log_alpha))

    def _f_g2(self, t):
        beta = self._beta(t)
        return -0.5 * beta, beta

    def _time_of_log_alpha(self, log_alpha):
        """Solve :math:`\\tfrac14 \\Delta\\beta t^2 + \\tfrac12\\beta_{min} t + \\log\\alpha = 0`
        for :math:`t \\ge 0`, in the form free of cancellation at small ``t``."""
        half_b0 = 0.5 * self.beta_min
        disc = half_b0 ** 2 - (self.beta_max - self.beta_min) * log_alpha
        return -2 * log_alpha / (half_b0 + torch.sqrt(disc))

    def _inverse_log_snr(self, lam):
        # alpha^2 / (1 - alpha^2) = e^{2 lam}  =>  log alpha = 1/2 log sigmoid(2 lam)
        return self._time_of_log_alpha(0.5 * torch.nn.functional.logsigmoid(2 * lam))

    def ddpm_betas(self, N: int) -> torch.Tensor:
        r"""The DDPM chain of ``N`` steps, :math:`\beta_i = (\beta_{min} + (\beta_{max}-\beta_{min})
        \tfrac{i}{N-1}) / N`, ``i = 0..N-1`` (score_sde ``VPSDE.discrete_betas``)."""
        return torch.linspace(self.beta_min / N, self.beta_max / N, N, dtype=torch.float64)

    def __repr__(self):
        return (f"VPSDE(beta_min={self.beta_min}, beta_max={self.beta_max}, t_min={self.t_min}, "
                f"t_max={self.t_max})")


class SubVPSDE(VPSDE):
    r"""Sub-VP (Song et al. 2021, eq. 29): the VP :math:`\alpha`, :math:`\sigma = 1 - \alpha^2`,
    :math:`f = -\beta/2`, :math:`g^2 = \beta (1 - \alpha^4)`. Its variance stays below VP's."""

    def _sigma(self, t):
        return -torch.expm1(2 * self._log_alpha(t))

    def _log_snr(self, t):
        log_alpha = self._log_alpha(t)
        return log_alpha - torch.log(-torch.expm1(2 * log_alpha))

    def _f_g2(self, t):
        beta = self._beta(t)
        return -0.5 * beta, -beta * torch.expm1(4 * self._log_alpha(t))

    def _inverse_log_snr(self, lam):
        # alpha / (1 - alpha^2) = e^lam  =>  alpha = 2 e^lam / (1 + sqrt(1 + 4 e^{2 lam}))
        alpha = 2 * torch.exp(lam) / (1 + torch.sqrt(1 + 4 * torch.exp(2 * lam)))
        return self._time_of_log_alpha(torch.log(alpha))

    def ddpm_betas(self, N: int) -> torch.Tensor:
        raise NotImplementedError("the sub-VP SDE has no DDPM chain; use VPSDE.ddpm_betas")

    def __repr__(self):
        return super().__repr__().replace("VPSDE", "SubVPSDE", 1)


class VESDE(DiffusionSDE):
    r"""Variance exploding (SMLD): :math:`\alpha = 1`,
    :math:`\sigma = \sigma_{min} (\sigma_{max}/\sigma_{min})^t`, :math:`f = 0`,
    :math:`g^2 = 2 \sigma^2 \log(\sigma_{max}/\sigma_{min})`.

    Defaults ``sigma_min=0.01, sigma_max=50, t_min=1e-5`` follow score_sde's CIFAR-10 VE configs.
    The prior std is :math:`\sigma(1) = \sigma_{max}`.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 1e-5,
                 t_max: float = 1.0):
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        super().__init__(self._alpha, self._sigma, t_min, t_max)

    def _alpha(self, t):
        return torch.ones_like(t)

    def _sigma(self, t):
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def _log_snr(self, t):
        return -(math.log(self.sigma_min) + t * self._log_ratio)

    def _f_g2(self, t):
        return torch.zeros_like(t), 2 * self._log_ratio * self._sigma(t) ** 2

    def _inverse_log_snr(self, lam):
        return (-lam - math.log(self.sigma_min)) / self._log_ratio

    def smld_sigmas(self, N: int) -> torch.Tensor:
        r"""The SMLD noise levels, ``N`` geometric steps from ``sigma_min`` to ``sigma_max``
        (score_sde ``VESDE.discrete_sigmas``)."""
        return torch.exp(torch.linspace(math.log(self.sigma_min), math.log(self.sigma_max), N,
                                        dtype=torch.float64))

    def __repr__(self):
        return (f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, "
                f"t_min={self.t_min}, t_max={self.t_max})")


class CosineVPSDE(DiffusionSDE):
    r"""The cosine schedule of Improved DDPM (Nichol & Dhariwal 2021, eq. 17), in continuous time:

    .. math::
        \alpha(t) = \frac{\cos(\phi(t))}{\cos(\phi(0))}, \quad \phi(t) = \frac{\pi}{2}\frac{t+s}{1+s},
        \quad \sigma^2 = 1 - \alpha^2 = \frac{\sin(\phi - \phi_0)\sin(\phi + \phi_0)}{\cos^2\phi_0},

    :math:`f = -\tfrac{\pi}{2(1+s)} \tan\phi`, :math:`g^2 = -2f`. ``s = 0.008`` is the paper's
    offset. :math:`\alpha(1) = 0` makes ``f`` blow up, so ``t_max = 0.9946`` (DPM-Solver's choice,
    Lu et al. 2022, where :math:`\lambda \approx -4.8` and :math:`\alpha \approx 8.4\cdot10^{-3}`,
    slightly above VP's :math:`\alpha(1) \approx 6.6\cdot10^{-3}`); ``t_min = 1e-3``.
    """

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946):
        if t_max >= 1.0:
            raise ValueError(f"CosineVPSDE needs t_max < 1 (alpha(1) = 0 and f has a pole there), "
                             f"got t_max={t_max}; the default 0.9946 keeps alpha ~ 8e-3")
        self.s = float(s)
        self._phi0 = math.pi / 2 * self.s / (1 + self.s)
        super().__init__(self._alpha, self._sigma, t_min, t_max)

    def _phi(self, t):
        return math.pi / 2 * (t + self.s) / (1 + self.s)

    def _alpha(self, t):
        return torch.cos(self._phi(t)) / math.cos(self._phi0)

    def _sigma(self, t):
        phi = self._phi(t)
        return torch.sqrt(torch.sin(phi - self._phi0) * torch.sin(phi + self._phi0)) / math.cos(self._phi0)

    def _log_snr(self, t):
        phi = self._phi(t)
        return torch.log(torch.cos(phi)) - 0.5 * torch.log(torch.sin(phi - self._phi0)
                                                             * torch.sin(phi + self._phi0))

    def _f_g2(self, t):
        f = -math.pi / (2 * (1 + self.s)) * torch.tan(self._phi(t))
        return f, -2 * f

    def _inverse_log_snr(self, lam):
        # alpha^2 = sigmoid(2 lam)  =>  cos(phi) = cos(phi0) sqrt(sigmoid(2 lam))
        cos_phi = math.cos(self._phi0) * torch.exp(0.5 * torch.nn.functional.logsigmoid(2 * lam))
        return torch.arccos(cos_phi) * 2 * (1 + self.s) / math.pi - self.s

    def ddpm_betas(self, N: int) -> torch.Tensor:
        r"""Improved DDPM's discrete betas :math:`\beta_i = \min(1 - \bar\alpha_{i+1}/\bar\alpha_i,
        0.999)` with :math:`\bar\alpha_i = \alpha(i/N)^2` (the 0.999 clip is the paper's)."""
        t = torch.arange(N + 1, dtype=torch.float64) / N
        alpha_bar = self._alpha(t) ** 2
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
        """``score_fn(t, x)`` with ``t`` expanded to ``(batch,)``; :class:`sdekit.ShapeError` unless
        the result has ``x``'s shape."""
        s = self.score_fn(batch_time(t, x), x)
        if not isinstance(s, torch.Tensor) or s.shape != x.shape:
            got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise sdekit.ShapeError(
                f"score_fn returned {got} for a state of shape {tuple(x.shape)}; expected shape "
                f"{tuple(x.shape)} (the score is the gradient of log p_t, one value per element)")
        return s

    def _coefficients(self, t, x):
        t = _as_time(t, x)
        if t.dim() != 0:
            t = batch_time(t, x)
        f, g2 = self.sde._f_g2(t)
        return _broadcast_time(f, x), _broadcast_time(g2, x), t


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
        g = torch.sqrt(self.sde._g2(_as_time(t, x)))
        return _broadcast_time(g, x).expand(x.shape)


class ProbabilityFlowODE(_ScoreProblem, sdekit.ODE):
    r"""The probability-flow ODE :math:`dx/dt = f x - \tfrac12 g^2 s(t, x)` (Song et al. 2021,
    eq. 13): same marginals as the forward SDE, deterministic."""

    def drift(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        f, g2, t = self._coefficients(t, x)
        return f * x - 0.5 * g2 * self.score(t, x)
