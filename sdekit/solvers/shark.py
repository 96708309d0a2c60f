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
References: J. Foster, G. dos Reis & C. Strange, "High order splitting methods for SDEs satisfying
a commutativity condition", arXiv:2210.17543 (2023), eq. (6.1); coefficients from diffrax
``diffrax/_solver/shark.py`` (``ShARK``) and the additive step of ``diffrax/_solver/srk.py``.
"""
from __future__ import annotations

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
