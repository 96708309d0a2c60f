r"""``optimize_coefficients``: a time grid *and* per-step iPNDM coefficients learned on a
calibration batch, so that ``nfe`` score calls come as close as they can to the exact
probability-flow solution.

:func:`~sdekit_diffusion.optimize_time_grid` moves only the times; here each step's weights of the
current and past noise predictions move as well. This is the idea of bespoke and non-stationary
solvers (Shaul et al., *Bespoke Solvers for Generative Flow Models*, ICLR 2024; *Bespoke
Non-Stationary Solvers for Fast Sampling of Diffusion and Flow Models*, ICML 2024) and of S4S
(Frankel et al., *S4S: Solving for a Diffusion Model Solver*, ICML 2025), here for iPNDM's form.
Step ``i`` of the grid :math:`t_0 = t_{max} > \dots > t_N = t_{min}`, in
:math:`y = x/\alpha` and :math:`\tilde\sigma = \sigma/\alpha`, is

.. math::
    y_{i+1} = y_i + (\tilde\sigma_{i+1} - \tilde\sigma_i) \sum_{k=0}^{q_i - 1} c_{i,k}\,
    \epsilon_{i-k}, \qquad q_i = \min(\text{order}, i + 1),

(``skd.sample(..., solver="ipndm", coefficients=c)``, :mod:`.samplers.ipndm`). Each row keeps
:math:`\sum_k c_{i,k} = 1` (:math:`c_{i,0} = 1 - \sum_{k \ge 1} c_{i,k}`): the step stays exact
when the noise prediction is constant along it, and the free numbers are the
:math:`c_{i,k}, k \ge 1`, started at Adams–Bashforth's (iPNDM's) values.

**What it minimises**: the objective of :func:`~sdekit_diffusion.optimize_time_grid`, the mean over
the calibration batch of the Euclidean distance between the sampler's :math:`x(t_{min})` and the
reference, now over the grid's log-SNR logits and the free coefficients together.

**Search.** (1) the search of ``optimize_time_grid(..., solver="ipndm", order=order, afs=afs)``
(the same reference and objective) with a third of ``max_evaluations`` (:data:`GRID_SHARE`);
(2) L-BFGS-B (scipy) on the logits and coefficients together from that grid and
Adams–Bashforth's coefficients, with the rest of the budget, on the autograd gradient (checked against a central difference as in ``optimize_time_grid``; forward
differences otherwise, one run per free number). The candidate of (1) is evaluated first, so the
calibration error returned is never above that of (1). Deterministic, like (1).

**Measured** on the mixture of ``benchmarks/few_step.py`` (8-d, 4 Gaussians, exact score; 1024
calibration draws, 512 other draws scored; ``order=4, afs=True``, the default budget): at NFE 10
the held-out error is 4.95e-3, against 1.55e-2 for the best grid of ``optimize_time_grid``
(``ipndm`` of order 3 with ``afs``) and 4.33e-2 for the best peer (diffusers' IPNDM on the
quadratic grid); on the calibration draws themselves 4.42e-3. With 450 and 600 runs instead of 900
the held-out error was 9.5e-3 and 7.6e-3 (calibration 5.6e-3 and 4.4e-3): a search stopped early
can leave coefficients fitted to a few hard calibration draws. On a small calibration batch,
check the error on other draws.

The coefficients are for the grid returned: another grid, another number of steps or another
model need their own.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from sdekit.validation import positive_int

from .grid_optimization import (GRADIENT_COST, LOGIT_BOUND,
                                REFERENCE_TOLERANCE, _BudgetSpent, _prepare, _steps)
from .samplers import registry
from .samplers._common import check_afs
from .samplers._multistep import check_order
from .samplers.ipndm import MAX_ORDER, adams_bashforth
from .sde import DiffusionSDE
from .time_grids import GRIDS

SOLVER = "ipndm"
DEFAULT_ORDER = 4
COEFFICIENT_EVALUATIONS = 900   # sampler runs of both stages by default (module docstring: measured)
GRID_SHARE = 3              # the grid stage gets 1/3 of max_evaluations
COEFFICIENT_BOUND = 10.0    # |c_ik - Adams-Bashforth's| <= 10 (theirs are at most 59/24 in size)


def optimize_coefficients(sde: DiffusionSDE, score_fn: Callable, x_T: torch.Tensor, nfe: int, *,
                          order: int = DEFAULT_ORDER, afs: bool = False, t_min: float | None = None,
                          reference: torch.Tensor | None = None,
                          max_evaluations: int = COEFFICIENT_EVALUATIONS,
                          reference_tol: float = REFERENCE_TOLERANCE,
                          difference_step: float | None = None,
                          gradient: str = "auto") -> dict:
    r"""The grid and per-step coefficients of iPNDM with ``nfe`` score calls that best match the
    probability-flow solution of the calibration batch ``x_T`` (module docstring).

    Args:
        sde, score_fn, x_T, nfe, t_min, reference, reference_tol, difference_step, gradient: as
            for :func:`~sdekit_diffusion.optimize_time_grid` (``nfe`` counts the calls of the
            run: with ``afs`` the grid has ``nfe + 1`` steps).
        order: iPNDM's order, 1–4: how many noise predictions each step weighs.
        afs: the analytical first step (no score call at ``t_max``).
        max_evaluations: sampler runs on ``x_T`` at most, both stages together (a value and
            gradient counts as ``GRADIENT_COST`` runs): the cost is at most ``max_evaluations *
            nfe`` score calls, the backward passes of at most a third as many, and the
            reference solve.

    Returns:
        The keywords of :func:`sdekit_diffusion.sample` that run the result: ``{"solver":
        "ipndm", "ts": grid, "coefficients": c, "order": order, "afs": afs}`` (``grid``: float64,
        ``N + 1`` decreasing times from ``sde.t_max`` to ``t_min``; ``c``: float64 ``(N,
        order)``, rows summing to 1), for ``skd.sample(sde, score_fn, x_T=x, **result)``.

    Raises:
        ValueError / TypeError / sdekit.ShapeError / sdekit.NonFiniteError: as
        ``optimize_time_grid``, and an ``order`` outside 1–4, an ``afs`` that is not a bool or a
        ``max_evaluations`` below ``2 * GRID_SHARE * len(GRIDS)`` (each stage needs a few runs).
    """
    if not isinstance(sde, DiffusionSDE):
        raise TypeError(f"sde must be a DiffusionSDE, got {type(sde).__name__}")
    order = check_order(SOLVER, order, MAX_ORDER)
    options = {"order": order, "afs": check_afs(SOLVER, afs)}
    steps = _steps(registry.get(SOLVER), nfe, options)
    max_evaluations = positive_int(max_evaluations, "max_evaluations",
                                   minimum=2 * GRID_SHARE * len(GRIDS))
    search = _prepare(sde, score_fn, x_T, nfe, SOLVER, steps, options, t_min=t_min,
                      reference=reference, max_evaluations=max_evaluations // GRID_SHARE,
                      reference_tol=reference_tol, difference_step=difference_step,
                      gradient=gradient)
    grid = search.run()                                   # stage 1: optimize_time_grid's search
    search.new_stage(max_evaluations - max_evaluations // GRID_SHARE)
    base, free = adams_bashforth(steps, order), _free_entries(steps, order)
    logits_count = steps - 1

    def decode(vector) -> dict | None:
        vector = torch.as_tensor(vector, dtype=torch.float64)
        ts = search.grid(vector[:logits_count])
        if ts is None:
            return None
        change = torch.zeros(steps, order, dtype=torch.float64).masked_scatter(free, vector[logits_count:])
        change = change - torch.nn.functional.pad(change.sum(1, keepdim=True), (0, order - 1))
        return {"ts": ts, "coefficients": base + change}

    search.decode = decode
    start = np.concatenate([search.logits(grid), np.zeros(int(free.sum()))])
    search.evaluate({"ts": grid, "coefficients": base})
    bounds = [LOGIT_BOUND] * logits_count + [COEFFICIENT_BOUND] * (len(start) - logits_count)
    try:
        use_autograd = gradient == "autograd" or (gradient == "auto" and search.autograd_agrees(start))
        cost = GRADIENT_COST if use_autograd else 1
        function = search.value_and_gradient_or_zero if use_autograd else search.value
        search._minimize(function, start, bounds, (search.budget - search.evaluations) // cost,
                         use_autograd)
    except _BudgetSpent:
        pass
    return {"solver": SOLVER, "ts": search.best["ts"], "coefficients": search.best["coefficients"],
            **options}


def _free_entries(steps: int, order: int) -> torch.Tensor:
    """The free coefficients: ``c_ik`` with ``1 <= k < min(order, i + 1)`` (``c_i0`` makes the
    row sum to 1)."""
    k, i = torch.arange(order)[None, :], torch.arange(steps)[:, None]
    return (k >= 1) & (k <= i)


__all__ = ["optimize_coefficients"]
