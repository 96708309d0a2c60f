"""The result of :func:`sdekit.solve`."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Solution:
    """What a solve returns.

    ``x``: the state at ``t1``. ``ts``: the ``save_at`` times when given, otherwise the time grid
    the solver stepped on (accepted steps). ``xs``: states at ``ts`` stacked on a new first
    dimension when ``save_at`` was given, else ``None``. ``grid``: the accepted step times always.
    ``nfe``: drift evaluations (score evaluations for score-based problems). ``n_steps``: accepted
    steps. ``n_rejected``: rejected adaptive steps.
    """

    x: torch.Tensor
    ts: torch.Tensor
    xs: torch.Tensor | None
    nfe: int
    n_steps: int
    n_rejected: int = 0
    grid: torch.Tensor | None = None
