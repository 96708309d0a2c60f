r"""``sample``: draw from a diffusion model with any sampler, counting score evaluations exactly.

The samplers (``sdekit_diffusion.samplers``) are written for a general marginal
:math:`\mathcal N(\alpha(t) x_0, \sigma(t)^2 I)` — VP, sub-VP, VE, cosine and any
``DiffusionSDE.from_marginal`` — and integrate from ``sde.t_max`` down to ``t_min`` on a time grid
of :mod:`sdekit_diffusion.time_grids`.
"""
from __future__ import annotations

from typing import Callable

import torch

import sdekit

from .sde import DiffusionSDE
from .samplers import registry
from .samplers._common import Context, CountedScore, NormalStream
from .time_grids import time_grid as make_time_grid

DEFAULT_STEPS = 1000   # score_sde's N = 1000 discretisation steps (Song et al. 2021, VP and VE)


def _seed(seed, generator: torch.Generator | None) -> int:
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        return seed
    return int(torch.randint(0, 2 ** 62, (1,), generator=generator).item())


def _initial_state(sde, shape, x_T, stream_args):
    if x_T is not None:
        if not isinstance(x_T, torch.Tensor) or not x_T.is_floating_point() or x_T.dim() < 1:
            raise TypeError("x_T must be a floating-point tensor of shape (batch, *dims)")
        if shape is not None and tuple(shape) != tuple(x_T.shape):
            raise sdekit.ShapeError(f"shape={tuple(shape)} does not match x_T of shape "
                                    f"{tuple(x_T.shape)}; give one of them")
        if not bool(torch.isfinite(x_T).all()):
            raise sdekit.NonFiniteError("x_T contains NaN or infinite values")
        return x_T, NormalStream(x_T.shape, **stream_args, dtype=x_T.dtype, device=x_T.device)
    if shape is None:
        raise ValueError("give shape=(batch, *dims) or an initial state x_T")
    shape = tuple(shape)
    if len(shape) < 1 or not all(isinstance(n, int) and n > 0 for n in shape):
        raise ValueError(f"shape must be a tuple of positive ints (batch, *dims), got {shape!r}")
    stream = NormalStream(shape, **stream_args)
    # the prior N(0, sigma(t_max)^2 I) (sde.prior_sample's law) from the per-sample stream
    return sde.prior_std * stream(), stream


def sample(sde: DiffusionSDE, score_fn: Callable, shape=None, *, x_T: torch.Tensor | None = None,
           solver: str = "euler_maruyama", steps: int | None = None, time_grid: str = "uniform",
           t_min: float | None = None, generator: torch.Generator | None = None,
           denoise: bool = False, progress: bool = False, callback: Callable | None = None,
           **options) -> sdekit.Solution:
    r"""Sample ``sde``'s data distribution with the model ``score_fn(t, x)`` (``t``: ``(batch,)``).

    Args:
        sde: a :class:`DiffusionSDE`.
        score_fn: the score model, :math:`s(t, x) \approx \nabla_x \log p_t(x)`.
        shape: ``(batch, *dims)`` of the samples (or give ``x_T``).
        x_T: the initial state at ``sde.t_max``; default: a draw of the prior
            :math:`\mathcal N(0, \sigma(t_{max})^2 I)` (the law of ``sde.prior_sample``) from the
            per-sample noise stream.
        solver: a name from :func:`sdekit_diffusion.samplers.available`: the plugin's samplers
            (``reverse_diffusion``, ``ancestral``, ``pc``, ``ddim``, ``dpm_solver_2``,
            ``dpm_solver_3``, ``dpm_solver++_2m``, ``dpm_solver++_3m``, ``edm_heun``,
            ``adaptive_sde``) or any core solver (SDE solvers on the reverse SDE, ODE solvers on the
            probability-flow ODE; the core's predictor-corrector is ``core_pc``).
        steps: grid intervals (default 1000, score_sde's); adaptive samplers take tolerances
            instead. Multistep solvers of order ``k`` need ``steps >= k``.
        time_grid: ``"uniform"``, ``"quadratic"``, ``"logsnr"`` or ``"karras"``
            (:func:`sdekit_diffusion.time_grid`).
        t_min: the final time (default ``sde.t_min``).
        generator: a :class:`torch.Generator`; one seed is drawn from it (or pass ``seed=``).
        denoise: finish with the Tweedie step :math:`x_0 = (x + \sigma^2 s)/\alpha` at ``t_min``
            (one more score call, counted).
        progress: a tqdm bar. callback: ``callback(i, x, t, denoised)`` after each step ``i``
            (``denoised``: the step's :math:`\hat x_0` when the sampler forms one, else ``None``).
        options: ``seed`` (int), ``sample_offset`` (index of this batch's first sample in a larger
            run), ``dtype``/``device`` (for a ``shape``-given prior), and the sampler's own options
            (e.g. ``eta``, ``corrector``, ``snr``, ``rtol``, ``S_churn``).

    Returns:
        :class:`sdekit.Solution` with ``x`` (the samples), ``ts``/``grid`` (the time grid, or the
        accepted times of an adaptive sampler), ``nfe`` (exactly the number of ``score_fn``
        calls), ``n_steps``, ``n_rejected``.

    Sample ``i`` depends only on ``(seed, i + sample_offset)``, not on the batch size, for every
    sampler except the core's adaptive ones (``dopri5`` and ``adaptive_em`` share step sizes
    across the batch) and ``pc``/``core_pc`` with the Langevin corrector, whose step size uses norms
    averaged over the batch as in score_sde (``per_sample=True`` on ``pc`` makes it per sample).
    """
    if not isinstance(sde, DiffusionSDE):
        raise TypeError(f"sde must be a DiffusionSDE, got {type(sde).__name__}")
    record = registry.get(solver)
    seed = _seed(options.pop("seed", None), generator)
    sample_offset = options.pop("sample_offset", 0)
    dtype = options.pop("dtype", torch.get_default_dtype())
    device = options.pop("device", generator.device if generator is not None else None)
    record.check_options(options)
    stream_args = dict(seed=seed, sample_offset=sample_offset)
    if x_T is None:
        stream_args.update(dtype=dtype, device=device)
    x, stream = _initial_state(sde, shape, x_T, stream_args)
    t_end = sde.t_min if t_min is None else float(t_min)

    score = CountedScore(score_fn, sde)
    if record.adaptive:
        if steps is not None:
            raise ValueError(f"{solver!r} is adaptive: it chooses its own steps; give rtol=/atol= "
                             "(or its tolerance options) instead of steps=")
        grid = torch.tensor([sde.t_max, t_end], dtype=x.dtype, device=x.device)
    else:
        steps = DEFAULT_STEPS if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < record.min_steps:
            raise ValueError(f"{solver!r} needs an integer steps >= {record.min_steps}, got {steps!r}")
        grid = make_time_grid(sde, steps, time_grid, t_end, sde.t_max).to(x.dtype).to(x.device)
    if hasattr(sde.schedule, "precompute"):
        sde.schedule.precompute(grid)   # autograd schedules: f and g^2 on the grid in one pass

    bar = None
    if progress and not record.core:
        from tqdm.auto import tqdm
        bar = tqdm(total=None if record.adaptive else steps, unit="step", leave=False, desc=solver)
    ctx = Context(sde, score, stream, seed, sample_offset, callback, bar, progress=progress)
    try:
        result = record.function(ctx, x, grid, **options)
    finally:
        if bar is not None:
            bar.close()
    if isinstance(result, sdekit.Solution):
        solution = result
    else:
        solution = sdekit.Solution(x=result, ts=grid, xs=None, nfe=0, n_steps=len(grid) - 1,
                                   n_rejected=0, grid=grid)
    x = solution.x
    if denoise:
        x = ctx.data(grid[-1], x)
    score.check_finite()
    if not bool(torch.isfinite(x).all()):
        raise sdekit.NonFiniteError(f"sampler {solver!r} produced NaN or infinite samples; take more "
                                    "steps or check the schedule near t_min/t_max")
    solution.x, solution.nfe = x, score.calls
    if solution.grid is None:
        solution.grid = solution.ts
    return solution
