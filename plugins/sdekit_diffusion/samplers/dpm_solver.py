r"""DPM-Solver and DPM-Solver++: exponential integrators of the probability-flow ODE in the log-SNR
variable :math:`\lambda = \log(\alpha/\sigma)`, for a general marginal.

With :math:`h_i = \lambda_{i} - \lambda_{i-1} > 0` (the grid runs down in :math:`t`, up in
:math:`\lambda`), the exact solution of the probability-flow ODE is
:math:`x_{t} = \tfrac{\alpha_{t}}{\alpha_{s}} x_{s} - \alpha_{t}\int_{\lambda_s}^{\lambda_t}
e^{-\lambda}\hat\epsilon\,d\lambda` (noise prediction) or
:math:`x_{t} = \tfrac{\sigma_{t}}{\sigma_{s}} x_{s} + \sigma_{t}\int e^{\lambda}\hat x_0\,d\lambda`
(data prediction); the solvers Taylor-expand the prediction in :math:`\lambda`.

**DPM-Solver-2 / -3** (singlestep, noise prediction; Lu et al., *DPM-Solver*, NeurIPS 2022,
Algorithms 1 and 2 with :math:`r_1 = 1/2` and :math:`r_1 = 1/3, r_2 = 2/3`); intermediate times
:math:`s_k = t_\lambda(\lambda_{i-1} + r_k h_i)` by ``sde.inverse_log_snr``. DPM-Solver-2:

.. math::
    u &= \tfrac{\alpha_{s_1}}{\alpha_{i-1}} x - \sigma_{s_1}(e^{r_1 h} - 1)\epsilon_0, \\
    x_i &= \tfrac{\alpha_i}{\alpha_{i-1}} x - \sigma_i (e^h - 1)\epsilon_0
           - \tfrac{\sigma_i}{2 r_1}(e^h - 1)(\epsilon(u, s_1) - \epsilon_0).

DPM-Solver-3:

.. math::
    u_1 &= \tfrac{\alpha_{s_1}}{\alpha_{i-1}} x - \sigma_{s_1}(e^{r_1 h} - 1)\epsilon_0, \quad
    D_1 = \epsilon(u_1, s_1) - \epsilon_0, \\
    u_2 &= \tfrac{\alpha_{s_2}}{\alpha_{i-1}} x - \sigma_{s_2}(e^{r_2 h} - 1)\epsilon_0
          - \tfrac{\sigma_{s_2} r_2}{r_1}\Bigl(\tfrac{e^{r_2 h} - 1}{r_2 h} - 1\Bigr) D_1, \quad
    D_2 = \epsilon(u_2, s_2) - \epsilon_0, \\
    x_i &= \tfrac{\alpha_i}{\alpha_{i-1}} x - \sigma_i(e^h - 1)\epsilon_0
          - \tfrac{\sigma_i}{r_2}\Bigl(\tfrac{e^h - 1}{h} - 1\Bigr) D_2.

Global orders 2 and 3; 2 and 3 score calls per step.

**DPM-Solver++(2M) / (3M)** (multistep, data prediction; Lu et al., *DPM-Solver++*, 2022,
Algorithm 2, and the third-order multistep update of the authors' ``dpm_solver_pytorch.py``,
``multistep_dpm_solver_third_update``): with :math:`\phi_1 = e^{-h} - 1`,
:math:`\phi_2 = \phi_1/h + 1`, :math:`\phi_3 = \phi_2/h - 1/2`, :math:`D_0 = \hat x_0` at
:math:`t_{i-1}`, :math:`r_0 = h_{i-1}/h_i`, :math:`r_1 = h_{i-2}/h_i`,
:math:`D_{1,0} = (D_0 - D_{-1})/r_0`, :math:`D_{1,1} = (D_{-1} - D_{-2})/r_1`:

.. math::
    \text{2M:}\quad x_i &= \tfrac{\sigma_i}{\sigma_{i-1}} x - \alpha_i\phi_1 D_0
                           - \tfrac12 \alpha_i \phi_1 D_{1,0}, \\
    \text{3M:}\quad x_i &= \tfrac{\sigma_i}{\sigma_{i-1}} x - \alpha_i\phi_1 D_0
        + \alpha_i \phi_2 \Bigl(D_{1,0} + \tfrac{r_0}{r_0 + r_1}(D_{1,0} - D_{1,1})\Bigr)
        - \alpha_i \phi_3 \tfrac{2 (D_{1,0} - D_{1,1})}{r_0 + r_1}.

The 3M coefficients follow from the Taylor expansion :math:`\hat x_0(\lambda_{i-1} + u) = D_0 + u
D' + \tfrac{u^2}{2} D''`: :math:`\int_0^h e^{u-h} u^k/k!\,du` is :math:`-\phi_1`,
:math:`h\phi_2` and :math:`-h^2\phi_3` for ``k = 0, 1, 2``, and
:math:`2(D_{1,0} - D_{1,1})/(r_0 + r_1) = h^2 D'' + O(h^3)`. (The authors' code and diffusers
multiply :math:`\phi_3` by half this second difference, :math:`(D_{1,0} - D_{1,1})/(r_0 + r_1)`;
that update measures global order 2 in ``tests/plugins/test_samplers.py``, this one order 3.)

The first steps use the lower orders (1, then 2) until enough history exists. The last steps
drop order too, ``order = min(order, N + 1 - i)``, for stability at few steps (the rule of the
authors' ``dpm_solver_pytorch.py``, ``sample(..., lower_order_final=True)``): with
``lower_order_final="auto"`` (default) below 15 steps only, diffusers' threshold (the authors' is
10; on the 8-D mixture of ``benchmarks/few_step.py`` it halves the 2M error at 10 steps on the
quadratic grid, and it keeps sdekit equal to diffusers' ``DPMSolverMultistepScheduler`` at any
step count); ``True`` at any step count; ``False`` never. ``euler_at_final=True`` makes the last
step first order (diffusers' option of that name). With ``final_step="zero"`` the last step goes
to :math:`\sigma = 0` and is first order, :math:`x = D_0` (diffusers' ``final_sigmas_type="zero"``).
Global orders 2 and 3; one score call per step.

The multistep ones take ``afs=True``: the analytical first step (:func:`._common.analytic_score`):
the model output at :math:`t_0 = t_{max}` is that of standard normal data, not a score call, so a
grid of ``N`` steps costs ``N - 1`` calls.
"""
from __future__ import annotations

import torch

from ._common import Context, afs_saved_calls, check_afs, schedule
from .registry import register

LOWER_ORDER_FINAL_BELOW = 15   # diffusers' DPMSolverMultistepScheduler (the authors' code: 10)


def _singlestep(ctx: Context, x: torch.Tensor, ts: torch.Tensor, order: int) -> torch.Tensor:
    sde = ctx.sde
    alpha, sigma, lam = schedule(sde, ts)
    h = lam[1:] - lam[:-1]
    r = (0.5,) if order == 2 else (1.0 / 3.0, 2.0 / 3.0)
    # intermediate times s_k = t_lambda(lambda_{i-1} + r_k h_i), all precomputed
    mids = [sde.schedule.t_of_log_snr(lam[:-1] + rk * h).clamp(sde.t_min, sde.t_max) for rk in r]
    mid_alpha = [sde.schedule.alpha(s) for s in mids]
    mid_sigma = [sde.schedule.sigma(s) for s in mids]
    for i in range(len(ts) - 1):
        hi = h[i]
        eps0 = ctx.eps(ts[i], x)
        ratio = alpha[i + 1] / alpha[i]
        phi = torch.expm1(hi)
        if order == 2:
            r1 = r[0]
            u = mid_alpha[0][i] / alpha[i] * x - mid_sigma[0][i] * torch.expm1(r1 * hi) * eps0
            d1 = ctx.eps(mids[0][i], u) - eps0
            x = ratio * x - sigma[i + 1] * phi * eps0 - sigma[i + 1] / (2 * r1) * phi * d1
        else:
            r1, r2 = r
            u1 = mid_alpha[0][i] / alpha[i] * x - mid_sigma[0][i] * torch.expm1(r1 * hi) * eps0
            d1 = ctx.eps(mids[0][i], u1) - eps0
            phi_r2 = torch.expm1(r2 * hi)
            u2 = (mid_alpha[1][i] / alpha[i] * x - mid_sigma[1][i] * phi_r2 * eps0
                  - mid_sigma[1][i] * r2 / r1 * (phi_r2 / (r2 * hi) - 1) * d1)
            d2 = ctx.eps(mids[1][i], u2) - eps0
            x = ratio * x - sigma[i + 1] * phi * eps0 - sigma[i + 1] / r2 * (phi / hi - 1) * d2
        ctx.report(i, x, ts[i + 1], None)
    return x


@register("dpm_solver_2", calls_per_step=2, order=2)
def dpm_solver_2(ctx: Context, x: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """Singlestep DPM-Solver-2 (module docstring); 2 score calls per step."""
    return _singlestep(ctx, x, ts, 2)


@register("dpm_solver_3", calls_per_step=3, order=3)
def dpm_solver_3(ctx: Context, x: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """Singlestep DPM-Solver-3 (module docstring); 3 score calls per step."""
    return _singlestep(ctx, x, ts, 3)


def _lowers_final_order(lower_order_final, euler_at_final, steps: int) -> bool:
    """Whether the last steps drop order (``lower_order_final``: ``"auto"``, True or False)."""
    if lower_order_final != "auto" and not isinstance(lower_order_final, bool):
        raise ValueError(f"lower_order_final must be 'auto' (below {LOWER_ORDER_FINAL_BELOW} steps, "
                         f"diffusers' rule), True (always) or False (never), got "
                         f"{lower_order_final!r}")
    if not isinstance(euler_at_final, bool):
        raise ValueError(f"euler_at_final must be True or False, got {euler_at_final!r}")
    if lower_order_final == "auto":
        return steps < LOWER_ORDER_FINAL_BELOW
    return bool(lower_order_final)


def _multistep(ctx: Context, x: torch.Tensor, ts: torch.Tensor, order: int,
               lower_order_final, euler_at_final: bool, afs: bool = False) -> torch.Tensor:
    alpha, sigma, lam = schedule(ctx.sde, ts)
    h = lam[1:] - lam[:-1]
    steps = len(ts) - 1
    lower_final = _lowers_final_order(lower_order_final, euler_at_final, steps)
    history: list[torch.Tensor] = []   # data predictions at t_{i-1}, t_{i-2}, ...
    for i in range(steps):
        x0 = ctx.data(ts[i], x, analytic=afs and i == 0)
        if ctx.ends_at_zero(i, ts):     # first order to sigma = 0: sigma_i/sigma_{i-1} = 0, phi1 = -1
            x = x0
            ctx.report(i, x, ts[i + 1], x0)
            break
        history.insert(0, x0)
        del history[order:]
        step_order = min(order, i + 1)
        if lower_final:
            step_order = min(step_order, steps - i)
        if euler_at_final and i == steps - 1:
            step_order = 1
        hi = h[i]
        phi1 = torch.expm1(-hi)
        x_new = sigma[i + 1] / sigma[i] * x - alpha[i + 1] * phi1 * history[0]
        if step_order >= 2:
            r0 = h[i - 1] / hi
            d1_0 = (history[0] - history[1]) / r0
            if step_order == 2:
                x_new = x_new - 0.5 * alpha[i + 1] * phi1 * d1_0
            else:
                r1 = h[i - 2] / hi
                d1_1 = (history[1] - history[2]) / r1
                d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
                d2 = 2 * (d1_0 - d1_1) / (r0 + r1)          # h^2 x0'' + O(h^3)
                phi2 = phi1 / hi + 1
                phi3 = phi2 / hi - 0.5
                x_new = x_new + alpha[i + 1] * phi2 * d1 - alpha[i + 1] * phi3 * d2
        x = x_new
        ctx.report(i, x, ts[i + 1], x0)
    return x


# A multistep method of order k needs k steps to use its order at all (fewer would silently run a
# lower-order method), so fewer are refused.
@register("dpm_solver++_2m", min_steps=2, order=2, data_prediction=True,
          saved_calls=afs_saved_calls)
def dpm_solver_pp_2m(ctx: Context, x: torch.Tensor, ts: torch.Tensor,
                     lower_order_final: bool | str = "auto",
                     euler_at_final: bool = False, afs: bool = False) -> torch.Tensor:
    """Multistep DPM-Solver++(2M) (module docstring); 1 score call per step (one fewer in all
    with ``afs``)."""
    return _multistep(ctx, x, ts, 2, lower_order_final, euler_at_final,
                      check_afs("dpm_solver++_2m", afs))


@register("dpm_solver++_3m", min_steps=3, order=3, data_prediction=True,
          saved_calls=afs_saved_calls)
def dpm_solver_pp_3m(ctx: Context, x: torch.Tensor, ts: torch.Tensor,
                     lower_order_final: bool | str = "auto",
                     euler_at_final: bool = False, afs: bool = False) -> torch.Tensor:
    """Multistep DPM-Solver++(3M) (module docstring); 1 score call per step (one fewer in all
    with ``afs``)."""
    return _multistep(ctx, x, ts, 3, lower_order_final, euler_at_final,
                      check_afs("dpm_solver++_3m", afs))

