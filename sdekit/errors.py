"""Errors raised by sdekit. All derive from :class:`SDEKitError`."""


class SDEKitError(Exception):
    """Base class of every error sdekit raises on purpose."""


class ShapeError(SDEKitError, ValueError):
    """A drift, diffusion or score returned a tensor of the wrong shape."""


class NonFiniteError(SDEKitError, FloatingPointError):
    """The state became NaN or infinite; the message names the step and time."""


class MaxStepsError(SDEKitError, RuntimeError):
    """An adaptive solve used up ``max_steps`` before reaching ``t1``."""


class SolverError(SDEKitError, ValueError):
    """A solver was asked for a problem it cannot solve, or an unknown solver was named."""
