r"""Peer samplers for the few-step benchmark (``benchmarks/few_step.py``): diffusers' schedulers and,
when installed, k-diffusion's samplers, each driven by an sdekit_diffusion score ``score_fn(t, x)``
of a variance-preserving :class:`sdekit_diffusion.DiffusionSDE` (:math:`\alpha^2 + \sigma^2 = 1`).

A peer is a :class:`Peer`: ``peer.run(sde, score_fn, x_T, steps) -> PeerRun`` integrates the
probability-flow ODE from ``x_T`` at ``sde.t_max`` to ``sde.t_min`` in ``steps`` model calls and
returns the state in sdekit's variable :math:`x` (the VP state), the calls made (counted, not
assumed) and the grid of times it stepped through. Nothing of sdekit's samplers is used or copied
here: the peers' own code does every update; the adapters only translate the model.

Model translation, at the noise level the peer's update uses (so the exact score is evaluated
exactly where the peer believes it is): the time :math:`t` with :math:`\lambda(t) = -\log
\tilde\sigma` for the peer's :math:`\tilde\sigma = \sigma/\alpha` (``sde.inverse_log_snr``), then
:math:`\hat\epsilon = -\sigma s(t, x)`, :math:`\hat x_0 = (x + \sigma^2 s)/\alpha` and
:math:`v = \alpha\hat\epsilon - \sigma\hat x_0` (Salimans & Ho 2022) as each peer wants.

diffusers (``DPMSolverMultistepScheduler`` 2M/3M, ``UniPCMultistepScheduler`` bh1/bh2 of order 2
and 3, ``DEISMultistepScheduler`` order 2 and 3: epsilon prediction on a table ``trained_betas``
whose ``alphas_cumprod`` are :math:`\alpha(t_n)^2` at :math:`t_n = (n+1)/N`, :math:`N = 1000`,
i.e. the continuous schedule at DPM-Solver's discrete times, so timestep ``n`` is time
:math:`t_n` and ``sde.t_min = 1/N`` is timestep 0; ``final_sigmas_type="sigma_min"`` (DEIS has no
such option and always ends there) so they stop at ``t_min`` like every other method):

- spacings ``linspace`` (diffusers' default) and ``trailing`` (Lin et al. 2024), and the
  ``use_karras_sigmas`` grid (Karras et al. 2022, :math:`\rho = 7`); DPM-Solver++ also with
  ``use_lu_lambdas`` (uniform log-SNR, Lu et al. 2022). ``leading`` is left out: it starts below
  ``t_max``, where ``x_T`` is not.
- ``alphas_cumprod`` are float32 in diffusers: near 1 (small ``t``) they resolve
  :math:`\sigma^2 = 1 - \bar\alpha` to ~6e-8 absolute, so its last noise level misses
  :math:`\tilde\sigma(t_{min})` by ~1.2e-4 relative (the first, at ``t_max``, by ~1e-6). The
  adapter replaces ``scheduler.sigmas`` by their float64 values with those two ends set exactly
  (:func:`_exact_ends`, which refuses a list that ends more than 1e-3 away), so every peer
  integrates over exactly ``[t_min, t_max]`` and one reference serves all methods; the interior
  levels stay diffusers' own (the model is evaluated at them); UniPC then runs in float64 (``tests/plugins/
  test_few_step_samplers.py`` does the same), DPM-Solver++ upcasts to float32 (its ``step`` casts
  the sample), DEIS keeps the sample's dtype.
- The karras and lu lists of ``set_timesteps(n)`` are ``n`` noise levels from
  :math:`\tilde\sigma_{max}` down to :math:`\tilde\sigma_{min}` inclusive, and
  ``final_sigmas_type="sigma_min"`` (DEIS: always) appends :math:`\tilde\sigma_{min}` once more: the last step has
  length zero and spends a model call on nothing. The adapter asks for ``steps + 1`` levels and
  drops that empty step (``timesteps[:steps]``, ``sigmas[:steps + 1]``), so these peers get
  ``steps`` real steps for ``steps`` calls, as the others.
- ``lower_order_final=True`` (diffusers' default: DPM-Solver++ lowers the order of the last steps
  below 15 steps, UniPC at every count); the model's ``timestep`` argument is ignored (karras and
  lu timesteps are rounded to integers in diffusers while the update uses the unrounded sigma).

``IPNDMScheduler`` (diffusers' port of crowsonkb's v-diffusion iPNDM: constant-coefficient
Adams–Bashforth of order up to 4 on :math:`\hat\epsilon`, DDIM transfer, v-prediction input) takes its
per-step noise levels as ``trained_betas`` (:math:`\sigma_i` of the VP state, ``steps + 1`` of
them); it runs here on each of sdekit's four continuous grids (:data:`sdekit_diffusion.GRIDS`,
``time_grid``), e.g. the DEIS paper's time-quadratic one.

k-diffusion (``sample_euler``, ``sample_heun``, ``sample_dpm_2``, ``sample_lms``,
``sample_dpmpp_2m`` on ``get_sigmas_karras`` and ``get_sigmas_exponential``) works in the VE form
:math:`y = x/\alpha`, :math:`\tilde\sigma` with a denoiser :math:`D(y, \tilde\sigma) = \hat x_0`;
its lists drop their trailing 0 to stop at ``t_min`` (without it Heun and DPM-2 take two
evaluations on every step). k-diffusion 0.1.1.post1 needs ``setuptools<81`` beside it and pulls a
CUDA torch; when it does not import its rows are skipped with a note.

``Peer.twin``: the sdekit sampler and options that implement the same method (diffusers'
DPM-Solver++ 2M = ``dpm_solver++_2m``, UniPC = ``unipc`` with the same order, variant and
``lower_order_final=True``, IPNDM = ``ipndm`` with ``variable_step=False``), run by the benchmark on
the peer's own grid to show that a difference between the two rows is the grid or the options, not
the arithmetic. diffusers' 3M (the half second difference as written by its authors, see
DESIGN.md) and DEIS (:math:`\rho`AB, not sdekit's tAB) have none.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

import sdekit_diffusion as skd
from sdekit_diffusion.sde import append_dims

TRAIN_TIMESTEPS = 1000       # diffusers' discrete table (DDPM's N = 1000; t_n = (n + 1)/N)
END_TOLERANCE = 1e-3         # relative miss of a peer's first/last noise level that _exact_ends accepts
VP_TOLERANCE = 1e-9          # |alpha^2 + sigma^2 - 1| below which a schedule counts as variance-preserving


@dataclass(frozen=True)
class PeerRun:
    """One peer solve: ``x`` (VP state at ``ts[-1]``, float64), ``nfe`` (model calls counted),
    ``ts`` (the times of the noise levels it stepped through, float64, decreasing)."""
    x: torch.Tensor
    nfe: int
    ts: torch.Tensor


@dataclass(frozen=True)
class Peer:
    """A peer sampler: ``run(sde, score_fn, x_T, steps) -> PeerRun``; ``twin``: ``(sdekit sampler,
    options)`` of the same method, or ``None``."""
    method: str
    library: str
    run: Callable[..., PeerRun]
    min_steps: int = 1
    twin: tuple[str, dict] | None = None
    options: dict = field(default_factory=dict)


class _Counted:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


def check_variance_preserving(sde) -> None:
    """:class:`ValueError` unless ``alpha^2 + sigma^2 = 1`` on ``[t_min, t_max]`` (diffusers' tables
    and IPNDM's ``alphas = sqrt(1 - betas^2)`` assume it)."""
    t = torch.linspace(sde.t_min, sde.t_max, 33, dtype=torch.float64)
    gap = float((sde.alpha(t) ** 2 + sde.sigma(t) ** 2 - 1).abs().max())
    if gap > VP_TOLERANCE:
        raise ValueError(f"the peers need a variance-preserving SDE (alpha^2 + sigma^2 = 1); {sde!r} is off "
                         f"by {gap:.2e}")


def sigma_ve(sde, t) -> torch.Tensor:
    r""":math:`\tilde\sigma = \sigma/\alpha = e^{-\lambda(t)}` (float64)."""
    return torch.exp(-sde.log_snr(torch.as_tensor(t, dtype=torch.float64)))


def time_of_sigma_ve(sde, levels: torch.Tensor) -> torch.Tensor:
    r"""The times with :math:`\tilde\sigma(t) =` ``levels`` (float64)."""
    return sde.inverse_log_snr(-torch.log(levels.double()))


def _exact_ends(sde, levels: torch.Tensor) -> torch.Tensor:
    r"""``levels`` in float64 with the first set to :math:`\tilde\sigma(t_{max})` and the last to
    :math:`\tilde\sigma(t_{min})`; :class:`ValueError` if either was more than
    :data:`END_TOLERANCE` (relative) away."""
    levels = levels.double().clone()
    for index, t in ((0, sde.t_max), (-1, sde.t_min)):
        exact = sigma_ve(sde, t)
        if abs(float(levels[index] / exact) - 1) > END_TOLERANCE:
            raise ValueError(f"the peer's noise levels end at {float(levels[index]):.6g}, not at "
                             f"sigma_ve({t}) = {float(exact):.6g}")
        levels[index] = exact
    return levels


def _model(sde, score_fn, t: torch.Tensor, x: torch.Tensor):
    r"""``(eps, x0, alpha, sigma)`` of the score at time ``t`` (0-d) for the VP state ``x``."""
    t_batch = t.to(x.dtype).expand(x.shape[0])
    alpha, sigma = sde.alpha(t_batch), sde.sigma(t_batch)
    score = score_fn(t_batch, x)
    eps = -append_dims(sigma, x) * score
    x0 = (x + append_dims(sigma ** 2, x) * score) / append_dims(alpha, x)
    return eps, x0, append_dims(alpha, x), append_dims(sigma, x)


# -- diffusers -------------------------------------------------------------------------------------

def diffusers_trained_betas(sde):
    r"""The betas whose ``alphas_cumprod`` are :math:`\alpha(t_n)^2`, :math:`t_n = (n+1)/N`."""
    t = torch.arange(1, TRAIN_TIMESTEPS + 1, dtype=torch.float64) / TRAIN_TIMESTEPS
    if abs(sde.t_min - t[0].item()) > 1e-12 or abs(sde.t_max - 1.0) > 1e-12:
        raise ValueError(f"the diffusers peers need t_min = 1/{TRAIN_TIMESTEPS}, t_max = 1 (timestep n at "
                         f"t = (n+1)/{TRAIN_TIMESTEPS}); {sde!r} has [{sde.t_min}, {sde.t_max}]")
    alphas_cumprod = sde.alpha(t) ** 2
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    return (1.0 - alphas_cumprod / previous).numpy()


def _multistep_run(class_name: str, config: dict, grid: str):
    """``run`` of a diffusers multistep scheduler (epsilon prediction) on ``grid``: a spacing, or
    ``"karras"`` / ``"lu"`` (its sigma lists, the empty last step dropped)."""
    def run(sde, score_fn, x_T, steps) -> PeerRun:
        import diffusers
        check_variance_preserving(sde)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)   # UniPC's set_timesteps fails under float64
        try:
            options = dict(config)
            if grid == "karras":
                options["use_karras_sigmas"] = True
            elif grid == "lu":
                options["use_lu_lambdas"] = True
            else:
                options["timestep_spacing"] = grid
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)   # diffusers' own numpy-2 notice
                if class_name != "DEISMultistepScheduler":   # DEIS always ends at sigma_min
                    options["final_sigmas_type"] = "sigma_min"
                scheduler = getattr(diffusers, class_name)(
                    num_train_timesteps=TRAIN_TIMESTEPS, trained_betas=diffusers_trained_betas(sde),
                    prediction_type="epsilon", lower_order_final=True, **options)
                if grid in ("karras", "lu"):
                    scheduler.set_timesteps(steps + 1)
                    scheduler.timesteps = scheduler.timesteps[:steps]
                    scheduler.sigmas = scheduler.sigmas[:steps + 1]
                else:
                    scheduler.set_timesteps(steps)
            levels = _exact_ends(sde, scheduler.sigmas)
            scheduler.sigmas = levels
            ts = time_of_sigma_ve(sde, levels)

            def eps_model(x):
                return _model(sde, score_fn, ts[scheduler.step_index or 0], x)[0]

            model = _Counted(eps_model)
            x = x_T.double()
            for timestep in scheduler.timesteps:
                x = scheduler.step(model(x), timestep, x).prev_sample
            return PeerRun(x.double(), model.calls, ts)
        finally:
            torch.set_default_dtype(previous)
    return run


def _ipndm_run(grid: str):
    """``run`` of diffusers' ``IPNDMScheduler`` on sdekit's time grid ``grid``."""
    def run(sde, score_fn, x_T, steps) -> PeerRun:
        import diffusers
        check_variance_preserving(sde)
        ts = skd.time_grid(sde, steps, grid)
        scheduler = diffusers.IPNDMScheduler(num_train_timesteps=TRAIN_TIMESTEPS,
                                             trained_betas=sde.sigma(ts).numpy())
        scheduler.set_timesteps(steps)

        def v_model(x):
            eps, x0, alpha, sigma = _model(sde, score_fn, ts[scheduler.step_index or 0], x)
            return alpha * eps - sigma * x0

        model = _Counted(v_model)
        x = x_T.double()
        for timestep in scheduler.timesteps:
            x = scheduler.step(model(x), timestep, x).prev_sample
        return PeerRun(x.double(), model.calls, ts)
    return run


def diffusers_peers() -> list[Peer]:
    """Every diffusers configuration of the module docstring."""
    peers = []
    for order in (2, 3):
        twin = ("dpm_solver++_2m", {}) if order == 2 else None
        for grid in ("linspace", "trailing", "karras", "lu"):
            peers.append(Peer(f"diffusers DPMSolverMultistep {order}M ({grid})", "diffusers",
                              _multistep_run("DPMSolverMultistepScheduler",
                                             dict(solver_order=order, algorithm_type="dpmsolver++"), grid),
                              min_steps=1, twin=twin, options=dict(solver_order=order, grid=grid)))
    for variant in ("bh1", "bh2"):
        for order in (2, 3):
            for grid in ("linspace", "trailing", "karras"):
                peers.append(Peer(f"diffusers UniPCMultistep {variant} order {order} ({grid})", "diffusers",
                                  _multistep_run("UniPCMultistepScheduler",
                                                 dict(solver_order=order, solver_type=variant), grid),
                                  min_steps=1,
                                  twin=("unipc", dict(order=order, variant=variant, lower_order_final=True)),
                                  options=dict(solver_order=order, solver_type=variant, grid=grid)))
    for order in (2, 3):
        for grid in ("linspace", "trailing", "karras"):
            peers.append(Peer(f"diffusers DEISMultistep order {order} ({grid})", "diffusers",
                              _multistep_run("DEISMultistepScheduler", dict(solver_order=order), grid),
                              options=dict(solver_order=order, grid=grid)))
    for grid in skd.GRIDS:
        peers.append(Peer(f"diffusers IPNDM ({grid})", "diffusers", _ipndm_run(grid),
                          twin=("ipndm", dict(variable_step=False)), options=dict(grid=grid)))
    return peers


# -- k-diffusion -----------------------------------------------------------------------------------

KDIFFUSION_SAMPLERS = ("sample_euler", "sample_heun", "sample_dpm_2", "sample_lms", "sample_dpmpp_2m")


def _kdiffusion_run(sampler_name: str, schedule: str):
    def run(sde, score_fn, x_T, steps) -> PeerRun:
        from k_diffusion import sampling
        s_min, s_max = float(sigma_ve(sde, sde.t_min)), float(sigma_ve(sde, sde.t_max))
        make = sampling.get_sigmas_karras if schedule == "karras" else sampling.get_sigmas_exponential
        levels = _exact_ends(sde, make(steps + 1, s_min, s_max, device="cpu")[:-1].double())
        alpha_T, alpha_0 = sde.alpha(torch.tensor(sde.t_max)), sde.alpha(torch.tensor(sde.t_min))

        def denoiser(y, level, **_):
            t = time_of_sigma_ve(sde, torch.as_tensor(level, dtype=torch.float64).reshape(-1)[:1])[0]
            alpha = sde.alpha(t)
            return _model(sde, score_fn, t, alpha * y)[1]

        model = _Counted(denoiser)
        y = getattr(sampling, sampler_name)(model, x_T.double() / alpha_T, levels, disable=True)
        return PeerRun(alpha_0 * y, model.calls, time_of_sigma_ve(sde, levels))
    return run


def kdiffusion_peers() -> list[Peer]:
    return [Peer(f"k-diffusion {name[len('sample_'):]} ({schedule})", "k-diffusion", _kdiffusion_run(name, schedule))
            for name in KDIFFUSION_SAMPLERS for schedule in ("karras", "exponential")]


# -- all -------------------------------------------------------------------------------------------

def available_peers(libraries=("diffusers", "k-diffusion")) -> tuple[list[Peer], list[str]]:
    """``(peers, notes)``: the peers of the installed ``libraries``; a note names each library that did
    not import, and why."""
    peers, notes = [], []
    for library, module, make in (("diffusers", "diffusers", diffusers_peers),
                                  ("k-diffusion", "k_diffusion", kdiffusion_peers)):
        if library not in libraries:
            continue
        try:
            __import__(module)
        except Exception as error:   # noqa: BLE001 - any import failure means "peer missing"
            notes.append(f"{library} skipped: {type(error).__name__}: {error}")
            continue
        peers += make()
    return peers, notes


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max |b|`` (for the twin checks)."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(math.ulp(1.0)))
