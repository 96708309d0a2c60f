r"""What every sampler shares: the counted, checked score; predictions; per-sample noise; reporting.

Notation (all samplers): the grid ``ts`` runs :math:`t_0 = t_{max} > t_1 > \dots > t_N = t_{min}`;
:math:`\alpha_i, \sigma_i, \lambda_i = \log(\alpha_i/\sigma_i)` at :math:`t_i`. From the score
:math:`s`: noise prediction :math:`\hat\epsilon = -\sigma s`, data prediction
:math:`\hat x_0 = (x + \sigma^2 s)/\alpha`. One step from :math:`t` down to :math:`s < t` has the
exact forward transition :math:`x_t \mid x_s \sim \mathcal N(\alpha_{t|s} x_s, \sigma_{t|s}^2 I)`
with :math:`\alpha_{t|s} = \alpha_t/\alpha_s`, :math:`\sigma_{t|s}^2 = \sigma_t^2 - \alpha_{t|s}^2
\sigma_s^2 = \sigma_t^2 (1 - e^{2(\lambda_t - \lambda_s)})`.
"""
from __future__ import annotations

from typing import Callable

import torch

import sdekit

from ..sde import DiffusionSDE, append_dims, batch_time


class CountedScore:
    """``score_fn`` with every call counted (``calls``), its output shape checked
    (:class:`sdekit.ShapeError`) and non-finite outputs recorded without a host sync
    (:meth:`check_finite` raises :class:`sdekit.NonFiniteError` naming the first bad call)."""

    def __init__(self, score_fn: Callable, sde: DiffusionSDE):
        if not callable(score_fn):
            raise TypeError("score_fn must be a callable score_fn(t, x) with t of shape (batch,)")
        self.score_fn = score_fn
        self.sde = sde
        self.calls = 0
        self._first_bad: torch.Tensor | None = None   # index of the first non-finite call (or -1)
        self._bad_time: torch.Tensor | None = None

    def __call__(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = batch_time(torch.as_tensor(t, dtype=x.dtype, device=x.device), x)
        s = self.score_fn(t, x)
        self.calls += 1
        if not isinstance(s, torch.Tensor) or s.shape != x.shape:
            got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise sdekit.ShapeError(
                f"score_fn returned {got} for a state of shape {tuple(x.shape)} (call {self.calls}); "
                f"expected shape {tuple(x.shape)}: one score value per state element")
        bad = ~torch.isfinite(s).all()
        index = torch.where(bad, self.calls, -1)
        if self._first_bad is None:
            self._first_bad, self._bad_time = index, t.max()
        else:
            fresh = (self._first_bad < 0) & bad
            self._first_bad = torch.where(fresh, index, self._first_bad)
            self._bad_time = torch.where(fresh, t.max(), self._bad_time)
        return s

    def check_finite(self) -> None:
        """Raise :class:`sdekit.NonFiniteError` if some call returned NaN or inf (one host sync)."""
        if self._first_bad is not None and int(self._first_bad) >= 0:
            raise sdekit.NonFiniteError(
                f"score_fn returned NaN or infinite values at call {int(self._first_bad)} of "
                f"{self.calls} (t = {float(self._bad_time):.6g}); check the model at this noise level "
                "(or the input state for overflow)")


class NormalStream:
    """Standard normals of a state's shape, sample ``b``'s values a function of
    ``(seed, b + sample_offset, draw index, element)`` only (``sdekit.brownian.PerSampleNoise``):
    the same sample index gets the same noise whatever the batch size."""

    def __init__(self, shape, seed: int, sample_offset: int, dtype, device):
        from sdekit.brownian import PerSampleNoise

        self.noise = PerSampleNoise(tuple(shape), seed=seed, sample_offset=sample_offset,
                                    dtype=dtype, device=device)
        self._unit = torch.tensor([0.0, 1.0], dtype=dtype, device=device)

    def __call__(self) -> torch.Tensor:
        """One draw: a tensor of shape ``shape`` (advances the stream)."""
        return self.noise.increments(self._unit)[0][0]


class Context:
    """A sampler's view of the problem: the SDE, the counted score, noise and reporting.

    ``score(t, x)``, ``eps(t, x)``, ``data(t, x)`` take ``t`` 0-d or ``(batch,)``; ``normal()`` draws
    per-sample normals; ``report(i, x, t, denoised)`` runs the callback and advances the progress bar
    (``progress``: whether the caller asked for one, for samplers that run their own loop).

    ``final_zero`` (``sample(..., final_step="zero")``, only for samplers registered with
    ``data_prediction=True``): the last step goes from ``ts[-2]`` to :math:`\\sigma = 0` instead of
    to ``ts[-1]``, and is the first-order one, :math:`x = \\hat x_0(t_{N-1}, x)` (diffusers'
    ``final_sigmas_type="zero"``); see :meth:`ends_at_zero`.
    """

    def __init__(self, sde: DiffusionSDE, score: CountedScore, normal: NormalStream,
                 seed: int, sample_offset: int, callback=None, bar=None, progress: bool = False,
                 final_zero: bool = False):
        self.sde, self.score, self.normal = sde, score, normal
        self.seed, self.sample_offset = seed, sample_offset
        self.callback, self.bar, self.progress = callback, bar, progress
        self.final_zero = bool(final_zero)

    def ends_at_zero(self, i: int, ts: torch.Tensor) -> bool:
        """Whether step ``i`` of the grid ``ts`` is the step to :math:`\\sigma = 0` (Python ints
        only: no host sync)."""
        return self.final_zero and i == len(ts) - 2

    # coefficients ---------------------------------------------------------------------------
    def alpha_sigma(self, t: torch.Tensor, x: torch.Tensor):
        """:math:`\\alpha(t), \\sigma(t)` broadcastable against ``x``."""
        return (append_dims(self.sde.schedule.alpha(t), x), append_dims(self.sde.schedule.sigma(t), x))

    def eps(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\hat\epsilon = -\sigma(t) s(t, x)` (one score call)."""
        _, sigma = self.alpha_sigma(t, x)
        return -sigma * self.score(t, x)

    def data(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\hat x_0 = (x + \sigma^2 s)/\alpha` (one score call)."""
        alpha, sigma = self.alpha_sigma(t, x)
        return (x + sigma ** 2 * self.score(t, x)) / alpha

    def report(self, i: int, x: torch.Tensor, t: torch.Tensor, denoised: torch.Tensor | None) -> None:
        if self.callback is not None:
            self.callback(i, x, t, denoised)
        if self.bar is not None:
            self.bar.update(1)


def schedule(sde: DiffusionSDE, ts: torch.Tensor):
    """``(alpha, sigma, lambda)`` on the grid ``ts`` (precomputed once, no host sync in loops)."""
    return sde.schedule.alpha(ts), sde.schedule.sigma(ts), sde.schedule.log_snr(ts)
