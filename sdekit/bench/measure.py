r"""Running a benchmark: every solver at every resolution on the same Brownian paths.

For each solver and each batch of samples one Brownian path (a :class:`sdekit.BrownianTree` seeded
with ``seed + batch``) is drawn and reused at every step count or tolerance, so differences between
resolutions are discretization error, not sampling noise. Per resolution:

- strong error :math:`E\,\|X_N - X(t_1)\|_2` (mean over samples of the Euclidean norm over the state),
  needs ``exact``;
- weak error :math:`\max_f \max_i |E f(X_N)_i - E f(X(t_1))_i|` over :data:`WEAK_FUNCTIONS`. With a
  pathwise exact solution it is estimated as the mean of :math:`f(X_N) - f(X(t_1))` on the same paths
  (a control variate: unbiased for the bias, with variance of the order of the strong error squared);
  otherwise against ``exact_moments``. Its Monte Carlo standard error is reported beside it;
- NFE, accepted/rejected steps and wall time per solve (one batch; the fastest of ``repeats``).

An ODE with a fixed initial state is run on one sample.
"""
from __future__ import annotations

import datetime
import math
import platform
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .. import solvers as _solvers
from ..solve import solve
from .problems import WEAK_FUNCTIONS, BenchProblem, check_registration, get_problem
from .result import BenchResult


@dataclass
class Outcome:
    """What one solve reports to the bench."""

    x: torch.Tensor
    nfe: int
    n_steps: int
    n_rejected: int = 0


class SdekitSolver:
    """A registered sdekit solver as the bench runs it. Other libraries' solvers (see
    ``benchmarks/solver_orders.py``) implement the same four members: ``name``, ``info``,
    ``check(problem)``, ``brownian(problem, n, seed, dtype, device)`` and ``solve(...)``."""

    def __init__(self, name: str, **options):
        self.solver = _solvers.get(name, **options)
        self.name = name if isinstance(name, str) else self.solver.name
        self.info = self.solver.describe()

    def check(self, problem: BenchProblem) -> None:
        self.solver.check(problem.problem)

    def brownian(self, problem: BenchProblem, n: int, seed: int, dtype, device):
        if not problem.is_sde:
            return None
        from ..brownian import BrownianTree
        return BrownianTree(min(problem.t0, problem.t1), max(problem.t0, problem.t1), problem.noise_shape(n),
                            seed=seed, dtype=dtype, device=device, levy_area=self.solver.needs_levy_area)

    def solve(self, problem: BenchProblem, x0: torch.Tensor, bm, *, steps=None, rtol=None, atol=None) -> Outcome:
        solution = solve(problem.problem, x0, problem.t0, problem.t1, solver=self.solver, steps=steps,
                         rtol=rtol, atol=atol, brownian=bm)
        return Outcome(solution.x, solution.nfe, solution.n_steps, solution.n_rejected)


_SOLVER_REGISTRY: dict[str, Callable[[], object]] = {}


def register_solver(name: str, factory: Callable[[], object]) -> None:
    """Make ``name`` a bench solver: ``factory()`` returns an adapter with the members of
    :class:`SdekitSolver` (how plugins bring their own methods, e.g. the diffusion samplers).
    Registering a name again replaces it."""
    check_registration("solver", name, factory)
    _SOLVER_REGISTRY[name] = factory


def solver_names() -> list[str]:
    """Every name the bench accepts: sdekit's registered solvers and those plugins registered."""
    return sorted({info["name"] for info in _solvers.available()} | set(_SOLVER_REGISTRY))


def solver_info(name: str) -> dict:
    """Declared capabilities of a bench solver (``kind``, orders, ``adaptive``, ``evals_per_step``)."""
    return _as_solver(name).info


def _as_solver(solver) -> SdekitSolver:
    if isinstance(solver, str) and solver in _SOLVER_REGISTRY:
        return _SOLVER_REGISTRY[solver]()
    if isinstance(solver, str) or isinstance(solver, _solvers.Solver):
        return SdekitSolver(solver)
    return solver


def _resolutions(spec, steps, rtols, atol, nfe=None) -> list[dict]:
    if nfe and not (spec.info.get("adaptive") and rtols):
        per_step = max(1, int(spec.info.get("evals_per_step") or 1))
        counts = sorted({max(1, int(budget) // per_step) for budget in nfe})
        return [{"steps": n} for n in counts]
    if spec.info.get("adaptive") and rtols:
        atols = list(atol) if isinstance(atol, (list, tuple)) else [atol] * len(rtols)
        if len(atols) != len(rtols):
            raise ValueError(f"give one atol or one per rtol; got {len(atols)} atols for {len(rtols)} rtols")
        return [{"rtol": float(r), "atol": float(r if a is None else a)} for r, a in zip(rtols, atols)]
    if not steps:
        raise ValueError(f"solver {spec.name!r} takes fixed steps: give steps=[...]"
                         + (" (or rtols=[...] for its adaptive mode)" if spec.info.get("adaptive") else ""))
    return [{"steps": int(n)} for n in sorted(steps)]


def _weak_terms(problem: BenchProblem, x: torch.Tensor, exact: torch.Tensor | None, moments) -> dict:
    """Per sample ``f(x) - f(exact)`` (or ``f(x)`` when only moments are known), flattened per sample."""
    terms = {}
    for fname, f in WEAK_FUNCTIONS.items():
        if exact is not None:
            terms[fname] = (f(x) - f(exact.expand_as(x))).flatten(1)
        elif moments is not None and fname in moments:
            terms[fname] = f(x).flatten(1)
    return terms


def _weak_error(terms: dict[str, torch.Tensor], moments, pathwise: bool) -> tuple[dict, float, float]:
    errors, worst, worst_stderr = {}, float("nan"), float("nan")
    for fname, values in terms.items():
        n = values.shape[0]
        mean = values.mean(0)
        bias = mean if pathwise else mean - torch.as_tensor(moments[fname]).to(values).flatten()
        stderr = values.std(0) / math.sqrt(n) if n > 1 else torch.full_like(mean, float("nan"))
        i = int(bias.abs().argmax())
        errors[fname] = float(bias.abs()[i])
        if not errors[fname] <= worst:  # also replaces the initial NaN
            worst, worst_stderr = errors[fname], float(stderr[i])
    return errors, worst, worst_stderr


def run(problem: str | BenchProblem, solvers: Sequence, *, steps: Sequence[int] | None = None,
        rtols: Sequence[float] | None = None, atol=None, nfe: Sequence[int] | None = None,
        samples: int = 256, batch_size: int | None = None, seed: int = 0,
        dtype: torch.dtype = torch.float64, device="cpu", repeats: int = 1) -> BenchResult:
    """Benchmark ``solvers`` on ``problem``.

    Args:
        problem: a registered name (:func:`sdekit.bench.problem_names`) or a :class:`BenchProblem`.
        solvers: registered solver names, solver instances, or bench solver adapters.
        steps: fixed step counts (for every non-adaptive solver, and adaptive ones without ``rtols``).
        rtols: tolerances for adaptive solvers; ``atol``: one value, one per rtol, or ``None``
            (``atol = rtol``).
        nfe: evaluation budgets instead of ``steps``: each solver takes ``budget // evals_per_step``
            steps (its declared evaluations per step), so solvers are compared at equal work.
        samples: Monte Carlo samples (SDEs, or ODEs with random initial states), split into batches
            of ``batch_size`` (default: all in one), one Brownian path per batch.
        seed: batch ``b`` uses Brownian seed ``seed + b`` and initial-state generator seed ``seed + b``.
        repeats: solve each (batch, resolution) this many times and keep the fastest wall time
            (the solution is the same each time).

    Returns:
        :class:`BenchResult` with one row per (solver, resolution) and fitted orders.
    """
    bench_problem = get_problem(problem)
    specs = [_as_solver(s) for s in solvers]
    for spec in specs:
        spec.check(bench_problem)
    if not bench_problem.has_exact and not bench_problem.has_exact_moments:
        raise ValueError(f"problem {bench_problem.name!r} has neither exact() nor exact_moments()")
    if samples < 1:
        raise ValueError(f"samples must be positive, got {samples}")
    if not bench_problem.is_sde and not bench_problem.random_initial:
        samples = 1
    batch_size = samples if batch_size is None else min(batch_size, samples)
    batches = [min(batch_size, samples - start) for start in range(0, samples, batch_size)]
    moments = bench_problem.exact_moments(bench_problem.t1) if bench_problem.has_exact_moments else None
    span = abs(bench_problem.t1 - bench_problem.t0)
    rows = []
    for spec in specs:
        resolutions = _resolutions(spec, steps, rtols, atol, nfe)
        per_resolution = [{"strong": [], "weak": {}, "nfe": 0, "n_steps": 0, "n_rejected": 0, "seconds": 0.0}
                          for _ in resolutions]
        for b, n in enumerate(batches):
            generator = torch.Generator(device="cpu").manual_seed(seed + b)
            x0 = bench_problem.initial(n, generator=generator, dtype=dtype, device=device)
            bm = spec.brownian(bench_problem, n, seed + b, dtype, device)
            exact = bench_problem.exact(bench_problem.t1, bm, x0) if bench_problem.has_exact else None
            for resolution, acc in zip(resolutions, per_resolution):
                seconds = math.inf
                for _ in range(max(1, repeats)):
                    start = time.perf_counter()
                    outcome = spec.solve(bench_problem, x0, bm, **resolution)
                    seconds = min(seconds, time.perf_counter() - start)
                acc["seconds"] += seconds
                for key in ("nfe", "n_steps", "n_rejected"):
                    acc[key] += getattr(outcome, key)
                x = outcome.x.detach()
                if exact is not None:
                    acc["strong"].append((x - exact).flatten(1).norm(dim=1))
                if bench_problem.is_sde or bench_problem.random_initial:
                    for fname, values in _weak_terms(bench_problem, x, exact, moments).items():
                        acc["weak"].setdefault(fname, []).append(values)
        for resolution, acc in zip(resolutions, per_resolution):
            count = len(batches)
            n_steps = acc["n_steps"] / count
            row = {"solver": spec.name, "steps": resolution.get("steps"), "rtol": resolution.get("rtol"),
                   "atol": resolution.get("atol"), "h": span / n_steps if n_steps else float("nan"),
                   "nfe": acc["nfe"] / count, "n_steps": n_steps, "n_rejected": acc["n_rejected"] / count,
                   "seconds": acc["seconds"] / count, "samples": samples,
                   "strong_error": None, "strong_stderr": None,
                   "weak_error": None, "weak_stderr": None, "weak_errors": None}
            if acc["strong"]:
                errors = torch.cat(acc["strong"])
                row["strong_error"] = float(errors.mean())
                row["strong_stderr"] = float(errors.std() / math.sqrt(errors.numel())) if errors.numel() > 1 else None
            if acc["weak"]:
                terms = {fname: torch.cat(values) for fname, values in acc["weak"].items()}
                pathwise = exact is not None
                row["weak_errors"], row["weak_error"], row["weak_stderr"] = _weak_error(terms, moments, pathwise)
            rows.append(row)
    meta = {"problem": bench_problem.name, "description": bench_problem.description,
            "kind": "sde" if bench_problem.is_sde else "ode", "t0": bench_problem.t0, "t1": bench_problem.t1,
            "samples": samples, "batch_size": batch_size, "seed": seed, "repeats": repeats,
            "dtype": str(dtype).replace("torch.", ""), "device": str(device), "torch": torch.__version__,
            "machine": platform.machine(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    return BenchResult(meta=meta, solvers={spec.name: dict(spec.info) for spec in specs}, rows=rows)
