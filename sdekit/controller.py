r"""The step-size controller of every adaptive loop: initial step, accept/reject, next step.

Error norm (Hairer, Nørsett & Wanner 1993, §II.4, eq. 4.11), the scaled RMS of a step's error
estimate :math:`e` over all elements, or over each sample's elements when ``per_sample``:

.. math:: r = \sqrt{\tfrac1n \textstyle\sum_i \bigl(e_i / (\mathrm{atol} +
          \mathrm{rtol}\,\max(|x_{0,i}|, |x_{1,i}|))\bigr)^2},

and a step is accepted when :math:`r \le 1`. The next step is the PID rule in the form diffrax's
``PIDController`` uses (its choice (4)), with :math:`k` = ``error_order + 1`` the order of the local
error of the embedded estimate and :math:`r_n, r_{n-1}, r_{n-2}` the ratios of this step and of the
last two accepted steps:

.. math:: h_{n+1} = h_n \cdot \mathrm{clip}\Bigl(\mathrm{safety}\;
          r_n^{-(\beta_I + \beta_P + \beta_D)/k}\; r_{n-1}^{(\beta_P + 2\beta_D)/k}\;
          r_{n-2}^{-\beta_D/k},\; f_{min},\; f_{max}\Bigr),

the factor capped at ``safety`` after a rejection and at 1 for the step accepted right after one
(Hairer, Nørsett & Wanner, §II.4: no growth straight after a rejection). The defaults
:math:`\beta_P = 0.4`, :math:`\beta_I = 0.3`, :math:`\beta_D = 0` are Gustafsson's (1991) PI
controller as given by Hairer & Wanner (1996, §IV.2, eq. 2.43c: exponents :math:`0.7/k` and
:math:`0.4/k`); ``pcoeff=0, icoeff=1`` is the classical I controller
:math:`h\,\mathrm{safety}\,r^{-1/k}`; the clip :math:`[0.2, 10]` and ``safety = 0.9`` are Hairer,
Nørsett & Wanner's (§II.4). A non-finite ratio (NaN or infinite candidate) rejects the step and
shrinks it by :math:`f_{min}` without entering the memory.

Two further options express other published rules. ``factor_after_reject`` is the cap of the step
accepted right after a rejection (1 above; ``inf`` lifts it), and ``combine="max"`` mixes the
tolerances as :math:`\max(\mathrm{atol}, \mathrm{rtol}\,\max(|x_{0,i}|, |x_{1,i}|))` instead of
their sum. Jolicoeur-Martineau et al.'s (2021, Algorithm 1) rule
:math:`h \leftarrow \theta h E^{-r}` after every attempt is the I controller with
:math:`\beta_I = r k`, :math:`\beta_P = \beta_D = 0`, ``safety`` :math:`= \theta`,
``factor_min=0``, ``factor_max=inf``, ``factor_after_reject=inf`` and ``combine="max"`` (its
factor after a rejection, :math:`\theta E^{-r} < \theta` for :math:`E > 1`, is below the cap
``safety``); with ``factor_min=0`` a non-finite ratio sets the step to zero, the limit of
:math:`\theta h E^{-r}` as :math:`E \to \infty`, which :meth:`PIDController.stalled` reports.

Everything works on tensors with no host synchronisation: ``h`` and ``ratio`` are 0-d (one step
for the whole batch) or ``(batch,)`` (one step per sample, ``per_sample=True``), and the PID memory
(:class:`ControllerState`) has their shape. A loop::

    controller = PIDController(rtol, atol, error_order=solver.error_order, per_sample=True)
    h, memory = controller.init(t0, t1, x0, drift=drift)        # (batch,) steps
    while ...:
        x1, error = <a step of size h>
        ratio = controller.error_ratio(error, x0, x1)             # (batch,)
        accept, h, memory = controller.adapt_step_size(h, ratio, memory)
        if controller.stalled(t, h, span).any(): raise ...        # the loop's one sync

The initial step is Hairer, Nørsett & Wanner's algorithm (§II.4, "starting step size"; one drift
evaluation beyond ``f(t_0, x_0)``), with, for an SDE, the first guess also bounded by the noise:
:math:`\sqrt{h_0}\,\lVert g_0 \rVert \le 0.01 \lVert x_0 \rVert` in the scaled norm, as the drift
bound is :math:`h_0 \lVert f_0 \rVert \le 0.01 \lVert x_0 \rVert`.
"""
from __future__ import annotations

import math

from typing import Callable, NamedTuple

import torch

COMBINE = ("sum", "max")   # how atol and rtol mix: atol + rtol |x|, or max(atol, rtol |x|)


class ControllerState(NamedTuple):
    """The PID memory: error ratios of the last two accepted steps (1 before there are any), and
    whether the last attempt was rejected."""

    previous: torch.Tensor
    before: torch.Tensor
    rejected: torch.Tensor


class PIDController:
    """PID step-size controller (see the module docstring).

    Args:
        rtol, atol: relative and absolute tolerances (non-negative, not both zero).
        error_order: order of the solver's embedded error estimate (``Solver.error_order``); the
            local error is taken to scale as :math:`h^{k}`, :math:`k` = ``error_order + 1``.
        pcoeff, icoeff, dcoeff: the PID coefficients :math:`\\beta_P, \\beta_I, \\beta_D`.
        safety, factor_min, factor_max: as in the module docstring (``factor_min=0`` and
            ``factor_max=inf``: no clipping).
        factor_after_reject: the cap of the factor for the step accepted right after a rejection
            (Hairer, Nørsett & Wanner's 1; ``inf``: none).
        combine: how the tolerances mix in :meth:`error_ratio`: ``"sum"`` (atol + rtol |x|,
            Hairer, Nørsett & Wanner) or ``"max"`` (max(atol, rtol |x|), Jolicoeur-Martineau et
            al. 2021).
        per_sample: one step size per sample (ratios reduced per sample to shape ``(batch,)``)
            instead of one for the batch (0-d).
    """

    def __init__(self, rtol: float, atol: float, error_order: float, *, pcoeff: float = 0.4,
                 icoeff: float = 0.3, dcoeff: float = 0.0, safety: float = 0.9,
                 factor_min: float = 0.2, factor_max: float = 10.0, factor_after_reject: float = 1.0,
                 combine: str = "sum", per_sample: bool = False):
        rtol, atol = float(rtol), float(atol)
        # NaN passes here: the first step size is then NaN, which the solve reports at once
        if rtol < 0 or atol < 0 or rtol + atol <= 0 or math.isinf(rtol) or math.isinf(atol):
            raise ValueError(f"tolerances must be finite, non-negative and not both zero; got rtol={rtol}, "
                             f"atol={atol}")
        if error_order is None or not error_order > 0:
            raise ValueError(f"error_order must be positive (the solver's declared error_order), "
                             f"got {error_order!r}")
        if not 0 <= factor_min < 1 <= factor_max or not 0 < safety <= 1 or not factor_after_reject >= 1:
            raise ValueError(f"need 0 <= factor_min < 1 <= factor_max, factor_after_reject >= 1 and "
                             f"0 < safety <= 1; got factor_min={factor_min}, factor_max={factor_max}, "
                             f"factor_after_reject={factor_after_reject}, safety={safety}")
        if combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE} (atol + rtol |x|, or max(atol, rtol |x|)), "
                             f"got {combine!r}")
        self.rtol, self.atol, self.per_sample = rtol, atol, per_sample
        self.factor_after_reject, self.combine = float(factor_after_reject), combine
        self.error_order = float(error_order)
        self.pcoeff, self.icoeff, self.dcoeff = pcoeff, icoeff, dcoeff
        self.safety, self.factor_min, self.factor_max = safety, factor_min, factor_max
        k = self.error_order + 1.0
        self._exponents = ((icoeff + pcoeff + dcoeff) / k, (pcoeff + 2 * dcoeff) / k, dcoeff / k)

    def __repr__(self) -> str:
        return (f"PIDController(rtol={self.rtol}, atol={self.atol}, error_order={self.error_order}, "
                f"pcoeff={self.pcoeff}, icoeff={self.icoeff}, dcoeff={self.dcoeff}, safety={self.safety}, "
                f"factor_min={self.factor_min}, factor_max={self.factor_max}, "
                f"factor_after_reject={self.factor_after_reject}, combine={self.combine!r}, "
                f"per_sample={self.per_sample})")

    # -- norms -----------------------------------------------------------------------------------

    def _rms(self, values: torch.Tensor) -> torch.Tensor:
        squares = values * values
        if self.per_sample:
            return squares.flatten(1).mean(1).sqrt()
        return squares.mean().sqrt()

    def error_ratio(self, error: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """Scaled RMS norm of ``error`` (module docstring): 0-d, or ``(batch,)`` when ``per_sample``."""
        return self._rms(error / self._scale(torch.maximum(x0.abs(), x1.abs())))

    def _scale(self, magnitude: torch.Tensor) -> torch.Tensor:
        """The elementwise tolerance at state magnitude ``|x|`` (``combine``)."""
        relative = self.rtol * magnitude
        return self.atol + relative if self.combine == "sum" else relative.clamp_min(self.atol)

    # -- the three decisions -----------------------------------------------------------------------

    def init(self, t0: torch.Tensor, t1: torch.Tensor, x0: torch.Tensor, *, drift: Callable | None = None,
             dt0: float | None = None, f0: torch.Tensor | None = None,
             diffusion: Callable | None = None) -> tuple[torch.Tensor, ControllerState]:
        """The first step size (at most ``|t1 - t0|``) and the initial PID memory.

        ``t0``, ``t1``: 0-d, or ``(batch,)`` when ``per_sample``. ``dt0`` fixes the first step;
        otherwise it is Hairer, Nørsett & Wanner's from ``drift(t, x)`` (and ``diffusion(t, x)``
        for an SDE, shaped like ``x``), called at most once each beyond ``f0 = drift(t0, x0)``,
        which is evaluated unless given. The result is not checked: a NaN (non-finite drift or
        tolerances) or zero (``dt0=0``) step is for :meth:`stalled` to report.
        """
        if dt0 is None and drift is None:
            raise ValueError("give the first step dt0= or the drift= to estimate it from")
        span = (t1 - t0).abs()
        if dt0 is not None:
            h = torch.full_like(span, abs(float(dt0)))
        else:
            h = self._hairer_initial_step(drift, t0, span, x0, f0, diffusion)
        h = torch.minimum(h, span)
        ones = torch.ones_like(h)
        return h, ControllerState(ones, ones, torch.zeros_like(h, dtype=torch.bool))

    def _hairer_initial_step(self, drift, t0, span, x0, f0, diffusion):
        """Hairer, Nørsett & Wanner (1993), §II.4 'starting step size' (module docstring)."""
        scale = self._scale(x0.abs())
        if f0 is None:
            f0 = drift(t0, x0)
        d0, d1 = self._rms(x0 / scale), self._rms(f0 / scale)
        tiny = (d0 < 1e-5) | (d1 < 1e-5)
        h0 = torch.where(tiny, torch.full_like(d0, 1e-6), 0.01 * d0 / torch.where(tiny, torch.ones_like(d1), d1))
        if diffusion is not None:
            dg = self._rms(diffusion(t0, x0) / scale)
            noisy = (dg >= 1e-5) & (d0 >= 1e-5)
            noise_bound = (0.01 * d0 / torch.where(noisy, dg, torch.ones_like(dg))) ** 2
            h0 = torch.where(noisy, torch.minimum(h0, noise_bound), h0)
        h0 = torch.minimum(h0, span)
        # per-sample steps (times in the time dtype) multiply the state in its dtype
        step = h0.reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype) if self.per_sample else h0
        f1 = drift(t0 + h0, x0 + step * f0)
        d2 = self._rms((f1 - f0) / scale) / h0
        largest = torch.maximum(d1, d2)
        k = self.error_order + 1.0
        h1 = torch.where(largest <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6), (0.01 / largest) ** (1.0 / k))
        return torch.minimum(100 * h0, h1)

    def adapt_step_size(self, h: torch.Tensor, ratio: torch.Tensor,
                        state: ControllerState) -> tuple[torch.Tensor, torch.Tensor, ControllerState]:
        """Accept or reject a step of size ``h`` with error ``ratio``; return ``(accept, h_next,
        state)`` (``accept`` a bool tensor shaped like ``h``; the step of a rejected sample is to be
        retried from where it started with ``h_next``)."""
        finite = torch.isfinite(ratio)
        accept = finite & (ratio <= 1.0)
        ratio = torch.where(finite, ratio, torch.ones_like(ratio)).clamp_min(1e-10)
        e1, e2, e3 = self._exponents
        factor = self.safety * ratio ** (-e1)
        if e2:
            factor = factor * state.previous ** e2
        if e3:
            factor = factor * state.before ** (-e3)
        ones = torch.ones_like(factor)
        after_reject = min(self.factor_after_reject, self.factor_max)
        cap = torch.where(accept, torch.where(state.rejected, after_reject * ones, self.factor_max * ones),
                          self.safety * ones)
        factor = torch.minimum(factor.clamp(self.factor_min, self.factor_max), cap)
        factor = torch.where(finite, factor, torch.full_like(factor, self.factor_min))
        state = ControllerState(torch.where(accept, ratio, state.previous),
                                torch.where(accept, state.previous, state.before), ~accept)
        return accept, h * factor, state

    @staticmethod
    def stalled(t: torch.Tensor, h: torch.Tensor, span: float) -> torch.Tensor:
        """Where the step size ``h`` is NaN, infinite, or too small to move the time ``t`` of a
        solve over an interval of length ``span`` (16 ulps of ``max(|t|, span)``): a solve cannot
        make progress there. Shaped like ``h``; no host synchronisation."""
        floor = 16 * torch.finfo(h.dtype).eps * torch.clamp(t.abs(), min=abs(float(span)))
        return ~torch.isfinite(h) | (h <= floor)
