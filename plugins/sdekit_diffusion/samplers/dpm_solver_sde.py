r"""DPM-Solver++(2M) SDE and (3M) SDE: k-diffusion's ``sample_dpmpp_2m_sde`` and
``sample_dpmpp_3m_sde`` (Crowson, crowsonkb/k-diffusion ``k_diffusion/sampling.py``; the
SDE-DPM-Solver++ of Lu et al., *DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models*, 2022, arXiv:2211.01095), written for a general marginal through the log-SNR.

Notation of :mod:`._common` and :mod:`.dpm_solver`: step ``i`` from :math:`t_i` to
:math:`t_{i+1}`, :math:`h_i = \lambda_{i+1} - \lambda_i > 0`, :math:`D_i = \hat x_0(t_i, x_i)` (one
score call per step), :math:`\eta \ge 0` and :math:`c = 1 + \eta`. The reverse-time SDE family
:math:`dx = [f x - \tfrac{1+\eta}{2} g^2 s]\,dt + \sqrt\eta\, g\, d\bar w` (:math:`\eta = 1` the
reverse SDE, :math:`\eta = 0` the probability-flow ODE; in :math:`y = x/\alpha` and
:math:`\lambda`: :math:`dy = -c (y - \hat x_0) d\lambda + \sqrt{2\eta}\, e^{-\lambda}
dW_\lambda`) has the exact solution (variation of constants in :math:`\lambda`)

.. math::
    x_{i+1} = \tfrac{\sigma_{i+1}}{\sigma_i} e^{-\eta h} x_i
              + \alpha_{i+1}\int_0^h c\, e^{-c(h - u)} \hat x_0(\lambda_i + u)\, du
              + \sigma_{i+1}\sqrt{1 - e^{-2\eta h}}\; z_i ,

and :math:`\int_0^h c e^{-c(h-u)} u^k/k!\,du` is :math:`1 - e^{-ch}`, :math:`h\,\varphi_2` and
:math:`-h^2\varphi_3` for ``k = 0, 1, 2``, with :math:`\varphi_2 = (e^{-ch} - 1)/(ch) + 1`,
:math:`\varphi_3 = \varphi_2/(ch) - 1/2`. The multistep updates replace the derivatives of
:math:`\hat x_0` by divided differences of the past :math:`D` (``r = h_{i-1}/h_i``,
``r_0 = h_{i-1}/h_i``, ``r_1 = h_{i-2}/h_i``):

.. math::
    \text{2M:}\quad x_{i+1} &= \tfrac{\sigma_{i+1}}{\sigma_i} e^{-\eta h} x_i
        + \alpha_{i+1}(1 - e^{-ch}) D_i + \alpha_{i+1}\, \kappa\, \tfrac1r (D_i - D_{i-1})
        + \sigma_{i+1}\sqrt{1 - e^{-2\eta h}}\, s_{noise}\, z_i, \\
    &\kappa = \tfrac12 (1 - e^{-ch}) \ (\texttt{solver\_type="midpoint"}, \text{default}) \quad
     \text{or} \quad \varphi_2 \ (\texttt{"heun"}), \\
    \text{3M:}\quad x_{i+1} &= \tfrac{\sigma_{i+1}}{\sigma_i} e^{-\eta h} x_i
        + \alpha_{i+1}\bigl((1 - e^{-ch}) D_i + \varphi_2 d_1 - \varphi_3 d_2\bigr)
        + \sigma_{i+1}\sqrt{1 - e^{-2\eta h}}\, s_{noise}\, z_i, \\
    &d_{1,0} = \tfrac{D_i - D_{i-1}}{r_0}, \ d_{1,1} = \tfrac{D_{i-1} - D_{i-2}}{r_1}, \
     d_1 = d_{1,0} + \tfrac{r_0}{r_0 + r_1}(d_{1,0} - d_{1,1}), \
     d_2 = \tfrac{2 (d_{1,0} - d_{1,1})}{r_0 + r_1},

the first steps without history being the lower orders (2M: first order; 3M: first order, then
:math:`+\alpha_{i+1}\varphi_2 \tfrac1r (D_i - D_{i-1})`), as in k-diffusion. In k-diffusion's
variables (:math:`y = x/\alpha`, :math:`\tilde\sigma = e^{-\lambda}`) these are its updates line
for line, with one documented deviation: k-diffusion's 3M SDE, like the authors' and diffusers'
DPM-Solver++(3M), uses half the second divided difference, :math:`(d_{1,0} - d_{1,1})/(r_0 +
r_1)`; with :math:`d_2 = h^2 \hat x_0'' + O(h^3)` the coefficient :math:`-\varphi_3` is the exact
one, as in :mod:`.dpm_solver` (with ``eta=0``, measured in
``tests/plugins/test_few_step_samplers.py``: global order 3 here, 2 with k-diffusion's
coefficient). With ``eta=0`` 2M is DPM-Solver++(2M) (``dpm_solver++_2m`` with
``lower_order_final=False``). With ``final_step="zero"`` the last step goes to :math:`\sigma = 0`:
:math:`x = D_{N-1}` (k-diffusion's denoising step when the last sigma is 0).

Noise (``noise=``): ``"path"`` (default): :math:`z_i = (W(t_{i+1}) - W(t_i))/\sqrt{t_i -
t_{i+1}}` of one Brownian path per sample in the sampler's time ``t``, a
:class:`sdekit.brownian.BrownianTree` on :math:`[t_{min}, t_{max}]` of the SDE (widened to the
grid), so the same seed at 20 and at 40 steps sees the same path and gives nearly the same sample
(k-diffusion's ``BrownianTreeNoiseSampler`` does this in the variable :math:`\tilde\sigma`; any
monotone time gives a standard normal :math:`z_i` of the same law, and the discrete noise
:math:`\sigma_{i+1}\sqrt{2\eta h_i}\,z_i \approx \sigma\sqrt{2\eta |d\lambda/dt|}\,\Delta W`
converges to one Itô integral as the grid refines); or the tree given as ``sample(...,
brownian=tree)``, to run on the path another sampler sees. Increments are drawn in blocks of
``tree.grid_block(NOISE_CHUNK)`` steps (:class:`~sdekit_diffusion.samplers._common.PathNoise`: one
query, and on CUDA one host sync of the tree's time check, per block).
The path's seed is ``seed + 2**64 * PATH_SEED_TAG``, that of ``adaptive_sde``, so with the default
``t_min`` (the same tree interval) both samplers see the same path for one seed. ``"fresh"``: independent per-sample normals at every step
(k-diffusion's ``default_noise_sampler``).

Defaults as k-diffusion: ``eta=1``, ``s_noise=1``, ``solver_type="midpoint"`` (2M). The noise is
:math:`s_{noise}` times the SDE's (EDM's :math:`S_{noise}`, Karras et al. 2022); ``s_noise != 1``
changes the law. Registered as weak order 1 for ``eta > 0`` (the variance error at
:math:`t_{min}` of 2M on Gaussian data, VP, logsnr grid, falls from 1.6e-2 to 5.4e-3 and 2.0e-3 at
20, 40, 80 steps: about order 1.5 there); with ``eta = 0`` ODE solvers of global order 2 (2M, both
``solver_type``) and 3 (3M).
"""
from __future__ import annotations

import math

import torch

from ._common import NOISES, Context, PathNoise, sampler_path, schedule
from .registry import register

SOLVER_TYPES = ("midpoint", "heun")


def _path_noise(ctx: Context, x: torch.Tensor, ts: torch.Tensor, noise: str) -> PathNoise | None:
    """The step normals of ``noise="path"``: from the tree given as ``sample(..., brownian=)``, or
    from this sampler's own seeded tree (module docstring); None for ``noise="fresh"``."""
    low = min(ctx.sde.t_min, float(ts[-1]))       # one host sync each, before the loop
    high = max(ctx.sde.t_max, float(ts[0]))
    tree = sampler_path(ctx, x, noise, low, high, "the sampler", "step")
    return None if tree is None else PathNoise(tree, ts)


def _check(eta, s_noise, noise, solver_type) -> None:
    if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0 (0: the probability-flow ODE, 1: the "
                         f"reverse SDE), got {eta!r}")
    if not (isinstance(s_noise, (int, float)) and math.isfinite(s_noise) and s_noise >= 0):
        raise ValueError(f"s_noise must be a finite number >= 0, got {s_noise!r}")
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES} (a Brownian path per sample, or fresh "
                         f"normals per step), got {noise!r}")
    if solver_type not in SOLVER_TYPES:
        raise ValueError(f"solver_type must be one of {SOLVER_TYPES}, got {solver_type!r}")


def _multistep_sde(ctx: Context, x: torch.Tensor, ts: torch.Tensor, order: int, eta: float,
                   s_noise: float, solver_type: str, noise: str) -> torch.Tensor:
    _check(eta, s_noise, noise, solver_type)
    alpha, sigma, lam = schedule(ctx.sde, ts)
    h = lam[1:] - lam[:-1]
    ch = (1 + eta) * h
    decay = sigma[1:] / sigma[:-1] * torch.exp(-eta * h)
    one_minus = -torch.expm1(-ch)                       # 1 - e^{-ch}
    phi_2 = torch.expm1(-ch) / ch + 1
    phi_3 = phi_2 / ch - 0.5
    kappa = 0.5 * one_minus if (order == 2 and solver_type == "midpoint") else phi_2
    r_prev = torch.cat([h[:1], h[:-1]]) / h              # r_0 = h_{i-1}/h_i (row 0 unused)
    r_prev2 = torch.cat([h[:2], h[:-2]])[:len(h)] / h    # r_1 = h_{i-2}/h_i (rows 0, 1 unused)
    noisy = eta != 0 and s_noise != 0
    noise_scale = s_noise * sigma[1:] * torch.sqrt(-torch.expm1(-2 * eta * h))
    path = _path_noise(ctx, x, ts, noise) if noisy else None

    history: list[torch.Tensor] = []                    # D_i, D_{i-1}, D_{i-2}
    for i in range(len(ts) - 1):
        x0 = ctx.data(ts[i], x)
        if ctx.ends_at_zero(i, ts):                      # to sigma = 0: the data prediction
            x = x0
            ctx.report(i, x, ts[i + 1], x0)
            break
        history.insert(0, x0)
        del history[order:]
        x_new = decay[i] * x + alpha[i + 1] * one_minus[i] * x0
        if len(history) == 2:
            x_new = x_new + alpha[i + 1] * kappa[i] / r_prev[i] * (history[0] - history[1])
        elif len(history) == 3:
            d1_0 = (history[0] - history[1]) / r_prev[i]
            d1_1 = (history[1] - history[2]) / r_prev2[i]
            r_sum = r_prev[i] + r_prev2[i]
            d1 = d1_0 + r_prev[i] / r_sum * (d1_0 - d1_1)
            d2 = 2 * (d1_0 - d1_1) / r_sum              # h^2 x0'' + O(h^3)
            x_new = x_new + alpha[i + 1] * (phi_2[i] * d1 - phi_3[i] * d2)
        if noisy:
            z = path(i) if path is not None else ctx.normal()
            x_new = x_new + noise_scale[i] * z
        x = x_new
        ctx.report(i, x, ts[i + 1], x0)
    return x


def _stochastic(options: dict) -> bool:
    return options.get("eta", 1.0) != 0 and options.get("s_noise", 1.0) != 0


@register("dpm_solver++_2m_sde", min_steps=2, order=1, stochastic=_stochastic, data_prediction=True)
def dpm_solver_pp_2m_sde(ctx: Context, x: torch.Tensor, ts: torch.Tensor, eta: float = 1.0,
                         s_noise: float = 1.0, solver_type: str = "midpoint",
                         noise: str = "path") -> torch.Tensor:
    """DPM-Solver++(2M) SDE, k-diffusion's ``sample_dpmpp_2m_sde`` (module docstring); one score
    call per step."""
    return _multistep_sde(ctx, x, ts, 2, eta, s_noise, solver_type, noise)


@register("dpm_solver++_3m_sde", min_steps=3, order=1, stochastic=_stochastic, data_prediction=True)
def dpm_solver_pp_3m_sde(ctx: Context, x: torch.Tensor, ts: torch.Tensor, eta: float = 1.0,
                         s_noise: float = 1.0, noise: str = "path") -> torch.Tensor:
    """DPM-Solver++(3M) SDE, k-diffusion's ``sample_dpmpp_3m_sde`` with the exact third-order
    coefficient (module docstring); one score call per step."""
    return _multistep_sde(ctx, x, ts, 3, eta, s_noise, "midpoint", noise)
