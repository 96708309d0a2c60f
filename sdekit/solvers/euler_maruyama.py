r"""Euler–Maruyama, the simplest SDE scheme.

.. math:: x_1 = x_0 + f(t_0, x_0)\, h + g(t_0, x_0)\, \Delta W

Strong order 0.5 in general, 1.0 for additive noise; weak order 1. All noise types.
Reference: Kloeden & Platen, *Numerical Solution of Stochastic Differential Equations* (1992), §10.2.
"""
from __future__ import annotations

from ..problems import apply_diffusion
from .base import Solver


class EulerMaruyama(Solver):
    """Euler–Maruyama (see the module docstring). Strong order 0.5 (1.0 for additive noise), weak 1."""

    name, kind, strong_order, weak_order = "euler_maruyama", "sde", 0.5, 1.0

    def step(self, problem, t0, t1, x0, increment, state):
        drift = problem.drift(t0, x0)
        noise = apply_diffusion(problem.noise_type, problem.diffusion(t0, x0), increment.dW)
        return x0 + drift * increment.dt + noise, None, None
