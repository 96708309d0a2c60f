r"""Every core ``sdekit`` solver as a sampler, through :func:`sdekit.solve`.

SDE solvers (``kind == "sde"``: ``euler_maruyama``, ``milstein``, ``sra1``, ``adaptive_em``, ...)
integrate the reverse SDE :math:`dx = [f x - g^2 s]\,dt + g\,d\bar w` (``sde.reverse(score)``),
ODE solvers (``euler``, ``midpoint``, ``heun``, ``rk4``, ``dopri5``, ...) the probability-flow ODE
:math:`dx/dt = f x - \tfrac12 g^2 s` (``sde.probability_flow(score)``), from ``t_max`` down to
``t_min`` on the chosen time grid (``ts=``). The reverse SDE of a diffusion has additive noise
(``g`` depends on ``t`` only), so ``sra1`` (strong order 1.5) applies.

Fixed-step SDE solves take their Brownian increments from ``sdekit.brownian.PerSampleNoise`` (the
same sample index gets the same noise whatever the batch size). Adaptive solvers ignore the grid:
``dopri5`` takes ``rtol``/``atol`` (default ``1e-5``, score_sde's RK45 setting for the
probability-flow ODE, Song et al. 2021 §4.3), or runs ``torchdiffeq.odeint(method="dopri5")`` with
``backend="torchdiffeq"``; ``adaptive_em`` takes ``rtol``/``atol`` (default ``1e-2``/``1e-2``) on a
``sdekit.BrownianTree`` (replayable, so rejected steps stay on one path; its step sizes are shared
by the batch, so its samples depend on the batch).

The plugin's own ``pc`` (predictor-corrector with the diffusion-aware Langevin step) takes the name
``"pc"``; the core's generic one is ``"core_pc"`` here.
"""
from __future__ import annotations

import torch

import sdekit

from ._common import Context

DOPRI5_TOLERANCE = 1e-5        # score_sde: RK45 at rtol = atol = 1e-5 for the probability flow
ADAPTIVE_EM_TOLERANCE = 1e-2


def core_names() -> dict[str, dict]:
    """The core's registered solvers by name (``sdekit.solvers.available()``)."""
    return {row["name"]: row for row in sdekit.solvers.available()}


def run_core(ctx: Context, x: torch.Tensor, ts: torch.Tensor, *, name: str, noise,
             progress: bool = False, rtol: float | None = None, atol: float | None = None,
             backend: str = "sdekit", max_steps: int | None = None, **solver_options) -> torch.Tensor:
    """Solve with the core solver ``name`` (module docstring); returns the state at ``ts[-1]``."""
    info = core_names()[name]
    is_sde = info["kind"] == "sde"
    problem = ctx.sde.reverse(ctx.score) if is_sde else ctx.sde.probability_flow(ctx.score)
    t0, t1 = float(ts[0]), float(ts[-1])
    extra = {} if max_steps is None else {"max_steps": max_steps}
    if backend != "sdekit":
        if backend != "torchdiffeq" or name != "dopri5":
            raise ValueError(f"backend={backend!r} is not available for {name!r}; use "
                             "backend='sdekit' (or backend='torchdiffeq' with solver='dopri5')")
        from torchdiffeq import odeint

        tol = DOPRI5_TOLERANCE
        func = lambda t, y: problem.drift(t, y)   # noqa: E731
        times = torch.stack([ts[0], ts[-1]])
        out = odeint(func, x, times, rtol=tol if rtol is None else rtol,
                     atol=tol if atol is None else atol, method="dopri5", **solver_options)
        return out[-1]
    if info["adaptive"]:
        default = ADAPTIVE_EM_TOLERANCE if is_sde else DOPRI5_TOLERANCE
        rtol = default if rtol is None else rtol
        atol = default if atol is None else atol
        brownian = None
        if is_sde:
            from sdekit.brownian import BrownianTree
            brownian = BrownianTree(min(t0, t1), max(t0, t1), tuple(x.shape), seed=ctx.seed + 1,
                                    dtype=x.dtype, device=x.device)
        solution = sdekit.solve(problem, x, t0, t1, solver=name, rtol=rtol, atol=atol,
                                brownian=brownian, progress=progress, **extra, **solver_options)
        return solution.x
    if rtol is not None or atol is not None:
        raise ValueError(f"solver {name!r} takes fixed steps on the time grid; rtol/atol need an "
                         "adaptive one ('dopri5', 'adaptive_em', 'adaptive_sde')")
    if ctx.callback is None:
        solution = sdekit.solve(problem, x, t0, t1, solver=name, ts=ts,
                                brownian=noise if is_sde else None, progress=progress,
                                **solver_options)
        return solution.x
    # with a callback: one solve per interval (fixed-step core solvers carry no state across steps)
    for i in range(len(ts) - 1):
        x = sdekit.solve(problem, x, ts[i], ts[i + 1], solver=name, ts=ts[i:i + 2],
                         brownian=noise if is_sde else None, **solver_options).x
        ctx.report(i, x, ts[i + 1], None)
    return x
