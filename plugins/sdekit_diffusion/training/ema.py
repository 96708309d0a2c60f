r"""The exponential moving average (EMA) of a network's weights, which samples should use.

After optimizer step ``n`` (counted from 1) every parameter :math:`\theta` of the live network moves its
average :math:`\bar\theta \leftarrow d_n \bar\theta + (1 - d_n)\theta` with
:math:`d_n = \min(d, (1 + n)/(10 + n))`: the warm-up of TensorFlow's ``ExponentialMovingAverage``
(``num_updates``), so that a short run is not dominated by its initial weights. Buffers are copied.
score_sde uses :math:`d = 0.9999`.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def averaged_copy(net: nn.Module) -> nn.Module:
    """A frozen copy of ``net`` (eval mode, no gradients) to hold the average."""
    return copy.deepcopy(net).eval().requires_grad_(False)


def decay_at(decay: float, step: int) -> float:
    """:math:`d_n = \\min(d, (1 + n)/(10 + n))` after step ``n``."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_average(average: nn.Module, net: nn.Module, decay: float) -> None:
    """:math:`\\bar\\theta \\leftarrow d\\,\\bar\\theta + (1 - d)\\,\\theta` for every parameter; buffers copied."""
    for mean, live in zip(average.parameters(), net.parameters()):
        mean.lerp_(live.detach(), 1 - decay)
    for mean, live in zip(average.buffers(), net.buffers()):
        mean.copy_(live)
