"""Discretization-error benchmarking: strong/weak errors, fitted convergence orders, NFE and wall
time of solvers on problems with exact solutions, as tables, JSON and plots.

>>> import sdekit.bench as bench
>>> result = bench.run("gbm", ["euler_maruyama", "milstein"], steps=[8, 16, 32, 64], samples=500)
>>> print(result)                      # a table of errors and fitted orders
>>> result.fit("milstein").order        # least-squares slope of log error vs log h
>>> result.to_json("gbm.json"); result.plot_convergence("gbm.png")

Modules: :mod:`~sdekit.bench.problems` (standard problems and the registry plugins add to),
:mod:`~sdekit.bench.measure` (running), :mod:`~sdekit.bench.result` (table, fits, JSON),
:mod:`~sdekit.bench.plots`.
"""
from .measure import Outcome, SdekitSolver, register_solver, run, solver_info, solver_names
from .problems import (WEAK_FUNCTIONS, BenchProblem, brownian_increment, get_problem, problem_names,
                       register_problem)
from .result import BenchResult, Fit, fit_order
from .plots import plot_convergence, plot_work_precision

__all__ = ["run", "BenchResult", "Fit", "fit_order", "BenchProblem", "problem_names", "get_problem",
           "register_problem", "register_solver", "solver_names", "solver_info", "brownian_increment", "WEAK_FUNCTIONS", "SdekitSolver", "Outcome",
           "plot_convergence", "plot_work_precision"]
