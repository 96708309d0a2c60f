"""Problem definitions: :class:`SDE` and :class:`ODE`.

A problem is an object with ``drift(t, x)`` (and ``diffusion(t, x)`` for an SDE). ``x`` has any
shape ``(batch, *dims)``; ``t`` is a 0-d tensor on ``x``'s device, in ``x``'s dtype for a float32
or float64 state and in float32 for a half-precision one (:func:`function_time_dtype`); solvers
keep their grid and step sizes in :func:`time_dtype` (float64 on CPU, at least float32 elsewhere,
whatever ``x``'s dtype, so a bfloat16 state still has distinct times on a fine grid). Problems that declare
``batched_time = True`` also accept ``t`` of shape ``(batch,)`` (one time per sample), which lets
adaptive solvers keep a step size per sample.

Noise types (the shape ``diffusion`` returns, and how the Brownian increment ``dW`` enters):

============  ==========================  ======================  =======================
noise_type    diffusion(t, x) shape        Brownian shape          update term
============  ==========================  ======================  =======================
diagonal      ``x.shape``                 ``x.shape``             ``g * dW``
additive      ``x.shape`` (no x-dependence) ``x.shape``           ``g * dW``
scalar        ``x.shape``                 ``(batch,)``            ``g * dW`` (broadcast)
general       ``(*x.shape, m)``           ``(batch, m)``          ``sum_j g[..., j] dW_j``
============  ==========================  ======================  =======================

``m`` is the class attribute ``brownian_size`` of a general-noise SDE.
"""
from __future__ import annotations

import torch

from .errors import ShapeError

NOISE_TYPES = ("diagonal", "additive", "scalar", "general")


def time_dtype(dtype: torch.dtype, device: torch.device | str | None = None) -> torch.dtype:
    """The dtype of times, step sizes and schedule coefficients for a state of ``dtype`` on
    ``device``: float64 on CPU, float32 on MPS (no float64 there), elsewhere float64 for a float64
    state and float32 otherwise. A bfloat16 time grid of 1000 steps on ``[0, 1]`` has only 507
    distinct values (8 mantissa bits); the state keeps its own dtype, coefficients are cast to it
    where they multiply it."""
    kind = torch.device("cpu" if device is None else device).type
    if kind == "cpu":
        return torch.float64
    if kind == "mps":
        return torch.float32
    return torch.float64 if dtype == torch.float64 else torch.float32


def function_time_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the ``t`` handed to a problem's ``drift``/``diffusion`` and to a score function
    for a state of ``dtype``: the state's own dtype when it is float32 or float64 (what such user
    code, e.g. ``torch.cat([x, t[:, None]], 1)``, expects), float32 for a half-precision state,
    whose dtype cannot tell the times of a fine grid apart. The solver's own times and step sizes
    stay in :func:`time_dtype`."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def check_state_resolution(steps: int, dtype: torch.dtype) -> None:
    """Refuse more fixed steps than a state of ``dtype`` can carry: every step rounds the state to
    ``dtype``, so past ``1/eps`` steps (bfloat16: 128, float16: 1024) the rounding, about
    ``eps/2`` relative per step and systematic where an update is below half an ulp, dominates.
    Measured with float64 times: Euler–Maruyama on ``dx = -x dt + 0.1 dW`` in bfloat16 ends at mean
    0.381 (128 steps) and 0.98 (1000 steps) for the exact 0.368; diffusion samplers' sample means
    move by 0.02 at 1/eps steps and 0.06-0.2 at 1000 bfloat16 steps. :class:`ValueError`."""
    limit = int(1 / torch.finfo(dtype).eps)
    if steps > limit:
        raise ValueError(
            f"{steps} steps are too many for a {dtype} state: each step rounds the state to {dtype}, and "
            f"beyond 1/eps = {limit} steps the rounding dominates the result (updates smaller than half "
            f"an ulp are lost); take at most {limit} steps, or use a float32 state and cast the result")


class ODE:
    """An ordinary differential equation ``dx/dt = drift(t, x)``. Subclass and define ``drift``."""

    batched_time: bool = False

    def drift(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define drift(t, x)")


class SDE:
    """An Itô SDE ``dx = drift(t, x) dt + diffusion(t, x) dW``.

    Subclass, set ``noise_type`` (and ``brownian_size`` for general noise) and define ``drift`` and
    ``diffusion``. A problem may also define ``score(t, x)`` (the gradient of the log-density of its
    marginal) for the Langevin corrector of the predictor-corrector solver.
    """

    noise_type: str = "diagonal"
    brownian_size: int | None = None
    batched_time: bool = False

    def drift(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define drift(t, x)")

    def diffusion(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define diffusion(t, x)")


def is_sde(problem) -> bool:
    """Whether ``problem`` is stochastic (has a diffusion term)."""
    return hasattr(problem, "diffusion") and getattr(problem, "noise_type", None) is not None


def brownian_shape(problem, x_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the Brownian increment the SDE ``problem`` consumes for a state of ``x_shape``."""
    noise_type = problem.noise_type
    if noise_type in ("diagonal", "additive"):
        return tuple(x_shape)
    if noise_type == "scalar":
        return (x_shape[0],)
    if noise_type == "general":
        if not isinstance(problem.brownian_size, int) or problem.brownian_size < 1:
            raise ValueError(
                f"{type(problem).__name__} has noise_type='general' but brownian_size="
                f"{problem.brownian_size!r}; set the class attribute brownian_size to the number "
                "of Brownian motions m (diffusion returns shape (*x.shape, m))")
        return (x_shape[0], problem.brownian_size)
    raise ValueError(f"{type(problem).__name__}.noise_type={noise_type!r} is not one of {NOISE_TYPES}")


def diffusion_shape(problem, x_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape ``diffusion(t, x)`` must return for a state of ``x_shape``."""
    if problem.noise_type == "general":
        return (*x_shape, problem.brownian_size)
    return tuple(x_shape)


def elementwise_increment(noise_type: str, dW: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``dW`` shaped to multiply ``g`` elementwise (not for general noise): a scalar-noise
    ``(batch,)`` increment is broadcast over the state's dimensions; diagonal and additive
    increments already have the state's shape."""
    if noise_type == "scalar":
        return dW.reshape(dW.shape[0], *([1] * (x.dim() - 1)))
    return dW


def apply_diffusion(noise_type: str, g: torch.Tensor, dW: torch.Tensor) -> torch.Tensor:
    """The noise term ``g dW`` for the given noise type (shapes as in the module docstring)."""
    if noise_type == "general":
        return torch.einsum("b...m,bm->b...", g, dW)
    return g * elementwise_increment(noise_type, dW, g)


def check_output(name: str, problem, value, expected: tuple[int, ...],
                 dtype: torch.dtype | None = None) -> None:
    """Raise :class:`ShapeError` unless ``value`` is a tensor of shape ``expected`` (and, when
    ``dtype`` is given, :class:`TypeError` unless it has that dtype: the state's dtype is kept
    throughout a solve, so an output in another dtype would silently promote it)."""
    if not isinstance(value, torch.Tensor):
        raise ShapeError(f"{type(problem).__name__}.{name} returned {type(value).__name__}; "
                         f"expected a tensor of shape {tuple(expected)}")
    if tuple(value.shape) != tuple(expected):
        raise ShapeError(f"{type(problem).__name__}.{name} returned shape {tuple(value.shape)}; "
                         f"expected {tuple(expected)} (noise_type={getattr(problem, 'noise_type', None)!r}). "
                         "Return one value per state element, keeping the batch dimension first.")
    if dtype is not None and value.dtype != dtype:
        raise TypeError(f"{type(problem).__name__}.{name} returned {value.dtype} for a state of dtype "
                        f"{dtype}; return the state's dtype (sdekit keeps x0's dtype throughout), e.g. build "
                        "constants with torch.as_tensor(c, dtype=x.dtype), or pass x0 in the dtype you want")
