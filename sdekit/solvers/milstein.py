r"""The Milstein scheme for diagonal and scalar (commutative) noise.

With :math:`h = t_1 - t_0`, :math:`f = f(t_0, x_0)`, :math:`g = g(t_0, x_0)` and
:math:`\Delta W = W(t_1) - W(t_0)`:

.. math::
    x_1 = x_0 + f h + g\, \Delta W + \tfrac12 (g' g)\, (\Delta W^2 - h),

where :math:`g' g` is the directional derivative :math:`J_g(x_0)\, g(t_0, x_0)` (for diagonal noise
each :math:`g_i` depends on :math:`x_i` only, so this is :math:`g_i\, \partial_i g_i`; for scalar noise
— one Brownian motion per sample — it is the full Jacobian-vector product). By default the
derivative is replaced by a difference at the support value
:math:`\bar x = x_0 + f h + g \sqrt h` (Kloeden & Platen 1992, §11.1, eq. 11.1.5):

.. math::
    x_1 = x_0 + f h + g\, \Delta W + \bigl(g(t_0, \bar x) - g\bigr)\,
          \frac{\Delta W^2 - h}{2 \sqrt h};

``derivative="jvp"`` computes :math:`J_g g` exactly by forward-mode automatic differentiation
(:mod:`torch.autograd.forward_ad`) instead.

Strong order 1.0, weak order 1.0. Noise types: diagonal, scalar, additive (where it is
Euler–Maruyama). General (non-commutative) noise would need Lévy areas: use ``euler_maruyama``.
Reference: Kloeden & Platen, *Numerical Solution of Stochastic Differential Equations* (1992),
§10.3 (eq. 10.3.3) and §11.1.
"""
from __future__ import annotations

import torch.autograd.forward_ad as forward_ad

from ..problems import elementwise_increment
from .base import Solver


def finite_difference_term(problem, t0, x0, f, g, h, dW):
    r"""Kloeden & Platen's derivative-free Milstein term (eq. 11.1.5),
    :math:`(g(t_0, x_0 + f h + g\sqrt h) - g)(\Delta W^2 - h)/(2\sqrt h)`, with ``dW`` elementwise."""
    sqrt_h = h.sqrt()
    g_bar = problem.diffusion(t0, x0 + f * h + g * sqrt_h)
    return (g_bar - g) * (dW * dW - h) / (2 * sqrt_h)


class Milstein(Solver):
    """Milstein (see the module docstring). Strong order 1.0, weak 1.0; diagonal/scalar/additive noise.

    Args:
        derivative: ``"finite_difference"`` (derivative-free, Kloeden & Platen eq. 11.1.5; one extra
            diffusion evaluation) or ``"jvp"`` (exact :math:`J_g g` by forward-mode autograd;
            ``diffusion`` must support forward-mode AD).
    """

    name, kind, strong_order, weak_order = "milstein", "sde", 1.0, 1.0
    noise_types = ("diagonal", "scalar", "additive")
    suggest = {"general": "euler_maruyama"}
    derivatives = ("finite_difference", "jvp")

    def __init__(self, derivative: str = "finite_difference"):
        if derivative not in self.derivatives:
            raise ValueError(f"derivative={derivative!r} is not one of {self.derivatives}")
        self.derivative = derivative

    def step(self, problem, t0, t1, x0, increment, state):
        h = increment.dt
        f = problem.drift(t0, x0)
        g = problem.diffusion(t0, x0)
        dW = elementwise_increment(problem.noise_type, increment.dW, x0)
        x1 = x0 + f * h + g * dW
        if problem.noise_type == "additive":
            return x1, None, None
        if self.derivative == "jvp":
            with forward_ad.dual_level():
                gg = forward_ad.unpack_dual(problem.diffusion(t0, forward_ad.make_dual(x0, g))).tangent
            if gg is None:  # the diffusion does not depend on x
                return x1, None, None
            return x1 + 0.5 * gg * (dW * dW - h), None, None
        return x1 + finite_difference_term(problem, t0, x0, f, g, h, dW), None, None

    def __repr__(self) -> str:
        return f"Milstein(derivative={self.derivative!r})"
