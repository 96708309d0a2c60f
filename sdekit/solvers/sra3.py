r"""SRA3: Rößler's three-stage SRA method for additive noise, with deterministic order 3.

In Rößler's form (:mod:`sdekit.solvers.additive_srk`; :math:`h = t_1 - t_0`,
:math:`I_{(1,0)}/h = H + \Delta W/2`, :math:`g_0 = g(t_0)`, :math:`g_1 = g(t_1)`):

.. math::
    X_1 &= x_0, \qquad X_2 = x_0 + h f_1, \qquad
    X_3 = x_0 + \tfrac h4 (f_1 + f_2) + \bigl(g_1 + \tfrac12 g_0\bigr) \frac{I_{(1,0)}}{h}, \\
    f_1 &= f(t_0, X_1), \quad f_2 = f(t_1, X_2), \quad f_3 = f(t_0 + \tfrac h2, X_3), \\
    x_1 &= x_0 + h \bigl(\tfrac16 f_1 + \tfrac16 f_2 + \tfrac23 f_3\bigr) + g_1 \Delta W
          + (g_0 - g_1) \frac{I_{(1,0)}}{h},

i.e. :math:`c^{(0)} = (0, 1, 1/2)`, :math:`c^{(1)} = (1, 0, 0)`, :math:`A^{(0)}_{21} = 1`,
:math:`A^{(0)}_{31} = A^{(0)}_{32} = 1/4`, :math:`B^{(0)}_{31} = 1`, :math:`B^{(0)}_{32} = 1/2`,
:math:`\alpha = (1/6, 1/6, 2/3)`, :math:`\beta^{(1)} = (1, 0, 0)`, :math:`\beta^{(2)} = (-1, 1, 0)`
(the drift part is the third-order SSP Runge–Kutta method of Shu & Osher).

Error estimate: the natural embedding of Rackauckas & Nie (2017, §3) drops the
:math:`I_{(1,0)}` terms of the update, and Euler's drift :math:`h f_1` replaces the order-3 drift:

.. math:: e = h\bigl(-\tfrac56 f_1 + \tfrac16 f_2 + \tfrac23 f_3\bigr) + (g_0 - g_1)\frac{I_{(1,0)}}{h},

the difference to a strong order 1.0 solution from the same stages (no extra drift evaluation).
Deviation: StochasticDiffEq.jl's ``perform_step`` for these tableaux measures the drift part as
:math:`h (f_1 + f_2 + f_3)`, which does not vanish as :math:`h \to 0`; the difference of two
consistent drifts here is :math:`O(h^{3/2})` (noise in the stages) to :math:`O(h^2)`.

Strong order 1.5 for additive noise; weak order 3 (StochasticDiffEq.jl's ``SRA3``); 3 drift and 2
diffusion evaluations per step. Additive noise only; needs the space-time Lévy area. Adaptive
(``rtol``/``atol``; ``error_order = 1``) or fixed-step.
References: A. Rößler, SIAM J. Numer. Anal. 48(3) (2010), 922–952 (SRA3); C. Rackauckas & Q. Nie,
"Stability-optimized high order methods and stiffness detection for pathwise stiff stochastic
differential equations", arXiv:1804.04344 (2018; IEEE HPEC 2020), where SRA3 is recommended below
tolerances of about 1e-4; coefficients from StochasticDiffEq.jl ``src/tableaus.jl``,
``constructSRA3``.
"""
from __future__ import annotations

from .additive_srk import AdditiveSRK, AdditiveSRKTableau

SRA3_TABLEAU = AdditiveSRKTableau.from_rossler(
    c0=(0.0, 1.0, 1 / 2),
    c1=(1.0, 0.0, 0.0),
    A0=((0.0, 0.0, 0.0),
        (1.0, 0.0, 0.0),
        (1 / 4, 1 / 4, 0.0)),
    B0=((0.0, 0.0, 0.0),
        (0.0, 0.0, 0.0),
        (1.0, 1 / 2, 0.0)),
    alpha=(1 / 6, 1 / 6, 2 / 3),
    beta1=(1.0, 0.0, 0.0),
    beta2=(-1.0, 1.0, 0.0),
    alpha_embedded=(1.0, 0.0, 0.0),
)


class SRA3(AdditiveSRK):
    """Rößler's SRA3 (see the module docstring). Strong order 1.5, weak 3; additive noise; adaptive."""

    name, strong_order, weak_order = "sra3", 1.5, 3.0
    tableau = SRA3_TABLEAU
