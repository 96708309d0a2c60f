r"""SRA1: Rößler's stochastic Runge–Kutta method for additive noise.

For :math:`dx = f(t, x)\,dt + g(t)\,dW` with :math:`h = t_1 - t_0`, :math:`\Delta W = W(t_1) - W(t_0)`
and :math:`\Delta Z = \int_{t_0}^{t_1} (W_s - W_{t_0})\, ds = h\,(H + \Delta W / 2)` (``H`` the
space-time Lévy area of the increment):

.. math::
    \tilde x = x_0 + \tfrac34 f(t_0, x_0)\, h + \tfrac32\, g(t_1)\, \frac{\Delta Z}{h}, \\
    x_1 = x_0 + \bigl(\tfrac13 f(t_0, x_0) + \tfrac23 f(t_0 + \tfrac34 h, \tilde x)\bigr) h
          + g(t_1) \Bigl(\Delta W - \frac{\Delta Z}{h}\Bigr) + g(t_0)\, \frac{\Delta Z}{h}.

This is the tableau SRA1 (:math:`\alpha = (1/3, 2/3)`, :math:`c^{(0)} = (0, 3/4)`,
:math:`c^{(1)} = (1, 0)`, :math:`A^{(0)}_{21} = 3/4`, :math:`B^{(0)}_{21} = 3/2`,
:math:`\beta^{(1)} = (1, 0)`, :math:`\beta^{(2)} = (-1, 1)`) with
:math:`I_{(1,0)} = \Delta Z` as in torchsde's ``srk.py``.

Strong order 1.5 and weak order 2.0 for additive noise (deterministic order 2). Noise type:
additive only — for diagonal or scalar noise use ``milstein``, for general noise
``euler_maruyama``. Needs the space-time Lévy area (``needs_levy_area``).
Reference: A. Rößler, "Runge–Kutta methods for the strong approximation of solutions of stochastic
differential equations", SIAM J. Numer. Anal. 48(3) (2010), 922–952, Table 5.1 (SRA1).
"""
from __future__ import annotations

from .base import Solver


class SRA1(Solver):
    """Rößler's SRA1 (see the module docstring). Strong order 1.5, weak 2.0; additive noise."""

    name, kind, strong_order, weak_order = "sra1", "sde", 1.5, 2.0
    noise_types = ("additive",)
    suggest = {"diagonal": "milstein", "scalar": "milstein", "general": "euler_maruyama"}
    needs_levy_area = True
    evals_per_step = 2

    def step(self, problem, t0, t1, x0, increment, state):
        h, dW, H = increment.dt, increment.dW, increment.H
        if H is None:
            raise ValueError("sra1 needs the space-time Lévy area H of each increment; the Brownian "
                             "source returned none (build it with levy_area=True)")
        dZ_over_h = H + 0.5 * dW                      # \Delta Z / h
        f0 = problem.drift(t0, x0)
        g0 = problem.diffusion(t0, x0)
        g1 = problem.diffusion(t1, x0)
        x_stage = x0 + 0.75 * f0 * h + 1.5 * g1 * dZ_over_h
        f1 = problem.drift(t0 + 0.75 * (t1 - t0), x_stage)
        x1 = x0 + (f0 / 3 + 2 * f1 / 3) * h + g1 * (dW - dZ_over_h) + g0 * dZ_over_h
        return x1, None, None
