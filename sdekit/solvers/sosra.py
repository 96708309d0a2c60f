r"""SOSRA: the stability-optimized SRA method of Rackauckas & Nie (2018), for additive noise.

A three-stage method in Rößler's SRA form (:mod:`sdekit.solvers.additive_srk`;
:math:`h = t_1 - t_0`, :math:`I_{(1,0)}/h = H + \Delta W/2`):

.. math::
    X_i &= x_0 + h \sum_{j<i} A^{(0)}_{ij} f_j
           + \sum_{j<i} B^{(0)}_{ij}\, g(t_0 + c^{(1)}_j h)\, \frac{I_{(1,0)}}{h},
    \qquad f_i = f(t_0 + c^{(0)}_i h, X_i), \\
    x_1 &= x_0 + h \sum_i \alpha_i f_i
           + \sum_i g(t_0 + c^{(1)}_i h) \Bigl(\beta^{(1)}_i \Delta W + \beta^{(2)}_i \frac{I_{(1,0)}}{h}\Bigr),

with the coefficients of :data:`SOSRA_TABLEAU` (16 significant digits, from StochasticDiffEq.jl),
chosen by Rackauckas & Nie to satisfy Rößler's order conditions for strong order 1.5 while
maximising the stability region in the drift (for pathwise stiff problems at loose tolerances).

Error estimate: the natural embedding of Rackauckas & Nie (2017, §3), the strong order 1.0
solution with the :math:`I_{(1,0)}` update terms dropped and Euler's drift :math:`h f_1`:

.. math:: e = h \bigl((\alpha_1 - 1) f_1 + \alpha_2 f_2 + \alpha_3 f_3\bigr)
          + \sum_i \beta^{(2)}_i g(t_0 + c^{(1)}_i h) \frac{I_{(1,0)}}{h}

(no extra drift evaluation; see :mod:`sdekit.solvers.sra3` for the deviation from
StochasticDiffEq.jl's drift part :math:`h \sum_i f_i`).

Strong order 1.5 for additive noise; weak order 2 (StochasticDiffEq.jl's ``SOSRA``); 3 drift and
3 diffusion evaluations per step. Additive noise only; needs the space-time Lévy area. Adaptive
(``rtol``/``atol``; ``error_order = 1``) or fixed-step.
Reference: C. Rackauckas & Q. Nie, "Stability-optimized high order methods and stiffness detection
for pathwise stiff stochastic differential equations", arXiv:1804.04344 (2018; IEEE HPEC 2020),
SOSRA;
coefficients from StochasticDiffEq.jl ``src/tableaus.jl``, ``constructSOSRA``.
"""
from __future__ import annotations

from .additive_srk import AdditiveSRK, AdditiveSRKTableau

SOSRA_TABLEAU = AdditiveSRKTableau.from_rossler(
    c0=(0.0, 0.6923962376159507, 1.0),
    c1=(0.0, 0.041248171110700504, 1.0),
    A0=((0.0, 0.0, 0.0),
        (0.6923962376159507, 0.0, 0.0),
        (-3.1609142252828395, 4.1609142252828395, 0.0)),
    B0=((0.0, 0.0, 0.0),
        (1.3371632704399763, 0.0, 0.0),
        (1.442371048468624, 1.8632741501139225, 0.0)),
    alpha=(0.2889874966892885, 0.6859880440839937, 0.025024459226717772),
    beta1=(-16.792534242221663, 17.514995785380226, 0.27753845684143835),
    beta2=(0.4237535769069274, 0.6010381474428539, -1.0247917243497813),
    alpha_embedded=(1.0, 0.0, 0.0),
)


class SOSRA(AdditiveSRK):
    """Rackauckas & Nie's SOSRA (see the module docstring). Strong order 1.5, weak 2; additive
    noise; adaptive."""

    name, strong_order, weak_order = "sosra", 1.5, 2.0
    tableau = SOSRA_TABLEAU
