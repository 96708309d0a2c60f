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

from sdekit.problems import check_state_resolution, time_dtype
from sdekit.validation import device as check_device, finite_number, positive_int

from .sde import DiffusionSDE
from .samplers import registry
from .samplers._common import Context, CountedScore, NormalStream, check_brownian
from .time_grids import check_time_grid, time_grid as make_time_grid

DEFAULT_STEPS = 1000   # score_sde's N = 1000 discretisation steps (Song et al. 2021, VP and VE)
FINAL_STEPS = ("none", "zero")


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
    try:
        shape = tuple(positive_int(n, "every size in shape") for n in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a tuple of positive ints (batch, *dims), got {shape!r}") from None
    if len(shape) < 1:
        raise ValueError("shape must be a tuple of positive ints (batch, *dims), got ()")
    if not stream_args["dtype"].is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype (the samples are real numbers), got "
                        f"{stream_args['dtype']}")
    stream = NormalStream(shape, **stream_args)
    # the prior N(0, sigma(t_max)^2 I) (sde.prior_sample's law) from the per-sample stream
    return sde.prior_std * stream(), stream


def sample(sde: DiffusionSDE, score_fn: Callable, shape=None, *, x_T: torch.Tensor | None = None,
           solver: str = "euler_maruyama", steps: int | None = None, time_grid: str | None = None,
           ts: torch.Tensor | None = None, t_min: float | None = None,
           final_step: str = "none", generator: torch.Generator | None = None,
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
        time_grid: ``"uniform"`` (default), ``"quadratic"``, ``"logsnr"`` or ``"karras"``, and for
            discrete schedules diffusers' spacings ``"trailing"``, ``"leading"``, ``"linspace"``
            (:func:`sdekit_diffusion.time_grid`).
        ts: an explicit grid instead of ``steps``/``time_grid``/``t_min``: strictly decreasing
            times inside ``[t_min, t_max]``, at least the sampler's minimum steps
            (:func:`sdekit_diffusion.time_grids.check_time_grid`); e.g.
            ``sde.schedule.timestep_time(scheduler.timesteps)`` plus a final time. ``x_T`` is the
            state at ``ts[0]``.
        t_min: the final time (default ``sde.t_min``).
        final_step: ``"none"`` (default): end at the grid's last time. ``"zero"``: the last step
            goes from ``ts[-2]`` to :math:`\sigma = 0` instead, the first-order step there,
            :math:`x = \hat x_0(t_{N-1}, x)`, with no extra score call (diffusers'
            ``final_sigmas_type="zero"``; ``ts[-1]`` only closes the grid). For the samplers that
            step through the data prediction (``data_prediction`` in their registry record:
            ``ddim``, ``dpm_solver++_2m``, ``dpm_solver++_3m``, ``edm_heun``, ``ancestral``, ...).
        generator: a :class:`torch.Generator`; one seed is drawn from it (or pass ``seed=``).
        denoise: finish with the Tweedie step :math:`x_0 = (x + \sigma^2 s)/\alpha` at ``t_min``
            (one more score call, counted).
        progress: a tqdm bar. callback: ``callback(i, x, t, denoised)`` after each step ``i``
            (``denoised``: the step's :math:`\hat x_0` when the sampler forms one, else ``None``).
        options: ``seed`` (int), ``sample_offset`` (index of this batch's first sample in a larger
            run), ``dtype``/``device`` (for a ``shape``-given prior; the device is checked:
            :func:`sdekit.validation.device`), and the sampler's own options
            (e.g. ``eta``, ``corrector``, ``snr``, ``rtol``, ``S_churn``); ``brownian``: a
            :class:`sdekit.BrownianTree` of the samples' shape, dtype and device over an interval
            holding the grid, which then drives the sampler's noise (any stochastic sampler: a core
            SDE solver through :func:`sdekit.solve`'s ``brownian=``, a plugin sampler through
            :meth:`~sdekit_diffusion.samplers._common.Context.step_normal`), so that samplers can
            be compared on one path; deterministic samplers refuse it.

    Returns:
        :class:`sdekit.Solution` with ``x`` (the samples), ``ts``/``grid`` (the time grid, or the
        accepted times of an adaptive sampler), ``nfe`` (exactly the number of ``score_fn``
        calls), ``n_steps``, ``n_rejected``.

    Dtypes: the state (and ``x``) keeps ``x_T``'s or ``dtype``; the grid and the samplers'
    coefficients are in the time dtype (``sdekit.problems.time_dtype``: float64 on CPU, at least
    float32 elsewhere), cast to the state's dtype where they multiply it; ``score_fn`` receives
    ``t`` in the state's dtype, float32 for a half-precision state
    (``sdekit.problems.function_time_dtype``).
    A bfloat16 state takes at most 128 fixed steps and a float16 one 1024
    (``sdekit.problems.check_state_resolution``: beyond, the state's own rounding dominates).

    Sample ``i`` depends only on ``(seed, i + sample_offset)``, not on the batch size, for every
    sampler except the core's adaptive ones (``dopri5`` and ``adaptive_em`` share step sizes
    across the batch) and ``pc``/``core_pc`` with the Langevin corrector, whose step size uses norms
    averaged over the batch as in score_sde (``per_sample=True`` on ``pc`` makes it per sample).
    """
    if not isinstance(sde, DiffusionSDE):
        raise TypeError(f"sde must be a DiffusionSDE, got {type(sde).__name__}")
    record = registry.get(solver)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(42)), or "
                        f"pass seed=, got {type(generator).__name__} {generator!r}")
    seed = _seed(options.pop("seed", None), generator)
    sample_offset = options.pop("sample_offset", 0)
    brownian = options.pop("brownian", None)
    dtype = options.pop("dtype", torch.get_default_dtype())
    device = options.pop("device", generator.device if generator is not None else None)
    if device is not None:
        device = check_device(device)
    record.check_options(options)
    stream_args = dict(seed=seed, sample_offset=sample_offset)
    if x_T is None:
        stream_args.update(dtype=dtype, device=device)
    x, stream = _initial_state(sde, shape, x_T, stream_args)

    score = CountedScore(score_fn, sde)
    grid = _grid(sde, record, x, steps, time_grid, ts, t_min)
    _check_final_step(record, final_step, denoise)
    if brownian is not None:
        brownian = check_brownian(brownian, x, grid, solver, record.stochastic(options))
    if hasattr(sde.schedule, "precompute"):
        sde.schedule.precompute(grid)   # autograd schedules: f and g^2 on the grid in one pass

    bar = None
    if progress and not record.core:
        from tqdm.auto import tqdm
        bar = tqdm(total=None if record.adaptive else len(grid) - 1, unit="step", leave=False,
                   desc=solver)
    ctx = Context(sde, score, stream, seed, sample_offset, callback, bar, progress=progress,
                  final_zero=final_step == "zero", brownian=brownian)
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


def _grid(sde: DiffusionSDE, record, x: torch.Tensor, steps, time_grid, ts, t_min) -> torch.Tensor:
    """The sampler's time grid on ``x``'s device in the time dtype (``sdekit.problems.time_dtype``:
    float64 on CPU, at least float32 elsewhere, whatever ``x``'s dtype, so a bfloat16 state still
    steps through distinct times): ``[t_max, t_end]`` for an adaptive sampler, the explicit ``ts``
    checked, or ``time_grid(steps)``."""
    name = repr(record.name)
    dtype = time_dtype(x.dtype, x.device)
    if record.adaptive:
        if steps is not None or ts is not None:
            raise ValueError(f"{name} is adaptive: it chooses its own steps; give rtol=/atol= "
                             "(or its tolerance options) instead of "
                             f"{'steps=' if ts is None else 'ts='}")
        t_end = _final_time(sde, t_min)
        return torch.tensor([sde.t_max, t_end], dtype=dtype, device=x.device)
    if ts is not None:
        given = [f"{key}=" for key, value in (("steps", steps), ("time_grid", time_grid),
                                              ("t_min", t_min)) if value is not None]
        if given:
            raise ValueError(f"ts= is the whole grid; drop {', '.join(given)} (or drop ts=)")
        grid = check_time_grid(sde, ts, record.min_steps, name)
    else:
        steps = DEFAULT_STEPS if steps is None else steps
        try:
            steps = positive_int(steps, "steps", minimum=record.min_steps)
        except ValueError:
            raise ValueError(f"{name} needs an integer steps >= {record.min_steps}, got {steps!r}") from None
        t_end = _final_time(sde, t_min)
        grid = make_time_grid(sde, steps, "uniform" if time_grid is None else time_grid, t_end,
                              sde.t_max)
        if len(grid) - 1 < record.min_steps:
            raise ValueError(f"{name} needs at least {record.min_steps} steps; the {time_grid!r} "
                             f"grid of steps={steps} has {len(grid) - 1}")
    cast = grid.to(dtype=dtype, device=x.device)
    repeated = int((cast[1:] >= cast[:-1]).sum())
    if repeated:   # only a float32 grid (off the CPU) of about 10^7 steps gets here
        raise ValueError(
            f"the {len(grid) - 1}-step grid has {repeated} steps of zero length in {dtype} (its times "
            "round to the same value), which would cost score calls and move nothing; take fewer steps")
    check_state_resolution(len(cast) - 1, x.dtype)   # bfloat16: 128 steps at most, float16: 1024
    return cast


def _final_time(sde: DiffusionSDE, t_min) -> float:
    """``t_min`` (default ``sde.t_min``), checked to lie in ``[sde.t_min, sde.t_max)``."""
    if t_min is None:
        return sde.t_min
    t_end = finite_number(t_min, "t_min")
    if not (sde.t_min <= t_end < sde.t_max):
        raise ValueError(f"t_min={t_end} must lie in [sde.t_min, sde.t_max) = [{sde.t_min}, {sde.t_max}): "
                         "the samplers integrate from t_max down to t_min, inside the schedule")
    return t_end


def _check_final_step(record, final_step: str, denoise: bool) -> None:
    if final_step not in FINAL_STEPS:
        raise ValueError(f"final_step must be one of {', '.join(map(repr, FINAL_STEPS))}, got "
                         f"{final_step!r}")
    if final_step != "zero":
        return
    if not record.data_prediction:
        able = ", ".join(r.name for r in registry.records() if r.data_prediction)
        raise ValueError(
            f"final_step='zero' ends at sigma = 0 with the data prediction, which {record.name!r} "
            "does not step through (its last step would evaluate the model at sigma = 0, or it "
            f"integrates in t); use one of {able}, or keep final_step='none' and add "
            "denoise=True (one more score call, the Tweedie step at t_min)")
    if denoise:
        raise ValueError("final_step='zero' already ends at the data (sigma = 0); drop "
                         "denoise=True")
