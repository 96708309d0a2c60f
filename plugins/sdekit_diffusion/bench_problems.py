r"""Diffusion problems for :mod:`sdekit.bench`, registered by :func:`register_bench_problems`.

Data are 2-d Gaussian mixtures with exact scores (:class:`~sdekit_diffusion.problems.GaussianMixture`);
the initial states are exact samples of :math:`p_{t_{max}}` (:math:`\alpha(t_{max}) x_0 + \sigma(t_{max})\varepsilon`,
not the approximate prior), integrated from ``t_max`` down to ``t_min``. Schedules: ``vp``
(:class:`VPSDE`), ``subvp`` (:class:`SubVPSDE`), ``ve`` (:class:`VESDE`) and ``linear``, a custom
marginal :math:`\alpha = 1 - t`, :math:`\sigma = t` on ``[1e-3, 0.98]`` (the flow-matching path,
built with :meth:`DiffusionSDE.from_marginal`).

Problems, ``{schedule}_{kind}``:

- ``*_flow_gaussian``: probability-flow ODE, single-Gaussian data; exact flow map
  :math:`x_{t_{min}} = \alpha\mu + \sqrt{v(t_{min})}\,(x_{t_{max}} - \alpha\mu)/\sqrt{v(t_{max})}`.
- ``*_flow_mixture``: probability-flow ODE, two-component mixture; reference: sdekit's dopri5 at
  ``rtol = atol = 1e-10`` from the same initial states.
- ``*_reverse_mixture``: reverse-time SDE, two-component mixture; weak errors against the exact first
  and second moments of :math:`p_{t_{min}} = \sum_k w_k \mathcal N(\alpha\mu_k, (\alpha^2 s_k^2 + \sigma^2) I)`.

The plugin's samplers are bench solvers too (:class:`SamplerSolver`): the deterministic ones on the
``*_flow_*`` problems, the stochastic ones on ``*_reverse_mixture``, e.g.
``sdekit bench --problem vp_flow_mixture --solvers ddim,dpm_solver++_2m,edm_heun --nfe 10,20,40,80``.
"""
from __future__ import annotations

import torch

import sdekit
from sdekit.bench import BenchProblem, Outcome, register_problem, register_solver

from . import samplers
from .problems import GaussianMixture
from .sampling import sample
from .sde import DiffusionSDE, SubVPSDE, VESDE, VPSDE

REFERENCE_TOLERANCE = 1e-10  # dopri5 rtol = atol for the mixture flow references


def _linear_marginal() -> DiffusionSDE:
    return DiffusionSDE.from_marginal(lambda t: 1 - t, lambda t: t, t_min=1e-3, t_max=0.98)


SCHEDULES = {
    "vp": (VPSDE, "VP (beta 0.1..20)"),
    "subvp": (SubVPSDE, "sub-VP (beta 0.1..20)"),
    "ve": (lambda: VESDE(sigma_min=0.01, sigma_max=10.0), "VE (sigma 0.01..10)"),
    "linear": (_linear_marginal, "custom marginal alpha=1-t, sigma=t"),
}


def gaussian_data() -> GaussianMixture:
    return GaussianMixture.gaussian(torch.tensor([0.5, -1.0], dtype=torch.float64), 0.5)


def mixture_data() -> GaussianMixture:
    return GaussianMixture([0.3, 0.7], torch.tensor([[-1.0, 0.5], [1.5, -0.5]], dtype=torch.float64),
                           [0.4, 0.6])


class DiffusionBenchProblem(BenchProblem):
    """Integrate a diffusion problem from ``t_max`` to ``t_min`` with exact initial states."""

    random_initial = True

    def __init__(self, schedule: str, data: GaussianMixture, kind: str):
        make_sde, label = SCHEDULES[schedule]
        self.sde = make_sde()
        self.data = data
        self.score_fn = data.score_fn(self.sde)
        self.problem = self.sde.reverse(self.score_fn) if kind == "reverse" else self.sde.probability_flow(self.score_fn)
        self.t0, self.t1 = self.sde.t_max, self.sde.t_min
        self.x0 = data.means[0]  # shape of one state; initial() draws the real ones
        self.solvers = ("euler_maruyama", "sra1") if kind == "reverse" else ("euler", "heun", "rk4")
        self.steps = (8, 16, 32, 64)
        self._label = label

    def initial(self, n, generator=None, dtype=torch.float64, device="cpu"):
        x_data = self.data.sample(n, generator=generator).to(dtype)
        noise = torch.randn(x_data.shape, generator=generator, dtype=dtype)
        t = torch.tensor(self.t0, dtype=dtype)
        alpha, sigma = self.sde.schedule.alpha(t), self.sde.schedule.sigma(t)
        return (alpha * x_data + sigma * noise).to(device)


class FlowGaussian(DiffusionBenchProblem):
    def __init__(self, schedule: str):
        super().__init__(schedule, gaussian_data(), "flow")
        self.name = f"{schedule}_flow_gaussian"
        self.description = f"{self._label}: probability-flow ODE, Gaussian data, exact flow map"

    def exact(self, t1, bm=None, x0=None):
        return self.data.exact_flow(self.sde, x0, self.t0, t1)


class FlowMixture(DiffusionBenchProblem):
    def __init__(self, schedule: str):
        super().__init__(schedule, mixture_data(), "flow")
        self.name = f"{schedule}_flow_mixture"
        self.description = (f"{self._label}: probability-flow ODE, 2-component mixture, "
                            f"reference dopri5 at tol {REFERENCE_TOLERANCE:g}")

    def exact(self, t1, bm=None, x0=None):
        return sdekit.solve(self.problem, x0, self.t0, t1, solver="dopri5", rtol=REFERENCE_TOLERANCE,
                            atol=REFERENCE_TOLERANCE).x


class ReverseMixture(DiffusionBenchProblem):
    def __init__(self, schedule: str):
        super().__init__(schedule, mixture_data(), "reverse")
        self.name = f"{schedule}_reverse_mixture"
        self.description = f"{self._label}: reverse SDE, 2-component mixture, exact moments of p_t_min"

    def exact_moments(self, t1):
        t = torch.tensor(t1, dtype=torch.float64)
        alpha, sigma = self.sde.schedule.alpha(t), self.sde.schedule.sigma(t)
        weights, means, stds = self.data.weights, self.data.means, self.data.stds
        w = weights.reshape(-1, 1)
        mean = (w * alpha * means).sum(0)
        second = (w * ((alpha * means) ** 2 + (alpha ** 2 * stds ** 2 + sigma ** 2).reshape(-1, 1))).sum(0)
        return {"x": mean, "x^2": second}


class SamplerSolver:
    """A sampler of :func:`sdekit_diffusion.sample` as a :mod:`sdekit.bench` solver, described by its
    registry record: the problem's exact score, ``x_T`` = the problem's initial states, the time grid
    uniform in log-SNR (DPM-Solver's recommendation; on a uniform-in-t grid the multistep methods
    reach their order only late). Deterministic samplers run on the ``*_flow_*`` problems, stochastic
    ones on ``*_reverse_mixture``; adaptive ones take ``rtol``/``atol``."""

    def __init__(self, name: str):
        record = samplers.get(name)
        self.name = name
        stochastic = record.stochastic({})
        self.info = {"name": name, "kind": "sde" if stochastic else "ode",
                     "order": None if stochastic else record.order, "strong_order": None,
                     "weak_order": record.order if stochastic else None, "noise_types": [],
                     "adaptive": record.adaptive, "evals_per_step": record.calls_per_step({})}

    def check(self, problem) -> None:
        if not isinstance(problem, DiffusionBenchProblem):
            raise sdekit.SolverError(f"sampler {self.name!r} runs on the diffusion problems "
                                     f"({', '.join(bench_problem_names())}), not on {problem.name!r}")
        wanted = "reverse_mixture" if self.info["kind"] == "sde" else "flow_gaussian or *_flow_mixture"
        if problem.is_sde != (self.info["kind"] == "sde"):
            raise sdekit.SolverError(f"sampler {self.name!r} is {'stochastic' if problem.is_sde is False else 'deterministic'}"
                                     f": use it on a *_{wanted} problem, not on {problem.name!r}")

    def brownian(self, problem, n, seed, dtype, device):
        return None  # samplers draw per-sample noise from their seed

    def solve(self, problem, x0, bm, *, steps=None, rtol=None, atol=None) -> Outcome:
        tolerances = {} if rtol is None else {"rtol": rtol, "atol": rtol if atol is None else atol}
        solution = sample(problem.sde, problem.score_fn, x_T=x0, solver=self.name, steps=steps,
                          time_grid="logsnr", t_min=problem.t1, seed=0, **tolerances)
        return Outcome(solution.x, solution.nfe, solution.n_steps, solution.n_rejected)


def bench_sampler_names() -> list[str]:
    """The samplers registered as bench solvers: every plugin sampler and the core's ``pc`` under its
    sampler name ``core_pc`` (the other core solvers are bench solvers already, under their names)."""
    return [record.name for record in samplers.records()
            if not record.core or record.name in samplers.registry.CORE_ALIASES.values()]


def _factory(cls, schedule):
    return lambda: cls(schedule)


def bench_problem_names() -> list[str]:
    return [f"{schedule}_{kind}" for schedule in SCHEDULES
            for kind in ("flow_gaussian", "flow_mixture", "reverse_mixture")]


def register_bench_problems() -> None:
    """Register every problem of this module with :func:`sdekit.bench.register_problem` and the
    samplers of :func:`bench_sampler_names` with :func:`sdekit.bench.register_solver` (idempotent)."""
    for name in bench_sampler_names():
        register_solver(name, lambda name=name: SamplerSolver(name))
    for schedule in SCHEDULES:
        register_problem(f"{schedule}_flow_gaussian", _factory(FlowGaussian, schedule))
        register_problem(f"{schedule}_flow_mixture", _factory(FlowMixture, schedule))
        register_problem(f"{schedule}_reverse_mixture", _factory(ReverseMixture, schedule))
