r"""The sampler registry: one record per sampler, read by everything that needs a sampler's facts.

:func:`sdekit_diffusion.sample`, :func:`available`, ``sdekit sample`` (which samplers take
``--rtol``/``--atol``), ``sdekit bench`` (every sampler listed and runnable) and the benchmarks all
read :class:`Sampler` records from here, so a fact lives in one place. A plugin sampler is a
function ``sampler(ctx, x, ts, **options)`` in its own module, registered with the
:func:`register` decorator; its accepted options are its keyword parameters. It returns the state
at ``ts[-1]`` (fixed-grid samplers) or an :class:`sdekit.Solution` (adaptive ones, with their step
counts and accepted times). Every core ``sdekit`` solver is a sampler too (:mod:`.core`).
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Callable

import sdekit


@dataclass(frozen=True)
class Sampler:
    """What :func:`sdekit_diffusion.sample` and the tools around it know of one sampler.

    ``name``; ``function`` (``function(ctx, x, ts, **options)``); ``min_steps`` (fewer grid steps
    are refused); ``calls_per_step(options)`` (score calls per grid step, or per attempted step of
    an adaptive sampler); ``stochastic(options)`` (whether it draws noise with these options);
    ``adaptive`` (chooses its own steps from ``rtol``/``atol``; no grid); ``order`` (global order of
    the deterministic ones on the probability-flow ODE, weak order of the stochastic ones);
    ``options`` (accepted option names); ``data_prediction`` (steps through the data prediction,
    so it can end at sigma = 0); ``core`` (a core ``sdekit`` solver run through
    :func:`sdekit.solve`); ``saved_calls(options)`` (score calls a whole run saves, e.g. one with
    ``afs=True``; :meth:`nfe` counts a run's calls).
    """

    name: str
    function: Callable
    min_steps: int = 1
    calls_per_step: Callable[[dict], int] = field(default=lambda options: 1)
    stochastic: Callable[[dict], bool] = field(default=lambda options: False)
    adaptive: bool = False
    order: float | None = None
    options: tuple[str, ...] = ()
    data_prediction: bool = False
    core: bool = False
    summary: str = ""
    saved_calls: Callable[[dict], int] = field(default=lambda options: 0)

    def nfe(self, steps: int, options: dict) -> int:
        """Score calls of a run of ``steps`` grid steps with ``options`` (fixed-grid samplers):
        ``steps * calls_per_step`` less the ``saved_calls`` of options such as ``afs``."""
        return steps * self.calls_per_step(options) - self.saved_calls(options)

    def check_options(self, options: dict) -> None:
        """:class:`TypeError` naming every option this sampler does not take."""
        unknown = sorted(set(options) - set(self.options))
        renamed = [name for name in unknown if RENAMED_OPTIONS.get(name) in self.options]
        if renamed:
            raise TypeError(f"sampler {self.name!r}: option {renamed[0]!r} is now called "
                            f"{RENAMED_OPTIONS[renamed[0]]!r} (rtol/atol, as everywhere in sdekit)")
        if {"rtol", "atol"} & set(unknown) and not self.adaptive:
            raise TypeError(f"sampler {self.name!r} takes fixed steps on a time grid (give steps= "
                            "or ts=); rtol/atol need an adaptive sampler: "
                            f"{', '.join(r.name for r in records() if r.adaptive)}")
        if unknown:
            accepted = ", ".join(self.options) if self.options else "no options"
            raise TypeError(f"sampler {self.name!r} got unknown option{'s' if len(unknown) > 1 else ''} "
                            f"{', '.join(map(repr, unknown))}; it accepts {accepted} (and seed, "
                            "sample_offset, dtype, device)")

    def describe(self, options: dict | None = None) -> dict:
        """The record as a plain dict (for listings and JSON), evaluated at ``options``."""
        options = options or {}
        return {"name": self.name, "kind": "sde" if self.stochastic(options) else "ode",
                "order": self.order, "adaptive": self.adaptive, "min_steps": self.min_steps,
                "calls_per_step": self.calls_per_step(options),
                "stochastic": self.stochastic(options), "options": list(self.options),
                "data_prediction": self.data_prediction, "core": self.core, "summary": self.summary}


_SAMPLERS: dict[str, Sampler] = {}
RENAMED_OPTIONS = {"rel_tol": "rtol", "abs_tol": "atol"}   # adaptive_sde's names in sdekit 0.1


def _keyword_options(function: Callable) -> tuple[str, ...]:
    """The option names of ``function(ctx, x, ts, **options)``: its parameters after the third."""
    return tuple(list(inspect.signature(function).parameters)[3:])


def register(name: str, *, min_steps: int = 1, calls_per_step: int | Callable[[dict], int] = 1,
             stochastic: bool | Callable[[dict], bool] = False, adaptive: bool = False,
             order: float | None = None, data_prediction: bool = False, summary: str = "",
             saved_calls: Callable[[dict], int] | None = None):
    """Decorator registering ``function(ctx, x, ts, **options)`` as the sampler ``name``.

    ``calls_per_step`` and ``stochastic`` are constants or functions of the options given (e.g.
    DDIM draws noise only when ``eta != 0``); ``saved_calls(options)``: score calls a whole run
    saves (``afs=True``: one)."""
    def decorate(function: Callable) -> Callable:
        calls = calls_per_step if callable(calls_per_step) else (lambda options, c=calls_per_step: c)
        noisy = stochastic if callable(stochastic) else (lambda options, s=stochastic: s)
        _add(Sampler(name, function, min_steps, calls, noisy, adaptive, order,
                     _keyword_options(function), data_prediction, False,
                     summary or (function.__doc__ or "").strip().split("\n")[0],
                     saved_calls or (lambda options: 0)))
        return function
    return decorate


def _add(record: Sampler) -> None:
    if record.name in _SAMPLERS and _SAMPLERS[record.name].function is not record.function:
        raise ValueError(f"sampler {record.name!r} is registered twice")
    _SAMPLERS[record.name] = record


def get(name: str) -> Sampler:
    """The record of ``name``; :class:`ValueError` listing the valid names otherwise."""
    _register_core()
    if not isinstance(name, str) or name not in _SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid ones are {', '.join(available())}")
    return _SAMPLERS[name]


def available() -> list[str]:
    """Every sampler name :func:`sdekit_diffusion.sample` accepts: the plugin's and the core's."""
    _register_core()
    return sorted(_SAMPLERS)


def records() -> list[Sampler]:
    """Every record, sorted by name."""
    return [_SAMPLERS[name] for name in available()]


# -- the core solvers --------------------------------------------------------------------------

from .core import ADAPTIVE_OPTIONS  # noqa: E402  (core imports only _common)

CORE_ALIASES = {"pc": "core_pc"}   # core names the plugin shadows -> the name they get here


def _register_core() -> None:
    """Add a record for every core solver not registered yet (the core registry may grow)."""
    from .core import core_options, run_core

    for info in sdekit.solvers.available():
        name = CORE_ALIASES.get(info["name"], info["name"])
        if name in _SAMPLERS:
            continue
        is_sde = info["kind"] == "sde"
        order = info["order"] if not is_sde else info["weak_order"]
        options = core_options(info)
        _add(Sampler(name, functools.partial(run_core, name=info["name"]), 1,
                     functools.partial(_core_calls, info["name"], options),
                     lambda options, s=is_sde: s, info["adaptive"], order, options, False, True,
                     f"core {info['name']!r} on the {'reverse SDE' if is_sde else 'probability-flow ODE'}"))


def _core_calls(name: str, accepted: tuple[str, ...], options: dict) -> int:
    """Score calls per step of the core solver ``name`` built with ``options``: its drift
    evaluations, plus the corrector's score calls of a solver that needs the score (``pc``)."""
    solver = sdekit.solvers.get(name, **{k: v for k, v in options.items()
                                         if k in accepted and k not in ADAPTIVE_OPTIONS})
    return solver.evals_per_step + (getattr(solver, "n_corrector_steps", 0) if solver.needs_score else 0)
