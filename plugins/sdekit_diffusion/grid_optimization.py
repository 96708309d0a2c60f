r"""``optimize_time_grid``: the time grid of a given number of score calls on which a
deterministic sampler comes closest to the exact probability-flow solution of a calibration batch.

The idea of "optimized time steps" (Xue et al., *Accelerating Diffusion Sampling with Optimized
Time Steps*, CVPR 2024), of DMN (Xue et al. 2024) and of Align Your Steps (Sabour et al., ICML
2024), here in its most direct form and for any schedule and any fixed-grid ODE sampler of
:func:`sdekit_diffusion.sample`: choose the grid by minimising the sampler's own terminal error,
measured against a tight reference solve, on a batch of initial states.

**What it minimises.** For the calibration batch :math:`x_T = (x_T^{(1)}, \dots, x_T^{(B)})` at
:math:`t_0 = t_{max}`, the reference :math:`x^\star_b = \Phi_{t_{max} \to t_{min}}(x_T^{(b)})` (the
probability-flow ODE of ``score_fn`` solved by ``dopri5`` at ``rtol = atol = reference_tol`` in
float64, or the tensor given as ``reference``) and the sampler's output :math:`\hat x_b(t_{0:N})`
on the grid :math:`t_0 = t_{max} > t_1 > \dots > t_N = t_{min}`, the grid returned is the best one
met of

.. math::
    E(t_{0:N}) = \frac1B \sum_{b=1}^{B} \bigl\lVert \hat x_b(t_{0:N}) - x^\star_b \bigr\rVert_2

(the mean over samples of the Euclidean norm over all of a sample's elements: the error of
``benchmarks/few_step.py``), over grids with fixed ends and ``N = nfe / calls_per_step`` steps
(one more with ``afs=True``, whose first model output costs no call).

**Parametrisation.** The grid is held in the log-SNR :math:`\lambda = \log(\alpha/\sigma)`: with
:math:`\Lambda = \lambda(t_{min}) - \lambda(t_{max}) > 0`, the increments are
:math:`\lambda_{i+1} - \lambda_i = \Lambda\, \mathrm{softmax}(z)_i` (positive, summing to
:math:`\Lambda`), so every :math:`z \in \mathbb R^N` is a strictly decreasing grid
:math:`t_i = \lambda^{-1}(\lambda_i)` with exact ends, and :math:`z_0 = 0` removes the softmax's
shift invariance: ``N - 1`` free numbers, one per interior time. :math:`z` is kept in
:math:`[-Z, Z]`, ``Z = 12`` (increments within a factor :math:`e^{24}` of each other).

**Search.** (1) every grid of :data:`~sdekit_diffusion.time_grids.GRIDS` is evaluated and the
best is the start :math:`z^{(0)}`; (2) when ``N - 1 > 3``, a smooth correction :math:`z_i =
z^{(0)}_i + \sum_{k=1}^{3} c_k (P_k(u_i) - P_k(u_0))` (Legendre polynomials of the step's midpoint
:math:`u_i = (2i + 1)/N - 1`) with at most a third of the budget; (3) every :math:`z_i` free, from
the best grid met; (4) when (3) converges with budget left, (3) again from each other fixed grid,
in the order of their errors, until the budget is spent. Stages 2–4 run L-BFGS-B (scipy) on the
gradient of :math:`E` in :math:`z`: by autograd through the sampler and the score when they carry it (``gradient="auto"``
checks the autograd derivative against a central difference at the start, 5 runs, and uses it
when they agree within 5%; a value and gradient count as ``GRADIENT_COST = 3`` runs), by forward
differences otherwise (a score under ``torch.no_grad``, a numpy model, or ``gradient=
"differences"``). The difference step is ``1e-7`` in :math:`z` when the score is
float64-accurate, :math:`\sqrt{\epsilon}` of the precision it has otherwise: ``x_T``'s dtype,
or a coarser one when every value of the score's first output is exactly representable in it (a
float32 network behind a float64 wrapper: a float64 step would difference its rounding noise and
the search would not move; measured on the digits U-Net of ``benchmarks/few_step.py``, 64
calibration samples, 120 runs: NFE 10 ``deis`` held-out error 0.283 with the float64 step, 0.250
with the detected float32 step, 0.288 on the best fixed grid). An autograd gradient's cost does
not grow with the number of steps: at NFE 20 a forward-difference gradient costs 20 runs, an
autograd one 3. The search is deterministic (no random numbers: the same inputs on the same
machine and torch thread count give the same grid) and stops after ``max_evaluations`` sampler
runs on ``x_T``: its cost is at most ``max_evaluations * nfe`` score calls on the calibration
batch (and the backward passes of at most a third as many), plus one call to check the score's
shape and the reference solve (about 160 calls for a 2-d mixture, 300 for the 8-d one below, at
``reference_tol = 1e-8``).
On a discrete schedule (``DiffusionSDE.from_betas``: :math:`\log\alpha` piecewise linear)
dopri5 steps through every kink of the table: 13,844 calls for ``N = 1000`` at ``1e-8``, far
more than the search; there give ``reference`` (e.g. a many-step ``dpm_solver++_3m`` solve).

The error is a mean over a heavy-tailed set (a few hard samples carry much of it: two batches
of prior draws can rank the fixed grids differently), so the calibration batch must be large
enough for its mean to stand for the data's: on the 8-d, 4-component mixture of
``benchmarks/few_step.py`` the held-out gain at NFE 10 was 1.53x (``unipc``) and 1.12x
(``ipndm``) calibrated on 128 prior draws, 3.38x and 2.13x on 1024. Started from each of the four
fixed grids in turn, the search reached held-out errors within 20% of each other there
(``dpm_solver++_2m`` at NFE 5 and 10, ``ipndm`` at NFE 10): the start matters little.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

import sdekit
from sdekit.validation import finite_number, positive_int

from .samplers import registry
from .sde import DiffusionSDE
from .time_grids import GRIDS, time_grid

DEFAULT_SOLVER = "dpm_solver++_2m"
DEFAULT_EVALUATIONS = 200      # sampler runs on the calibration batch ("a few hundred", issue 10)
REFERENCE_TOLERANCE = 1e-8     # dopri5 rtol = atol of the reference solve
LOGIT_BOUND = 12.0             # |z_i| <= Z: increments within e^24 of each other
SMOOTH_DEGREE = 3              # Legendre degrees 1..3 of the smooth stage
SMOOTH_SHARE = 3               # the smooth stage gets at most 1/3 of max_evaluations
DIFFERENCE_STEP = 1e-7         # difference step in z for a float64-accurate score (objective noise
                               # ~1e-14 relative); sqrt(eps) of the score's precision otherwise
GRADIENT_COST = 3              # sampler runs one autograd value-and-gradient counts as (forward + backward)
FAILED = 1e300                 # the objective of a grid the sampler cannot run (non-finite states)
GRADIENTS = ("auto", "autograd", "differences")   # optimize_time_grid's gradient= choices
# keywords of skd.sample that optimize_time_grid sets itself (or that change what is compared)
RESERVED = ("shape", "ts", "steps", "time_grid", "final_step", "denoise", "generator", "seed",
            "sample_offset", "dtype", "device", "callback", "progress")


class _BudgetSpent(Exception):
    """Raised inside the optimiser when ``max_evaluations`` sampler runs are spent."""


def optimize_time_grid(sde: DiffusionSDE, score_fn: Callable, x_T: torch.Tensor, nfe: int,
                       solver: str = DEFAULT_SOLVER, *, t_min: float | None = None,
                       reference: torch.Tensor | None = None,
                       max_evaluations: int = DEFAULT_EVALUATIONS,
                       reference_tol: float = REFERENCE_TOLERANCE,
                       difference_step: float | None = None, gradient: str = "auto",
                       **options) -> torch.Tensor:
    r"""The time grid of ``nfe`` score calls on which ``solver`` best matches the exact
    probability-flow solution of the calibration batch ``x_T`` (module docstring).

    Minimises, over grids from ``sde.t_max`` to ``t_min`` with ``nfe / calls_per_step`` steps
    (``nfe + 1`` with ``afs=True``),
    :math:`E = \frac1B \sum_b \lVert \hat x_b - x^\star_b \rVert_2`: the mean over the ``B``
    samples of ``x_T`` of the Euclidean distance between the sampler's ``x(t_min)`` and the
    reference ``x*`` (the probability-flow ODE solved by ``dopri5`` at ``rtol = atol =
    reference_tol`` in float64 from ``x_T``, or ``reference``), starting from the best grid of
    :data:`~sdekit_diffusion.time_grids.GRIDS` and parametrised by log-SNR increments; the best
    grid met is returned, so its ``E`` is never above that of the best fixed grid.

    Args:
        sde: a :class:`DiffusionSDE`.
        score_fn: the score model ``score_fn(t, x)``, ``t`` of shape ``(batch,)``.
        x_T: the calibration batch at ``sde.t_max``, shape ``(batch, *dims)``, e.g.
            ``sde.prior_sample((1024, dim))`` (module docstring: its size matters); score the
            grid on *other* draws. The sampler runs in ``x_T``'s dtype.
        nfe: score calls of one sampling run on the grid: a multiple of the sampler's
            ``calls_per_step`` (less its ``saved_calls``, one with ``afs=True``) giving at least
            its ``min_steps`` steps.
        solver: a deterministic fixed-grid sampler of :func:`sdekit_diffusion.sample`
            (``dpm_solver++_2m``, ``dpm_solver++_3m``, ``unipc``, ``ipndm``, ``deis``, ``ddim``,
            ``dpm_solver_2``, ``edm_heun``, the core's ``euler``, ``heun``, ``rk4``, ...).
        t_min: the final time (default ``sde.t_min``).
        reference: the exact or tight solution at ``t_min`` from ``x_T`` (shape of ``x_T``)
            instead of the dopri5 solve, e.g. ``GaussianMixture.exact_flow`` for Gaussian data,
            or a many-step solve of a network. The dopri5 solve calls ``score_fn`` on float64
            states: give ``reference`` (or a float64 wrapper of the model) for a float32-only one.
        max_evaluations: sampler runs on ``x_T`` at most (the four fixed grids included): the
            cost is at most ``max_evaluations * nfe`` score calls plus the reference solve.
        reference_tol: ``rtol = atol`` of the dopri5 reference.
        difference_step: the difference step in the logits (default: from the score's
            precision, module docstring).
        gradient: ``"auto"`` (autograd when it is the objective's gradient, differences
            otherwise), ``"autograd"`` (unchecked) or ``"differences"``.
        options: the sampler's own options (e.g. ``order=3``, ``variant="bh2"``, ``afs=True``),
            passed to :func:`sdekit_diffusion.sample` at every run.

    Returns:
        A float64 CPU tensor of ``N + 1`` strictly decreasing times from
        ``sde.t_max`` to ``t_min``, for ``skd.sample(sde, score_fn, x_T=..., solver=solver,
        ts=grid, **options)``.

    Raises:
        ValueError: an unknown, adaptive or stochastic ``solver``; an ``nfe`` it cannot spend
            exactly; a bad ``max_evaluations``, ``t_min``, ``reference_tol``, ``difference_step``
            or ``gradient``.
        TypeError / sdekit.ShapeError / sdekit.NonFiniteError: ``x_T`` or ``reference`` not a
            finite floating-point tensor of shape ``(batch, *dims)``; options the sampler does not
            take.
    """
    if not isinstance(sde, DiffusionSDE):
        raise TypeError(f"sde must be a DiffusionSDE, got {type(sde).__name__}")
    record = registry.get(solver)
    reserved = sorted(set(options) & set(RESERVED))
    if reserved:
        raise TypeError("optimize_time_grid chooses the grid and compares the sampler's x(t_min) "
                        "with the probability-flow solution; drop "
                        f"{', '.join(map(repr, reserved))}")
    record.check_options(options)
    steps = _steps(record, nfe, options)
    max_evaluations = positive_int(max_evaluations, "max_evaluations", minimum=len(GRIDS))
    search = _prepare(sde, score_fn, x_T, nfe, solver, steps, options, t_min=t_min,
                      reference=reference, max_evaluations=max_evaluations,
                      reference_tol=reference_tol, difference_step=difference_step,
                      gradient=gradient)
    return search.run()


def _prepare(sde: DiffusionSDE, score_fn: Callable, x_T: torch.Tensor, nfe: int, solver: str,
             steps: int, options: dict, *, t_min, reference, max_evaluations: int,
             reference_tol: float, difference_step, gradient: str) -> "_Search":
    """A :class:`_Search` over grids of ``steps`` steps whose objective runs ``solver`` with
    ``options`` and the candidate's keywords on ``x_T`` against the reference (the dopri5 solve
    of ``x_T``, or ``reference``): the checks and the set-up ``optimize_time_grid`` and
    :func:`~sdekit_diffusion.optimize_coefficients` share."""
    from .sampling import _final_time, sample

    reference_tol = finite_number(reference_tol, "reference_tol", minimum=0.0, strict=True)
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient must be one of {', '.join(map(repr, GRADIENTS))}, got {gradient!r}")
    _check_state(x_T, "x_T")
    t_max, t_end = sde.t_max, _final_time(sde, t_min)
    precision = _score_precision(score_fn, x_T, t_max)
    if difference_step is None:
        difference_step = max(DIFFERENCE_STEP, torch.finfo(precision).eps ** 0.5)
    difference_step = finite_number(difference_step, "difference_step", minimum=0.0, strict=True)
    if reference is None:
        flow = sde.probability_flow(score_fn)
        reference = sdekit.solve(flow, x_T.detach().to(torch.float64), t_max, t_end,
                                 solver="dopri5", rtol=reference_tol, atol=reference_tol,
                                 max_steps=1_000_000).x
    else:
        _check_state(reference, "reference")
        if reference.shape != x_T.shape:
            raise sdekit.ShapeError(f"reference has shape {tuple(reference.shape)}; it is the "
                                    f"solution at t_min from x_T, shape {tuple(x_T.shape)}")
    reference = reference.detach().to(device=x_T.device, dtype=torch.float64)

    lam_ends = sde.log_snr(torch.tensor([t_max, t_end], dtype=torch.float64))
    search = _Search(sde, steps, t_max, t_end, lam_ends, max_evaluations, x_T.dtype, difference_step,
                     gradient)
    search.reference = reference

    def error(keywords: dict) -> torch.Tensor:
        try:
            solution = sample(sde, score_fn, x_T=x_T, solver=solver, **keywords, **options)
        except sdekit.NonFiniteError:
            return torch.tensor(FAILED, dtype=torch.float64)
        if solution.nfe != nfe:    # the registry's calls_per_step disagrees with the sampler
            raise RuntimeError(f"{solver!r} made {solution.nfe} score calls on a {steps}-step "
                               f"grid, not nfe={nfe}; its registry record's calls_per_step is "
                               "wrong")
        distance = (solution.x.to(torch.float64) - reference).flatten(1).norm(dim=1)
        mean = distance.mean()
        return mean if torch.isfinite(mean.detach()) else torch.tensor(FAILED, dtype=torch.float64)

    search.objective = error
    return search


def _steps(record, nfe, options: dict) -> int:
    """Grid steps of ``nfe`` score calls of the sampler ``record`` (ValueError naming the fix)."""
    name = repr(record.name)
    if record.adaptive:
        raise ValueError(f"{name} is adaptive: it chooses its own steps from rtol/atol and takes "
                         "no grid; optimise the grid of a fixed-grid ODE sampler such as "
                         f"{DEFAULT_SOLVER!r}, 'unipc', 'ipndm' or 'deis'")
    if record.stochastic(options):
        raise ValueError(f"{name} with options {options or '{}'} draws noise: its error against "
                         "the probability-flow solution is not a discretisation error a grid can "
                         "minimise; use a deterministic sampler (e.g. 'ddim' with eta=0, "
                         f"{DEFAULT_SOLVER!r}, 'unipc')")
    nfe = positive_int(nfe, "nfe")
    calls, saved = record.calls_per_step(options), record.saved_calls(options)
    minimum = record.nfe(record.min_steps, options)
    if (nfe + saved) % calls or nfe < minimum:
        if calls > 1:
            multiple = f"{saved} less than a multiple of {calls}" if saved else f"a multiple of {calls}"
            need = f"{multiple} and >= {minimum}"
        else:
            need = f">= {minimum}"
        plural = "s" if record.min_steps > 1 else ""
        fewer = f" ({saved} fewer in all with these options)" if saved else ""
        raise ValueError(f"{name} makes {calls} score call{'s' if calls > 1 else ''} per step{fewer} and "
                         f"needs at least {record.min_steps} step{plural}: nfe must be {need}, "
                         f"got {nfe}")
    return (nfe + saved) // calls


def _check_state(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise TypeError(f"{name} must be a floating-point tensor of shape (batch, *dims)")
    if x.numel() == 0:
        raise sdekit.ShapeError(f"{name} is empty (shape {tuple(x.shape)}); give at least one "
                                "sample")
    if not bool(torch.isfinite(x).all()):
        raise sdekit.NonFiniteError(f"{name} contains NaN or infinite values")


def _score_precision(score_fn: Callable, x_T: torch.Tensor, t_max: float) -> torch.dtype:
    """One score call at ``t_max``: :class:`sdekit.ShapeError` unless it has ``x_T``'s shape; the
    precision its values carry: the coarsest floating dtype (no finer than ``x_T``'s) in which
    they are all exactly representable."""
    if not callable(score_fn):
        raise TypeError("score_fn must be a callable score_fn(t, x) with t of shape (batch,)")
    t = torch.full((x_T.shape[0],), t_max, dtype=x_T.dtype, device=x_T.device)
    s = score_fn(t, x_T)
    if not isinstance(s, torch.Tensor) or s.shape != x_T.shape:
        got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise sdekit.ShapeError(f"score_fn returned {got} for x_T of shape {tuple(x_T.shape)}; "
                                "x_T must be a batch of the states the model takes, "
                                "(batch, *dims)")
    s = s.detach()
    eps = torch.finfo(x_T.dtype).eps
    for coarse in (torch.bfloat16, torch.float16, torch.float32):
        if torch.finfo(coarse).eps > eps and bool(torch.isfinite(s).all()) \
                and torch.equal(s.to(coarse).to(s.dtype), s):
            return coarse
    return x_T.dtype


class _Search:
    """The staged search of the module docstring over the logits ``z`` of one grid size,
    remembering the best candidate met. A candidate is the sampler keywords a free vector stands
    for (``decode(free)``; by default ``{"ts": grid(free)}``, or ``None`` when it is no grid);
    ``objective(candidate) -> 0-d tensor`` is set by the caller (a function of the candidate's
    tensors through autograd when they require grad and the sampler and score carry it)."""

    def __init__(self, sde: DiffusionSDE, steps: int, t_max: float, t_end: float,
                 lam_ends: torch.Tensor, max_evaluations: int, dtype: torch.dtype,
                 difference_step: float, gradient: str):
        self.sde, self.steps, self.t_max, self.t_end = sde, steps, t_max, t_end
        self.dtype, self.difference_step, self.gradient = dtype, difference_step, gradient
        self.lam_start, self.lam_range = lam_ends[0], lam_ends[1] - lam_ends[0]
        self.budget = max_evaluations
        self.evaluations = 0
        self.best_value, self.best = math.inf, None
        self.objective: Callable[[dict], torch.Tensor] | None = None
        self.decode: Callable[[object], dict | None] = self.grid_candidate
        self.reference: torch.Tensor | None = None
        self.used_gradient = "differences"   # what the free stages ran on (the caller reports it)

    # -- grids and logits ---------------------------------------------------------------------
    def grid(self, free) -> torch.Tensor | None:
        """The grid of the free logits ``z_1..z_{N-1}`` (``z_0 = 0``; a numpy array, or a float64
        tensor whose graph the grid keeps); ``None`` when two times round to the same value in
        float64 or in the state's dtype (the sampler would refuse it)."""
        free = torch.as_tensor(free, dtype=torch.float64)
        z = torch.cat([free.new_zeros(1), free]).clamp(-LOGIT_BOUND, LOGIT_BOUND)
        increments = self.lam_range * torch.softmax(z, 0)
        lam = self.lam_start + torch.cat([increments.new_zeros(1), increments.cumsum(0)])
        lam = lam.clamp(self.lam_start, self.lam_start + self.lam_range)
        inner = self.sde.schedule.t_of_log_snr(lam[1:-1]).clamp(self.t_end, self.t_max)
        grid = torch.cat([inner.new_tensor([self.t_max]), inner, inner.new_tensor([self.t_end])])
        values = grid.detach()
        cast = values.to(self.dtype)
        if not bool((values[1:] < values[:-1]).all() and (cast[1:] < cast[:-1]).all()):
            return None
        return grid

    def grid_candidate(self, free) -> dict | None:
        grid = self.grid(free)
        return None if grid is None else {"ts": grid}

    @property
    def best_grid(self) -> torch.Tensor:
        return self.best["ts"]

    def logits(self, grid: torch.Tensor) -> np.ndarray:
        """The free logits of ``grid`` (``z_i = log h_i - log h_0``, ``h``: log-SNR increments)."""
        lam = self.sde.schedule.log_snr(grid.detach().to(torch.float64))
        h = (lam[1:] - lam[:-1]).clamp(min=torch.finfo(torch.float64).tiny)
        z = torch.log(h) - torch.log(h[0])
        return np.clip(z[1:].numpy(), -LOGIT_BOUND, LOGIT_BOUND)

    def new_stage(self, budget: int) -> None:
        """Start another search on the same objective and reference (a caller's own candidates,
        ``decode``): a fresh budget of ``budget`` runs, nothing remembered."""
        self.budget, self.evaluations = budget, 0
        self.best_value, self.best = math.inf, None

    def _spend(self, runs: int) -> None:
        if self.evaluations + runs > self.budget:
            raise _BudgetSpent
        self.evaluations += runs

    def _remember(self, value: float, candidate: dict) -> None:
        if value < self.best_value:
            self.best_value = value
            self.best = {key: tensor.detach().clone() for key, tensor in candidate.items()}

    def value(self, free: np.ndarray) -> float:
        """The objective at the free vector (one sampler run, no graph)."""
        candidate = self.decode(np.asarray(free, dtype=np.float64))
        if candidate is None:
            return FAILED
        return self.evaluate(candidate)

    def evaluate(self, candidate: dict) -> float:
        self._spend(1)
        with torch.no_grad():
            value = float(self.objective(candidate))
        self._remember(value, candidate)
        return value

    def value_and_gradient(self, free: np.ndarray) -> tuple[float, np.ndarray | None]:
        """The objective and its autograd gradient at the free vector (``GRADIENT_COST`` runs
        against the budget); the gradient is ``None`` when the objective carries no graph."""
        z = torch.tensor(np.asarray(free, dtype=np.float64), requires_grad=True)
        candidate = self.decode(z)
        if candidate is None:
            return FAILED, np.zeros_like(free)
        self._spend(GRADIENT_COST)
        with torch.enable_grad():
            error = self.objective(candidate)
        value = float(error.detach())
        self._remember(value, candidate)
        if not error.requires_grad or not math.isfinite(value) or value >= FAILED:
            return value, None
        (gradient,) = torch.autograd.grad(error, z)
        return value, gradient.numpy()

    def autograd_agrees(self, free: np.ndarray) -> bool:
        """Whether the autograd gradient at ``free`` is the objective's: its derivative along its
        own direction within 5% of a central difference there (a score under ``no_grad``, a
        numpy model or a ``.item()`` on the time would give a partial or no gradient)."""
        _, gradient = self.value_and_gradient(free)
        norm = 0.0 if gradient is None else float(np.linalg.norm(gradient))
        if not norm > 0 or not math.isfinite(norm):
            return False
        step = self.difference_step / norm * max(1.0, float(np.linalg.norm(free)))
        ahead, behind = self.value(free + step * gradient), self.value(free - step * gradient)
        difference = (ahead - behind) / (2 * step * norm)  # ~ |gradient| when it is the objective's
        return abs(difference - norm) <= 0.05 * norm

    # -- the stages ----------------------------------------------------------------------------
    def run(self) -> torch.Tensor:
        steps = self.steps
        fixed = []
        for kind in GRIDS:       # the fixed grids themselves, not their round trip through z
            grid = time_grid(self.sde, steps, kind, self.t_end, self.t_max)
            fixed.append((self.evaluate({"ts": grid}), len(fixed), grid))
        if steps == 1:
            return self.best_grid
        try:
            use_autograd = self.gradient == "autograd" or (
                self.gradient == "auto" and self.autograd_agrees(self.logits(self.best_grid)))
            self.used_gradient = "autograd" if use_autograd else "differences"
            cost = GRADIENT_COST if use_autograd else 1     # runs per call of the minimised function
            degree = min(SMOOTH_DEGREE, steps - 1)
            if steps - 1 > degree:
                start = self.logits(self.best_grid)
                u = (2 * np.arange(steps) + 1) / steps - 1
                basis = np.stack([np.polynomial.legendre.Legendre.basis(k)(u) for k in
                                  range(1, degree + 1)], 1)
                basis = basis[1:] - basis[:1]         # z_i - z_0: the free logits' change
                if use_autograd:
                    def smooth(c):
                        value, gradient = self.value_and_gradient(start + basis @ c)
                        return value, (np.zeros_like(c) if gradient is None else basis.T @ gradient)
                else:
                    def smooth(c):
                        return self.value(start + basis @ c)
                self._minimize(smooth, np.zeros(degree), [2 * LOGIT_BOUND] * degree,
                               max(1, self.budget // SMOOTH_SHARE // cost), use_autograd)
            free = self.value_and_gradient_or_zero if use_autograd else self.value
            self._minimize(free, self.logits(self.best_grid), [LOGIT_BOUND] * (steps - 1),
                           max(1, (self.budget - self.evaluations) // cost), use_autograd)
            # converged with budget left: the free stage again from the other fixed grids, best first
            for _, _, grid in sorted(fixed, key=lambda entry: entry[:2])[1:]:
                if (self.budget - self.evaluations) // cost < 2:
                    break
                self._minimize(free, self.logits(grid), [LOGIT_BOUND] * (steps - 1),
                               (self.budget - self.evaluations) // cost, use_autograd)
        except _BudgetSpent:
            pass
        return self.best_grid

    def value_and_gradient_or_zero(self, free: np.ndarray) -> tuple[float, np.ndarray]:
        value, gradient = self.value_and_gradient(free)
        return value, (np.zeros_like(free) if gradient is None else gradient)

    def _minimize(self, function: Callable, x0: np.ndarray, bounds: list[float], max_calls: int,
                  with_gradient: bool) -> None:
        """L-BFGS-B (scipy) from ``x0`` in the box ``|x_j| <= bounds[j]``, on ``function``'s own
        gradient or forward differences; the best point is remembered by the evaluations."""
        from scipy.optimize import minimize

        minimize(function, x0, method="L-BFGS-B", jac=True if with_gradient else None,
                 bounds=[(-bound, bound) for bound in bounds],
                 options={"eps": self.difference_step, "maxfun": max_calls, "maxiter": max_calls,
                          "ftol": 1e-12, "gtol": 1e-10})


__all__ = ["optimize_time_grid"]
