r"""Noise schedules: :math:`\alpha(t)`, :math:`\sigma(t)`, the log-SNR, its inverse and the SDE
coefficients, as one object (DPM-Solver's ``NoiseScheduleVP`` is the model).

A schedule fixes the marginal :math:`p(x_t \mid x_0) = \mathcal N(\alpha(t) x_0, \sigma(t)^2 I)` and
with it the linear SDE :math:`dx = f(t)\,x\,dt + g(t)\,dw`:

.. math::
    f = \frac{d\log\alpha}{dt}, \qquad g^2 = \frac{d\sigma^2}{dt} - 2 f \sigma^2
      = -2\sigma^2 \frac{d\lambda}{dt}, \qquad \lambda(t) = \log\frac{\alpha(t)}{\sigma(t)}

(Song et al. 2021, eq. 5 and App. B; Kingma et al. 2021 for :math:`\lambda`). A schedule is valid
on ``[t_min, t_max]`` when :math:`\alpha, \sigma > 0` and :math:`\lambda` strictly decreases.

Every method here is **unchecked** (no range test, no host sync), **vectorised** (elementwise on a
time tensor of any shape) and **device-following** (tables move to the device of the times asked
for): these are the coefficients samplers call in their loops. :class:`DiffusionSDE
<sdekit_diffusion.sde.DiffusionSDE>` holds one as ``sde.schedule`` and offers checked versions.

Implementations:

- closed forms :class:`VPSchedule`, :class:`SubVPSchedule`, :class:`VESchedule`,
  :class:`CosineSchedule`;
- :class:`MarginalSchedule` (any differentiable ``alpha``, ``sigma``; ``f``, ``g^2`` by autograd,
  cached per time);
- :class:`LinearSDESchedule` (any ``f``, ``g``; ``alpha``, ``sigma`` by Gauss–Legendre quadrature);
- :class:`DiscreteSchedule` (a DDPM table ``alphas_cumprod`` of ``N`` timesteps, DPM-Solver's
  continuous-time convention).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable

import numpy as np
import torch

from .differentiable import check_differentiable

TimeFunction = Callable[[torch.Tensor], torch.Tensor]

VALIDATION_POINTS = 2001      # grid on which a schedule is checked when it is built
ZERO_SNR_ALPHA_CUMPROD = 2.0 ** -24   # diffusers' stand-in for a last alpha_cumprod of 0


def evaluate(fn: TimeFunction, t: torch.Tensor) -> torch.Tensor:
    """``fn(t)`` as a tensor of ``t``'s shape and dtype (constants such as ``alpha = 1`` broadcast)."""
    value = fn(t)
    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(np.asarray(value), device=t.device)
    return value.to(dtype=t.dtype).broadcast_to(t.shape)


class Schedule:
    r"""The interface every schedule implements (module docstring); subclasses give ``log_alpha``
    and ``sigma`` (or ``alpha``) and ``f_g2``, and may override the rest with closed forms.

    ``t_min``, ``t_max``: the interval where the schedule is valid and samplers run.
    """

    t_min: float
    t_max: float

    def __init__(self, t_min: float, t_max: float):
        t_min, t_max = float(t_min), float(t_max)
        if not (0.0 <= t_min < t_max) or not math.isfinite(t_max):
            raise ValueError(f"need 0 <= t_min < t_max < inf, got t_min={t_min}, t_max={t_max}")
        self.t_min, self.t_max = t_min, t_max

    # -- the marginal --------------------------------------------------------------------------
    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.log(self.alpha(t))

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`\alpha(t)`."""
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`\sigma(t)`."""
        raise NotImplementedError

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`\lambda(t) = \log\alpha(t) - \log\sigma(t)`."""
        return self.log_alpha(t) - torch.log(self.sigma(t))

    def t_of_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        r"""The time with :math:`\lambda(t) = ` ``lam`` (elementwise), clamped to ``[t_min, t_max]``.

        This default is a vectorised bisection with a fixed number of halvings (no host sync);
        closed-form schedules override it."""
        lo = torch.full_like(lam, self.t_min)
        hi = torch.full_like(lam, self.t_max)
        for _ in range(64 if lam.dtype == torch.float64 else 40):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam     # lambda(mid) > lam: the root lies right of mid
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    # -- the SDE -------------------------------------------------------------------------------
    def f_g2(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(f(t), g(t)^2)`` together (most schedules share work between them)."""
        raise NotImplementedError

    def f(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`f(t) = d\log\alpha/dt`."""
        return self.f_g2(t)[0]

    def g2(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`g(t)^2 = d\sigma^2/dt - 2 f\sigma^2`."""
        return self.f_g2(t)[1]

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The time a network trained on this schedule takes as input: ``t`` itself here;
        :class:`DiscreteSchedule` maps to its integer timesteps."""
        return t

    # -- validation ----------------------------------------------------------------------------
    def validate(self, name: str | None = None) -> None:
        """:class:`ValueError` naming the first time of ``[t_min, t_max]`` (on a grid of
        :data:`VALIDATION_POINTS`) where the schedule is invalid, and how to fix it."""
        name = name or type(self).__name__
        t = torch.linspace(self.t_min, self.t_max, VALIDATION_POINTS, dtype=torch.float64)
        if self.t_min == 0.0:
            t = t[1:]  # alpha, sigma > 0 is required on (t_min, t_max] only
        with torch.no_grad():
            alpha, sigma = self.alpha(t), self.sigma(t)
            f, g2 = self.f_g2(t)
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
# closed forms (Song et al. 2021, score_sde/sde_lib.py; Nichol & Dhariwal 2021)

class VariancePreserving(Schedule):
    r""":math:`\sigma^2 = 1 - \alpha^2`: ``sigma``, ``log_snr`` and ``t_of_log_snr`` from ``log_alpha``
    and its inverse ``t_of_log_alpha`` (:math:`\alpha^2 = \mathrm{sigmoid}(2\lambda)`)."""

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    def log_snr(self, t):
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(-torch.expm1(2 * log_alpha))

    def t_of_log_alpha(self, log_alpha: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def t_of_log_snr(self, lam):
        # alpha^2 / (1 - alpha^2) = e^{2 lam}  =>  log alpha = 1/2 log sigmoid(2 lam)
        return self.t_of_log_alpha(0.5 * torch.nn.functional.logsigmoid(2 * lam))


class VPSchedule(VariancePreserving):
    r"""Variance preserving: :math:`\beta(t) = \beta_{min} + t(\beta_{max} - \beta_{min})`,
    :math:`\log\alpha = -\tfrac14 t^2 (\beta_{max}-\beta_{min}) - \tfrac12 t \beta_{min}`,
    :math:`\sigma^2 = 1 - \alpha^2`, :math:`f = -\beta/2`, :math:`g^2 = \beta`."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3,
                 t_max: float = 1.0):
        super().__init__(t_min, t_max)
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def log_alpha(self, t):
        return -0.25 * t * t * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def f_g2(self, t):
        beta = self.beta(t)
        return -0.5 * beta, beta

    def t_of_log_alpha(self, log_alpha):
        r"""Solve :math:`\tfrac14 \Delta\beta\, t^2 + \tfrac12\beta_{min} t + \log\alpha = 0` for
        :math:`t \ge 0`, in the form free of cancellation at small ``t``."""
        half_b0 = 0.5 * self.beta_min
        disc = half_b0 ** 2 - (self.beta_max - self.beta_min) * log_alpha
        return -2 * log_alpha / (half_b0 + torch.sqrt(disc))

    def __repr__(self):
        return (f"{type(self).__name__}(beta_min={self.beta_min}, beta_max={self.beta_max}, "
                f"t_min={self.t_min}, t_max={self.t_max})")


class SubVPSchedule(VPSchedule):
    r"""Sub-VP (Song et al. 2021, eq. 29): the VP :math:`\alpha`, :math:`\sigma = 1 - \alpha^2`,
    :math:`f = -\beta/2`, :math:`g^2 = \beta (1 - \alpha^4)`."""

    def sigma(self, t):
        return -torch.expm1(2 * self.log_alpha(t))

    def log_snr(self, t):
        log_alpha = self.log_alpha(t)
        return log_alpha - torch.log(-torch.expm1(2 * log_alpha))

    def f_g2(self, t):
        beta = self.beta(t)
        return -0.5 * beta, -beta * torch.expm1(4 * self.log_alpha(t))

    def t_of_log_snr(self, lam):
        # alpha / (1 - alpha^2) = e^lam  =>  alpha = 2 e^lam / (1 + sqrt(1 + 4 e^{2 lam}))
        alpha = 2 * torch.exp(lam) / (1 + torch.sqrt(1 + 4 * torch.exp(2 * lam)))
        return self.t_of_log_alpha(torch.log(alpha))


class VESchedule(Schedule):
    r"""Variance exploding (SMLD): :math:`\alpha = 1`,
    :math:`\sigma = \sigma_{min} (\sigma_{max}/\sigma_{min})^t`, :math:`f = 0`,
    :math:`g^2 = 2 \sigma^2 \log(\sigma_{max}/\sigma_{min})`."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 1e-5,
                 t_max: float = 1.0):
        super().__init__(t_min, t_max)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        if not (0 < self.sigma_min < self.sigma_max):
            raise ValueError(f"VE needs 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, "
                             f"sigma_max={sigma_max}")
        self.log_ratio = math.log(self.sigma_max / self.sigma_min)

    def log_alpha(self, t):
        return torch.zeros_like(t)

    def alpha(self, t):
        return torch.ones_like(t)

    def sigma(self, t):
        return self.sigma_min * torch.exp(t * self.log_ratio)

    def log_snr(self, t):
        return -(math.log(self.sigma_min) + t * self.log_ratio)

    def f_g2(self, t):
        return torch.zeros_like(t), 2 * self.log_ratio * self.sigma(t) ** 2

    def t_of_log_snr(self, lam):
        return (-lam - math.log(self.sigma_min)) / self.log_ratio

    def __repr__(self):
        return (f"VESchedule(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, "
                f"t_min={self.t_min}, t_max={self.t_max})")


class CosineSchedule(Schedule):
    r"""Improved DDPM's cosine schedule (Nichol & Dhariwal 2021, eq. 17) in continuous time:
    :math:`\alpha = \cos\phi(t)/\cos\phi(0)`, :math:`\phi(t) = \tfrac{\pi}{2}\tfrac{t+s}{1+s}`,
    :math:`\sigma^2 = 1 - \alpha^2 = \sin(\phi - \phi_0)\sin(\phi + \phi_0)/\cos^2\phi_0`,
    :math:`f = -\tfrac{\pi}{2(1+s)}\tan\phi`, :math:`g^2 = -2f`."""

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946):
        if t_max >= 1.0:
            raise ValueError(f"the cosine schedule needs t_max < 1 (alpha(1) = 0 and f has a pole "
                             f"there), got t_max={t_max}; the default 0.9946 keeps alpha ~ 8e-3")
        super().__init__(t_min, t_max)
        self.s = float(s)
        self.phi0 = math.pi / 2 * self.s / (1 + self.s)

    def phi(self, t):
        return math.pi / 2 * (t + self.s) / (1 + self.s)

    def alpha(self, t):
        return torch.cos(self.phi(t)) / math.cos(self.phi0)

    def log_alpha(self, t):
        return torch.log(self.alpha(t))

    def sigma(self, t):
        phi = self.phi(t)
        return torch.sqrt(torch.sin(phi - self.phi0) * torch.sin(phi + self.phi0)) / math.cos(self.phi0)

    def log_snr(self, t):
        phi = self.phi(t)
        return torch.log(torch.cos(phi)) - 0.5 * torch.log(torch.sin(phi - self.phi0)
                                                             * torch.sin(phi + self.phi0))

    def f_g2(self, t):
        f = -math.pi / (2 * (1 + self.s)) * torch.tan(self.phi(t))
        return f, -2 * f

    def t_of_log_snr(self, lam):
        # alpha^2 = sigmoid(2 lam)  =>  cos(phi) = cos(phi0) sqrt(sigmoid(2 lam))
        cos_phi = math.cos(self.phi0) * torch.exp(0.5 * torch.nn.functional.logsigmoid(2 * lam))
        return torch.arccos(cos_phi) * 2 * (1 + self.s) / math.pi - self.s

    def __repr__(self):
        return f"CosineSchedule(s={self.s}, t_min={self.t_min}, t_max={self.t_max})"


# ----------------------------------------------------------------------------------------------
# any differentiable marginal: autograd

def _derivative(fn: TimeFunction, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fn(t), d fn/dt)`` elementwise by autograd (``fn`` acts elementwise on ``t``)."""
    with torch.inference_mode(False), torch.enable_grad():
        t_leaf = t.detach().clone().requires_grad_(True)
        value = evaluate(fn, t_leaf)
        if not value.requires_grad:  # fn does not depend on t (alpha = 1); checked at build time
            return value.detach(), torch.zeros_like(value)
        (grad,) = torch.autograd.grad(value.sum(), t_leaf, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(value)
    return value.detach(), grad


def check_time_function(fn: TimeFunction, name: str, t: torch.Tensor) -> None:
    """:class:`ValueError` unless autograd differentiates ``fn`` (``alpha`` or ``sigma``) correctly
    in ``t`` (:func:`sdekit_diffusion.differentiable.check_differentiable`): a detached, numpy,
    ``np.interp`` or ``no_grad`` function would silently give ``f = 0`` and a wrong SDE."""
    check_differentiable(lambda u: evaluate(fn, u), t, name=f"{name}(t)",
                         needed_for="f and g^2 of from_marginal are its derivatives in t",
                         fix="For a DDPM table use DiffusionSDE.from_alphas_cumprod.")


class MarginalSchedule(Schedule):
    r"""Any marginal given by differentiable ``alpha(t)`` and ``sigma(t)`` (torch functions of a
    time tensor, elementwise). ``f`` and ``g^2`` come from autograd:
    :math:`f = \alpha'/\alpha`, :math:`g^2 = 2\sigma\sigma' - 2 f\sigma^2`.

    The functions are checked to be differentiable when the schedule is built
    (:func:`check_time_function`). On the CPU, ``f_g2`` at a 0-d time is cached by value (an LRU
    of :data:`CACHE_SIZE` times), and :meth:`precompute` fills the cache for a whole grid in one
    vectorised autograd pass: a solve on a precomputed grid pays a dictionary look-up instead of
    an autograd graph per drift call (``benchmarks/schedule_overhead.py`` measures it). On other
    devices every call runs autograd (a look-up by value would need a host sync).
    """

    CACHE_SIZE = 8192

    def __init__(self, alpha: TimeFunction, sigma: TimeFunction, t_min: float = 1e-3,
                 t_max: float = 1.0, *, check: bool = True):
        if not (callable(alpha) and callable(sigma)):
            raise TypeError("alpha and sigma must be callables mapping a time tensor to a tensor")
        super().__init__(t_min, t_max)
        self.alpha_fn, self.sigma_fn = alpha, sigma
        self._cache: OrderedDict = OrderedDict()
        if check:
            t = torch.linspace(self.t_min, self.t_max, 201, dtype=torch.float64)[1:-1]
            check_time_function(alpha, "alpha", t)
            check_time_function(sigma, "sigma", t)

    def alpha(self, t):
        return evaluate(self.alpha_fn, t)

    def sigma(self, t):
        return evaluate(self.sigma_fn, t)

    def _f_g2_autograd(self, t):
        alpha, dalpha = _derivative(self.alpha_fn, t)
        sigma, dsigma = _derivative(self.sigma_fn, t)
        f = dalpha / alpha
        return f, 2 * sigma * dsigma - 2 * f * sigma * sigma

    def f_g2(self, t):
        if t.dim() != 0 or t.device.type != "cpu" or t.requires_grad:
            return self._f_g2_autograd(t)
        key = (t.dtype, t.item())
        hit = self._cache.get(key)
        if hit is None:
            hit = self._f_g2_autograd(t)
            self._remember(key, hit)
        else:
            self._cache.move_to_end(key)
        return hit

    def _remember(self, key, value) -> None:
        self._cache[key] = value
        if len(self._cache) > self.CACHE_SIZE:
            self._cache.popitem(last=False)

    def precompute(self, ts: torch.Tensor) -> None:
        """Fill the ``f_g2`` cache for every time of ``ts`` (one autograd pass, in float64 and in
        ``ts``'s dtype), so that solves on this grid skip autograd. CPU only; a no-op elsewhere."""
        if ts.device.type != "cpu":
            return
        ts = ts.detach().flatten()
        for dtype in {torch.float64, ts.dtype}:
            grid = ts.to(dtype)
            f, g2 = self._f_g2_autograd(grid)
            for t, fi, gi in zip(grid.tolist(), f.unbind(), g2.unbind()):
                self._remember((dtype, t), (fi, gi))


# ----------------------------------------------------------------------------------------------
# from a linear SDE: quadrature

class LinearSDESchedule(Schedule):
    r"""The marginal of :math:`dx = f(t)\,x\,dt + g(t)\,dw` started at :math:`t = 0`:
    :math:`\alpha(t) = e^{F(t)}`, :math:`\sigma(t)^2 = \alpha^2 G(t)` with
    :math:`F = \int_0^t f` and :math:`G = \int_0^t g^2 e^{-2F}`; ``f`` and ``g^2`` are the given
    functions, :math:`\lambda = -\tfrac12\log G`.

    :math:`[0, t_{max}]` is cut into ``panels`` equal panels; ``F`` and ``G`` are tabulated at the
    panel edges with ``nodes``-point Gauss–Legendre rules (exact for polynomials of degree
    ``2 nodes - 1``). At any ``t``, the remainder from the panel's left edge is integrated with the
    same rule (``F`` at the inner nodes of ``G``'s rule by a nested rule). Computed in float64.
    """

    def __init__(self, f: TimeFunction, g: TimeFunction, t_max: float, panels: int = 256,
                 nodes: int = 8, *, t_min: float = 1e-3):
        super().__init__(t_min, t_max)
        self.f_fn, self.g_fn = f, g
        x, w = np.polynomial.legendre.leggauss(nodes)
        self._x = torch.tensor(x, dtype=torch.float64)
        self._w = torch.tensor(w, dtype=torch.float64)
        self.edges = torch.linspace(0.0, t_max, panels + 1, dtype=torch.float64)
        left, right = self.edges[:-1], self.edges[1:]
        F_panels = self._quad(lambda u: evaluate(f, u), left, right)
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
        F_u = F_left + self._quad(lambda v: evaluate(self.f_fn, v), left.expand_as(u), u)
        return evaluate(self.g_fn, u) ** 2 * torch.exp(-2 * F_u)

    def _to(self, device: torch.device) -> None:
        """Keep the tables on the device of the times asked for (no host round trip)."""
        if self.edges.device != device:
            for name in ("_x", "_w", "edges", "F_edges", "G_edges"):
                setattr(self, name, getattr(self, name).to(device))

    def F_G(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:math:`F(t)` and :math:`G(t)` (float64 inside, returned in ``t``'s dtype)."""
        self._to(t.device)
        t64 = t.detach().to(torch.float64)
        index = (torch.searchsorted(self.edges, t64.contiguous(), right=True) - 1)
        index = index.clamp(0, len(self.edges) - 2)
        left, F_left = self.edges[index], self.F_edges[index]
        F = F_left + self._quad(lambda u: evaluate(self.f_fn, u), left, t64)
        G = self.G_edges[index] + self._quad(
            lambda u: self._G_integrand(u, left[..., None], F_left[..., None]), left, t64)
        return F.to(t.dtype), G.to(t.dtype)

    def log_alpha(self, t):
        return self.F_G(t)[0]

    def sigma(self, t):
        F, G = self.F_G(t)
        return torch.exp(F) * torch.sqrt(G)

    def log_snr(self, t):
        return -0.5 * torch.log(self.F_G(t)[1])

    def f_g2(self, t):
        return evaluate(self.f_fn, t), evaluate(self.g_fn, t) ** 2


# ----------------------------------------------------------------------------------------------
# a discrete DDPM table

class DiscreteSchedule(VariancePreserving):
    r"""A discrete-time DDPM schedule (``alphas_cumprod`` of ``N`` timesteps) in continuous time,
    with DPM-Solver's convention (Lu et al. 2022, ``NoiseScheduleVP('discrete')``): timestep
    ``n = 0..N-1`` sits at :math:`t_n = (n + 1)/N`, :math:`\log\alpha` is piecewise linear in ``t``
    through :math:`\log\alpha(t_n) = \tfrac12\log\bar\alpha_n` (extended linearly outside the
    table), :math:`\sigma = \sqrt{1 - \alpha^2}`, ``t_min = 1/N``, ``t_max = 1``.

    So :math:`f = d\log\alpha/dt` is constant on each interval (:math:`N` times the table's
    difference) and :math:`g^2 = -2f` (variance preserving). The network's timestep input is
    :meth:`model_time` :math:`= N t - 1` (``n`` on the grid points; fractional between them, or
    rounded to the nearest timestep with ``quantize=True``).

    A last :math:`\bar\alpha_{N-1} = 0` (zero terminal SNR, Lin et al. 2024, "Common diffusion
    noise schedules and sample steps are flawed") has :math:`\lambda = -\infty`, where no sampler
    can start; it is replaced by :data:`ZERO_SNR_ALPHA_CUMPROD` :math:`= 2^{-24}` (diffusers'
    choice in its multistep schedulers) and ``zero_terminal_snr`` is set. Where :math:`2^{-24}` is
    not below :math:`\bar\alpha_{N-2}` (e.g. diffusers' default linear betas rescaled to zero
    terminal SNR, :math:`\bar\alpha_{N-2} \approx 4\cdot10^{-9}`; diffusers then uses a table whose
    log-SNR rises at the last timestep) the stand-in is the geometric extrapolation
    :math:`\bar\alpha_{N-2}^2/\bar\alpha_{N-3}`, so that the log-SNR stays strictly decreasing.
    """

    def __init__(self, alphas_cumprod, *, quantize: bool = False):
        table = torch.as_tensor(np.asarray(alphas_cumprod, dtype=np.float64)
                                if not isinstance(alphas_cumprod, torch.Tensor)
                                else alphas_cumprod.detach().cpu().to(torch.float64)).flatten()
        N = table.numel()
        if N < 2:
            raise ValueError(f"alphas_cumprod needs at least 2 timesteps, got {N}")
        if not bool(torch.isfinite(table).all()) or not bool(((table >= 0) & (table <= 1)).all()):
            raise ValueError("alphas_cumprod must be finite values in [0, 1] (the products of "
                             "1 - beta_n)")
        self.zero_terminal_snr = bool(table[-1] == 0)
        if self.zero_terminal_snr:
            table = table.clone()
            table[-1] = ZERO_SNR_ALPHA_CUMPROD
            if N >= 3 and not bool(table[-1] < table[-2]):
                table[-1] = table[-2] ** 2 / table[-3]
        if not bool((table[1:] < table[:-1]).all()) or not bool((table[:-1] > 0).all()):
            bad = int(((table[1:] >= table[:-1])).nonzero()[0]) + 1 if bool(
                (table[1:] >= table[:-1]).any()) else 0
            raise ValueError(f"alphas_cumprod must be strictly decreasing and positive (log-SNR "
                             f"strictly decreasing); it is not at timestep {bad}")
        if bool(table[0] >= 1):
            raise ValueError("alphas_cumprod[0] must be below 1 (beta_0 > 0): sigma = 0 there")
        super().__init__(1.0 / N, 1.0)
        self.N = N
        self.quantize = bool(quantize)
        self.alphas_cumprod = table
        self._log_alpha_table = 0.5 * torch.log(table)
        self._slopes = (self._log_alpha_table[1:] - self._log_alpha_table[:-1]) * N

    @classmethod
    def from_betas(cls, betas, *, quantize: bool = False) -> "DiscreteSchedule":
        r"""From the DDPM :math:`\beta_n` (``alphas_cumprod`` :math:`= \prod_{m \le n}(1 - \beta_m)`)."""
        betas = torch.as_tensor(np.asarray(betas, dtype=np.float64) if not isinstance(
            betas, torch.Tensor) else betas.detach().cpu().to(torch.float64)).flatten()
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must lie in (0, 1]")
        return cls(torch.cumprod(1 - betas, 0), quantize=quantize)

    def _tables(self, t: torch.Tensor):
        if self._log_alpha_table.device != t.device:
            self._log_alpha_table = self._log_alpha_table.to(t.device)
            self._slopes = self._slopes.to(t.device)
        return self._log_alpha_table.to(t.dtype), self._slopes.to(t.dtype)

    def _segment(self, t: torch.Tensor):
        """Index ``i`` of the interval ``[t_i, t_{i+1}]`` holding ``t`` and the offset ``t - t_i``."""
        position = t * self.N - 1                       # the fractional timestep
        index = torch.floor(position).clamp(0, self.N - 2).long()
        return index, (position - index) / self.N

    def log_alpha(self, t):
        table, slopes = self._tables(t)
        index, offset = self._segment(t)
        return table[index] + slopes[index] * offset

    def f_g2(self, t):
        _, slopes = self._tables(t)
        f = slopes[self._segment(t)[0]]
        return f, -2 * f

    def t_of_log_alpha(self, log_alpha):
        table, slopes = self._tables(log_alpha)
        # the table decreases: search its negation; interval i holds table[i] >= log_alpha > table[i+1]
        index = torch.searchsorted(-table, -log_alpha.contiguous()) - 1
        index = index.clamp(0, self.N - 2)
        t = (index + 1).to(log_alpha.dtype) / self.N + (log_alpha - table[index]) / slopes[index]
        return t.clamp(self.t_min, self.t_max)

    def model_time(self, t):
        """The network's timestep :math:`N t - 1` (rounded when ``quantize``)."""
        n = t * self.N - 1
        return torch.round(n) if self.quantize else n

    def timestep_time(self, n) -> torch.Tensor:
        """The time :math:`(n + 1)/N` of integer timesteps ``n`` (float64)."""
        return (torch.as_tensor(n, dtype=torch.float64) + 1) / self.N

    def __repr__(self):
        return f"DiscreteSchedule(N={self.N}{', zero_terminal_snr' if self.zero_terminal_snr else ''})"


__all__ = ["Schedule", "VPSchedule", "SubVPSchedule", "VESchedule", "CosineSchedule",
           "MarginalSchedule", "LinearSDESchedule", "DiscreteSchedule", "check_time_function",
           "evaluate"]
