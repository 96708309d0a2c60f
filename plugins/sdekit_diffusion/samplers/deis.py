r"""DEIS-tAB, the diffusion exponential integrator sampler with Adams–Bashforth in time (Zhang &
Chen, *Fast Sampling of Diffusion Models with Exponential Integrator*, ICLR 2023, arXiv:2204.13902;
the ``deis_sampler`` with ``deis_mode="tab"`` of zju-pi/diff-sampler, coefficients by its
``get_deis_coeff_list``), for a general marginal.

With :math:`y = x/\alpha` and :math:`\tilde\sigma = \sigma/\alpha = e^{-\lambda}` the
probability-flow ODE is :math:`dy = \hat\epsilon\, d\tilde\sigma` (the exponential integrator's
exact form: the linear part is absorbed by :math:`y`). tAB fits the noise prediction by the
polynomial in :math:`t` through the current and :math:`q - 1` past values and integrates it
exactly against :math:`d\tilde\sigma`; step ``i`` from :math:`t_i` to :math:`t_{i+1}`, :math:`q =
\min(\text{order}, i + 1)` (lower-order warm start), one score call per step:

.. math::
    y_{i+1} = y_i + \sum_{k=0}^{q-1} C_{ik}\, \epsilon_{i-k}, \qquad
    C_{ik} = \int_{t_i}^{t_{i+1}} \ell_k(\tau)\, \frac{d\tilde\sigma}{d\tau}\, d\tau,
    \qquad x_{i+1} = \alpha_{i+1} y_{i+1},

:math:`\ell_k` the Lagrange basis through :math:`t_i, t_{i-1}, \dots, t_{i-q+1}` (the paper's
tAB update in the VE form; diff-sampler integrates :math:`d\tilde\sigma/dt` of EDM's VP schedule
with a 10,000-point Riemann sum, here the integral is by parts and Gauss–Legendre quadrature on
the schedule's own :math:`\tilde\sigma(t)`, :mod:`._multistep`, once per grid). ``t`` is the SDE's
own time (the DEIS paper's VP time for ``VPSDE``; :math:`t = (n + 1)/N` on discrete tables).
``order`` 1–3 (default 3, DEIS-tAB3 of the paper and diff-sampler's tables; ``order = 1`` is DDIM;
at least 3 steps whatever the order, the registry's ``min_steps``);
global order ``order`` (measured in ``tests/plugins/test_few_step_samplers.py``).

This is not diffusers' ``DEISMultistepScheduler``: that is the paper's :math:`\rho`AB variant
(Lagrange polynomials of the noise prediction in :math:`\log\rho = -\lambda`, integrated in
closed form against :math:`d\rho`, :math:`\rho = \tilde\sigma`), an exponential integrator in
the log-SNR; tAB interpolates in the schedule's time instead.

With ``final_step="zero"`` the last step is the first-order one to :math:`\tilde\sigma = 0`:
:math:`x = \hat x_0 = (x - \sigma\epsilon)/\alpha`.

``afs=True``: the analytical first step (:func:`._common.analytic_score`): the model output at
:math:`t_0 = t_{max}` is that of standard normal data, not a score call, so a grid of ``N`` steps
costs ``N - 1`` calls.
"""
from __future__ import annotations

import torch

from ._common import Context, afs_saved_calls, check_afs, schedule
from ._multistep import adams_weights, check_order, coefficient_grid, eps_multistep
from .registry import register

MAX_ORDER = 3


def deis_weights(sde, grid: torch.Tensor, step_orders: list[int]) -> torch.Tensor:
    r"""``(N, max order)``: :math:`C_{ik}` of the module docstring on the float64 grid."""
    return adams_weights(grid, step_orders, lambda t: torch.exp(-sde.schedule.log_snr(t)))


@register("deis", min_steps=MAX_ORDER, order=MAX_ORDER, data_prediction=True,
          saved_calls=afs_saved_calls)
def deis(ctx: Context, x: torch.Tensor, ts: torch.Tensor, order: int = MAX_ORDER,
         afs: bool = False) -> torch.Tensor:
    """DEIS-tAB of ``order`` 1–3 (module docstring); one score call per step (one fewer in all
    with ``afs``)."""
    steps = len(ts) - 1
    check_order("deis", order, MAX_ORDER)
    afs = check_afs("deis", afs)
    grid = coefficient_grid(ts)
    alpha, sigma, _ = schedule(ctx.sde, grid)
    step_orders = [min(order, i + 1) for i in range(steps)]
    weights = alpha[1:, None] * deis_weights(ctx.sde, grid, step_orders)
    return eps_multistep(ctx, x, ts, alpha, sigma, weights, step_orders, afs)
