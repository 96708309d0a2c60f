r"""Score functions: network parameterizations and moving a score between schedules.

A score function is ``score_fn(t, x) -> s`` with ``t`` of shape ``(batch,)`` and ``s`` of ``x``'s
shape, :math:`s \approx \nabla_x \log p_t(x)`. Networks are called ``net(x, t)`` and predict one of

- ``"score"``: :math:`s` itself;
- ``"eps"``: the noise, :math:`s = -\epsilon / \sigma` (Ho et al. 2020);
- ``"x0"``: the clean data, :math:`x_0 = (x + \sigma^2 s)/\alpha`, i.e. :math:`s = (\alpha x_0 - x)/\sigma^2`;
- ``"v"``: :math:`v = \alpha\epsilon - \sigma x_0` (Salimans & Ho 2022); with
  :math:`x = \alpha x_0 + \sigma\epsilon`,
  :math:`\epsilon = (\sigma x + \alpha v)/(\alpha^2+\sigma^2)`.

These formulas hold for any :math:`(\alpha, \sigma)`, not only variance-preserving ones.
"""
from __future__ import annotations

from typing import Callable

import torch

from .sde import DiffusionSDE, ScoreFunction, _broadcast_time, batch_time

PREDICTIONS = ("eps", "x0", "v", "score")


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; valid ones are "
                         f"{', '.join(repr(p) for p in PREDICTIONS)}")


def _alpha_sigma(sde: DiffusionSDE, t: torch.Tensor, x: torch.Tensor):
    t = batch_time(t, x)
    return _broadcast_time(sde._alpha(t), x), _broadcast_time(sde._sigma(t), x)


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


def as_score(net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], sde: DiffusionSDE,
             prediction: str = "eps") -> ScoreFunction:
    """Wrap a network ``net(x, t)`` predicting ``prediction`` into ``score_fn(t, x)``.

    ``t`` is passed to the network with shape ``(batch,)`` (a 0-d ``t`` is expanded).
    """
    _check_prediction(prediction)

    def score_fn(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = batch_time(t, x)
        return prediction_to_score(prediction, net(x, t), sde, t, x)

    score_fn.prediction = prediction
    return score_fn


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
        return sde._log_snr(torch.tensor([sde.t_max, sde.t_min], dtype=torch.float64))

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
        lam = target_sde._log_snr(t)
        t_source = source_sde._inverse_log_snr(lam).clamp(source_sde.t_min, source_sde.t_max)
        c = target_sde._alpha(t) / source_sde._alpha(t_source)
        c = _broadcast_time(c, x)
        return score_fn(t_source, x / c) / c

    return transformed
