"""``sdekit.solve``: one entry point for every problem and solver.

The loop lives here; solvers only compute steps (see :mod:`sdekit.solvers.base`). Backward
integration (``t1 < t0``) runs every solver forward in the flipped time ``s = -t``: the problem
``dx = f(t, x) dt + g(t, x) dW`` becomes ``dx = -f(-s, x) ds + g(-s, x) dB_s`` with the Brownian
motion ``B_s = W(-s)``, which is the reverse-time Itô scheme diffusion samplers use
(``x_{n+1} = x_n - f \\Delta + g \\sqrt{\\Delta} z`` for Euler–Maruyama).

Fixed-step solves precompute the time grid, take Brownian increments in chunks of
``CHUNK`` steps (a ``BrownianTree`` in blocks of many chunks, ``BrownianTree.grid_block``), and look
for non-finite states once per chunk (one host sync per chunk, none per
step); when a chunk ends non-finite it is replayed step by step to name the first bad step.

Adaptive solves (``rtol``/``atol``, or a ready ``controller``) run one of two loops — one step size
for the batch (stopping exactly at ``save_at`` times), or one per sample for SDEs with
``batched_time`` — and both take every decision (initial step, accept/reject, next step, a stalled
step) from the one :class:`sdekit.controller.PIDController`; every attempted step queries the
Brownian source over its own interval, so a rejected step is retried on the same path.
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch

from . import solvers as _solvers
from .controller import PIDController
from .errors import MaxStepsError, NonFiniteError, ShapeError
from .problems import (apply_diffusion, brownian_shape, check_output, check_state_resolution, diffusion_shape,
                       function_time_dtype, is_sde, time_dtype)
from .solution import Solution
from .solvers.base import Increment, Solver
from .validation import finite_number, positive_int

CHUNK = 32
DEFAULT_MAX_STEPS = 100_000
DEFAULT_RTOL, DEFAULT_ATOL = 1e-3, 1e-6  # when only one of rtol/atol is given


class _Prepared:
    """The problem as solvers see it: time possibly flipped and in the problem's time dtype
    (:func:`~sdekit.problems.function_time_dtype` of the state: the solver's float64 grid reaches a
    float32 problem as float32), evaluations counted, outputs checked: type and dtype on the first
    call, shape on every call (a comparison of sizes, no host sync)."""

    def __init__(self, problem, x_shape: tuple[int, ...], flip: bool, x_dtype: torch.dtype):
        self.problem = problem
        self.flip = flip
        self._t_dtype = function_time_dtype(x_dtype)
        self.nfe = 0
        self.noise_type = getattr(problem, "noise_type", None)
        self.batched_time = getattr(problem, "batched_time", False)
        self._x_shape = tuple(x_shape)
        self._drift = problem.drift
        self.drift = self._first_drift
        if is_sde(problem):
            self._diffusion = problem.diffusion
            self.diffusion = self._first_diffusion
        if callable(getattr(problem, "score", None)):
            self._score = problem.score
            self.score = self._score_flipped if flip else self._score_timed

    def _time(self, t):
        """``t`` in the problem's time dtype (a no-op when the grid already is)."""
        return t.to(self._t_dtype) if isinstance(t, torch.Tensor) and t.dtype != self._t_dtype else t

    def _first_drift(self, t, x):
        t = self._time(t)
        value = self._drift(-t if self.flip else t, x)
        check_output("drift", self.problem, value, tuple(x.shape), dtype=x.dtype)
        self.drift = self._drift_flipped if self.flip else self._drift_counted
        self.nfe += 1
        return -value if self.flip else value

    def _drift_counted(self, t, x):
        self.nfe += 1
        value = self._drift(self._time(t), x)
        if value.shape != x.shape:
            check_output("drift", self.problem, value, tuple(x.shape))
        return value

    def _drift_flipped(self, t, x):
        self.nfe += 1
        value = self._drift(-self._time(t), x)
        if value.shape != x.shape:
            check_output("drift", self.problem, value, tuple(x.shape))
        return -value

    def _first_diffusion(self, t, x):
        t = self._time(t)
        value = self._diffusion(-t if self.flip else t, x)
        self._diffusion_shape = diffusion_shape(self.problem, tuple(x.shape))
        check_output("diffusion", self.problem, value, self._diffusion_shape, dtype=x.dtype)
        self.diffusion = self._diffusion_checked
        return value

    def _diffusion_checked(self, t, x):
        t = self._time(t)
        value = self._diffusion(-t if self.flip else t, x)
        if value.shape != self._diffusion_shape:
            check_output("diffusion", self.problem, value, self._diffusion_shape)
        return value

    def _score_timed(self, t, x):
        return self._score(self._time(t), x)

    def _score_flipped(self, t, x):
        return self._score(-self._time(t), x)


def _as_time(value, name: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar time, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}={value} is not finite")
    return value


def _check_x0(x0) -> None:
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        raise TypeError(f"x0 must be a floating-point tensor of shape (batch, *dims), got {type(x0).__name__}"
                        + (f" of dtype {x0.dtype}" if isinstance(x0, torch.Tensor) else ""))
    if x0.dim() < 1:
        raise ValueError("x0 must have a batch dimension: shape (batch, *dims); use x0[None] for one state")
    if not torch.isfinite(x0).all():
        raise NonFiniteError("x0 contains NaN or infinite values (step 0)")


def _time_grid(t0: float, t1: float, steps, ts, save_at, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed-step grid (including every save_at time) and a mask of the grid points to save."""
    if ts is not None:
        grid = torch.as_tensor(ts, dtype=torch.float64).flatten()
        if grid.numel() < 2:
            raise ValueError("ts must hold at least two times (t0 and t1)")
        if abs(grid[0].item() - t0) > 1e-12 * max(1.0, abs(t0)) or abs(grid[-1].item() - t1) > 1e-12 * max(1.0, abs(t1)):
            raise ValueError(f"ts must start at t0={t0} and end at t1={t1}; got {grid[0].item()} ... {grid[-1].item()}")
        diffs = (grid[1:] - grid[:-1]) * (1 if t1 > t0 else -1)
        if not (diffs > 0).all():
            raise ValueError("ts must be strictly monotone in the direction from t0 to t1")
    else:
        if steps is None:
            raise ValueError("give steps= (number of fixed steps) or ts= (an explicit grid); for an adaptive "
                             "solver such as 'dopri5' or 'adaptive_em' give rtol= and atol=")
        steps = positive_int(steps, "steps")
        grid = torch.linspace(t0, t1, steps + 1, dtype=torch.float64)
    save = _save_times(t0, t1, save_at)
    if save is not None:
        grid = torch.cat([grid, save]).unique()
        if t1 < t0:
            grid = grid.flip(0)
        # merge times closer than rounding: keep the grid's own point
        keep = torch.ones_like(grid, dtype=torch.bool)
        keep[1:] = (grid[1:] - grid[:-1]).abs() > 1e-12 * max(1.0, abs(t1 - t0))
        grid = grid[keep]
        mask = torch.isclose(grid[:, None], save[None, :], rtol=0, atol=1e-12 * max(1.0, abs(t1 - t0))).any(1)
    else:
        mask = torch.zeros(grid.numel(), dtype=torch.bool)
    return grid.to(like.device, time_dtype(like.dtype, like.device)), mask


def _save_times(t0: float, t1: float, save_at) -> torch.Tensor | None:
    if save_at is None:
        return None
    save = torch.as_tensor(save_at, dtype=torch.float64).flatten()
    lo, hi = min(t0, t1), max(t0, t1)
    tol = 1e-12 * max(1.0, hi - lo)
    if ((save < lo - tol) | (save > hi + tol)).any():
        raise ValueError(f"save_at times must lie in [{lo}, {hi}]; got {save.tolist()}")
    return save.clamp(lo, hi)


def _noise_source(problem, x0, brownian, generator, levy_area: bool, t0: float, t1: float, replayable: bool):
    from .brownian import BrownianTree, GeneratorNoise

    shape = brownian_shape(problem, tuple(x0.shape))
    if brownian is not None:
        if not hasattr(brownian, "increments"):
            raise TypeError("brownian must be a sdekit.BrownianTree (or an object with increments(ts, levy_area))")
        if tuple(getattr(brownian, "shape", shape)) != shape:
            raise ShapeError(f"brownian has shape {tuple(brownian.shape)} but this problem needs Brownian "
                             f"increments of shape {shape} (noise_type={problem.noise_type!r})")
        return brownian
    if replayable:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item()) if generator is not None \
            else int(torch.randint(0, 2**31 - 1, (1,)).item())
        return BrownianTree(min(t0, t1), max(t0, t1), shape, seed=seed, dtype=x0.dtype,
                            device=x0.device, levy_area=levy_area)
    return GeneratorNoise(shape, generator=generator, dtype=x0.dtype, device=x0.device)


def solve(problem, x0: torch.Tensor, t0, t1, *, solver: str | Solver, steps: int | None = None,
          ts: Sequence[float] | torch.Tensor | None = None, rtol: float | None = None,
          atol: float | None = None, brownian=None, generator: torch.Generator | None = None,
          save_at: Sequence[float] | torch.Tensor | None = None, max_steps: int = DEFAULT_MAX_STEPS,
          progress: bool = False, dt0: float | None = None, controller: PIDController | None = None,
          callback=None, per_sample_steps: bool | None = None, **solver_options) -> Solution:
    """Integrate ``problem`` (an :class:`sdekit.SDE` or :class:`sdekit.ODE`) from ``x0`` at ``t0``
    to ``t1``.

    Args:
        problem: the SDE or ODE; ``x0``: the initial state, shape ``(batch, *dims)`` — its dtype and
            device are used throughout.
        t0, t1: start and end times; ``t1 < t0`` integrates backwards (reverse-time Itô for SDEs).
        solver: a registered name (see :func:`sdekit.solvers.available`) or a solver instance;
            ``solver_options`` go to the solver's constructor when a name is given.
        steps / ts: a fixed grid of ``steps`` equal steps, or the explicit grid ``ts``.
        rtol, atol: error tolerances for an adaptive solver (``dopri5``, ``adaptive_em``, ``sra3``,
            ``sosra``, ``shark``), controlled by :class:`sdekit.controller.PIDController`; ``dt0``
            optionally sets the first step size (otherwise the controller estimates it). An SDE
            whose problem declares ``batched_time`` (and no ``save_at``) gets one step size per
            sample unless ``per_sample_steps=False``. A step size that becomes NaN or collapses
            raises :class:`sdekit.NonFiniteError` naming the time.
        controller: a :class:`sdekit.PIDController` to use instead of the one built from
            ``rtol``/``atol`` (its own tolerances, coefficients, clipping and error norm; give it
            or ``rtol``/``atol``, not both). Its ``error_order`` must be the solver's declared
            ``error_order``; ``per_sample`` is set by the loop, as for the built one (a copy is
            used: the given controller is not changed).
        brownian: a :class:`sdekit.BrownianTree` to replay one Brownian path (needed to compare step
            sizes on the same path); otherwise fixed-step SDE solves draw fresh normals from
            ``generator`` and adaptive SDE solves build a tree seeded from it.
        save_at: times at which to save states (added to a fixed grid; hit exactly by adaptive steps).
        max_steps: budget of attempted steps for adaptive solves (:class:`sdekit.MaxStepsError`).
        progress: show a tqdm progress bar.
        per_sample_steps: adaptive SDE solves only: ``None`` (default) steps each sample with its own
            step size when the problem declares ``batched_time`` (each sample meets the tolerance
            on its own, and the batch runs until its slowest sample is done), ``False`` takes one
            step size for the whole batch (the error norm over all elements: no sample waits for
            another, and every step is one Brownian query for the batch), ``True`` requires the
            per-sample loop (ValueError when the problem cannot take it).
        callback: ``callback(i, t, x)`` after fixed step ``i`` (0-based), with ``t`` the grid time
            reached (a 0-d tensor on ``x``'s device, no host sync) and ``x`` the state there; not
            taken by adaptive solves.

    Returns:
        :class:`sdekit.Solution`.
    """
    solver = _solvers.get(solver, **solver_options)
    t0, t1 = _as_time(t0, "t0"), _as_time(t1, "t1")
    if t0 == t1:
        raise ValueError(f"t0 == t1 == {t0}: nothing to integrate; give two different times")
    _check_x0(x0)
    solver.check(problem)
    if controller is not None:
        _check_controller(controller, solver, rtol, atol)
    adaptive = rtol is not None or atol is not None or controller is not None
    if adaptive and not solver.adaptive:
        adaptive_names = [s["name"] for s in _solvers.available() if s["adaptive"]]
        raise ValueError(f"solver {solver.name!r} takes fixed steps (give steps= or ts=); rtol/atol or "
                         f"controller= need an adaptive solver: {adaptive_names}")
    if adaptive and (steps is not None or ts is not None):
        raise ValueError("give either a fixed grid (steps= or ts=) or tolerances (rtol=, atol= or controller=), "
                         "not both")
    if per_sample_steps is not None and not adaptive:
        raise ValueError("per_sample_steps= chooses how an adaptive solve steps the batch; a fixed grid (steps= or "
                         "ts=) has the same steps for every sample: drop it")
    if callback is not None and (adaptive or not callable(callback)):
        raise ValueError("callback= is called after each fixed step: give a callable callback(i, t, x) and "
                         "steps= or ts= (adaptive solves take none)")
    if steps is not None and ts is not None:
        raise ValueError("give steps= (equal steps) or ts= (an explicit grid), not both: ts= already fixes "
                         "the steps")
    max_steps = positive_int(max_steps, "max_steps")
    if dt0 is not None:   # 0 is left to the solve, which reports the collapsed step with its time
        dt0 = finite_number(dt0, "dt0 (the first step's length)", minimum=0)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(42)), got "
                        f"{type(generator).__name__} {generator!r}")
    flip = t1 < t0
    prepared = _Prepared(problem, tuple(x0.shape), flip, x0.dtype)
    sde = is_sde(problem)
    noise = None
    if sde:
        noise = _noise_source(problem, x0, brownian, generator, solver.needs_levy_area, t0, t1,
                              replayable=adaptive)
    if adaptive:
        per_sample = _per_sample(per_sample_steps, sde, prepared, save_at, noise)
        if controller is None:
            controller = PIDController(DEFAULT_RTOL if rtol is None else rtol,
                                       DEFAULT_ATOL if atol is None else atol, solver.error_order,
                                       per_sample=per_sample)
        else:   # the caller's settings, on the loop this solve runs
            controller = copy.copy(controller)
            controller.per_sample = per_sample
        if per_sample:
            return _solve_adaptive_per_sample(prepared, solver, controller, x0, t0, t1, noise, max_steps, dt0)
        return _solve_adaptive(prepared, solver, controller, x0, t0, t1, noise, _save_times(t0, t1, save_at),
                               max_steps, progress, dt0)
    grid, save_mask = _time_grid(t0, t1, steps, ts, save_at, x0)
    check_state_resolution(grid.numel() - 1, x0.dtype)
    return _solve_fixed(prepared, solver, x0, grid, save_mask, noise, progress, save_at is not None, callback)


def _per_sample(requested, sde: bool, prepared: _Prepared, save_at, noise) -> bool:
    """Whether an adaptive solve steps each sample on its own (``solve``'s ``per_sample_steps``)."""
    if requested is not None and not isinstance(requested, bool):
        raise TypeError(f"per_sample_steps must be None, True or False, got {requested!r}")
    possible = sde and prepared.batched_time and save_at is None and hasattr(noise, "increments_per_sample")
    if requested and not possible:
        why = ("an ODE takes one step size for the batch" if not sde else
               "save_at= needs one grid for the batch" if save_at is not None else
               "the problem does not declare batched_time (its drift takes one time for the batch)"
               if not prepared.batched_time else "the noise source has no increments_per_sample")
        raise ValueError(f"per_sample_steps=True needs an SDE with batched_time, no save_at and a Brownian source "
                         f"with per-sample queries: {why}; drop per_sample_steps")
    return possible if requested is None else requested


def _check_controller(controller, solver: Solver, rtol, atol) -> None:
    """Refuse a ``controller=`` that is not a PIDController, comes with tolerances, or was built
    for another solver's error order."""
    if not isinstance(controller, PIDController):
        raise TypeError(f"controller must be a sdekit.PIDController (e.g. sdekit.PIDController(rtol, atol, "
                        f"error_order=solver.error_order, pcoeff=0.0, icoeff=1.0)), got "
                        f"{type(controller).__name__} {controller!r}")
    if rtol is not None or atol is not None:
        raise ValueError(f"give controller= or rtol=/atol=, not both: the controller carries its own tolerances "
                         f"(rtol={controller.rtol}, atol={controller.atol}); got rtol={rtol}, atol={atol}")
    if solver.error_order is not None and controller.error_order != float(solver.error_order):
        raise ValueError(f"controller has error_order={controller.error_order} but solver {solver.name!r} "
                         f"declares error_order={solver.error_order}; build it with "
                         f"error_order=sdekit.solvers.get({solver.name!r}).error_order")


def _progress_bar(progress: bool, total, unit: str):
    if not progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, unit=unit, leave=False)


def _solve_fixed(problem: _Prepared, solver: Solver, x0, grid, save_mask, noise, progress, saving,
                 callback=None) -> Solution:
    sign = -1.0 if problem.flip else 1.0
    solver_grid = grid * sign
    times = list(solver_grid.unbind())
    dts = list((solver_grid[1:] - solver_grid[:-1]).unbind())
    n = len(dts)
    levy = solver.needs_levy_area
    mask = save_mask.tolist()
    saved = [x0] if mask[0] else []
    bar = _progress_bar(progress, n, "step")
    x = x0
    state = solver.init(problem, times[0], x0)
    # a Brownian tree is queried in blocks of many chunks (its values do not depend on the split)
    block = noise.grid_block(CHUNK) if hasattr(noise, "grid_block") else CHUNK
    block_stop = 0
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        x_start, state_start = x, state
        dW = H = None
        if noise is not None:
            if start >= block_stop:
                block_start, block_stop = start, min(start + block, n)
                block_dW, block_H = noise.increments(grid[block_start:block_stop + 1], levy_area=levy)
            dW = block_dW[start - block_start:stop - block_start]
            H = None if block_H is None else block_H[start - block_start:stop - block_start]
        for i in range(start, stop):
            increment = None if dW is None else Increment(dts[i], dW[i - start], None if H is None else H[i - start])
            x, _, state = solver.step(problem, times[i], times[i + 1], x, increment, state)
            if mask[i + 1]:
                saved.append(x)
            if callback is not None:
                callback(i, grid[i + 1], x)
        if not torch.isfinite(x).all():
            _locate_nonfinite(problem, solver, x_start, state_start, times, dts, grid, start, stop, dW, H, sign)
        if bar is not None:
            bar.update(stop - start)
    if bar is not None:
        bar.close()
    xs = torch.stack(saved) if saving else None
    ts = grid[save_mask.to(grid.device)] if saving else grid
    return Solution(x=x, ts=ts, xs=xs, nfe=problem.nfe, n_steps=n, n_rejected=0, grid=grid)


def _locate_nonfinite(problem, solver, x, state, times, dts, grid, start, stop, dW, H, sign):
    """Replay a chunk that ended non-finite, step by step, and raise at the first bad step."""
    for i in range(start, stop):
        increment = None if dW is None else Increment(dts[i], dW[i - start], None if H is None else H[i - start])
        x, _, state = solver.step(problem, times[i], times[i + 1], x, increment, state)
        if not torch.isfinite(x).all():
            break
    raise NonFiniteError(
        f"the state became NaN or infinite at step {i + 1} of {len(dts)} (t={grid[i + 1].item():.6g}, "
        f"stepping from t={grid[i].item():.6g}); check the drift/diffusion for overflow at these times, "
        "or take smaller steps")


def _raise_stalled(controller: PIDController, t: float, h: float, dt0, sample: int | None = None):
    """The NonFiniteError of an adaptive solve whose step size is NaN, infinite or collapsed."""
    where = f"t={t:.6g}" + ("" if sample is None else f" (sample {sample})")
    raise NonFiniteError(
        f"the adaptive step size is {h:.3g} at {where}: the solve cannot make progress. The drift or "
        "diffusion is NaN or infinite there (every smaller step was rejected), or the tolerances or "
        f"first step are not usable (rtol={controller.rtol}, atol={controller.atol}, dt0={dt0}); check "
        "the problem at this time")


def _raise_max_steps(max_steps: int, where: str, t1: float):
    raise MaxStepsError(
        f"adaptive solve used max_steps={max_steps} attempted steps and {where} of t1={t1}; raise "
        "max_steps, loosen rtol/atol, or check the problem for stiffness or blow-up")


def _start(problem: _Prepared, solver: Solver, controller: PIDController, x0, t, t_end, dt0):
    """The solver's initial state and the controller's first step and memory."""
    state = solver.init(problem, t, x0)
    # the noise bound of the first guess needs a diffusion shaped like x (not general noise)
    diffusion = problem.diffusion if is_sde(problem.problem) and problem.noise_type != "general" else None
    h, memory = controller.init(t, t_end, x0, drift=problem.drift, dt0=dt0, f0=solver.initial_derivative(state),
                                diffusion=diffusion)
    return state, h, memory


def _solve_adaptive(problem: _Prepared, solver: Solver, controller: PIDController, x0, t0: float, t1: float,
                    noise, save, max_steps, progress, dt0) -> Solution:
    """Adaptive solve with one step size for the whole batch, stopping exactly at ``save`` times.

    Every attempted step queries the Brownian source over its own interval, so a rejected step is
    retried on the same path (its bridge). One host sync per attempted step.
    """
    sign = -1.0 if problem.flip else 1.0
    like = dict(dtype=time_dtype(x0.dtype, x0.device), device=x0.device)   # times and step sizes
    span = abs(t1 - t0)
    t = torch.tensor(t0 * sign, **like)
    save_s = [] if save is None else sorted(set((save * sign).tolist()))
    stops = sorted(set([s for s in save_s if s > t0 * sign] + [t1 * sign]))
    save_set = set(save_s)
    saved = [x0] if t0 * sign in save_set else []
    x = x0
    state, h, memory = _start(problem, solver, controller, x0, t, torch.tensor(t1 * sign, **like), dt0)
    if bool(controller.stalled(t, h, span)):
        _raise_stalled(controller, t0, h.item(), dt0)
    accepted_times = [t0]
    n_steps = n_rejected = 0
    bar = _progress_bar(progress, span, "t")
    stop_index = 0
    t_now = t0 * sign
    while stop_index < len(stops):
        if n_steps + n_rejected >= max_steps:
            _raise_max_steps(max_steps, f"reached t={sign * t_now:.6g}", t1)
        target = torch.tensor(stops[stop_index], **like)
        hits_stop = h >= target - t
        t_next = torch.where(hits_stop, target, t + h)
        increment = None
        if noise is not None:
            dW, H = noise.increments(torch.stack([t, t_next]) * sign, levy_area=solver.needs_levy_area)
            increment = Increment(t_next - t, dW[0], None if H is None else H[0])
        x_new, error, state_new = solver.step(problem, t, t_next, x, increment, state)
        ratio = controller.error_ratio(error, x, x_new)
        accepted, h, memory = controller.adapt_step_size(t_next - t, ratio, memory)
        t_after = torch.where(accepted, t_next, t)
        stalled = controller.stalled(t_after, h, span)
        accepted_flag, hits_flag, stalled_flag, t_after_value, h_value = torch.stack(
            [accepted.to(h.dtype), hits_stop.to(h.dtype), stalled.to(h.dtype), t_after, h]).tolist()
        if accepted_flag:
            t, x, state = t_after, x_new, state_new
            t_previous = t_now
            t_now = stops[stop_index] if hits_flag else t_after_value
            n_steps += 1
            accepted_times.append(t_now * sign)
            if bar is not None:
                bar.update(abs(t_now - t_previous))
            if hits_flag:
                if stops[stop_index] in save_set:
                    saved.append(x)
                stop_index += 1
        else:
            n_rejected += 1
        if stalled_flag and stop_index < len(stops):
            _raise_stalled(controller, sign * t_after_value, h_value, dt0)
    if bar is not None:
        bar.close()
    grid = torch.tensor(accepted_times, **like)
    if save is not None:
        xs = torch.stack(saved)
        ts = torch.tensor([sign * s for s in save_s], **like)
    else:
        xs, ts = None, grid
    return Solution(x=x, ts=ts, xs=xs, nfe=problem.nfe, n_steps=n_steps, n_rejected=n_rejected, grid=grid)


def _select(accepted: torch.Tensor, new, old):
    """Per sample, ``new`` where ``accepted`` else ``old``, through tensors (batch first), tuples,
    lists and dicts of them; anything else must not differ between the two."""
    if isinstance(new, torch.Tensor):
        return torch.where(accepted.reshape(-1, *([1] * (new.dim() - 1))), new, old)
    if isinstance(new, (tuple, list)):
        return type(new)(_select(accepted, a, b) for a, b in zip(new, old))
    if isinstance(new, dict):
        return {key: _select(accepted, new[key], old[key]) for key in new}
    if new is not old and new != old:
        raise TypeError(f"a per-sample adaptive solve keeps the solver state per sample; a state of type "
                        f"{type(new).__name__} cannot be selected per sample (use tensors with the batch first)")
    return new


def _solve_adaptive_per_sample(problem: _Prepared, solver: Solver, controller: PIDController, x0, t0: float,
                               t1: float, noise, max_steps, dt0) -> Solution:
    """Adaptive SDE solve with one time and one step size per sample (``problem.batched_time``).

    Every iteration steps all samples at once, each over its own ``[t_b, t_b + h_b]`` with its own
    Brownian increment (``noise.increments_per_sample``, the same path as a shared-step solve), and
    accepts or rejects per sample; a sample's solver state advances only when its step is accepted.
    Samples that have reached ``t1`` idle (their step is computed over a dummy interval and
    discarded). ``n_steps``/``n_rejected`` are the largest per-sample counts; ``nfe`` counts batched
    evaluations. One host sync per iteration.
    """
    sign = -1.0 if problem.flip else 1.0
    like = dict(dtype=time_dtype(x0.dtype, x0.device), device=x0.device)   # times and step sizes
    batch = x0.shape[0]
    t_end = torch.full((batch,), t1 * sign, **like)
    t = torch.full((batch,), t0 * sign, **like)
    span = abs(t1 - t0)
    x = x0
    state, h, memory = _start(problem, solver, controller, x0, t, t_end, dt0)
    accepted_count = torch.zeros(batch, dtype=torch.int64, device=x0.device)
    rejected_count = torch.zeros_like(accepted_count)
    done = torch.zeros(batch, dtype=torch.bool, device=x0.device)
    trailing = (batch, *([1] * (x0.dim() - 1)))
    stalled = controller.stalled(t, h, span)
    iterations = 0
    while True:
        finished, any_stalled = torch.stack([done.all(), stalled.any()]).tolist()
        if any_stalled:
            sample = int(stalled.nonzero()[0, 0])
            _raise_stalled(controller, sign * t[sample].item(), h[sample].item(), dt0, sample)
        if finished:
            break
        if iterations >= max_steps:
            _raise_max_steps(max_steps, f"{int((~done).sum())} of {batch} samples have not reached t1", t1)
        iterations += 1
        remaining = t_end - t
        hits_end = h >= remaining
        h_step = torch.where(hits_end, remaining, h)
        # finished samples step over a dummy interval ending at t1 (discarded below)
        h_step = torch.where(done, torch.minimum(h, torch.full_like(h, span)), h_step)
        t_start = torch.where(done, t_end - h_step, t)
        t_next = torch.where(hits_end | done, t_end, t_start + h_step)
        dW, H = noise.increments_per_sample(t_start * sign, t_next * sign)
        # per-sample step sizes multiply the state: in its dtype (a 0-d one would not promote it)
        increment = Increment((t_next - t_start).reshape(trailing).to(x0.dtype), dW,
                              H if solver.needs_levy_area else None)
        x_new, error, state_new = solver.step(problem, t_start, t_next, x, increment, state)
        ratio = controller.error_ratio(error, x, x_new)
        accepted, h_new, memory_new = controller.adapt_step_size(t_next - t_start, ratio, memory)
        accepted = accepted & ~done
        x = torch.where(accepted.reshape(trailing), x_new, x)
        t = torch.where(accepted, t_next, t)
        state = _select(accepted, state_new, state)
        accepted_count += accepted
        rejected_count += ~accepted & ~done
        done = done | (accepted & hits_end)
        active = ~done
        h = torch.where(active, h_new, h)
        memory = type(memory)(*(torch.where(active, new, old) for new, old in zip(memory_new, memory)))
        stalled = active & controller.stalled(t, h, span)
    ts = torch.tensor([t0, t1], **like)
    return Solution(x=x, ts=ts, xs=None, nfe=problem.nfe, n_steps=int(accepted_count.max()),
                    n_rejected=int(rejected_count.max()), grid=None)
