r"""Score functions: network parameterizations, classifier-free guidance and moving a score between
schedules.

A score function is ``score_fn(t, x) -> s`` with ``t`` of shape ``(batch,)`` and ``s`` of ``x``'s
shape, :math:`s \approx \nabla_x \log p_t(x)`. Networks are called ``net(x, model_time(t))``
(:func:`as_score`; ``model_time`` is the identity for continuous schedules) and predict one of

- ``"score"``: :math:`s` itself;
- ``"eps"``: the noise, :math:`s = -\epsilon / \sigma` (Ho et al. 2020);
- ``"x0"``: the clean data, :math:`x_0 = (x + \sigma^2 s)/\alpha`, i.e. :math:`s = (\alpha x_0 - x)/\sigma^2`;
- ``"v"``: :math:`v = \alpha\epsilon - \sigma x_0` (Salimans & Ho 2022); with
  :math:`x = \alpha x_0 + \sigma\epsilon`,
  :math:`\epsilon = (\sigma x + \alpha v)/(\alpha^2+\sigma^2)`.

These formulas hold for any :math:`(\alpha, \sigma)`, not only variance-preserving ones.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import torch

from .sde import DiffusionSDE, ScoreFunction, append_dims, batch_time

PREDICTIONS = ("eps", "x0", "v", "score")


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; valid ones are "
                         f"{', '.join(repr(p) for p in PREDICTIONS)}")


def _alpha_sigma(sde: DiffusionSDE, t: torch.Tensor, x: torch.Tensor):
    t = batch_time(t, x)
    return append_dims(sde.schedule.alpha(t), x), append_dims(sde.schedule.sigma(t), x)


def prediction_to_score(prediction: str, output: torch.Tensor, sde: DiffusionSDE,
                        t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The score at ``(t, x)`` from a network ``output`` of kind ``prediction`` (module docstring)."""
    _check_prediction(prediction)
    if prediction == "score":
        return output
    alpha, sigma = _alpha_sigma(sde, t, x)
    if prediction == "eps":
        return -output / sigma
    if prediction == "x0":
        return (alpha * output - x) / sigma ** 2
    eps = (sigma * x + alpha * output) / (alpha ** 2 + sigma ** 2)   # prediction == "v"
    return -eps / sigma


def score_to_prediction(prediction: str, score: torch.Tensor, sde: DiffusionSDE,
                        t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`prediction_to_score`: what a ``prediction`` network should output."""
    _check_prediction(prediction)
    if prediction == "score":
        return score
    alpha, sigma = _alpha_sigma(sde, t, x)
    eps = -sigma * score
    x0 = (x + sigma ** 2 * score) / alpha
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    return alpha * eps - sigma * x0


def network_output(output: Any) -> torch.Tensor:
    """A network's prediction from what it returned: a tensor, an object with a ``.sample`` tensor
    (diffusers' ``UNet2DOutput``), or a tuple/list whose first element is the prediction
    (``return_dict=False``)."""
    if isinstance(output, torch.Tensor):
        return output
    sample = getattr(output, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"the network returned {type(output).__name__}; expected a tensor, an object "
                    "with a .sample tensor (diffusers' model outputs) or a tuple whose first "
                    "element is the prediction")


def as_score(net: Callable[[torch.Tensor, torch.Tensor], Any], sde: DiffusionSDE,
             prediction: str = "eps",
             model_time: Callable[[torch.Tensor], torch.Tensor] | None = None) -> ScoreFunction:
    """Wrap a network ``net(x, model_time(t))`` predicting ``prediction`` into ``score_fn(t, x)``.

    ``model_time`` maps the SDE's time ``t`` (shape ``(batch,)``; a 0-d ``t`` is expanded) to the
    network's time input; default ``sde.schedule.model_time``: the identity for continuous
    schedules, the timestep :math:`N t - 1` for a discrete table
    (:class:`~sdekit_diffusion.schedules.DiscreteSchedule`, as diffusers models expect). The network
    may return a tensor, an object with ``.sample`` or a tuple (:func:`network_output`).
    """
    _check_prediction(prediction)
    time_map = sde.schedule.model_time if model_time is None else model_time
    if not callable(time_map):
        raise TypeError(f"model_time must be a callable mapping t to the network's time input, "
                        f"got {type(model_time).__name__}")

    def score_fn(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = batch_time(t, x)
        return prediction_to_score(prediction, network_output(net(x, time_map(t))), sde, t, x)

    score_fn.prediction = prediction
    return score_fn


def guided(score_uncond: ScoreFunction, score_cond: ScoreFunction,
           scale: float) -> ScoreFunction:
    r"""Classifier-free guidance (Ho & Salimans 2022, eq. 6):

    .. math:: \tilde s(t, x) = s_\varnothing(t, x) + w\,\bigl(s_c(t, x) - s_\varnothing(t, x)\bigr)

    with :math:`w` = ``scale``, diffusers' ``guidance_scale`` convention (Ho & Salimans write
    :math:`(1 + w')\epsilon_c - w'\epsilon_\varnothing`, so :math:`w = 1 + w'`): ``scale = 0`` is
    the unconditional score, ``1`` the conditional one, ``> 1`` guides beyond it (e.g. 7.5, Stable
    Diffusion's default). At fixed :math:`(t, x)` the score is affine in each prediction
    (:math:`s = -\epsilon/\sigma`, :math:`s = (\alpha\hat x_0 - x)/\sigma^2`, ...), so this is
    exactly diffusers' ``pred_uncond + scale * (pred_cond - pred_uncond)`` for an eps, v or x0
    model.

    Two score calls per evaluation (a sampler counts the guided score once); ``scale`` 0 or 1
    returns ``score_uncond`` or ``score_cond`` itself (one call).
    """
    if not (callable(score_uncond) and callable(score_cond)):
        raise TypeError("score_uncond and score_cond must be score functions score_fn(t, x)")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite real number (the guidance weight), got {scale!r}")
    scale = float(scale)
    if scale == 0.0:
        return score_uncond
    if scale == 1.0:
        return score_cond

    def guided_score(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        uncond = score_uncond(t, x)
        return uncond + scale * (score_cond(t, x) - uncond)

    guided_score.scale = scale
    return guided_score


def transform_score(score_fn: ScoreFunction, source_sde: DiffusionSDE,
                    target_sde: DiffusionSDE) -> ScoreFunction:
    r"""Serve a score learned on ``source_sde`` for ``target_sde`` (same data, another schedule).

    Marginals with equal log-SNR are the same up to scale: at target time :math:`t'` take
    :math:`t` with :math:`\lambda_{source}(t) = \lambda_{target}(t')` and
    :math:`c = \alpha_{target}(t')/\alpha_{source}(t)`; then :math:`x' = c\,x` and

    .. math:: s'(t', x') = s(t, x'/c) / c .

    (Kingma et al. 2021, §5: the marginals are invariant to the schedule given the log-SNR
    end points.) :class:`ValueError` if the target's log-SNR range
    :math:`[\lambda'(t'_{max}), \lambda'(t'_{min})]` is not inside the source's.
    """
    def log_snr_range(sde: DiffusionSDE) -> torch.Tensor:
        return sde.schedule.log_snr(torch.tensor([sde.t_max, sde.t_min], dtype=torch.float64))

    src, tgt = log_snr_range(source_sde), log_snr_range(target_sde)
    (src_lo, src_hi), (tgt_lo, tgt_hi) = src.tolist(), tgt.tolist()
    slack = 1e-9 * (1 + max(abs(src_lo), abs(src_hi)))
    if tgt_lo < src_lo - slack or tgt_hi > src_hi + slack:
        raise ValueError(
            f"{target_sde!r} spans log-SNR [{tgt_lo:.6g}, {tgt_hi:.6g}], which leaves the range "
            f"[{src_lo:.6g}, {src_hi:.6g}] of {source_sde!r} the score was learned on; lower the "
            "source's t_min (or raise its t_max), or narrow the target's [t_min, t_max]")

    def transformed(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = batch_time(t, x)
        lam = target_sde.schedule.log_snr(t)
        t_source = source_sde.schedule.t_of_log_snr(lam).clamp(source_sde.t_min, source_sde.t_max)
        c = target_sde.schedule.alpha(t) / source_sde.schedule.alpha(t_source)
        c = append_dims(c, x)
        return score_fn(t_source, x / c) / c

    return transformed
