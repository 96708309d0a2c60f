"""Solver registry: names -> solver classes. ``available()`` lists them with their orders."""
from __future__ import annotations

import inspect

from ..errors import SolverError
from .base import Increment, Solver
from .euler_maruyama import EulerMaruyama
from .milstein import Milstein
from .sra1 import SRA1
from .additive_srk import AdditiveSRK, AdditiveSRKTableau
from .sra3 import SRA3
from .sosra import SOSRA
from .shark import ShARK, ShARKT
from .adaptive_em import AdaptiveEulerMaruyama
from .pc import PredictorCorrector
from .runge_kutta import RK4, ButcherTableau, Dopri5, Euler, ExplicitRungeKutta, Heun, Midpoint

_REGISTRY: dict[str, type[Solver]] = {}


def register(cls: type[Solver]) -> type[Solver]:
    """Register a solver class under its ``name`` (usable as a decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name; set the class attribute name")
    _REGISTRY[cls.name] = cls
    return cls


def get(solver: str | Solver, **options) -> Solver:
    """A solver instance from a registered name (with constructor ``options``) or an instance."""
    if isinstance(solver, Solver):
        if options:
            raise ValueError(f"options {sorted(options)} were given with a solver instance; "
                             "pass them to its constructor instead")
        return solver
    if isinstance(solver, type) and issubclass(solver, Solver):
        return _build(solver, options)
    if not isinstance(solver, str) or solver not in _REGISTRY:
        raise SolverError(f"unknown solver {solver!r}; known solvers: {', '.join(sorted(_REGISTRY))}")
    return _build(_REGISTRY[solver], options)


def _build(cls: type[Solver], options: dict) -> Solver:
    """``cls(**options)``, naming the options it does not take instead of Python's bare TypeError."""
    parameters = {} if cls.__init__ is object.__init__ else inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    accepted = [name for name in parameters if name != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown and not takes_any:
        name = cls.name or cls.__name__
        raise TypeError(f"solver {name!r} got unknown option{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(map(repr, unknown))}; it accepts "
                        f"{', '.join(accepted) if accepted else 'no options'} (solve's own arguments "
                        "such as steps, ts, rtol, atol, brownian go to sdekit.solve)")
    return cls(**options)


def available(kind: str | None = None) -> list[dict]:
    """Registered solvers as dicts (name, kind, order, strong_order, weak_order, noise_types,
    adaptive), optionally only those of ``kind`` ("ode" or "sde")."""
    rows = [cls().describe() for cls in _REGISTRY.values()]
    return [r for r in rows if kind is None or r["kind"] == kind]


for _cls in (Euler, Midpoint, Heun, RK4, Dopri5, EulerMaruyama, Milstein, SRA1, SRA3, SOSRA, ShARK, ShARKT,
             AdaptiveEulerMaruyama, PredictorCorrector):
    register(_cls)

__all__ = ["Solver", "Increment", "ButcherTableau", "ExplicitRungeKutta", "AdditiveSRK", "AdditiveSRKTableau",
           "available", "get", "register"]
