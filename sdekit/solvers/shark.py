r"""ShARK: the shifted additive-noise Runge–Kutta method of Foster, dos Reis & Strange, for additive noise.

With :math:`h = t_1 - t_0`, the increment :math:`W` and its space-time Lévy area :math:`H`,
:math:`g_0 = g(t_0)`, :math:`g_1 = g(t_1)`:

.. math::
    X_1 &= x_0 + g_0 H, \qquad f_1 = f(t_0, X_1), \\
    X_2 &= x_0 + \tfrac56 h f_1 + g_0 \bigl(\tfrac56 W + H\bigr), \qquad
          f_2 = f(t_0 + \tfrac56 h, X_2), \\
    x_1 &= x_0 + h \bigl(\tfrac25 f_1 + \tfrac35 f_2\bigr) + g_0 W + (g_1 - g_0)\bigl(\tfrac12 W - H\bigr),

the last term correcting for a time-dependent :math:`g` (diffrax's additive-noise SRK). The
stages are "shifted" by the Lévy area so that two drift evaluations reach strong order 1.5.

Error estimate (diffrax's ``b_error``): :math:`e = \tfrac35 h (f_2 - f_1)`, the difference to
:math:`x_0 + h f_1 + \dots`, the Euler drift at the shifted point :math:`X_1` (strong order 1.0,
no extra drift evaluation).

Strong order 1.5 for additive noise; 2 drift and 2 diffusion evaluations per step. (ShARK is a
Stratonovich method; for additive noise Itô and Stratonovich solutions coincide.) Additive noise
only; needs the space-time Lévy area, whose convention in diffrax,
:math:`H = \frac1h \int_{t_0}^{t_1} (W_r - W_{t_0} - \frac{r - t_0}{h} W)\,dr`, is sdekit's.
Adaptive (``rtol``/``atol``; ``error_order = 1``, diffrax's error order 2 = ``error_order + 1``) or
fixed-step.
:class:`ShARKT` (``shark_t``) moves the stage diffusions to :math:`t_0 - h/2` and :math:`t_0 + h/3`
for a time-dependent :math:`g`, which shrinks ShARK's bias in law on diffusion reverse SDEs at
coarse steps (measured in its docstring).
References: J. Foster, G. dos Reis & C. Strange, "High order splitting methods for SDEs satisfying
a commutativity condition", arXiv:2210.17543 (2023), eq. (6.1); coefficients from diffrax
``diffrax/_solver/shark.py`` (``ShARK``) and the additive step of ``diffrax/_solver/srk.py``.
"""
from __future__ import annotations

from dataclasses import replace

from .additive_srk import AdditiveSRK, AdditiveSRKTableau

SHARK_TABLEAU = AdditiveSRKTableau.from_diffrax(
    a=((5 / 6,),),
    b_sol=(0.4, 0.6),
    b_error=(-0.6, 0.6),
    c=(5 / 6,),
    a_w=(0.0, 5 / 6),
    a_hh=(1.0, 1.0),
    b_w=1.0,
    b_hh=0.0,
)


class ShARK(AdditiveSRK):
    """Foster, dos Reis & Strange's ShARK (see the module docstring). Strong order 1.5; additive
    noise; adaptive."""

    name, strong_order = "shark", 1.5
    tableau = SHARK_TABLEAU


# Stage diffusions at t0 - h/2 (stage 1) and t0 + h/3 (stage 2), linear in g0, g1: class ShARKT.
SHARK_T_TABLEAU = replace(SHARK_TABLEAU, stage_w=((0.0, 0.0), (5 / 9, 5 / 18)),
                          stage_h=((1.5, -0.5), (2 / 3, 1 / 3)))


class ShARKT(ShARK):
    r"""ShARK with its stage diffusions placed for a time-dependent :math:`g` (``shark_t``):
    :math:`X_1 = x_0 + g(t_0 - \tfrac h2) H`, :math:`X_2 = x_0 + \tfrac56 h f_1 +
    g(t_0 + \tfrac h3)(\tfrac56 W + H)`, with :math:`g(t_0 + \theta h) = (1 - \theta) g_0 +
    \theta g_1` (no extra diffusion evaluation); the update, the error estimate and the cost are
    :class:`ShARK`'s.

    Why: for the linear test equation :math:`dx = -\lambda x\, dt + g(t)\, dW` with
    :math:`g(t_0 + r) = g_0 + g' r`, the exact noise of a step,
    :math:`\int_0^h e^{-\lambda (h - r)} g(t_0 + r)\, dW_r`, has the components
    :math:`W (g_0 + \tfrac12 g' h - \tfrac12 \lambda g_0 h - \tfrac16 \lambda g' h^2
    + \tfrac16 \lambda^2 g_0 h^2) + H (-g' h - \lambda g_0 h + \tfrac12 \lambda^2 g_0 h^2)`
    plus a part orthogonal to both. With its stage diffusions at :math:`t_0 + \theta_i h`, ShARK's
    step gives :math:`W (g_0 + \tfrac12 g' h - \tfrac12 \lambda g_0 h - \tfrac12 \theta_2
    \lambda g' h^2) + H (-g' h - \lambda g_0 h - (0.4 \theta_1 + 0.6 \theta_2) \lambda g' h^2
    + \tfrac12 \lambda^2 g_0 h^2)`: ShARK's :math:`\theta = (0, 0)` misses the
    :math:`\lambda g' h^2` term of :math:`W`; :math:`\theta_2 = \tfrac13` gets it and
    :math:`\theta_1 = -\tfrac12` keeps :math:`H` right to this order
    (:math:`0.4 \theta_1 + 0.6 \theta_2 = 0`); only :math:`\tfrac16 \lambda^2 g_0 h^2 W` stays
    missing, as for constant :math:`g` (``tests/test_srk.py`` checks both components). These
    terms lie beyond strong order 1.5 (the change is :math:`O(h^{3/2})` in a stage; the strong
    order stays 1.5) but they bias the law: a diffusion model's reverse SDE has
    :math:`g = \sqrt{\beta(t)}` changing fast where the score is stiff (small ``t``).

    Measured on ``benchmarks/adaptive_sde.py``'s problem (the VP reverse SDE of the 8-d mixture,
    2000 paths, uniform grids, E log p gap against SRA1 with 4096 steps on the same path): ShARK
    +0.110, +0.045, +0.0038 at 50, 75, 200 steps; ``shark_t`` -0.024, -0.012, -0.0043.
    """

    name = "shark_t"
    tableau = SHARK_T_TABLEAU
