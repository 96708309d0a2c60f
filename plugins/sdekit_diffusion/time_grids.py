r"""Time grids for diffusion samplers: ``steps + 1`` times decreasing from ``t_max`` to ``t_min``, and
the check of an explicit grid (:func:`check_time_grid`).

Every grid of :data:`GRIDS` is defined for a general schedule :math:`(\alpha, \sigma)` through the
log-SNR :math:`\lambda(t) = \log(\alpha/\sigma)` (strictly decreasing) and its inverse
``sde.inverse_log_snr``:

- ``"uniform"``: equal steps in :math:`t` (Song et al. 2021, score_sde samplers).
- ``"quadratic"``: equal steps in :math:`\sqrt t`, :math:`t_i = (\sqrt{t_{max}} + \tfrac{i}{N}
  (\sqrt{t_{min}} - \sqrt{t_{max}}))^2`, dense near the data: the continuous-time form of DDIM's
  quadratic skip (Song, Meng & Ermon 2021, App. D.3) used by DPM-Solver as ``"time_quadratic"``
  (Lu et al. 2022, ``dpm_solver_pytorch.py``, ``get_time_steps`` with ``t_order = 2``).
- ``"logsnr"``: equal steps in :math:`\lambda` (Lu et al. 2022, §3.4 and App. D.1: "uniform
  logSNR", their recommendation for few-step sampling).
- ``"karras"``: equal steps in :math:`\sigma_{ve}^{1/\rho}` with :math:`\sigma_{ve} = \sigma/\alpha
  = e^{-\lambda}`, :math:`\rho = 7` (Karras et al. 2022, eq. 5; :math:`\rho = 7` is their choice).

The end points are exactly ``t_max`` and ``t_min`` (no rounding through :math:`\lambda`).

**Timestep spacings** (:data:`SPACINGS`, discrete schedules only: ``DiffusionSDE.from_alphas_cumprod``
/ ``from_betas``, whose timestep ``n = 0..N-1`` sits at :math:`t = (n+1)/N`): the integer
timesteps diffusers' multistep schedulers (``DPMSolverMultistepScheduler``,
``UniPCMultistepScheduler``, ``DEISMultistepScheduler``, ...) visit for ``num_inference_steps =
steps``, ``set_timesteps`` with the default ``lambda_min_clipped = -inf``, followed by timestep 0
(:math:`t_{min} = 1/N`, their ``final_sigmas_type="sigma_min"``; ``final_step="zero"`` of
:func:`sdekit_diffusion.sample` goes on to :math:`\sigma = 0`). With :math:`N` timesteps and
``k = 0..steps-1`` (Lin et al. 2024, "Common diffusion noise schedules and sample steps are
flawed", Table 2):

- ``"trailing"``: :math:`n_k = \mathrm{round}(N - kN/\text{steps}) - 1`, from ``N - 1``;
- ``"leading"``: :math:`n_k = (\text{steps} - k)\lfloor N/(\text{steps}+1)\rfloor +` ``steps_offset``;
- ``"linspace"``: :math:`n_k = \mathrm{round}((\text{steps} - k)(N-1)/\text{steps})`, from ``N - 1``.

(``round`` is numpy's, half to even.) ``DDIMScheduler`` shares ``"trailing"`` (its step from
timestep ``n`` goes to ``n - N // steps``, then to ``final_alpha_cumprod``: the same grid when
``steps`` divides ``N`` and ``set_alpha_to_one=False``) but spaces ``"leading"`` and ``"linspace"``
over ``steps`` rather than ``steps + 1`` points; build those grids with
``sde.schedule.timestep_time(scheduler.timesteps)`` and an explicit ``ts=``. When the spacing's last
timestep is already 0 (``"trailing"`` with ``steps > 2N/3``) diffusers takes a last step of length
zero (a no-op that costs one model call); the grid here ends there, with ``steps`` points. For a
few step counts (e.g. 61 of 1000) diffusers' ``"trailing"`` has an extra timestep ``-1`` (float
rounding in ``np.arange``); here there are always ``steps``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .schedules import DiscreteSchedule

GRIDS = ("uniform", "quadratic", "logsnr", "karras")
SPACINGS = ("trailing", "leading", "linspace")   # diffusers' timestep_spacing, discrete schedules

KARRAS_RHO = 7.0  # Karras et al. (2022), eq. 5 and Table 1
TIME_SLACK = 1e-6  # relative slack of an explicit grid's ends (float32 rounding of t_max = 1)


def spacing_timesteps(N: int, steps: int, spacing: str, steps_offset: int = 0) -> np.ndarray:
    """The integer timesteps (int64, decreasing, ``steps`` of them) of diffusers' multistep
    schedulers' ``set_timesteps(steps)`` for ``timestep_spacing=spacing`` on ``N`` training
    timesteps (module docstring; ``lambda_min_clipped = -inf``)."""
    if spacing == "trailing":
        # diffusers' np.arange (bit for bit: its float values decide the rounding at .5), less the
        # extra element float rounding gives it for some counts (61 of 1000: a timestep -1)
        timesteps = np.arange(N, 0, -N / steps)[:steps].round().astype(np.int64) - 1
    elif spacing == "leading":
        ratio = N // (steps + 1)
        timesteps = (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].astype(np.int64)
        timesteps = timesteps + steps_offset
    elif spacing == "linspace":
        timesteps = np.linspace(0, N - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; valid ones are "
                         f"{', '.join(repr(s) for s in SPACINGS)}")
    return timesteps.copy()


def _spacing_grid(sde, steps: int, kind: str, t_min: float, t_max: float,
                  steps_offset: int) -> torch.Tensor:
    schedule = sde.schedule
    if not isinstance(schedule, DiscreteSchedule):
        raise ValueError(
            f"time grid {kind!r} is a timestep spacing of discrete schedules (diffusers' "
            f"timestep_spacing); {sde!r} is continuous. Build the SDE from its table with "
            "skd.DiffusionSDE.from_alphas_cumprod / from_betas, or use a continuous grid: "
            f"{', '.join(repr(g) for g in GRIDS)}")
    N = schedule.N
    if (t_min, t_max) != (schedule.t_min, schedule.t_max):
        raise ValueError(
            f"the {kind!r} spacing covers all N = {N} timesteps, from t_max = 1 to t_min = 1/N; "
            f"got t_min={t_min}, t_max={t_max}. For another range pass an explicit grid, "
            "ts=sde.schedule.timestep_time(timesteps)")
    if isinstance(steps_offset, bool) or not isinstance(steps_offset, int) or steps_offset < 0:
        raise ValueError(f"steps_offset must be a non-negative int, got {steps_offset!r}")
    if steps_offset and kind != "leading":
        raise ValueError(f"steps_offset={steps_offset} applies to the 'leading' spacing only "
                         f"(diffusers ignores it for {kind!r}); drop it")
    if steps > N:
        raise ValueError(f"the {kind!r} spacing of a table of N = {N} timesteps has at most {N} "
                         f"steps, got steps={steps}")
    timesteps = spacing_timesteps(N, steps, kind, steps_offset)
    if timesteps[0] > N - 1:
        raise ValueError(f"steps_offset={steps_offset} puts the first 'leading' timestep at "
                         f"{int(timesteps[0])}, beyond the last timestep N - 1 = {N - 1}")
    if timesteps[-1] != 0:
        timesteps = np.concatenate([timesteps, [0]])   # final_sigmas_type="sigma_min"
    if not bool((timesteps[1:] < timesteps[:-1]).all()):
        raise ValueError(f"the {kind!r} spacing of {steps} steps on N = {N} timesteps repeats a "
                         f"timestep ({timesteps.tolist()}); take fewer steps")
    return schedule.timestep_time(torch.from_numpy(timesteps))


def time_grid(sde, steps: int, kind: str = "uniform", t_min: float | None = None,
              t_max: float | None = None, *, rho: float = KARRAS_RHO,
              steps_offset: int = 0) -> torch.Tensor:
    """The time grid of ``kind`` for ``sde``: a float64 tensor strictly decreasing from ``t_max``
    (default ``sde.t_max``) to ``t_min`` (default ``sde.t_min``), of shape ``(steps + 1,)``.

    ``kind``: one of :data:`GRIDS` (any schedule) or of :data:`SPACINGS` (discrete schedules:
    diffusers' timestep spacings on integer timesteps, over the whole table, ending at timestep 0;
    ``"leading"`` starts below ``t_max``, at its first timestep, as diffusers does; ``"trailing"``
    with ``steps > 2N/3`` has ``steps`` points, see the module docstring). ``rho``: the exponent of the
    ``"karras"`` grid. ``steps_offset``: diffusers' offset of the ``"leading"`` spacing (e.g. 1
    for Stable Diffusion's scheduler configs).
    """
    if kind not in GRIDS + SPACINGS:
        raise ValueError(f"unknown time grid {kind!r}; valid ones are "
                         f"{', '.join(repr(g) for g in GRIDS)} and, for discrete schedules, "
                         f"{', '.join(repr(s) for s in SPACINGS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    t_min = sde.t_min if t_min is None else float(t_min)
    t_max = sde.t_max if t_max is None else float(t_max)
    if not (sde.t_min <= t_min < t_max <= sde.t_max):
        raise ValueError(f"need {sde.t_min} = sde.t_min <= t_min < t_max <= sde.t_max = {sde.t_max}; "
                         f"got t_min={t_min}, t_max={t_max}")
    if kind in SPACINGS:
        return _spacing_grid(sde, steps, kind, t_min, t_max, steps_offset)
    if steps_offset:
        raise ValueError(f"steps_offset applies to the 'leading' timestep spacing, not to {kind!r}")
    fraction = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if kind == "uniform":
        grid = t_max + fraction * (t_min - t_max)
    elif kind == "quadratic":
        grid = (math.sqrt(t_max) + fraction * (math.sqrt(t_min) - math.sqrt(t_max))) ** 2
    else:
        ends = sde.log_snr(torch.tensor([t_max, t_min], dtype=torch.float64))
        if kind == "logsnr":
            lam = ends[0] + fraction * (ends[1] - ends[0])
        else:  # karras: sigma_ve = exp(-lambda), equal steps in sigma_ve^(1/rho)
            if rho <= 0:
                raise ValueError(f"rho must be positive, got {rho}")
            root = torch.exp(-ends / rho)     # sigma_ve^(1/rho) at t_max and t_min
            lam = -rho * torch.log(root[0] + fraction * (root[1] - root[0]))
        grid = sde.inverse_log_snr(lam.clamp(ends[0], ends[1]))
    grid = grid.clone()
    grid[0], grid[-1] = t_max, t_min
    if not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError(f"the {kind!r} grid of {steps} steps on [{t_min}, {t_max}] is not strictly "
                         "decreasing (steps too many for float64 resolution of this schedule)")
    return grid


def check_time_grid(sde, ts, min_steps: int = 1, name: str = "the sampler") -> torch.Tensor:
    """An explicit grid ``ts`` (a 1-D tensor or sequence of times) checked against ``sde``'s
    schedule, as a float64 CPU tensor: finite, strictly decreasing, within ``[t_min, t_max]`` (up
    to float32 rounding of the ends) and at least ``min_steps`` steps (``min_steps + 1`` times).
    :class:`ValueError` saying what is wrong and how to fix it. One host sync, before any loop.

    The grid may start below ``t_max`` (an initial state ``x_T`` given there, or diffusers'
    ``"leading"`` spacing, which starts from pure noise below ``t_max`` too)."""
    if isinstance(ts, torch.Tensor):
        grid = ts.detach().to(device="cpu", dtype=torch.float64)
    else:
        try:
            grid = torch.as_tensor(np.asarray(ts, dtype=np.float64))
        except (TypeError, ValueError) as error:
            raise TypeError(f"ts must be a 1-D tensor (or sequence) of times, got "
                            f"{type(ts).__name__}") from error
    if grid.dim() != 1:
        raise ValueError(f"ts must be 1-D (the decreasing times of the grid), got shape "
                         f"{tuple(grid.shape)}")
    if grid.numel() < min_steps + 1:
        raise ValueError(f"{name} needs at least {min_steps} step{'s' if min_steps > 1 else ''}, "
                         f"i.e. {min_steps + 1} times in ts; got {grid.numel()}")
    if not bool(torch.isfinite(grid).all()):
        raise ValueError("ts contains NaN or infinite times")
    slack = TIME_SLACK * max(1.0, abs(sde.t_max))
    if grid[0].item() > sde.t_max + slack or grid[-1].item() < sde.t_min - slack:
        raise ValueError(
            f"ts spans [{grid[-1].item():.6g}, {grid[0].item():.6g}], outside [t_min, t_max] = "
            f"[{sde.t_min}, {sde.t_max}] of {sde!r}; keep the grid inside (for a discrete schedule "
            "timestep n is at t = (n + 1)/N: sde.schedule.timestep_time(n))")
    grid = grid.clamp(sde.t_min, sde.t_max)
    rising = grid[1:] >= grid[:-1]
    if bool(rising.any()):
        i = int(rising.nonzero()[0])
        raise ValueError(f"ts must be strictly decreasing (samplers run from t_max down to t_min); "
                         f"ts[{i}] = {grid[i].item():.6g} is followed by ts[{i + 1}] = "
                         f"{grid[i + 1].item():.6g}. Pass the times high to low (e.g. ts.flip(0))")
    if isinstance(ts, torch.Tensor) and ts.requires_grad:
        # the checked values, still a function of ts: optimize_time_grid differentiates a sampler's
        # output with respect to its grid
        return ts.to(device="cpu", dtype=torch.float64).clamp(sde.t_min, sde.t_max)
    return grid


__all__ = ["GRIDS", "SPACINGS", "KARRAS_RHO", "time_grid", "spacing_timesteps",
           "check_time_grid"]
