r"""iPNDM, the improved pseudo numerical method (Zhang & Chen, *Fast Sampling of Diffusion Models
with Exponential Integrator*, ICLR 2023, arXiv:2204.13902; the ``ipndm_sampler`` and
``ipndm_v_sampler`` of zju-pi/diff-sampler, ``diff-solvers-main/solvers.py``): Adams–Bashforth on
the noise-prediction ODE in the VE variable, for a general marginal.

With :math:`y = x/\alpha` and :math:`\tilde\sigma = \sigma/\alpha = e^{-\lambda}`, any
:math:`(\alpha, \sigma)` probability-flow ODE is :math:`dy/d\tilde\sigma = \hat\epsilon(t, \alpha
y)` (Song et al. 2021 and Karras et al. 2022, eq. 4: :math:`(y - D)/\tilde\sigma = \hat\epsilon`).
Step ``i`` from :math:`\tilde\sigma_i` to :math:`\tilde\sigma_{i+1}` with the current and
:math:`q - 1` past noise predictions :math:`\epsilon_{i-k}` (one score call per step),
:math:`q = \min(\text{order}, i + 1)` (the lower-order warm start):

.. math::
    y_{i+1} = y_i + (\tilde\sigma_{i+1} - \tilde\sigma_i) \sum_{k=0}^{q-1} c^{(q)}_k \epsilon_{i-k},
    \qquad x_{i+1} = \alpha_{i+1} y_{i+1}.

``variable_step=False`` (default; iPNDM as published, diff-sampler's ``ipndm``, diffusers'
``IPNDMScheduler``): the constant Adams–Bashforth coefficients
:math:`c^{(1)} = (1)`, :math:`c^{(2)} = (3, -1)/2`, :math:`c^{(3)} = (23, -16, 5)/12`,
:math:`c^{(4)} = (55, -59, 37, -9)/24`. They are the Adams–Bashforth method of order ``q`` for
equal steps in :math:`\tilde\sigma` (there they equal the variable-step ones below to rounding);
on any other grid (``logsnr``, ``karras``, ...) the step ratios vary and the global order drops to
2 for ``order >= 2`` (measured in ``tests/plugins/test_few_step_samplers.py`` on the logsnr grid:
1, 2, 2, 2 for ``order`` 1–4). Zhou et al. (diff-sampler's README table) find these constant
coefficients better at 5–10 steps than the variable-step ones on EDM models.

``variable_step=True`` (diff-sampler's ``ipndm_v``, "the variable-step version of the
Adams–Bashforth methods"): :math:`c_k = \frac{1}{\tilde\sigma_{i+1} - \tilde\sigma_i}
\int_{\tilde\sigma_i}^{\tilde\sigma_{i+1}} \ell_k(s)\, ds` with the Lagrange basis :math:`\ell_k`
through :math:`\tilde\sigma_i, \dots, \tilde\sigma_{i-q+1}` (:mod:`._multistep`): global order
``order`` on any smooth grid (measured 1, 2, 3, 4 on the logsnr grid). diff-sampler's closed forms
agree at order 2; at order 3 they misplace a parenthesis (``(1 - a b)/2`` for ``(1 - a) b / 2``,
the same only on equal steps) and their order-4 coefficients are not Adams–Bashforth's even on
equal steps (57/24 for :math:`\epsilon_i` instead of 55/24); the tests show both.

``coefficients`` (a tensor of shape ``(steps, order)``; row ``i`` holds :math:`c_{i,0}, \dots,
c_{i,\text{order}-1}`, zero beyond the step's :math:`q` past predictions): per-step coefficients
in place of the constant ones, e.g. those :func:`~sdekit_diffusion.optimize_coefficients` learns
for a grid (the non-stationary multistep methods of Shaul et al., *Bespoke Non-Stationary Solvers
for Fast Sampling of Diffusion and Flow Models*, ICML 2024, and of S4S, Frankel et al. 2025,
restricted here to iPNDM's form). The update is the one above with :math:`c^{(q)}_k` replaced by
:math:`c_{i,k}`; a row summing to 1 keeps the step exact for a constant noise prediction.

``order`` 1–4 (default 4, the paper's iPNDM); ``order = 1`` is DDIM. ``afs=True``: the analytical
first step of diff-sampler (:func:`._common.analytic_score`): :math:`\epsilon_0` is the noise
prediction of standard normal data, :math:`\sigma_0 x/(\alpha_0^2 + \sigma_0^2)` at the initial state :math:`x`, not a score
call, so a grid of ``N`` steps costs ``N - 1`` calls. The grid needs at least 4
steps whatever the order (the registry records one ``min_steps``, the default order's). With
``final_step="zero"`` the last step is the first-order one to :math:`\tilde\sigma = 0`,
:math:`x = \hat x_0 = (x - \sigma\epsilon)/\alpha` (the Euler step to 0 in :math:`\tilde\sigma`).
"""
from __future__ import annotations

import torch

from ._common import Context, afs_saved_calls, check_afs, schedule
from ._multistep import adams_weights, check_order, coefficient_grid, eps_multistep
from .registry import register

MAX_ORDER = 4
ADAMS_BASHFORTH = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12),
                   (55 / 24, -59 / 24, 37 / 24, -9 / 24))   # constant-step coefficients, q = 1..4


def adams_bashforth(steps: int, order: int) -> torch.Tensor:
    """``(steps, order)`` float64: iPNDM's constant coefficients with the lower-order warm start
    (row ``i`` those of order ``min(order, i + 1)``, zero-padded): what ``coefficients=None``
    means, and where :func:`~sdekit_diffusion.optimize_coefficients` starts."""
    table = torch.zeros(steps, order, dtype=torch.float64)
    for i in range(steps):
        q = min(order, i + 1)
        table[i, :q] = torch.tensor(ADAMS_BASHFORTH[q - 1], dtype=torch.float64)
    return table


def ipndm_weights(sigma_ve: torch.Tensor, step_orders: list[int],
                  variable_step: bool, coefficients: torch.Tensor | None = None) -> torch.Tensor:
    r"""``(N, max order)``: row ``i`` holds :math:`(\tilde\sigma_{i+1} - \tilde\sigma_i) c_k`
    (module docstring) for the noise predictions :math:`\epsilon_i, \epsilon_{i-1}, \dots`
    (``step_orders[i] = min(order, i + 1)``); ``coefficients`` (checked by
    :func:`check_coefficients`) replaces the :math:`c_k`."""
    if variable_step:
        return adams_weights(sigma_ve, step_orders, lambda s: s)
    if coefficients is None:
        coefficients = adams_bashforth(len(step_orders), max(step_orders))
    return (sigma_ve[1:] - sigma_ve[:-1])[:, None] * coefficients.to(sigma_ve)


def check_coefficients(coefficients, steps: int, order: int) -> torch.Tensor:
    """``coefficients`` as a float64 CPU tensor (keeping its autograd graph), or ValueError /
    TypeError naming what is wrong: shape ``(steps, order)``, finite, zero where step ``i`` has no
    past prediction yet (column ``k > i``)."""
    if not isinstance(coefficients, torch.Tensor) or not coefficients.is_floating_point():
        raise TypeError("ipndm: coefficients must be a floating-point tensor of shape (steps, order), "
                        f"got {type(coefficients).__name__}")
    if tuple(coefficients.shape) != (steps, order):
        raise ValueError(f"ipndm: coefficients has shape {tuple(coefficients.shape)}; a {steps}-step "
                         f"grid with order={order} needs ({steps}, {order}) (row i: the weights of "
                         "eps_i, eps_(i-1), ...); pass the grid they were made for and their order")
    values = coefficients.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(values).all()):
        raise ValueError("ipndm: coefficients has non-finite entries")
    history = torch.arange(order)[None, :] > torch.arange(steps)[:, None]
    if bool(values[history].ne(0).any()):
        raise ValueError("ipndm: coefficients[i, k] must be 0 for k > i: step i has only i + 1 noise "
                         "predictions")
    return coefficients.to(device="cpu", dtype=torch.float64)


@register("ipndm", min_steps=MAX_ORDER, order=MAX_ORDER, data_prediction=True,
          saved_calls=afs_saved_calls)
def ipndm(ctx: Context, x: torch.Tensor, ts: torch.Tensor, order: int = MAX_ORDER,
          variable_step: bool = False, afs: bool = False,
          coefficients: torch.Tensor | None = None) -> torch.Tensor:
    """iPNDM of ``order`` 1–4 (module docstring); one score call per step (one fewer in all with
    ``afs``); ``coefficients``: per-step ones (``(steps, order)``) instead of Adams–Bashforth's."""
    steps = len(ts) - 1
    check_order("ipndm", order, MAX_ORDER)
    afs = check_afs("ipndm", afs)
    if variable_step not in (True, False):
        raise ValueError(f"variable_step must be True or False, got {variable_step!r}")
    if coefficients is not None:
        if variable_step:
            raise ValueError("ipndm: give coefficients or variable_step=True, not both (the "
                             "coefficients replace the step's Adams-Bashforth ones)")
        coefficients = check_coefficients(coefficients, steps, order)
    alpha, sigma, lam = schedule(ctx.sde, coefficient_grid(ts))
    step_orders = [min(order, i + 1) for i in range(steps)]
    weights = alpha[1:, None] * ipndm_weights(torch.exp(-lam), step_orders, variable_step, coefficients)
    return eps_multistep(ctx, x, ts, alpha, sigma, weights, step_orders, afs)
