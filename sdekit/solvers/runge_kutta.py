r"""Explicit Runge–Kutta ODE solvers, each a Butcher tableau.

For a tableau :math:`(a, b, c)` with :math:`s` stages and step :math:`h = t_1 - t_0`:

.. math::
    k_i = f\bigl(t_0 + c_i h,\; x_0 + h \sum_{j<i} a_{ij} k_j\bigr), \qquad
    x_1 = x_0 + h \sum_i b_i k_i .

An embedded pair also has weights :math:`\hat b`; the local error estimate is
:math:`h \sum_i (b_i - \hat b_i) k_i`. References: Hairer, Nørsett & Wanner, *Solving Ordinary
Differential Equations I* (1993), §II.1–II.5; Dormand & Prince, J. Comput. Appl. Math. 6 (1980).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Solver


@dataclass(frozen=True)
class ButcherTableau:
    """Coefficients of an explicit Runge–Kutta method (``a`` strictly lower triangular, as rows)."""

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    b_error: tuple[float, ...] | None = None  # b - b_hat, for an embedded error estimate
    fsal: bool = False                       # last stage is f(t1, x1): reuse it as the next k_1


class ExplicitRungeKutta(Solver):
    """An explicit Runge–Kutta ODE solver defined by ``tableau`` (see the module docstring)."""

    kind = "ode"
    tableau: ButcherTableau

    @property
    def evals_per_step(self) -> int:
        """Stages per step; a first-same-as-last method reuses its last stage."""
        return len(self.tableau.c) - (1 if self.tableau.fsal else 0)

    def init(self, problem, t0, x0):
        return problem.drift(t0, x0) if self.tableau.fsal else None

    def initial_derivative(self, state):
        return state if self.tableau.fsal else None

    def step(self, problem, t0, t1, x0, increment, state):
        tab = self.tableau
        h = t1 - t0
        if h.dim() > 0:  # per-sample steps: broadcast over the state's trailing dimensions
            h = h.reshape(-1, *([1] * (x0.dim() - 1)))
        k = [state if state is not None else problem.drift(t0, x0)]
        for i in range(1, len(tab.c)):
            dx = sum(a_ij * k_j for a_ij, k_j in zip(tab.a[i], k) if a_ij != 0.0)
            k.append(problem.drift(t0 + tab.c[i] * (t1 - t0), x0 + h * dx))
        if tab.fsal:  # the last stage was evaluated at (t1, x1) with weights b
            x1 = x0 + h * sum(b_i * k_i for b_i, k_i in zip(tab.a[-1], k[:-1]) if b_i != 0.0)
        else:
            x1 = x0 + h * sum(b_i * k_i for b_i, k_i in zip(tab.b, k) if b_i != 0.0)
        error = None
        if tab.b_error is not None:
            error = h * sum(e_i * k_i for e_i, k_i in zip(tab.b_error, k) if e_i != 0.0)
        return x1, error, (k[-1] if tab.fsal else None)


class Euler(ExplicitRungeKutta):
    """Forward Euler, :math:`x_1 = x_0 + h f(t_0, x_0)`. Order 1."""

    name, order = "euler", 1
    tableau = ButcherTableau(a=((),), b=(1.0,), c=(0.0,))


class Midpoint(ExplicitRungeKutta):
    """Explicit midpoint rule, :math:`x_1 = x_0 + h f(t_0 + h/2, x_0 + h/2\\, f(t_0, x_0))`. Order 2."""

    name, order = "midpoint", 2
    tableau = ButcherTableau(a=((), (0.5,)), b=(0.0, 1.0), c=(0.0, 0.5))


class Heun(ExplicitRungeKutta):
    """Heun's method (explicit trapezoidal rule). Order 2."""

    name, order = "heun", 2
    tableau = ButcherTableau(a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0))


class RK4(ExplicitRungeKutta):
    """The classical fourth-order Runge–Kutta method (Kutta 1901). Order 4."""

    name, order = "rk4", 4
    tableau = ButcherTableau(a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
                             b=(1 / 6, 1 / 3, 1 / 3, 1 / 6), c=(0.0, 0.5, 0.5, 1.0))


_DP_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP_B_HAT = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


class Dopri5(ExplicitRungeKutta):
    """Dormand–Prince 5(4) (Dormand & Prince 1980), the method of MATLAB's ode45 and scipy's RK45.

    Order 5 with an embedded order-4 error estimate; first-same-as-last, so an accepted step costs
    6 drift evaluations. Adaptive: :func:`sdekit.solve` with ``rtol``/``atol`` drives it with a PI
    step-size controller; with ``steps`` it runs fixed steps.
    """

    name, order, adaptive, error_order = "dopri5", 5, True, 4
    tableau = ButcherTableau(
        a=((),
           (1 / 5,),
           (3 / 40, 9 / 40),
           (44 / 45, -56 / 15, 32 / 9),
           (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
           (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
           _DP_B[:6]),
        b=_DP_B,
        c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
        b_error=tuple(b - bh for b, bh in zip(_DP_B, _DP_B_HAT)),
        fsal=True)
