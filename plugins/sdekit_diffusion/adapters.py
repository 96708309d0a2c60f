r"""Pretrained models from other libraries as an sdekit ``(sde, score_fn)`` pair.

:func:`from_diffusers` takes a diffusers denoiser (``UNet2DModel``, ``UNet2DConditionModel`` or
anything called ``model(sample, timestep, **kwargs)``) and the scheduler it was trained with, and
returns the discrete-time SDE of the scheduler's table and the model's score:

- the SDE is :meth:`DiffusionSDE.from_alphas_cumprod <sdekit_diffusion.sde.DiffusionSDE.from_alphas_cumprod>`
  of ``scheduler.alphas_cumprod`` (DPM-Solver's convention: timestep ``n`` at
  :math:`t_n = (n+1)/N`, Lu et al. 2022, ``NoiseScheduleVP('discrete')``);
- the network is called at the timestep :math:`N t - 1` (``sde.schedule.model_time``: the integer
  timestep on diffusers' grids, fractional between them);
- its output is read as ``scheduler.config.prediction_type``: ``"epsilon"``
  (:math:`s = -\hat\epsilon/\sigma`), ``"v_prediction"`` (:math:`v = \alpha\epsilon - \sigma x_0`,
  Salimans & Ho 2022) or ``"sample"`` (:math:`\hat x_0`); see :mod:`sdekit_diffusion.score`;
- a learned-variance model (``scheduler.config.variance_type == "learned_range"``, ``2C`` output
  channels: the prediction, then :math:`v`; Nichol & Dhariwal 2021, eq. 15) gives a
  :class:`~sdekit_diffusion.variance.LearnedVarianceScore`: every sampler uses its prediction,
  and ``ancestral`` with ``variance="learned"`` also its :math:`v` (diffusers' ``DDPMScheduler``
  with ``variance_type="learned_range"``).

The schedulers' own ``timestep_spacing`` grids are ``skd.time_grid(sde, steps, "trailing" |
"leading" | "linspace")`` (:mod:`sdekit_diffusion.time_grids`).

diffusers is an optional dependency (``pip install -e ".[diffusers]"``); this module does not
import it: any object with the attributes read here works.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from .score import as_score, network_output
from .sde import DiffusionSDE, ScoreFunction
from .variance import LearnedVarianceScore

#: diffusers' ``prediction_type`` -> sdekit's prediction name (:data:`sdekit_diffusion.PREDICTIONS`)
DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
#: timesteps closer than this to an integer are snapped to it (float rounding of on-grid times)
SNAP = 1e-3
#: diffusers' ``variance_type`` values whose model output carries v (eq. 15's interpolation);
#: ``"learned"`` (the variance itself in the second half) has no counterpart in sdekit
LEARNED_VARIANCE_TYPES = ("learned_range",)


def _config_value(scheduler: Any, key: str, default: Any) -> Any:
    config = getattr(scheduler, "config", None)
    if config is None:
        return getattr(scheduler, key, default)
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def _parameter(model: Any):
    """The first parameter (or buffer) of ``model``, or ``None`` for a parameter-free callable."""
    for attribute in ("parameters", "buffers"):
        tensors = getattr(model, attribute, None)
        if callable(tensors):
            for tensor in tensors():
                return tensor
    return None


class DiffusersDenoiser:
    r"""A diffusers denoiser as a network ``net(x, timestep) -> prediction`` for :func:`as_score`.

    Per call: ``x`` and ``timestep`` move to the model's device and dtype (that of its first
    parameter; the timestep in float32 at least, as diffusers' sinusoidal embedding is float32),
    a timestep within :data:`SNAP` of an integer becomes that integer (grid times
    :math:`(n+1)/N` in float32 are off by up to :math:`1.2\cdot10^{-4}` timesteps at
    ``N = 4000``; so they reach the model as diffusers' integer timesteps),
    ``model(x, timestep, **model_kwargs)`` runs, its output is unwrapped (``.sample``, or the
    first element of a tuple), a learned-variance output of ``2 C`` channels keeps its first
    ``C`` (the mean prediction; diffusers' ``variance_type="learned" | "learned_range"``, Nichol &
    Dhariwal 2021), or all ``2 C`` with ``learned_variance=True`` (which then requires them, for
    :class:`~sdekit_diffusion.variance.LearnedVarianceScore`), and the result returns in ``x``'s
    dtype and device.

    ``grad``: ``None`` (default) records autograd through the model only when ``x`` requires
    grad (a likelihood's divergence, gradient guidance), so a sampling loop keeps no graph of the
    network's activations; ``True`` always (e.g. fine-tuning through a sampler), ``False`` never.
    """

    def __init__(self, model: Callable, model_kwargs: dict | None = None, *,
                 grad: bool | None = None, learned_variance: bool = False):
        if not callable(model):
            raise TypeError(f"model must be callable as model(sample, timestep, **kwargs), got "
                            f"{type(model).__name__}")
        if grad not in (None, True, False):
            raise ValueError(f"grad must be None (auto), True or False, got {grad!r}")
        if not isinstance(learned_variance, bool):
            raise ValueError(f"learned_variance must be True or False, got {learned_variance!r}")
        self.model = model
        self.model_kwargs = dict(model_kwargs or {})
        self.grad = grad
        self.learned_variance = learned_variance

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        reference = _parameter(self.model)
        device = reference.device if reference is not None else x.device
        dtype = reference.dtype if reference is not None and reference.is_floating_point() else x.dtype
        time_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        record = torch.is_grad_enabled() and (x.requires_grad if self.grad is None else self.grad)
        timestep = timestep.to(device=device, dtype=time_dtype)
        nearest = torch.round(timestep)
        timestep = torch.where((timestep - nearest).abs() <= SNAP, nearest, timestep)
        with torch.set_grad_enabled(record):
            output = self.model(x.to(device=device, dtype=dtype), timestep, **self.model_kwargs)
        output = network_output(output)
        channels = x.shape[1] if x.dim() > 1 else None
        doubled = channels is not None and output.dim() == x.dim() and output.shape[1] == 2 * channels
        if self.learned_variance:
            if not doubled or output.shape[2:] != x.shape[2:] or output.shape[0] != x.shape[0]:
                raise ValueError(
                    f"the model returned shape {tuple(output.shape)} for a sample of shape {tuple(x.shape)}; "
                    f"a learned-variance model (variance_type='learned_range') must return twice the "
                    f"sample's channels, {(x.shape[0], 2 * x.shape[1], *x.shape[2:])}: check out_channels "
                    "of the model's config, or the scheduler's variance_type")
            return output.to(device=x.device, dtype=x.dtype)
        if doubled:
            output = output[:, :channels]          # learned variance: mean prediction first
        if output.shape != x.shape:
            raise ValueError(
                f"the model returned shape {tuple(output.shape)} for a sample of shape "
                f"{tuple(x.shape)}; from_diffusers needs the prediction of the sample's shape (or "
                f"2x its channels for a learned-variance model): check in_channels/out_channels "
                "and sample_size of the model's config")
        return output.to(device=x.device, dtype=x.dtype)


def from_diffusers(model: Callable, scheduler: Any, *, prediction_type: str | None = None,
                   variance_type: str | None = None, quantize: bool = False, grad: bool | None = None,
                   **model_kwargs) -> tuple[DiffusionSDE, ScoreFunction]:
    r"""``(sde, score_fn)`` for a diffusers model and its scheduler (module docstring).

    Args:
        model: e.g. ``UNet2DModel`` / ``UNet2DConditionModel``, called
            ``model(sample, timestep, **model_kwargs)``; returns a tensor, an object with
            ``.sample`` or a tuple.
        scheduler: any scheduler with ``alphas_cumprod`` (``DDPMScheduler``, ``DDIMScheduler``,
            ``DPMSolverMultistepScheduler``, ...); ``scheduler.config.prediction_type`` says what the
            model predicts. A zero-terminal-SNR table (``rescale_betas_zero_snr=True``) works: its
            last :math:`\bar\alpha = 0` becomes :math:`2^{-24}`, as in diffusers' multistep
            schedulers, or a smaller value where that would not keep the log-SNR decreasing
            (:class:`~sdekit_diffusion.schedules.DiscreteSchedule`).
        prediction_type: overrides the scheduler's (``"epsilon"``, ``"v_prediction"``, ``"sample"``).
        variance_type: overrides the scheduler's ``variance_type``; ``"learned_range"`` makes the
            score a :class:`~sdekit_diffusion.variance.LearnedVarianceScore` of the model's ``2C``
            channels (``ancestral`` with ``variance="learned"`` reads its ``v``); any other value
            (``"fixed_small"``, ``"learned"``, ...) uses the first ``C`` channels of a ``2C``
            output as the prediction and ignores the rest.
        quantize: round the network's timestep to the nearest integer (default: fractional
            timesteps between grid points, as DPM-Solver does; diffusers' grids are integer anyway).
        grad: autograd through the model (see :class:`DiffusersDenoiser`; default: only when the
            state requires grad).
        model_kwargs: conditioning passed to every call, e.g. ``encoder_hidden_states=``,
            ``class_labels=``, ``added_cond_kwargs=``. For classifier-free guidance build one
            score per condition and combine them with
            :func:`sdekit_diffusion.guided`.

    Returns:
        ``sde`` (a :class:`DiffusionSDE` on a :class:`~sdekit_diffusion.schedules.DiscreteSchedule`,
        ``t_min = 1/N``, ``t_max = 1``) and ``score_fn(t, x)`` (``t`` of shape ``(batch,)``), in
        ``x``'s dtype whatever the model's; a
        :class:`~sdekit_diffusion.variance.LearnedVarianceScore` for ``variance_type="learned_range"``.

    The scheduler's sampling options (``clip_sample``, ``thresholding``) are not applied: sdekit
    integrates the model's score as it is. Example::

        unet = UNet2DModel.from_pretrained(path, subfolder="unet")
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
        sde, score = skd.adapters.from_diffusers(unet, scheduler)
        x = skd.sample(sde, score, (16, 3, 32, 32), solver="dpm_solver++_2m", steps=20,
                       time_grid="trailing").x
    """
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if alphas_cumprod is None:
        raise TypeError(
            f"{type(scheduler).__name__} has no alphas_cumprod: from_diffusers needs the scheduler "
            "of a discrete variance-preserving (DDPM-type) model, e.g. DDPMScheduler, "
            "DDIMScheduler or DPMSolverMultistepScheduler. For another marginal build the SDE "
            "with skd.DiffusionSDE.from_marginal and wrap the network with skd.as_score")
    if prediction_type is None:
        prediction_type = _config_value(scheduler, "prediction_type", "epsilon")
    if prediction_type not in DIFFUSERS_PREDICTIONS:
        raise ValueError(f"prediction_type {prediction_type!r} is not supported; from_diffusers "
                         f"reads {', '.join(repr(p) for p in DIFFUSERS_PREDICTIONS)} (diffusers' "
                         "names for noise, velocity and data prediction)")
    if _config_value(scheduler, "rescale_betas_zero_snr", False):
        # zero terminal SNR: diffusers' multistep schedulers store 2^-24 in place of the last 0,
        # DDIM/DDPM keep the 0; give DiscreteSchedule the 0 and let it choose the stand-in
        alphas_cumprod = torch.as_tensor(alphas_cumprod).detach().cpu().to(torch.float64).clone()
        alphas_cumprod[-1] = 0.0
    if variance_type is None:
        variance_type = _config_value(scheduler, "variance_type", None)
    if variance_type is not None and not isinstance(variance_type, str):
        raise ValueError(f"variance_type must be a diffusers variance_type name such as 'learned_range' or "
                         f"'fixed_small', got {variance_type!r}")
    learned = variance_type in LEARNED_VARIANCE_TYPES
    sde = DiffusionSDE.from_alphas_cumprod(alphas_cumprod, quantize=quantize)
    denoiser = DiffusersDenoiser(model, model_kwargs, grad=grad, learned_variance=learned)
    prediction = DIFFUSERS_PREDICTIONS[prediction_type]
    score_fn = LearnedVarianceScore(denoiser, sde, prediction) if learned else as_score(denoiser, sde, prediction)
    return sde, score_fn


__all__ = ["from_diffusers", "DiffusersDenoiser", "DIFFUSERS_PREDICTIONS", "LEARNED_VARIANCE_TYPES"]
