r"""Adaptive reverse-SDE sampler of Jolicoeur-Martineau et al., *Gotta Go Fast When Generating Data
with Score-Based Models*, 2021 (Algorithm 1), with one step size per sample.

From :math:`t` down to :math:`t - h` with one Brownian increment :math:`\Delta W` (variance
:math:`h`) and the reverse drift :math:`b(t, x) = f(t) x - g(t)^2 s(t, x)`:

.. math::
    x' &= x - h\, b(t, x) + g(t)\, \Delta W                 &&\text{(Euler–Maruyama)} \\
    \tilde x &= x - h\, b(t - h, x') + g(t - h)\, \Delta W  &&\text{(Euler at the new point)} \\
    x'' &= \tfrac12 (x' + \tilde x)                        &&\text{(improved Euler, same noise)}

Mixed tolerance :math:`\delta = \max(\epsilon_{abs}, \epsilon_{rel}\max(|x'|, |x'_{prev}|))`
(elementwise, :math:`x'_{prev}` the previous accepted :math:`x'`), scaled L2 error
:math:`E = \lVert (x' - x'')/\delta \rVert_2 / \sqrt{n}` per sample (``n`` elements). A sample
accepts when :math:`E \le 1`, moving to :math:`t - h` with :math:`x''` (``extrapolation=True``, the
paper's default) or :math:`x'`; every sample then sets
:math:`h \leftarrow \min(t - t_{min}, \theta h E^{-r})`.

The decisions are :class:`sdekit.PIDController`'s, the one controller of every adaptive loop: the
rule above is its I controller with exponent :math:`r` (``icoeff = r k``, ``pcoeff = dcoeff = 0``,
:math:`k` = ``error_order + 1`` = 2), ``safety`` :math:`= \theta`, no clipping of the factor
(``factor_min=0``, ``factor_max=inf``, ``factor_after_reject=inf``) and ``combine="max"`` (the
mixed tolerance :math:`\delta`, with :math:`x'_{prev}` in place of the step's start), so the steps
are the paper's to the last bit. Beyond the paper: a NaN or infinite :math:`E` (a non-finite
score) rejects the step and sets :math:`h = 0` (the limit :math:`E \to \infty`), and a step that
is zero, NaN or too small to move :math:`t` raises :class:`sdekit.NonFiniteError` naming the time
at once (the paper's loop would carry NaN times on).

Noise (``noise=``):

* ``"path"`` (default): :math:`\Delta W = W(t - h) - W(t)` of one Brownian path per sample, a
  :class:`sdekit.brownian.BrownianTree` on :math:`[t_{min}, t_{max}]`, or the tree given as
  ``sample(..., brownian=tree)`` (e.g. the one a core solver is driven by, to compare both on one
  path; its own seed and ``sample_offset`` then define the path). A rejected step's retry over a
  shorter interval sees the Brownian bridge of the same path, so rejection does not select the noise: the
  result converges to the solution of the reverse SDE driven by that path as the tolerances
  tighten (rejection sampling on the noise, as below, does not).
* ``"fresh"``: the paper's :math:`\Delta W = \sqrt h\, z` with a fresh normal :math:`z` at every
  attempt. Rejecting the large draws (they make the larger errors) and redrawing biases the
  samples where the error norm does not concentrate (few dimensions). On the 2-D Gaussian
  mixture of ``examples/compare_samplers.py`` (VPSDE, exact score, 2000 samples, noise floor
  0.066) it reaches a sliced-W1 of 0.108 in 246 NFE, the path 0.029 in 270 NFE (Euler–Maruyama:
  0.040 with 50 steps); ``tests/plugins/test_samplers.py`` checks the moments in 2-D. It stays
  for comparison with the paper.

Defaults from the paper (§3 and App. on hyper-parameters): :math:`\epsilon_{abs} = 0.0078`
(``atol``, about 1/128: for data scaled to [-1, 1]), :math:`\epsilon_{rel} = 0.05`
(``rtol``; the paper trades speed for quality with 0.01–0.05; the paper's names ``abs_tol`` and
``rel_tol`` are refused with a message naming these), :math:`\theta = 0.9`
(``safety``), :math:`r = 0.9` (``exponent``), :math:`h_{init} = 0.01` (``h_init``).

The grid ``ts`` is ``[t_start, t_min]``; the sampler refuses a ``t_min`` that is not finite, not
below the start, or outside ``[sde.t_min, sde.t_max]`` (:class:`ValueError`, before any score call,
with the message of ``sample``'s own check of ``t_min``), rather than return the prior noise or
evaluate the schedule where it is not valid.

``t`` and ``h`` are ``(batch,)`` tensors; the score is called on the whole batch with each sample's
own time, 2 calls per iteration (finished samples take zero steps). Sample ``b``'s noise is a
function of ``(seed, b + sample_offset)`` and of its own times only (the path's element indices are
global; with ``"fresh"``, its ``k``-th attempt uses draw ``k`` of its own stream), so it does not
depend on the batch. The path's seed is derived from the sampler's seed (``seed + 2**64 *
PATH_SEED_TAG``): the same seed's counter-based normals also draw the prior, and node ids of the
tree would otherwise meet prior sample indices.
"""
from __future__ import annotations

import math

import torch

import sdekit

from ..time_grids import TIME_SLACK
from ._common import NOISES, Context, sampler_path
from .registry import register

ABS_TOL = 0.0078   # Jolicoeur-Martineau et al. 2021
REL_TOL = 0.05
SAFETY = 0.9
EXPONENT = 0.9
H_INIT = 0.01
ERROR_ORDER = 1.0  # Euler-Maruyama against improved Euler: the order the controller's k counts from


def controller(rtol: float = REL_TOL, atol: float = ABS_TOL, safety: float = SAFETY,
               exponent: float = EXPONENT) -> sdekit.PIDController:
    r"""The paper's step-size rule :math:`h \leftarrow \theta h E^{-r}` (after every attempt) and
    mixed tolerance as a per-sample :class:`sdekit.PIDController` (module docstring)."""
    if not exponent > 0:
        raise ValueError(f"exponent must be positive (the paper's r = {EXPONENT}), got {exponent!r}")
    return sdekit.PIDController(rtol, atol, ERROR_ORDER, pcoeff=0.0, icoeff=exponent * (ERROR_ORDER + 1),
                                dcoeff=0.0, safety=safety, factor_min=0.0, factor_max=math.inf,
                                factor_after_reject=math.inf, combine="max", per_sample=True)


def _interval(sde, ts: torch.Tensor) -> tuple[float, float]:
    """``(t_start, t_end)`` of the grid ``[t_max, t_end]``, checked against the schedule (one host
    sync): finite, ``t_end < t_start``, both inside ``[sde.t_min, sde.t_max]``; the messages are
    those of ``sample``'s own check of ``t_min``."""
    t_start, t_end = (float(v) for v in torch.stack([ts[0], ts[-1]]).tolist())
    slack = TIME_SLACK * max(1.0, abs(sde.t_max))
    if not math.isfinite(t_start) or not sde.t_min - slack <= t_start <= sde.t_max + slack:
        raise ValueError(f"adaptive_sde starts at t={t_start}, outside [sde.t_min, sde.t_max] = "
                         f"[{sde.t_min}, {sde.t_max}] where the schedule is valid")
    if not math.isfinite(t_end):
        raise ValueError(f"t_min must be a finite number, got {t_end!r}")
    if not sde.t_min - slack <= t_end < t_start:
        raise ValueError(f"t_min={t_end} must lie in [sde.t_min, sde.t_max) = [{sde.t_min}, {sde.t_max}), "
                         f"below the start t={t_start}: adaptive_sde integrates from there down to t_min, "
                         "inside the schedule")
    return t_start, t_end


@register("adaptive_sde", calls_per_step=2, stochastic=True, adaptive=True, order=1)
def adaptive_sde(ctx: Context, x: torch.Tensor, ts: torch.Tensor, rtol: float = REL_TOL,
                 atol: float = ABS_TOL, safety: float = SAFETY, exponent: float = EXPONENT,
                 h_init: float = H_INIT, extrapolation: bool = True,
                 max_steps: int = 10_000, noise: str = "path") -> sdekit.Solution:
    """Gotta-Go-Fast adaptive sampler (module docstring)."""
    if not (0 <= atol < math.inf and 0 <= rtol < math.inf and atol + rtol > 0):   # NaN too
        raise ValueError(f"tolerances must be finite, non-negative and not both zero; got rtol={rtol}, "
                         f"atol={atol}")
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES} (a Brownian path, or the paper's fresh "
                         f"normals per attempt), got {noise!r}")
    if not (isinstance(h_init, (int, float)) and math.isfinite(h_init) and h_init > 0):
        raise ValueError(f"h_init must be a positive time step, got {h_init!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    control = controller(rtol, atol, safety, exponent)
    t_start, t_end_value = _interval(ctx.sde, ts)
    path = sampler_path(ctx, x, noise, t_end_value, t_start, "adaptive_sde", "attempt")
    sde = ctx.sde
    batch = x.shape[0]
    shape = (batch,) + (1,) * (x.dim() - 1)
    span = t_start - t_end_value
    t_end = ts[-1]
    t = ts[0].expand(batch).clone()
    # h: the controller's proposal per sample; the step taken is min(h, t - t_min)
    h, memory = control.init(t, t_end.expand(batch), x, dt0=h_init)
    x_prime_prev = x
    accepted = torch.zeros(batch, dtype=torch.long, device=x.device)
    rejected = torch.zeros_like(accepted)
    iterations = 0
    while True:
        active = t > t_end
        stalled = active & control.stalled(t, h, span)
        any_active, any_stalled = torch.stack([active.any(), stalled.any()]).tolist()
        if any_stalled:
            _raise_stalled(ctx, t, h, stalled, control)
        if not any_active:
            break
        if iterations >= max_steps:
            raise sdekit.MaxStepsError(
                f"adaptive_sde took max_steps={max_steps} iterations and some samples are still at "
                f"t up to {float(t.max()):.6g}; raise max_steps or loosen rtol/atol")
        iterations += 1
        h_step = torch.where(active, h.minimum(t - t_end), torch.zeros_like(h))
        last = h_step >= t - t_end
        t_next = torch.where(last, t_end, t - h_step)
        h_b = h_step.reshape(shape).to(x.dtype)   # times in the time dtype, the state in its own
        if path is not None:  # reverse time: W(t - h) - W(t), variance h (zero where h = 0)
            dW = path.increments_per_sample(t, t_next)[0]
        else:
            dW = torch.sqrt(h_b) * ctx.normal()
        f, g2 = sde.schedule.f_g2(t)
        f, g2 = f.reshape(shape).to(x.dtype), g2.reshape(shape).to(x.dtype)
        x_prime = x - h_b * (f * x - g2 * ctx.score(t, x)) + torch.sqrt(g2) * dW
        f1, g21 = sde.schedule.f_g2(t_next)
        f1, g21 = f1.reshape(shape).to(x.dtype), g21.reshape(shape).to(x.dtype)
        x_tilde = (x - h_b * (f1 * x_prime - g21 * ctx.score(t_next, x_prime))
                   + torch.sqrt(g21) * dW)
        x_second = 0.5 * (x_prime + x_tilde)
        error = control.error_ratio(x_prime - x_second, x_prime_prev, x_prime)
        accept, h_new, memory = control.adapt_step_size(h_step, error, memory)
        accept = active & accept
        accept_b = accept.reshape(shape)
        x = torch.where(accept_b, x_second if extrapolation else x_prime, x)
        x_prime_prev = torch.where(accept_b, x_prime, x_prime_prev)
        t = torch.where(accept, t_next, t)
        accepted += accept.long()
        rejected += (active & ~accept).long()
        h = torch.where(active, h_new.clamp(max=span), h)  # bounded: E = 0 would let it overflow
        ctx.report(iterations - 1, x, t, None)
    return sdekit.Solution(x=x, ts=ts[[0, -1]], xs=None, nfe=ctx.score.calls,
                           n_steps=int(accepted.max()), n_rejected=int(rejected.max()))


def _raise_stalled(ctx: Context, t: torch.Tensor, h: torch.Tensor, stalled: torch.Tensor,
                   control: sdekit.PIDController):
    """The :class:`sdekit.NonFiniteError` of a step that is NaN, zero or too small to move ``t``:
    the score's own error if it returned NaN or inf, else the time and step of the first sample."""
    ctx.score.check_finite()
    b = int(stalled.nonzero()[0, 0])
    raise sdekit.NonFiniteError(
        f"adaptive_sde's step size is {h[b].item():.3g} at t={t[b].item():.6g} (sample {b}): it cannot "
        f"make progress; the state or score is NaN or infinite there, or the tolerances are not usable "
        f"(rtol={control.rtol}, atol={control.atol})")
