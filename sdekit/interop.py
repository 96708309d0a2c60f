"""Adapters to and from torchsde and torchdiffeq.

``to_torchsde(sde)`` gives an object ``torchsde.sdeint`` accepts (``f``, ``g``, ``noise_type``,
``sde_type="ito"``) with states flattened to the ``(batch, d)`` torchsde requires;
``to_torchsde_brownian(tree)`` lets torchsde replay a :class:`sdekit.BrownianTree`, so both libraries
can be run on the same Brownian path; ``to_torchdiffeq(ode)`` gives a ``func(t, y)`` for
``torchdiffeq.odeint``.
"""
from __future__ import annotations

import math

import torch

# sdekit noise type -> torchsde noise type (sdekit's "additive" is elementwise, torchsde's is a matrix)
_TORCHSDE_NOISE = {"diagonal": "diagonal", "additive": "diagonal", "scalar": "scalar", "general": "general"}


class _TorchSDEAdapter(torch.nn.Module):
    sde_type = "ito"

    def __init__(self, sde, state_shape: tuple[int, ...] | None):
        super().__init__()
        self.sde = sde
        self.noise_type = _TORCHSDE_NOISE[sde.noise_type]
        self.state_shape = None if state_shape is None else tuple(state_shape)

    def _unflatten(self, y):
        return y if self.state_shape is None else y.reshape(y.shape[0], *self.state_shape)

    def f(self, t, y):
        return self.sde.drift(t, self._unflatten(y)).reshape(y.shape[0], -1)

    def g(self, t, y):
        g = self.sde.diffusion(t, self._unflatten(y))
        if self.sde.noise_type == "general":
            return g.reshape(y.shape[0], -1, g.shape[-1])
        if self.sde.noise_type == "scalar":
            return g.reshape(y.shape[0], -1, 1)
        return g.reshape(y.shape[0], -1)


def to_torchsde(sde, state_shape: tuple[int, ...] | None = None) -> torch.nn.Module:
    """Wrap an :class:`sdekit.SDE` for ``torchsde.sdeint``.

    ``state_shape`` is the shape of one sample (``x.shape[1:]``) when it is not already a vector:
    torchsde integrates flattened ``(batch, d)`` states and the adapter reshapes them back.
    """
    return _TorchSDEAdapter(sde, state_shape)


def to_torchdiffeq(ode):
    """Wrap an :class:`sdekit.ODE` as the ``func(t, y)`` that ``torchdiffeq.odeint`` integrates."""

    def func(t, y):
        return ode.drift(t, y)

    return func


def to_torchsde_brownian(tree):
    """Expose a :class:`sdekit.BrownianTree` as a ``torchsde`` Brownian object (``bm=`` of
    ``torchsde.sdeint``), so that torchsde and sdekit solve on the same path. torchsde needs a 2-D
    ``(batch, channels)`` shape: a scalar-noise tree of shape ``(batch,)`` appears as ``(batch, 1)``."""
    from torchsde import BaseBrownian

    shape = tuple(tree.shape) if len(tree.shape) == 2 else (tree.shape[0], int(math.prod(tree.shape[1:])))

    class _Brownian(BaseBrownian):
        def __call__(self, ta, tb=None, return_U=False, return_A=False):
            if return_U or return_A:
                raise ValueError("sdekit's tree offers space-time Levy area through increments(); "
                                 "torchsde's U/A are not provided by this adapter")
            if tb is None:
                ta, tb = tree.t0, ta
            return tree(ta, tb).reshape(shape)

        def __repr__(self):
            return f"torchsde view of {tree!r}"

        dtype = property(lambda self: tree.dtype)
        device = property(lambda self: tree.device)
        shape = property(lambda self: torch.Size(shape))
        levy_area_approximation = property(lambda self: "none")

    return _Brownian()
