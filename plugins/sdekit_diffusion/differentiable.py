r"""One check that autograd differentiates a user's function correctly.

Several parts of the plugin differentiate a function the user wrote: :class:`MarginalSchedule
<sdekit_diffusion.schedules.MarginalSchedule>` differentiates ``alpha(t)`` and ``sigma(t)`` in
``t``, :func:`log_likelihood <sdekit_diffusion.log_likelihood>` differentiates ``score_fn(t, x)``
in ``x``. A function computed under ``torch.no_grad``, ``.detach()``-ed, or evaluated in numpy
(``np.interp``) gives autograd a zero or partial derivative and a silently wrong result (``f = 0``;
a log-likelihood off by nats). :func:`check_differentiable` compares autograd's directional
derivative with a central finite difference, row by row, and refuses the function when they
disagree on more than a fraction of the rows (a piecewise-linear function may disagree at the few
rows that straddle a kink).

For each row ``b`` of ``x`` (its first dimension), with a direction ``v`` and weights ``w`` of
``x``'s and ``fn(x)``'s shape, autograd gives :math:`w_b^\top J_b v_b` from one vector–Jacobian
product, the finite difference :math:`w_b^\top (fn(x + h v) - fn(x - h v))_b / 2h`.
"""
from __future__ import annotations

from typing import Callable

import torch


def directional_derivatives(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                            v: torch.Tensor, w: torch.Tensor, step: float):
    """``(autograd, finite difference, value)``: per-row :math:`w^\\top J v` both ways (module
    docstring) and ``fn(x)``."""
    with torch.inference_mode(False), torch.enable_grad():
        leaf = x.detach().clone().requires_grad_(True)
        value = fn(leaf)
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value, dtype=x.dtype, device=x.device)
        if value.requires_grad:
            (grad,) = torch.autograd.grad((value * w).sum(), leaf, allow_unused=True)
        else:
            grad = None
    autograd = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device) if grad is None \
        else (grad * v).reshape(x.shape[0], -1).sum(1)
    with torch.no_grad():
        plus = torch.as_tensor(fn(x + step * v), dtype=x.dtype, device=x.device)
        minus = torch.as_tensor(fn(x - step * v), dtype=x.dtype, device=x.device)
        finite = ((plus - minus) * w).reshape(x.shape[0], -1).sum(1) / (2 * step)
    return autograd, finite, value.detach()


def check_differentiable(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
                         name: str, needed_for: str, fix: str, v: torch.Tensor | None = None,
                         w: torch.Tensor | None = None, relative_step: float = 1e-6,
                         tolerance: float = 1e-3, max_fraction: float = 0.05) -> None:
    """:class:`ValueError` unless autograd's derivative of ``fn`` at ``x`` matches finite
    differences on all but ``max_fraction`` of the rows (module docstring). ``v``, ``w`` default
    to ones (for an elementwise function of a time tensor: its derivative at every time).
    ``name`` names the function, ``needed_for`` why its derivative is needed, ``fix`` the remedy."""
    v = torch.ones_like(x) if v is None else v
    w = torch.ones((), dtype=x.dtype, device=x.device) if w is None else w
    step = relative_step * max(1.0, float(x.detach().abs().max()))
    try:
        autograd, finite, value = directional_derivatives(fn, x, v, w, step)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"{name} could not be differentiated by autograd ({error}); "
                         f"{needed_for}. {fix}") from None
    scale = float(finite.abs().max()) + 1e-12 * (1.0 + float(value.abs().max()))
    mismatch = (autograd - finite).abs() > tolerance * scale
    if float(mismatch.double().mean()) <= max_fraction:
        return
    row = int(mismatch.nonzero()[0])
    raise ValueError(
        f"{name} changes with its input but autograd's derivative disagrees with finite "
        f"differences (row {row}: autograd {float(autograd[row]):.6g}, finite difference "
        f"{float(finite[row]):.6g}, on {float(mismatch.double().mean()):.0%} of the rows); "
        f"{needed_for}. {name} must be built from torch operations that autograd can follow "
        f"(no torch.no_grad, .detach(), numpy or np.interp). {fix}")
