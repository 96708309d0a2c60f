r"""The learned reverse variance of Improved DDPM (Nichol & Dhariwal 2021, §3.1, eq. 15).

A network with ``learn_variance=True`` returns ``2C`` channels along axis 1 for a state of ``C``
channels (``C`` features for vectors): first its prediction (``eps``, ``x0`` or ``v``), then
:math:`v`, which sets the variance of the reverse step from timestep ``n`` by interpolating the
logarithms of the two natural choices, :math:`\beta_n` (the forward step's variance, an upper
bound) and :math:`\tilde\beta_n` (the posterior's, a lower bound):

.. math:: \Sigma_\theta(x_n, n) = \exp\bigl(v' \log\beta_n + (1 - v')\log\tilde\beta_n\bigr),
          \qquad v' = \frac{v + 1}{2},

so :math:`v = -1` is :math:`\tilde\beta_n` and :math:`v = 1` is :math:`\beta_n`. This is
improved-diffusion's ``LEARNED_RANGE`` (``frac = (model_var_values + 1) / 2``) and diffusers'
``variance_type="learned_range"``; like both (and the paper: "we did not apply any constraints on
v") ``v`` is not clamped.

Sampling with it: :class:`LearnedVarianceScore` is the score function of such a network. Called as
``score_fn(t, x)`` it returns the score from the first ``C`` channels, so every sampler can use it;
after each call it keeps that call's ``v`` in :attr:`LearnedVarianceScore.last_v`, which the
``ancestral`` sampler with ``variance="learned"`` reads right after its score call: one network
evaluation per step, counted once. :meth:`Trainer.score_fn
<sdekit_diffusion.training.Trainer.score_fn>` returns one for a network that learns its variance.
"""
from __future__ import annotations

from typing import Callable

import torch

from .score import PREDICTIONS, network_output, prediction_to_score
from .sde import DiffusionSDE, batch_time

VARIANCES = ("beta_tilde", "beta", "learned")


def split_output(output: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prediction, v)``: the two halves, along axis 1, of a learned-variance network's output for
    the state ``x``; :class:`ValueError` unless the output has twice ``x``'s channels."""
    expected = (x.shape[0], 2 * x.shape[1], *x.shape[2:])
    if tuple(output.shape) != expected:
        raise ValueError(f"a learned-variance network must return shape {expected} (the prediction, then v, "
                         f"along axis 1) for input {tuple(x.shape)}, got {tuple(output.shape)}")
    prediction, v = output.chunk(2, dim=1)
    return prediction, v


def interpolated_log_variance(v: torch.Tensor, log_beta: torch.Tensor,
                              log_beta_tilde: torch.Tensor) -> torch.Tensor:
    r""":math:`\log\Sigma = v'\log\beta + (1 - v')\log\tilde\beta`, :math:`v' = (v + 1)/2` (eq. 15)."""
    fraction = (v + 1) / 2
    return fraction * log_beta + (1 - fraction) * log_beta_tilde


class LearnedVarianceScore:
    """``score_fn(t, x)`` of a network ``net(x, model_time(t))`` with learned variance (module docstring).

    ``prediction``: what the first ``C`` channels hold (``"eps"``, ``"x0"``, ``"v"``, ``"score"``);
    ``model_time``: as in :func:`~sdekit_diffusion.as_score` (default ``sde.schedule.model_time``).
    ``last_v``: the variance channels of the most recent call (``None`` before the first).
    """

    def __init__(self, net: Callable, sde: DiffusionSDE, prediction: str = "eps",
                 model_time: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; valid ones are {', '.join(map(repr, PREDICTIONS))}")
        if not callable(net):
            raise TypeError("net must be a callable net(x, t) returning 2C channels")
        self.net, self.sde, self.prediction = net, sde, prediction
        self.model_time = sde.schedule.model_time if model_time is None else model_time
        self.last_v: torch.Tensor | None = None

    def __call__(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = batch_time(t, x)
        prediction, v = split_output(network_output(self.net(x, self.model_time(t))), x)
        self.last_v = v
        return prediction_to_score(self.prediction, prediction, self.sde, t, x)


__all__ = ["VARIANCES", "LearnedVarianceScore", "split_output", "interpolated_log_variance"]
