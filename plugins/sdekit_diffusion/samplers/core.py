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
``backend="torchdiffeq"``; adaptive SDE solvers (``adaptive_em``) take ``rtol``/``atol`` (default
``1e-2``/``1e-2``) on a ``sdekit.BrownianTree`` (replayable, so rejected steps stay on one path).
Any adaptive core solver also takes ``controller=`` (a :class:`sdekit.PIDController`, passed to
``sdekit.solve`` in place of the tolerances: give one or the other); an adaptive SDE solver steps
each sample with its own step size (the reverse SDE has ``batched_time``) unless
``per_sample_steps=False`` (one step size for the batch, ``sdekit.solve``'s option).
The core's :class:`sdekit.Solution` is returned as it is: its ``n_steps``, ``n_rejected`` and
accepted ``grid``. ``sample(..., brownian=tree)`` replaces both noise sources by the given
:class:`sdekit.BrownianTree` (``sdekit.solve``'s ``brownian=``), fixed-step and adaptive alike;
``core_pc`` with corrector steps then refuses it (its corrector draws from a ``torch.Generator``,
not from the path: the plugin's ``pc`` takes its corrector noise from the tree).

The plugin's own ``pc`` (predictor-corrector with the diffusion-aware Langevin step) takes the name
``"pc"``; the core's generic one is ``"core_pc"`` here.
"""
from __future__ import annotations

import inspect

import torch

import sdekit

from ._common import Context

DOPRI5_TOLERANCE = 1e-5        # score_sde: RK45 at rtol = atol = 1e-5 for the probability flow
ADAPTIVE_SDE_TOLERANCE = 1e-2
ADAPTIVE_OPTIONS = ("rtol", "atol", "max_steps", "dt0", "controller")


def core_options(info: dict) -> tuple[str, ...]:
    """The options ``sample`` passes to the core solver of ``info`` (``sdekit.solvers.available()``
    row): its constructor's keyword parameters, plus the tolerances of an adaptive one."""
    parameters = inspect.signature(type(sdekit.solvers.get(info["name"])).__init__).parameters
    options = tuple(p for p in parameters if p != "self" and parameters[p].kind in
                    (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))
    if info["adaptive"]:
        options += ADAPTIVE_OPTIONS + (("backend",) if info["name"] == "dopri5" else ())
        options += ("per_sample_steps",) if info["kind"] == "sde" else ()
    return options


def run_core(ctx: Context, x: torch.Tensor, ts: torch.Tensor, *, name: str,
             rtol: float | None = None, atol: float | None = None, backend: str = "sdekit",
             **solver_options) -> sdekit.Solution:
    """Solve with the core solver ``name`` (module docstring)."""
    info = sdekit.solvers.available()
    info = next(row for row in info if row["name"] == name)
    is_sde = info["kind"] == "sde"
    problem = ctx.sde.reverse(ctx.score) if is_sde else ctx.sde.probability_flow(ctx.score)
    t0, t1 = float(ts[0].detach()), float(ts[-1].detach())
    if backend != "sdekit":
        if backend != "torchdiffeq" or name != "dopri5":
            raise ValueError(f"backend={backend!r} is not available for {name!r}; use "
                             "backend='sdekit' (or backend='torchdiffeq' with solver='dopri5')")
        from torchdiffeq import odeint

        solver_options.pop("max_steps", None)
        if solver_options.pop("controller", None) is not None:
            raise ValueError("controller= is for backend='sdekit'; torchdiffeq's dopri5 takes rtol= and atol=")
        times = torch.stack([ts[0], ts[-1]])
        out = odeint(lambda t, y: problem.drift(t, y), x, times,
                     rtol=DOPRI5_TOLERANCE if rtol is None else rtol,
                     atol=DOPRI5_TOLERANCE if atol is None else atol, method="dopri5",
                     **solver_options)
        return sdekit.Solution(x=out[-1], ts=times, xs=None, nfe=ctx.score.calls,
                               n_steps=ctx.score.calls, n_rejected=0)
    if ctx.brownian is not None and name == "pc" and sdekit.solvers.get(name, **solver_options).n_corrector_steps:
        raise ValueError("core_pc's Langevin corrector draws its noise from a torch.Generator, not from "
                         "brownian=; use the plugin's sampler 'pc' (its corrector noise comes from the "
                         "tree), or n_corrector_steps=0")
    if info["adaptive"]:
        default = ADAPTIVE_SDE_TOLERANCE if is_sde else DOPRI5_TOLERANCE
        brownian = ctx.brownian
        if is_sde and brownian is None:
            from sdekit.brownian import BrownianTree
            brownian = BrownianTree(min(t0, t1), max(t0, t1), tuple(x.shape), seed=ctx.seed + 1,
                                    sample_offset=ctx.sample_offset, dtype=x.dtype, device=x.device)
        if solver_options.get("controller") is None:   # the controller carries its own tolerances
            rtol, atol = (default if rtol is None else rtol), (default if atol is None else atol)
        return sdekit.solve(problem, x, t0, t1, solver=name, rtol=rtol, atol=atol, brownian=brownian,
                            progress=ctx.progress, **solver_options)
    noise = (ctx.normal.noise if ctx.brownian is None else ctx.brownian) if is_sde else None
    report = None if ctx.callback is None else (lambda i, t, x_i: ctx.report(i, x_i, t, None))
    return sdekit.solve(problem, x, t0, t1, solver=name, ts=ts, brownian=noise,
                        progress=ctx.progress, callback=report, **solver_options)
