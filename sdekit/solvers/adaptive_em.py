r"""Adaptive Euler–Maruyama: an embedded pair of Euler–Maruyama and an Itô stochastic Heun step.

With :math:`h = t_1 - t_0`, :math:`f_0 = f(t_0, x_0)`, :math:`g_0 = g(t_0, x_0)` and the increment
:math:`\Delta W` over :math:`[t_0, t_1]`:

.. math::
    \bar x = x_0 + f_0 h + g_0\, \Delta W \qquad \text{(Euler–Maruyama)}, \\
    \hat x = x_0 + \tfrac12 \bigl(f_0 + f(t_1, \bar x)\bigr) h + g_0\, \Delta W
             + \bigl(g(t_0, x_0 + f_0 h + g_0 \sqrt h) - g_0\bigr) \frac{\Delta W^2 - h}{2\sqrt h},

the improved-Euler (Heun) drift plus the derivative-free Milstein term of Kloeden & Platen (1992,
eq. 11.1.5), which keeps :math:`\hat x` consistent with the Itô SDE (a plain stochastic Heun step
would converge to the Stratonovich solution under multiplicative noise). The local error estimate
is :math:`\hat x - \bar x`, and :math:`\hat x` is propagated (local extrapolation, as the
"Gotta Go Fast" sampler does: Jolicoeur-Martineau et al. 2021, Algorithm 1). For additive noise the
Milstein term vanishes and the pair is exactly Gotta Go Fast's Euler/improved-Euler pair with the
noise :math:`g_0 \Delta W`.

Orders of the propagated solution: strong 1.0 for diagonal, scalar and additive noise, weak 1.0.
The estimate is :math:`O(h)` (mean-square) under multiplicative noise and :math:`O(h^{3/2})` under
additive noise; ``error_order = 0.5`` sets the controller's exponent between the two. General
noise is refused (the Milstein term would need Lévy areas): use ``euler_maruyama`` with fixed steps.
:func:`sdekit.solve` queries one Brownian tree for every attempted interval, so rejected and retried
steps see the same Brownian path (no bias from rejections).
"""
from __future__ import annotations

from ..problems import elementwise_increment
from .base import Solver
from .milstein import finite_difference_term


class AdaptiveEulerMaruyama(Solver):
    """Embedded Euler–Maruyama / Itô–Heun pair for ``rtol``/``atol`` solves (see the module docstring)."""

    name, kind, strong_order, weak_order = "adaptive_em", "sde", 1.0, 1.0
    noise_types = ("diagonal", "scalar", "additive")
    suggest = {"general": "euler_maruyama"}
    adaptive = True
    error_order = 0.5
    evals_per_step = 2

    def step(self, problem, t0, t1, x0, increment, state):
        h = increment.dt
        dW = elementwise_increment(problem.noise_type, increment.dW, x0)
        f0 = problem.drift(t0, x0)
        g0 = problem.diffusion(t0, x0)
        noise = g0 * dW
        x_euler = x0 + f0 * h + noise
        f1 = problem.drift(t1, x_euler)
        correction = 0.5 * (f1 - f0) * h
        if problem.noise_type != "additive":
            correction = correction + finite_difference_term(problem, t0, x0, f0, g0, h, dW)
        return x_euler + correction, correction, None
