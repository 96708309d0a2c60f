r"""UniPC, the unified predictor-corrector (Zhao et al., *UniPC: A Unified Predictor-Corrector
Framework for Fast Sampling of Diffusion Models*, NeurIPS 2023, arXiv:2302.04867; the authors'
``uni_pc.py``, ``multistep_uni_pc_bh_update``, and diffusers' ``UniPCMultistepScheduler``), for a
general marginal in the log-SNR :math:`\lambda`.

Notation of :mod:`._common`; step ``i`` from :math:`t_i` to :math:`t_{i+1}`,
:math:`h = \lambda_{i+1} - \lambda_i`, the model output :math:`m` (``prediction="data"``:
:math:`\hat x_0`, UniPC with data prediction, the default; ``"noise"``: :math:`\hat\epsilon`),
its history :math:`m_i, m_{i-1}, \dots`, :math:`r_k = (\lambda_{i-k} - \lambda_i)/h` and
:math:`D_k = (m_{i-k} - m_i)/r_k` for :math:`k = 1, \dots, p - 1` (``p`` the step's order).
With :math:`\hat h = -h` (data) or :math:`h` (noise), :math:`\varphi_1 = e^{\hat h} - 1`,
:math:`B(h) = \hat h` (``variant="bh1"``) or :math:`e^{\hat h} - 1` (``"bh2"``),
:math:`g_1 = \varphi_1/\hat h - 1`, :math:`g_{j+1} = g_j/\hat h - 1/(j+1)!` and
:math:`b_j = j!\, g_j / B(h)`:

.. math::
    \text{data:}\quad \bar x &= \tfrac{\sigma_{i+1}}{\sigma_i} x_i - \alpha_{i+1}\varphi_1 m_i,
    \qquad \text{noise:}\quad
        \bar x = \tfrac{\alpha_{i+1}}{\alpha_i} x_i - \sigma_{i+1}\varphi_1 m_i, \\
    \text{UniP-}p\text{:}\quad \tilde x_{i+1} &= \bar x - c_{i+1} B(h) \textstyle\sum_{k<p}
        \rho^p_k D_k, \\
    \text{UniC-}p\text{:}\quad x_{i+1} &= \bar x - c_{i+1} B(h) \Bigl(\textstyle\sum_{k<p}
        \rho^c_k D_k + \rho^c_p (m_{i+1} - m_i)\Bigr), \qquad m_{i+1} = m(t_{i+1}, \tilde x_{i+1}),

with :math:`c_{i+1} = \alpha_{i+1}` (data) or :math:`\sigma_{i+1}` (noise), :math:`\rho^p` solving
:math:`R_{p-1}\rho^p = (b_1..b_{p-1})` and :math:`\rho^c` solving :math:`R_p \rho^c = (b_1..b_p)`,
:math:`R_p = (r_k^{j-1})_{j,k}` over the nodes :math:`(r_1, \dots, r_{p-1}, 1)` (the authors'
Vandermonde system; their simplifications :math:`\rho^p = 1/2` for :math:`p = 2` and
:math:`\rho^c = 1/2` for :math:`p = 1` are kept; :math:`B(h)\rho` solved from the system does not
depend on :math:`B`, so ``bh1`` and ``bh2`` differ only where these simplifications apply: UniP-2,
UniC-1, in the warm-up and the lowered last steps). The corrector reuses :math:`m_{i+1}`, the model
at the predictor's point, as the next step's :math:`m_i`: no extra score call (one per step).
UniC is skipped on the last step (there is no next step to reuse its model call). All
:math:`\rho` are computed once on the grid (float64, before the loop).

Orders: UniP-:math:`p` has order :math:`p`, the corrector lifts it to :math:`p + 1` (Zhao et al.,
§3); the warm-up (the first steps use :math:`p = \min(\text{order}, i + 1)`) and the
predictor-only last step keep the global order at :math:`p + 1` on the probability-flow ODE as
measured in ``tests/plugins/test_few_step_samplers.py`` (``lower_order_final=False``).
``lower_order_final`` lowers the order of the last steps, :math:`p = \min(p, N - i)`, for
stability at few steps: ``"auto"`` (default) below 15 steps, as sdekit's DPM-Solver++ (diffusers'
``UniPCMultistepScheduler`` and the authors' code lower at every step count: pass ``True`` to match
them); ``True``; ``False``. Its last step is then first order (DDIM), which bounds the global order
by 2 asymptotically — the price of stability at 5–10 steps. Defaults ``order=3`` (the authors'
recommendation for unconditional sampling; 2 for guided), ``variant="bh2"`` (theirs and diffusers';
they suggest ``"bh1"`` below 10 steps for unconditional models); at least 3 steps whatever the
order (the registry's ``min_steps``, the default order's).

With ``final_step="zero"`` the last step goes to :math:`\sigma = 0` and is first order: :math:`x =
\hat x_0` of the model call at :math:`t_{N-1}` (as diffusers' ``final_sigmas_type="zero"`` with
``lower_order_final``).

``afs=True``: the analytical first step (:func:`._common.analytic_score`): the model output at
:math:`t_0 = t_{max}` is that of standard normal data, not a score call, so a grid of ``N`` steps
costs ``N - 1`` calls.
"""
from __future__ import annotations

import torch

from ._common import Context, afs_saved_calls, check_afs, schedule
from ._multistep import check_order, coefficient_grid
from .dpm_solver import _lowers_final_order
from .registry import register

MAX_ORDER = 3
VARIANTS = ("bh1", "bh2")
PREDICTIONS = ("data", "noise")


def unipc_coefficients(lam: torch.Tensor, step_orders: list[int], variant: str, data: bool):
    r"""Per step ``i`` (float64, on ``lam``'s device): :math:`\varphi_1`, :math:`B(h)`, the
    predictor weights :math:`\rho^p_k / r_k` on :math:`m_{i-k} - m_i` (``(N, MAX_ORDER - 1)``),
    the corrector weights :math:`\rho^c_k/r_k` likewise and :math:`\rho^c_p` on :math:`m_{i+1} -
    m_i` (``(N,)``) — the module docstring's update with :math:`D_k` expanded."""
    steps = lam.numel() - 1
    h = lam[1:] - lam[:-1]
    hh = -h if data else h
    phi_1 = torch.expm1(hh)
    B = hh if variant == "bh1" else torch.expm1(hh)
    b, g, factorial = [], phi_1 / hh - 1, 1
    for j in range(1, MAX_ORDER + 1):
        b.append(g * factorial / B)
        factorial *= j + 1
        g = g / hh - 1 / factorial
    b = torch.stack(b, 1)                                         # (N, MAX_ORDER)
    predictor = torch.zeros(steps, MAX_ORDER - 1, dtype=lam.dtype, device=lam.device)
    corrector = torch.zeros_like(predictor)
    corrector_new = torch.zeros(steps, dtype=lam.dtype, device=lam.device)
    for p in sorted(set(step_orders)):       # all steps of one order at once (batched solves)
        rows = torch.tensor([i for i, q in enumerate(step_orders) if q == p], device=lam.device)
        past = rows[:, None] - torch.arange(1, p, device=lam.device)          # (M, p - 1)
        r = torch.cat([(lam[past] - lam[rows, None]) / h[rows, None],
                       torch.ones(len(rows), 1, dtype=lam.dtype, device=lam.device)], 1)
        vandermonde = torch.stack([r ** j for j in range(p)], 1)              # (M, p, p)
        if p == 1:
            corrector_new[rows] = 0.5
            continue
        if p == 2:
            predictor[rows, 0] = 0.5 / r[:, 0]
        else:
            rho = torch.linalg.solve(vandermonde[:, :-1, :-1], b[rows, :p - 1])
            predictor[rows, :p - 1] = rho / r[:, :-1]
        rho = torch.linalg.solve(vandermonde, b[rows, :p])
        corrector[rows, :p - 1] = rho[:, :-1] / r[:, :-1]
        corrector_new[rows] = rho[:, -1]
    return phi_1, B, predictor, corrector, corrector_new


@register("unipc", min_steps=MAX_ORDER, order=MAX_ORDER + 1, data_prediction=True,
          saved_calls=afs_saved_calls)
def unipc(ctx: Context, x: torch.Tensor, ts: torch.Tensor, order: int = MAX_ORDER,
          variant: str = "bh2", prediction: str = "data",
          lower_order_final: bool | str = "auto", afs: bool = False) -> torch.Tensor:
    """UniPC with UniP-``order`` and UniC-``order`` (module docstring); one score call per step
    (one fewer in all with ``afs``)."""
    steps = len(ts) - 1
    check_order("unipc", order, MAX_ORDER)
    afs = check_afs("unipc", afs)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS} (B(h) = h or e^h - 1), got "
                         f"{variant!r}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS} (UniPC on the data or the noise "
                         f"prediction), got {prediction!r}")
    data = prediction == "data"
    lower_final = _lowers_final_order(lower_order_final, False, steps)
    step_orders = [min(order, i + 1, steps - i if lower_final else order) for i in range(steps)]
    grid = coefficient_grid(ts)
    alpha, sigma, lam = schedule(ctx.sde, grid)
    phi_1, B, predictor, corrector, corrector_new = unipc_coefficients(lam, step_orders, variant,
                                                                       data)
    if data:
        ratio, scale = sigma[1:] / sigma[:-1], alpha[1:]
    else:
        ratio, scale = alpha[1:] / alpha[:-1], sigma[1:]
    # x_bar = ratio x - base m_i; x_pred = x_bar - sum_k pred_k (m_{i-k} - m_i);
    # x = x_bar - sum_k corr_k (m_{i-k} - m_i) - corr_new (m_{i+1} - m_i)
    base, weight = scale * phi_1, scale * B
    pred, corr, corr_new = (weight[:, None] * predictor, weight[:, None] * corrector,
                            weight * corrector_new)
    ratio, base, pred, corr, corr_new, alpha, sigma = (
        v.to(dtype=x.dtype, device=x.device)
        for v in (ratio, base, pred, corr, corr_new, alpha, sigma))
    model = ctx.data if data else ctx.eps

    m = model(ts[0], x, analytic=afs)
    x_model = x                                      # the state m was evaluated at
    history = [m]                                    # m_i, m_{i-1}, ...
    for i in range(steps):
        p = step_orders[i]
        if ctx.ends_at_zero(i, ts):                  # first order to sigma = 0: x = x0_hat
            x = m if data else (x_model - sigma[i] * m) / alpha[i]
            ctx.report(i, x, ts[i + 1], x)
            break
        x_bar = ratio[i] * x - base[i] * m
        differences = [history[k] - m for k in range(1, p)]
        x_pred = x_bar
        for k in range(1, p):
            x_pred = x_pred - pred[i, k - 1] * differences[k - 1]
        if i == steps - 1:                           # no corrector on the last step
            x = x_pred
            ctx.report(i, x, ts[i + 1], m if data else None)
            break
        m_new = model(ts[i + 1], x_pred)
        x = x_bar - corr_new[i] * (m_new - m)
        for k in range(1, p):
            x = x - corr[i, k - 1] * differences[k - 1]
        ctx.report(i, x, ts[i + 1], m if data else None)
        history.insert(0, m_new)
        del history[MAX_ORDER:]
        m, x_model = m_new, x_pred
    return x

