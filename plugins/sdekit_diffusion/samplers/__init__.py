"""Diffusion samplers, one module per family; :func:`sdekit_diffusion.sample` dispatches by name.

Each plugin sampler is a function ``sampler(ctx, x, ts, **options) -> x`` (``ctx``: a
:class:`._common.Context`, ``x``: the state at ``ts[0] = t_max``, ``ts``: the decreasing time grid)
registered here with the minimum number of steps it accepts and whether it draws noise. Every core
``sdekit`` solver is available too (:mod:`.core`).
"""
from __future__ import annotations

from . import adaptive, ancestral, ddim, dpm_solver, edm, pc
from .core import core_names

# name -> (function, minimum steps, stochastic)
PLUGIN_SAMPLERS: dict = {}
for _module in (ancestral, pc, ddim, dpm_solver, edm, adaptive):
    PLUGIN_SAMPLERS.update(_module.SAMPLERS)

ADAPTIVE = ("adaptive_sde",)
CORE_ALIASES = {"core_pc": "pc"}   # the core's generic predictor-corrector, shadowed by the plugin's


def available() -> list[str]:
    """Every sampler name ``sample`` accepts: the plugin's and the core solvers'."""
    core = [name for name in core_names() if name not in PLUGIN_SAMPLERS]
    return sorted(set(PLUGIN_SAMPLERS) | set(core) | set(CORE_ALIASES))


__all__ = ["PLUGIN_SAMPLERS", "available", "core_names"]
