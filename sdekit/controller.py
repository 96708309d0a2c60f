r"""Step-size control for adaptive solvers.

The error of a step is measured as a scaled RMS norm (Hairer, Nørsett & Wanner 1993, §II.4):

.. math:: \mathrm{err} = \sqrt{\tfrac1n \textstyle\sum_i \bigl(e_i / (\mathrm{atol} +
          \mathrm{rtol}\,\max(|x_{0,i}|, |x_{1,i}|))\bigr)^2}

and a step is accepted when :math:`\mathrm{err} \le 1`. The next step follows the PI controller of
Gustafsson (1991) as given by Hairer & Wanner (1996, §IV.2, eq. 2.43c):
:math:`h_{new} = h \cdot \mathrm{safety} \cdot \mathrm{err}_n^{-\beta_1/k} \mathrm{err}_{n-1}^{\beta_2/k}`
with :math:`k` the order of the error estimate plus one, :math:`\beta_1 = 0.7`, :math:`\beta_2 = 0.4`,
the factor clipped to ``[0.2, 10]`` (to ``[0.2, 1]`` after a rejection).
"""
from __future__ import annotations

import torch


def error_ratio(error: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, rtol: float, atol: float,
                per_sample: bool = False) -> torch.Tensor:
    """Scaled RMS norm of ``error`` (over all elements, or per sample when ``per_sample``)."""
    scale = atol + rtol * torch.maximum(x0.abs(), x1.abs())
    ratio = (error / scale) ** 2
    if per_sample:
        return ratio.flatten(1).mean(1).sqrt()
    return ratio.mean().sqrt()


class PIController:
    """PI step-size controller (see the module docstring)."""

    def __init__(self, error_order: float, safety: float = 0.9, beta1: float = 0.7,
                 beta2: float = 0.4, factor_min: float = 0.2, factor_max: float = 10.0):
        k = error_order + 1.0
        self.exp1, self.exp2 = beta1 / k, beta2 / k
        self.safety, self.factor_min, self.factor_max = safety, factor_min, factor_max
        self.previous = None

    def next_step(self, h: torch.Tensor, ratio: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
        """The next step size after a step of size ``h`` with error ``ratio`` (tensors; no sync)."""
        ratio = ratio.clamp_min(1e-10)
        factor = self.safety * ratio ** (-self.exp1)
        if self.previous is not None:
            factor = factor * self.previous ** self.exp2
        factor = factor.clamp(self.factor_min, self.factor_max)
        factor = torch.where(accepted, factor, factor.clamp_max(1.0))
        self.previous = torch.where(accepted, ratio, self.previous if self.previous is not None
                                    else torch.ones_like(ratio))
        return h * factor
