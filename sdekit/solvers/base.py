"""The solver contract.

A solver computes one step; :func:`sdekit.solve` owns the loop, the noise and the step-size
controller. Subclasses declare what they can do (``kind``, orders, ``noise_types``, ``adaptive``,
``needs_levy_area``, ``needs_score``) and implement :meth:`Solver.step`::

    x1, error, state = solver.step(problem, t0, t1, x0, increment, state)

``t0``, ``t1`` are 0-d tensors (or ``(batch,)`` tensors for per-sample steps) with ``t1 > t0``:
``solve`` flips time for backward integration, so a solver only ever steps forward. ``increment``
is ``None`` for an ODE and an :class:`Increment` for an SDE. ``error`` is an estimate of the local
error (a tensor shaped like ``x1``) for adaptive solvers and ``None`` otherwise. ``state`` carries
what a method keeps between steps (FSAL derivatives, multistep history); ``init`` creates it.
A step must be a pure function of its arguments: rejected adaptive steps are simply retried (with
the state of the step's start). Under per-sample steps every tensor in the state has the batch
first, and a sample's state advances only when its step is accepted.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ..errors import SolverError
from ..problems import NOISE_TYPES, is_sde


class Increment(NamedTuple):
    """The Brownian input of one SDE step over ``[t0, t1]``.

    ``dt = t1 - t0``; ``dW = W(t1) - W(t0)`` (shape from :func:`sdekit.problems.brownian_shape`);
    ``H`` the space-time Lévy area ``(1/dt) \\int_{t0}^{t1} (W_s - W_{t0} - (s - t0)/dt dW) ds``,
    present only for solvers with ``needs_levy_area``.
    """

    dt: torch.Tensor
    dW: torch.Tensor
    H: torch.Tensor | None = None


class Solver:
    """Base class of every solver (see the module docstring for the contract)."""

    name: str = ""
    kind: str = "ode"                     # "ode" or "sde"
    order: float | None = None            # ODE order
    strong_order: float | None = None     # SDE strong order (for the noise types listed)
    weak_order: float | None = None
    noise_types: tuple[str, ...] = NOISE_TYPES
    adaptive: bool = False
    error_order: float | None = None      # order of the embedded error estimate (controller exponent)
    needs_levy_area: bool = False
    needs_score: bool = False
    evals_per_step: int = 1               # drift evaluations per accepted step (NFE budgets)
    suggest: dict[str, str] = {}          # noise type -> a solver that handles it

    def check(self, problem) -> None:
        """Refuse ``problem`` if this solver cannot solve it, naming one that can."""
        name = type(problem).__name__
        if self.kind == "ode" and is_sde(problem):
            raise SolverError(
                f"solver {self.name!r} integrates ODEs but {name} is an SDE (it has a diffusion); "
                "use an SDE solver such as 'euler_maruyama' or 'adaptive_em'")
        if self.kind == "sde" and not is_sde(problem):
            raise SolverError(
                f"solver {self.name!r} integrates SDEs but {name} is an ODE; "
                "use an ODE solver such as 'rk4' or 'dopri5'")
        if self.kind == "sde" and problem.noise_type not in self.noise_types:
            other = self.suggest.get(problem.noise_type, "euler_maruyama")
            raise SolverError(
                f"solver {self.name!r} supports noise types {list(self.noise_types)} but {name} has "
                f"noise_type={problem.noise_type!r}; use {other!r} instead")
        if self.needs_score and not callable(getattr(problem, "score", None)):
            raise SolverError(
                f"solver {self.name!r} needs the problem to offer score(t, x) (the gradient of the "
                f"log-density of its marginal), and {name} does not define it")

    def init(self, problem, t0: torch.Tensor, x0: torch.Tensor) -> Any:
        """The state carried into the first step (``None`` unless the method keeps some)."""
        return None

    def initial_derivative(self, state: Any) -> torch.Tensor | None:
        """``f(t0, x0)`` when the state ``init`` returned carries it (a first-same-as-last method),
        so that the controller's initial step reuses it; ``None`` otherwise."""
        return None

    def step(self, problem, t0: torch.Tensor, t1: torch.Tensor, x0: torch.Tensor,
             increment: Increment | None, state: Any):
        raise NotImplementedError

    def describe(self) -> dict:
        """Name, kind and declared capabilities, as listed by :func:`sdekit.solvers.available`."""
        return {"name": self.name, "kind": self.kind, "order": self.order,
                "strong_order": self.strong_order, "weak_order": self.weak_order,
                "noise_types": list(self.noise_types) if self.kind == "sde" else [],
                "adaptive": self.adaptive, "evals_per_step": self.evals_per_step}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
