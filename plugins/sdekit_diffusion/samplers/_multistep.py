r"""What the multistep samplers with an ``order`` option share (:mod:`.unipc`, :mod:`.ipndm`,
:mod:`.deis`): the check of ``order``, the coefficient grid in float64, and
Adams–Bashforth weights on a non-uniform grid (:mod:`.ipndm` with variable steps, :mod:`.deis`):
integrals of the Lagrange basis polynomials through the current and past nodes.

For nodes :math:`\tau_0` (the current one), :math:`\tau_1, \dots, \tau_{K-1}` (the past ones) and
the Lagrange basis :math:`\ell_k(\tau) = \prod_{m \ne k} (\tau - \tau_m)/(\tau_k - \tau_m)`, the
weights of one step from :math:`a = \tau_0` to :math:`b` against a measure :math:`d\rho(\tau)` are

.. math::
    w_k = \int_a^b \ell_k(\tau)\, d\rho(\tau)
        = \ell_k(b)\rho(b) - \delta_{k0}\,\rho(a) - \int_a^b \rho(\tau)\, \ell_k'(\tau)\, d\tau

(integration by parts: only :math:`\rho` is evaluated, never its derivative, so piecewise-linear
schedule tables need no special care), the last integral by Gauss–Legendre quadrature with
``points`` nodes: exact for :math:`\rho(\tau) = \tau` (iPNDM's variable-step Adams–Bashforth) and,
for a smooth :math:`\rho` with 16 points, accurate to float64 rounding on the steps samplers take.
:math:`\sum_k w_k = \rho(b) - \rho(a)` exactly. Coefficients are computed once per grid, before
the sampling loop.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

GAUSS_POINTS = 16


def check_order(name: str, order, max_order: int) -> int:
    """``order`` as an int in ``1..max_order``. (The samplers register ``min_steps = max_order``:
    a multistep method of order ``k`` needs ``k`` steps to reach its order at all, and the
    registry records one minimum, that of the default and highest order.)"""
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= max_order:
        raise ValueError(f"{name}: order must be an int in 1..{max_order}, got {order!r}")
    return order


def coefficient_grid(ts: torch.Tensor) -> torch.Tensor:
    """The grid as float64 on the CPU, where the samplers compute their coefficients once before
    the loop (linear solves and divided powers of ``h`` lose digits in float32), then move them
    to the state's dtype and device."""
    return ts.to(device="cpu", dtype=torch.float64)   # keeps a grid's autograd graph (optimize_time_grid)


def lagrange_basis(nodes: torch.Tensor, tau: torch.Tensor, k: int) -> torch.Tensor:
    r""":math:`\ell_k(\tau)` for nodes of shape ``(N, K)`` at points ``tau`` of shape ``(N, Q)``."""
    value = torch.ones_like(tau)
    for m in range(nodes.shape[1]):
        if m != k:
            value = value * (tau - nodes[:, m:m + 1]) / (nodes[:, k:k + 1] - nodes[:, m:m + 1])
    return value


def lagrange_derivative(nodes: torch.Tensor, tau: torch.Tensor, k: int) -> torch.Tensor:
    r""":math:`\ell_k'(\tau)` (the product rule; no division by :math:`\tau - \tau_m`)."""
    K = nodes.shape[1]
    total = torch.zeros_like(tau)
    for m in range(K):
        if m == k:
            continue
        term = 1.0 / (nodes[:, k:k + 1] - nodes[:, m:m + 1]).expand_as(tau)
        for l in range(K):
            if l not in (k, m):
                term = term * (tau - nodes[:, l:l + 1]) / (nodes[:, k:k + 1] - nodes[:, l:l + 1])
        total = total + term
    return total


def lagrange_integrals(nodes: torch.Tensor, end: torch.Tensor,
                       rho: Callable[[torch.Tensor], torch.Tensor],
                       points: int = GAUSS_POINTS) -> torch.Tensor:
    r"""The weights :math:`w_k` (module docstring), shape ``(N, K)``.

    ``nodes``: ``(N, K)``, column 0 the step's start :math:`a`, then the past nodes; ``end``:
    ``(N,)``, the step's end :math:`b`; ``rho``: the measure's distribution function, applied
    elementwise to a tensor of times."""
    a = nodes[:, :1]
    b = end[:, None]
    gauss, gauss_weights = np.polynomial.legendre.leggauss(points)
    gauss = torch.as_tensor(gauss, dtype=nodes.dtype, device=nodes.device)
    gauss_weights = torch.as_tensor(gauss_weights, dtype=nodes.dtype, device=nodes.device)
    tau = 0.5 * (a + b) + 0.5 * (b - a) * gauss                          # (N, Q)
    rho_tau = rho(tau.reshape(-1)).reshape(tau.shape)
    rho_a, rho_b = rho(a[:, 0]), rho(b[:, 0])
    weights = []
    for k in range(nodes.shape[1]):
        interior = 0.5 * (b[:, 0] - a[:, 0]) * (rho_tau * lagrange_derivative(nodes, tau, k)
                                                * gauss_weights).sum(1)
        boundary = lagrange_basis(nodes, b, k)[:, 0] * rho_b - (rho_a if k == 0 else 0.0)
        weights.append(boundary - interior)
    return torch.stack(weights, 1)


def adams_weights(grid: torch.Tensor, step_orders: list[int],
                  rho: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    r"""``(N, max(step_orders))``: row ``i`` holds the weights :math:`w_k` of step ``i`` (from
    ``grid[i]`` to ``grid[i+1]``) on the nodes ``grid[i], grid[i-1], ..., grid[i-q+1]``,
    ``q = step_orders[i] <= i + 1``, zero-padded."""
    steps = grid.numel() - 1
    width = max(step_orders)
    weights = torch.zeros(steps, width, dtype=grid.dtype, device=grid.device)
    for q in sorted(set(step_orders)):
        rows = torch.tensor([i for i in range(steps) if step_orders[i] == q], device=grid.device)
        nodes = grid[rows[:, None] - torch.arange(q, device=grid.device)]
        weights[rows, :q] = lagrange_integrals(nodes, grid[rows + 1], rho)
    return weights


def eps_multistep(ctx, x: torch.Tensor, ts: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
                  weights: torch.Tensor, step_orders: list[int], afs: bool = False) -> torch.Tensor:
    r"""The linear multistep loop on the noise prediction shared by ``ipndm`` and ``deis``:
    :math:`x_{i+1} = \tfrac{\alpha_{i+1}}{\alpha_i} x_i + \sum_k w_{ik}\,\hat\epsilon_{i-k}` with the
    method's ``weights`` (shape ``(steps, max order)``, on ``ts``) and per-step orders; a last step
    to :math:`\sigma = 0` (``final_step="zero"``) is the data prediction; with ``afs`` the first
    noise prediction is the analytical one (:func:`._common.analytic_score`, no score call)."""
    ratio = alpha[1:] / alpha[:-1]
    weights, ratio, alpha, sigma = (v.to(dtype=x.dtype, device=x.device)
                                    for v in (weights, ratio, alpha, sigma))
    history: list[torch.Tensor] = []     # noise predictions at t_i, t_{i-1}, ...
    for i in range(len(step_orders)):
        eps = ctx.eps(ts[i], x, analytic=afs and i == 0)
        if ctx.ends_at_zero(i, ts):      # Euler to sigma_ve = 0: the data prediction
            x = (x - sigma[i] * eps) / alpha[i]
            ctx.report(i, x, ts[i + 1], x)
            break
        history.insert(0, eps)
        del history[max(step_orders):]
        x = ratio[i] * x + sum(weights[i, k] * history[k] for k in range(step_orders[i]))
        ctx.report(i, x, ts[i + 1], None)
    return x
