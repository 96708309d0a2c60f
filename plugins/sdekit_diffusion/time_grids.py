r"""Time grids for diffusion samplers: ``steps + 1`` times decreasing from ``t_max`` to ``t_min``.

Every grid is defined for a general schedule :math:`(\alpha, \sigma)` through the log-SNR
:math:`\lambda(t) = \log(\alpha/\sigma)` (strictly decreasing) and its inverse
``sde.inverse_log_snr``:

- ``"uniform"``: equal steps in :math:`t` (Song et al. 2021, score_sde samplers).
- ``"quadratic"``: equal steps in :math:`\sqrt t`, :math:`t_i = (\sqrt{t_{max}} + \tfrac{i}{N}
  (\sqrt{t_{min}} - \sqrt{t_{max}}))^2`, dense near the data: the continuous-time form of DDIM's
  quadratic skip (Song, Meng & Ermon 2021, App. D.3) used by DPM-Solver as ``"time_quadratic"``
  (Lu et al. 2022, ``dpm_solver_pytorch.py``, ``get_time_steps`` with ``t_order = 2``).
- ``"logsnr"``: equal steps in :math:`\lambda` (Lu et al. 2022, §3.4 and App. D.1: "uniform
  logSNR", their recommendation for few-step sampling).
- ``"karras"``: equal steps in :math:`\sigma_{ve}^{1/\rho}` with :math:`\sigma_{ve} = \sigma/\alpha
  = e^{-\lambda}`, :math:`\rho = 7` (Karras et al. 2022, eq. 5; :math:`\rho = 7` is their choice).

The end points are exactly ``t_max`` and ``t_min`` (no rounding through :math:`\lambda`).
"""
from __future__ import annotations

import math

import torch

GRIDS = ("uniform", "quadratic", "logsnr", "karras")

KARRAS_RHO = 7.0  # Karras et al. (2022), eq. 5 and Table 1


def time_grid(sde, steps: int, kind: str = "uniform", t_min: float | None = None,
              t_max: float | None = None, *, rho: float = KARRAS_RHO) -> torch.Tensor:
    """The time grid of ``kind`` (one of :data:`GRIDS`) for ``sde``: a float64 tensor of shape
    ``(steps + 1,)``, strictly decreasing from ``t_max`` (default ``sde.t_max``) to ``t_min``
    (default ``sde.t_min``). ``rho`` is the exponent of the ``"karras"`` grid."""
    if kind not in GRIDS:
        raise ValueError(f"unknown time grid {kind!r}; valid ones are "
                         f"{', '.join(repr(g) for g in GRIDS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    t_min = sde.t_min if t_min is None else float(t_min)
    t_max = sde.t_max if t_max is None else float(t_max)
    if not (sde.t_min <= t_min < t_max <= sde.t_max):
        raise ValueError(f"need {sde.t_min} = sde.t_min <= t_min < t_max <= sde.t_max = {sde.t_max}; "
                         f"got t_min={t_min}, t_max={t_max}")
    fraction = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if kind == "uniform":
        grid = t_max + fraction * (t_min - t_max)
    elif kind == "quadratic":
        grid = (math.sqrt(t_max) + fraction * (math.sqrt(t_min) - math.sqrt(t_max))) ** 2
    else:
        ends = sde.log_snr(torch.tensor([t_max, t_min], dtype=torch.float64))
        if kind == "logsnr":
            lam = ends[0] + fraction * (ends[1] - ends[0])
        else:  # karras: sigma_ve = exp(-lambda), equal steps in sigma_ve^(1/rho)
            if rho <= 0:
                raise ValueError(f"rho must be positive, got {rho}")
            root = torch.exp(-ends / rho)     # sigma_ve^(1/rho) at t_max and t_min
            lam = -rho * torch.log(root[0] + fraction * (root[1] - root[0]))
        grid = sde.inverse_log_snr(lam.clamp(ends[0], ends[1]))
    grid = grid.clone()
    grid[0], grid[-1] = t_max, t_min
    if not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError(f"the {kind!r} grid of {steps} steps on [{t_min}, {t_max}] is not strictly "
                         "decreasing (steps too many for float64 resolution of this schedule)")
    return grid
