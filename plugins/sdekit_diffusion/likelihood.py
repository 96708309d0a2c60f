r"""Exact log-likelihoods through the probability-flow ODE (instantaneous change of variables).

For the probability-flow ODE :math:`dx/dt = v(t, x) = f(t) x - \tfrac12 g(t)^2 s(t, x)` the
log-density along a trajectory obeys (Chen et al. 2018, *Neural ODEs*, Theorem 1; FFJORD, Grathwohl
et al. 2019, eq. 4)

.. math:: \frac{d}{dt}\log p_t(x(t)) = -\nabla\cdot v(t, x(t)),

so with :math:`x(t_{min}) = x` and the augmented ODE
:math:`\frac{d}{dt}[x, \Delta] = [v(t, x), \nabla\cdot v(t, x)]` integrated from :math:`t_{min}` to
:math:`t_{max}` with :math:`\Delta(t_{min}) = 0`,

.. math:: \log p_{t_{min}}(x) = \log p_T\bigl(x(t_{max})\bigr) + \Delta(t_{max})

where :math:`\log p_T` is the prior :meth:`DiffusionSDE.prior_logp` (Song et al. 2021, *Score-Based
Generative Modeling through SDEs*, App. D.2). With an exact score this is the analytic data
log-density up to the two small approximations of the model itself: the data are read at
:math:`t_{min}` (``p_{t_min}``, data convolved with :math:`\mathcal N(0, \sigma(t_{min})^2)`) and
the prior ignores :math:`\alpha(t_{max}) x_0`.

The divergence is exact (``exact_trace=True``: the trace of the Jacobian with one vector–Jacobian
product per dimension, all dimensions batched into one evaluation) or the Hutchinson–Skilling
estimator :math:`\nabla\cdot v \approx \frac1P\sum_p \epsilon_p^\top (\partial v/\partial x)\,
\epsilon_p` (Hutchinson 1990; Skilling 1989) with Rademacher or Gaussian probes drawn once and kept
fixed over the solve (FFJORD, §3.1), which makes the estimate of :math:`\log p` unbiased.

The augmented state is one tensor of shape ``(batch, d + 1)`` (``x`` flattened, then
:math:`\Delta`) solved by ``sdekit.solve`` with an adaptive solver; the default ``dopri5`` at
``rtol = atol = 1e-5`` is score_sde's choice (RK45 at 1e-5).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

import sdekit

from .differentiable import check_differentiable
from .sde import DiffusionSDE, ScoreFunction, batch_time

HUTCHINSON_PROBES = ("rademacher", "gaussian")
_MAX_ROWS = 8192   # rows (probes x batch) per divergence evaluation before chunking the probes


class LikelihoodResult(NamedTuple):
    """What :func:`log_likelihood` returns with ``return_details=True`` (tensors of shape ``(batch,)``
    unless said otherwise).

    ``log_p``: :math:`\\log p(x)` in nats per sample; ``prior_logp``: :math:`\\log p_T(z)`;
    ``delta_logp``: :math:`\\int_{t_{min}}^{t_{max}} \\nabla\\cdot v\\,dt`; ``z``: the latent
    :math:`x(t_{max})`, shape of ``x``; ``nfe``: drift evaluations of the augmented ODE (each one
    evaluates ``score_fn`` once, on ``batch x probes`` rows); ``n_steps``: accepted solver steps.
    """

    log_p: torch.Tensor
    prior_logp: torch.Tensor
    delta_logp: torch.Tensor
    z: torch.Tensor
    nfe: int
    n_steps: int


def _probes(kind: str, n_probes: int, x: torch.Tensor, generator) -> torch.Tensor:
    """``n_probes`` probe vectors per sample, shape ``(n_probes, batch, d)``."""
    shape = (n_probes, x.shape[0], x[0].numel())
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, dtype=x.dtype, device=x.device)
    bits = torch.randint(0, 2, shape, generator=generator, device=x.device)
    return (2 * bits - 1).to(x.dtype)


class AugmentedFlow(sdekit.ODE):
    r"""The probability-flow ODE with its divergence: state ``(batch, d + 1)``,
    :math:`\frac{d}{dt}[x, \Delta] = [v(t, x), \nabla\cdot v(t, x)]`.

    ``probes``: ``(P, batch, d)`` vectors :math:`\epsilon_p`; the divergence is
    :math:`\sum_p w\,\epsilon_p^\top J \epsilon_p` with ``weight`` :math:`w` (``1/P`` for Hutchinson,
    ``1`` with the basis vectors for the exact trace). All probes are evaluated in one batched call
    of the drift (rows ``P x batch``), chunked when that exceeds ``_MAX_ROWS``.
    """

    batched_time = False

    def __init__(self, sde: DiffusionSDE, score_fn: ScoreFunction, dims: tuple[int, ...],
                 probes: torch.Tensor, weight: float):
        self.flow = sde.probability_flow(score_fn)
        self.dims = tuple(dims)
        self.d = math.prod(dims)
        self.probes = probes
        self.weight = weight
        self._checked = False

    def _divergence(self, t: torch.Tensor, x: torch.Tensor):
        """``(v(t, x), div v)`` for ``x`` of shape ``(batch, *dims)``."""
        batch = x.shape[0]
        n_probes = self.probes.shape[0]
        per_chunk = max(1, _MAX_ROWS // max(batch, 1))
        divergence = torch.zeros(batch, dtype=x.dtype, device=x.device)
        v_out = None
        for start in range(0, n_probes, per_chunk):
            eps = self.probes[start:start + per_chunk]                 # (p, batch, d)
            p = eps.shape[0]
            with torch.inference_mode(False), torch.enable_grad():
                x_rep = x.detach().unsqueeze(0).expand(p, *x.shape).reshape(p * batch, *self.dims)
                x_rep = x_rep.clone().requires_grad_(True)
                v = self.flow.drift(t, x_rep)
                (vjp,) = torch.autograd.grad(v, x_rep, grad_outputs=eps.reshape(p * batch, *self.dims))
            divergence = divergence + (vjp.reshape(p, batch, self.d) * eps).sum(dim=(0, 2))
            if v_out is None:
                v_out = v.detach()[:batch]
        return v_out, self.weight * divergence

    def drift(self, t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        x = state[:, :self.d].reshape(state.shape[0], *self.dims)
        if self._checked:
            v, divergence = self._divergence(t, x)
        else:
            try:
                v, divergence = self._divergence(t, x)
            except RuntimeError as error:  # typically a shape mismatch inside score_fn
                raise sdekit.ShapeError(
                    f"score_fn failed on x of shape {tuple(x.shape)} (dims {self.dims}): {error}; "
                    "check that x has the shape (batch, *dims) the score was built for") from error
            self._checked = True
        return torch.cat([v.reshape(state.shape[0], self.d), divergence[:, None]], dim=1)


def _check_x(x) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point tensor of shape (batch, *dims), got "
                        + (f"a tensor of dtype {x.dtype}" if isinstance(x, torch.Tensor)
                           else type(x).__name__))
    if x.dim() < 2 or x.shape[0] == 0 or x[0].numel() == 0:
        raise sdekit.ShapeError(
            f"x must have shape (batch, *dims) with batch >= 1 and at least one data dimension, got "
            f"{tuple(x.shape)}; for a single sample pass x[None]")
    if not bool(torch.isfinite(x).all()):
        raise sdekit.NonFiniteError("x contains NaN or infinite values")


SCORE_CHECK_ROWS = 16   # samples on which the score's autograd derivative is checked


def _check_score_differentiable(sde: DiffusionSDE, score_fn: ScoreFunction, x: torch.Tensor,
                                t: float) -> None:
    """Refuse a score autograd cannot differentiate in ``x`` (the divergence needs it), checked on
    a few noised samples at the middle of ``[t, t_max]`` (three score calls and one backward)."""
    with torch.inference_mode(False):
        rows = x[:SCORE_CHECK_ROWS].clone()   # a normal tensor, also under inference_mode
        generator = torch.Generator(device=x.device).manual_seed(0)
        t_mid = torch.full((rows.shape[0],), 0.5 * (t + sde.t_max), dtype=x.dtype, device=x.device)
        mean, std = sde.marginal_prob(rows, t_mid)
        x_t = mean + std * torch.randn(rows.shape, generator=generator, dtype=x.dtype, device=x.device)
        v = torch.randn(rows.shape, generator=generator, dtype=x.dtype, device=x.device)
        w = torch.randn(rows.shape, generator=generator, dtype=x.dtype, device=x.device)
        try:
            s = score_fn(batch_time(t_mid, x_t), x_t)
        except RuntimeError as error:   # typically a shape mismatch inside score_fn
            raise sdekit.ShapeError(
                f"score_fn failed on x of shape {tuple(x_t.shape)}: {error}; check that x has the shape "
                "(batch, *dims) the score was built for") from error
        if not isinstance(s, torch.Tensor) or s.shape != x_t.shape:
            raise sdekit.ShapeError(f"score_fn returned {getattr(s, 'shape', type(s).__name__)} for x of "
                                    f"shape {tuple(x_t.shape)}; expected x's shape")
        check_differentiable(lambda y: score_fn(batch_time(t_mid, y), y), x_t, name="score_fn",
                             needed_for="log_likelihood integrates the divergence of the probability-flow "
                                        "drift, which autograd takes through score_fn",
                             fix="Build the score from torch operations on x (a network's forward pass is "
                                 "fine), outside torch.no_grad.",
                             v=v, w=w, relative_step=1e-4, tolerance=1e-2, max_fraction=0.5)


@torch.no_grad()
def log_likelihood(sde: DiffusionSDE, score_fn: ScoreFunction, x: torch.Tensor, *,
                   exact_trace: bool = False, rtol: float = 1e-5, atol: float = 1e-5,
                   t_min: float | None = None, hutchinson: str = "rademacher", n_probes: int = 1,
                   generator: torch.Generator | None = None, solver: str = "dopri5",
                   max_steps: int = 10_000, prior_logp: Callable[[torch.Tensor], torch.Tensor]
                   | None = None, return_details: bool = False):
    r"""Log-likelihood :math:`\log p_0(x)` in nats per sample, shape ``(batch,)``, by the
    probability-flow ODE (module docstring).

    Args:
        sde: the diffusion; ``score_fn(t, x)``: its score (``t`` of shape ``(batch,)``).
        x: data, shape ``(batch, *dims)``, the dtype used throughout (float64 for tight checks).
        exact_trace: the exact divergence (``d`` vector–Jacobian products per evaluation, batched
            as ``d x batch`` rows — for small ``d``); otherwise the Hutchinson estimator.
        rtol, atol: tolerances of the adaptive solve; ``1e-5`` is score_sde's (Song et al. 2021).
        t_min: the time the data are read at (default ``sde.t_min``); the ODE runs from there to
            ``sde.t_max``.
        hutchinson: ``"rademacher"`` (lower variance, Hutchinson 1990) or ``"gaussian"`` probes.
        n_probes: probes per sample, averaged (fixed over the solve); ignored when
            ``exact_trace``.
        generator: draws the probes.
        solver: an adaptive ODE solver name of :mod:`sdekit.solvers` (``"dopri5"``).
        max_steps: attempted-step budget (:class:`sdekit.MaxStepsError` beyond).
        prior_logp: ``z -> log p_T(z)`` of shape ``(batch,)`` in place of
            ``sde.prior_logp`` (e.g. the exact marginal of a test problem,
            ``lambda z: mixture.marginal_log_prob(sde, sde.t_max, z)``, which removes the prior
            mismatch: :math:`\alpha(t_{max})\mu` is about ``6.6e-3 * mu`` for the default VP and
            ``mu`` against ``sigma_max = 50`` for VE, worth ~1e-2 nats for ``|mu| ~ 1``).
        return_details: return a :class:`LikelihoodResult` instead of the tensor.

    Raises:
        sdekit.ShapeError: ``x`` is not ``(batch, *dims)``, or the score fails on it.
        ValueError: bad ``t_min``, ``hutchinson`` or ``n_probes``; a ``score_fn`` that autograd
            cannot differentiate in ``x`` (under ``torch.no_grad``, detached, computed in numpy):
            checked against finite differences before the solve.
    """
    _check_x(x)
    if hutchinson not in HUTCHINSON_PROBES:
        raise ValueError(f"unknown hutchinson={hutchinson!r}; valid ones are "
                         f"{', '.join(repr(h) for h in HUTCHINSON_PROBES)}")
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer, got {n_probes!r}")
    t_start = sde.t_min if t_min is None else float(t_min)
    if not (sde.t_min <= t_start < sde.t_max):
        raise ValueError(f"t_min={t_start} must lie in [sde.t_min, sde.t_max) = "
                         f"[{sde.t_min}, {sde.t_max})")
    batch, dims = x.shape[0], tuple(x.shape[1:])
    d = math.prod(dims)
    if exact_trace:
        basis = torch.eye(d, dtype=x.dtype, device=x.device)
        probes, weight = basis[:, None, :].expand(d, batch, d), 1.0
    else:
        probes, weight = _probes(hutchinson, n_probes, x, generator), 1.0 / n_probes
    _check_score_differentiable(sde, score_fn, x, t_start)
    problem = AugmentedFlow(sde, score_fn, dims, probes, weight)
    state = torch.cat([x.reshape(batch, d), x.new_zeros(batch, 1)], dim=1)
    solution = sdekit.solve(problem, state, t_start, sde.t_max, solver=solver, rtol=rtol,
                            atol=atol, max_steps=max_steps)
    z = solution.x[:, :d].reshape(x.shape)
    delta_logp = solution.x[:, d]
    prior_logp = (sde.prior_logp if prior_logp is None else prior_logp)(z)
    log_p = prior_logp + delta_logp
    if return_details:
        return LikelihoodResult(log_p, prior_logp, delta_logp, z, solution.nfe, solution.n_steps)
    return log_p


def bits_per_dim(sde: DiffusionSDE, score_fn: ScoreFunction, x: torch.Tensor, *,
                 n_bits: int | None = None, data_range: float = 2.0, **options) -> torch.Tensor:
    r"""Negative log-likelihood in bits per dimension, shape ``(batch,)``:

    .. math:: \mathrm{bpd} = -\frac{\log p(x)}{d \ln 2} + n_{bits} - \log_2(\mathrm{range})

    The offset (only when ``n_bits`` is given) turns the density of continuous data into the
    probability of ``n_bits``-bit discrete data whose ``2^{n_bits}`` levels span an interval of
    length ``data_range``: each bin has width :math:`w = \mathrm{range}/2^{n_{bits}}` and
    :math:`-\log_2 P \approx -\log_2 p(x) - d\log_2 w`. For 8-bit images scaled to ``[-1, 1]``
    (``n_bits=8, data_range=2``) the offset is 7 bits, for ``[0, 1]`` it is 8 — score_sde's
    ``offset = 7 - inverse_scaler(-1)`` (Song et al. 2021; Ho et al. 2020). ``x`` should then be
    uniformly dequantized, ``x = (k + u) w + low`` with ``u ~ U[0, 1)``, by the caller. Without
    ``n_bits`` the result is the continuous :math:`-\log_2 p(x)/d`.

    ``options`` go to :func:`log_likelihood`.
    """
    log_p = log_likelihood(sde, score_fn, x, **options)
    if isinstance(log_p, LikelihoodResult):
        log_p = log_p.log_p
    d = x[0].numel()
    bpd = -log_p / (d * math.log(2.0))
    if n_bits is not None:
        if data_range <= 0:
            raise ValueError(f"data_range must be positive, got {data_range}")
        bpd = bpd + n_bits - math.log2(data_range)
    return bpd
