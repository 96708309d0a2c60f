"""Diffusion samplers, one module per family; :func:`sdekit_diffusion.sample` dispatches by name.

Each plugin sampler is a function ``sampler(ctx, x, ts, **options)`` (``ctx``: a
:class:`._common.Context`, ``x``: the state at ``ts[0] = t_max``, ``ts``: the decreasing time grid)
registered with :func:`.registry.register`, which records its facts (minimum steps, score calls per
step, whether it draws noise, adaptive, order, options) once for every reader. Every core
``sdekit`` solver is a sampler too (:mod:`.core`). Adding a sampler: one module here and its
``@register(...)`` line, plus the module's name in the import below.
"""
from __future__ import annotations

from . import (adaptive, ancestral, ddim, deis, dpm_solver, dpm_solver_sde,  # noqa: F401
               edm, ipndm, pc, unipc)                                  # (they register)
from .registry import Sampler, available, get, records, register

__all__ = ["Sampler", "available", "get", "records", "register"]
