r"""The discrete forward chain of a diffusion: timesteps, their betas and the posteriors
:math:`q(x_{n-1} \mid x_n, x_0)` (Ho et al. 2020, eq. 6-7), for any Gaussian marginal and any
subsequence of timesteps (Nichol & Dhariwal 2021, "Improved DDPM", §4).

A chain has ``T`` timesteps ``n = 0..T-1`` at increasing times :math:`t_0 < \dots < t_{T-1}` of a
:class:`~sdekit_diffusion.sde.DiffusionSDE`, with :math:`\alpha_n = \alpha(t_n)`, :math:`\sigma_n =
\sigma(t_n)`, below them the data (:math:`\alpha = 1`, :math:`\sigma = 0`; written ``n = -1``). From
the marginals alone, the step from ``n - 1`` to ``n`` is
:math:`x_n \mid x_{n-1} \sim \mathcal N(\alpha_{n|n-1} x_{n-1}, \beta_n I)` with

.. math::
    \alpha_{n|n-1} = \frac{\alpha_n}{\alpha_{n-1}}, \qquad
    \beta_n = \sigma_n^2 - \alpha_{n|n-1}^2\sigma_{n-1}^2 = -\sigma_n^2\,
    \mathrm{expm1}\bigl(2(\lambda_n - \lambda_{n-1})\bigr), \qquad \beta_0 = \sigma_0^2,

and the posterior of the previous state is
:math:`q(x_{n-1} \mid x_n, x_0) = \mathcal N(\tilde\mu_n, \tilde\beta_n I)`,

.. math::
    \tilde\mu_n = \frac{\alpha_{n|n-1}\sigma_{n-1}^2}{\sigma_n^2}\, x_n
                + \frac{\alpha_{n-1}\beta_n}{\sigma_n^2}\, x_0, \qquad
    \tilde\beta_n = \beta_n \frac{\sigma_{n-1}^2}{\sigma_n^2}, \qquad \tilde\beta_0 = 0.

For a variance-preserving table (:math:`\alpha_n^2 = \bar\alpha_n`) these are DDPM's
:math:`\beta_n = 1 - \bar\alpha_n/\bar\alpha_{n-1}`, ``posterior_mean_coef2`` and ``coef1``
(improved-diffusion ``gaussian_diffusion.py``); for VE (:math:`\alpha = 1`) SMLD's
:math:`\beta_n = \sigma_n^2 - \sigma_{n-1}^2`. Because they are computed from the marginals, a
subsequence :math:`S` of timesteps is again a chain, with
:math:`\beta_{S_i} = 1 - \bar\alpha_{S_i}/\bar\alpha_{S_{i-1}}` (Improved DDPM §4, "we can
compute ... :math:`\beta_{S_t} = 1 - \bar\alpha_{S_t}/\bar\alpha_{S_{t-1}}`"): :meth:`DiscreteChain.respace`.
``ancestral`` sampling on the grid of the times of :math:`S` is this respaced chain.

:math:`\tilde\beta_0 = 0` has no logarithm; like improved-diffusion
(``posterior_log_variance_clipped``) :attr:`DiscreteChain.log_beta_tilde` uses
:math:`\tilde\beta_1` at ``n = 0``.

Which times: a :class:`~sdekit_diffusion.schedules.DiscreteSchedule` (``from_betas``,
``from_alphas_cumprod``) has its own ``N`` timesteps at :math:`t_n = (n + 1)/N`; a continuous
schedule gets ``steps`` equally spaced times from ``t_min`` to ``t_max`` (the same rule gives
:math:`(n + 1)/N` for a table). Tables are float64 on the CPU; :meth:`DiscreteChain.at` moves
them.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

from .schedules import DiscreteSchedule
from .sde import DiffusionSDE, append_dims

DEFAULT_CONTINUOUS_STEPS = 1000   # Ho et al. 2020's T = 1000 for a continuous schedule


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class DiscreteChain:
    r"""The forward chain of ``sde`` on increasing ``times`` (module docstring).

    Attributes (float64 CPU tensors of shape ``(T,)``, index ``n``): ``times``, ``alpha``,
    ``sigma``, ``beta``, ``beta_tilde``, ``log_beta``, ``log_beta_tilde`` (clipped at ``n = 0``),
    ``coef_x`` and ``coef_x0`` (the posterior mean :math:`\tilde\mu_n = ` ``coef_x`` :math:`x_n +`
    ``coef_x0`` :math:`x_0`); ``timesteps``: the indices of these steps in the chain this one was
    respaced from (``arange(T)`` for an original chain); ``T``.
    """

    def __init__(self, sde: DiffusionSDE, times: torch.Tensor, timesteps: torch.Tensor | None = None):
        if not isinstance(sde, DiffusionSDE):
            raise TypeError(f"sde must be a DiffusionSDE, got {type(sde).__name__}")
        times = torch.as_tensor(times, dtype=torch.float64).detach().cpu().flatten()
        if times.numel() < 2:
            raise ValueError(f"a chain needs at least 2 timesteps, got {times.numel()}")
        if not bool((times[1:] > times[:-1]).all()):
            raise ValueError("the chain's times must be strictly increasing")
        slack = 1e-9 * max(1.0, sde.t_max)
        if float(times[0]) < sde.t_min - slack or float(times[-1]) > sde.t_max + slack:
            raise ValueError(f"the chain's times [{float(times[0]):.6g}, {float(times[-1]):.6g}] leave "
                             f"[t_min, t_max] = [{sde.t_min}, {sde.t_max}] of {sde!r}")
        self.sde, self.times, self.T = sde, times, times.numel()
        self.timesteps = torch.arange(self.T) if timesteps is None else torch.as_tensor(timesteps).long().cpu()
        schedule = sde.schedule
        with torch.no_grad():
            self.alpha, self.sigma = schedule.alpha(times), schedule.sigma(times)
            lam = schedule.log_snr(times)
        alpha_prev = torch.cat([times.new_ones(1), self.alpha[:-1]])
        sigma2_prev = torch.cat([times.new_zeros(1), self.sigma[:-1] ** 2])
        sigma2 = self.sigma ** 2
        beta = sigma2.clone()
        beta[1:] = -sigma2[1:] * torch.expm1(2 * (lam[1:] - lam[:-1]))
        self.beta = beta
        self.beta_tilde = beta * sigma2_prev / sigma2
        self.log_beta = torch.log(beta)
        self.log_beta_tilde = torch.log(torch.cat([self.beta_tilde[1:2], self.beta_tilde[1:]]))
        self.coef_x = (self.alpha / alpha_prev) * sigma2_prev / sigma2
        self.coef_x0 = alpha_prev * beta / sigma2
        if not bool(torch.isfinite(self.log_beta).all() & torch.isfinite(self.log_beta_tilde).all()):
            raise ValueError(f"{sde!r} gives a zero or non-finite beta on these times (two times too close "
                             "for float64, or a schedule whose log-SNR does not decrease)")
        self._device_cache: dict = {}

    @classmethod
    def from_sde(cls, sde: DiffusionSDE, steps: int | None = None) -> "DiscreteChain":
        """The chain of ``sde``: its own ``N`` timesteps for a discrete table (``steps`` must then be
        ``None`` or ``N``), else ``steps`` (default :data:`DEFAULT_CONTINUOUS_STEPS`) equally spaced
        times from ``t_min`` to ``t_max``."""
        if not isinstance(sde, DiffusionSDE):
            raise TypeError(f"sde must be a DiffusionSDE, got {type(sde).__name__}")
        schedule = sde.schedule
        if isinstance(schedule, DiscreteSchedule):
            if steps is not None and steps != schedule.N:
                raise ValueError(f"{sde!r} is a table of N = {schedule.N} timesteps; its chain has them all "
                                 f"(got steps={steps!r}); respace it with chain.respace(timesteps) instead")
            return cls(sde, schedule.timestep_time(torch.arange(schedule.N)))
        steps = DEFAULT_CONTINUOUS_STEPS if steps is None else _positive_int("steps", steps, 2)
        return cls(sde, torch.linspace(sde.t_min, sde.t_max, steps, dtype=torch.float64))

    # -- subsequences (Improved DDPM §4) -----------------------------------------------------------
    def respace(self, timesteps) -> "DiscreteChain":
        """The chain on the subsequence ``timesteps`` (sorted, distinct indices into this chain), its
        betas recomputed from the marginals: :math:`\\beta_{S_i} = 1 - \\bar\\alpha_{S_i}/\\bar\\alpha_{S_{i-1}}`
        for VP."""
        timesteps = torch.as_tensor(np.asarray(timesteps), dtype=torch.long).flatten()
        if timesteps.numel() < 2 or not bool((timesteps[1:] > timesteps[:-1]).all()):
            raise ValueError("respace needs at least 2 distinct timesteps in increasing order")
        if int(timesteps[0]) < 0 or int(timesteps[-1]) >= self.T:
            raise ValueError(f"timesteps must lie in 0..{self.T - 1}, got {timesteps[0].item()}..{timesteps[-1].item()}")
        return DiscreteChain(self.sde, self.times[timesteps], self.timesteps[timesteps])

    def sampling_grid(self) -> torch.Tensor:
        """The decreasing times ``times[T-1], ..., times[0]``: with ``skd.sample(sde, score, shape,
        solver="ancestral", ts=chain.sampling_grid(), denoise=True)`` the ``T - 1`` ancestral steps and
        the final data prediction at ``times[0]`` are this chain's reverse process (improved-diffusion's
        ``p_sample_loop`` on a respaced chain, without clipping), ``T`` network evaluations."""
        return self.times.flip(0)

    # -- the chain's distributions -----------------------------------------------------------------
    def at(self, n: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
        """The table ``name`` at timesteps ``n`` (shape ``(batch,)``), broadcastable against ``x``,
        in ``x``'s dtype and device."""
        key = (name, x.device, x.dtype)
        table = self._device_cache.get(key)
        if table is None:
            table = getattr(self, name).to(device=x.device, dtype=x.dtype)
            self._device_cache[key] = table
        return append_dims(table[n.to(x.device)], x)

    def model_time(self, n: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The network's time input at timesteps ``n``: ``sde.schedule.model_time`` of their times
        (the timestep index of the original table for a discrete schedule, ``t`` otherwise)."""
        times = self.times.to(device=n.device)[n]
        return self.sde.schedule.model_time(times).to(dtype)

    def q_sample(self, x0: torch.Tensor, n: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        r""":math:`x_n = \alpha_n x_0 + \sigma_n \epsilon`."""
        return self.at(n, x0, "alpha") * x0 + self.at(n, x0, "sigma") * noise

    def posterior_mean(self, x_n: torch.Tensor, x0: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        r""":math:`\tilde\mu_n(x_n, x_0)` (for ``n = 0`` it is ``x0``)."""
        return self.at(n, x_n, "coef_x") * x_n + self.at(n, x_n, "coef_x0") * x0

    def prior_terms(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        r"""``(mean, std, prior_std)`` of :math:`q(x_{T-1} \mid x_0)` and of the prior
        :math:`\mathcal N(0, \sigma(t_{max})^2 I)` the reverse process starts from."""
        last = torch.full((x0.shape[0],), self.T - 1, dtype=torch.long, device=x0.device)
        return self.at(last, x0, "alpha") * x0, self.at(last, x0, "sigma"), self.sde.prior_std

    def __repr__(self) -> str:
        respaced = "" if torch.equal(self.timesteps, torch.arange(self.T)) else ", respaced"
        return f"DiscreteChain({self.sde!r}, T={self.T}{respaced})"


def respaced_timesteps(T: int, steps: int) -> np.ndarray:
    """``steps`` timesteps of ``0..T-1`` evenly strided from 0 to ``T - 1`` and rounded
    (improved-diffusion's ``space_timesteps(T, [steps])``, one section), increasing."""
    T, steps = _positive_int("T", T, 2), _positive_int("steps", steps, 2)
    if steps > T:
        raise ValueError(f"cannot take {steps} timesteps of a chain of {T}")
    stride, position, taken = (T - 1) / (steps - 1), 0.0, set()
    for _ in range(steps):   # accumulated, and rounded half to even, as improved-diffusion does
        taken.add(round(position))
        position += stride
    return np.array(sorted(taken), dtype=np.int64)


__all__ = ["DiscreteChain", "respaced_timesteps", "DEFAULT_CONTINUOUS_STEPS"]
