"""One range check for every numeric option of the trainer and of ``sdekit train``, one message style.

``check_number("grad_clip", -1.0, minimum=0, exclusive=True)`` raises
``ValueError("grad_clip must be a finite number > 0, got -1.0")``. Integers (``numbers.Integral``, so
NumPy's too, never ``bool``) come back as ``int``, reals as ``float``. Options are checked when the
object is built or the command starts, before any work.
"""
from __future__ import annotations

import math
import numbers


def _describe(integer: bool, minimum, maximum, exclusive_minimum: bool, exclusive_maximum: bool) -> str:
    kind = "an integer" if integer else "a finite number"
    if minimum is not None and maximum is not None:
        left, right = "(" if exclusive_minimum else "[", ")" if exclusive_maximum else "]"
        return f"{kind} in {left}{minimum}, {maximum}{right}"
    if minimum is not None:
        return f"{kind} {'>' if exclusive_minimum else '>='} {minimum}"
    if maximum is not None:
        return f"{kind} {'<' if exclusive_maximum else '<='} {maximum}"
    return kind


def check_number(name: str, value, *, integer: bool = False, minimum=None, maximum=None,
                 exclusive: bool = False, exclusive_maximum: bool = False, optional: bool = False):
    """``value`` checked to be an integer (``integer=True``) or finite real within ``[minimum, maximum]``
    (``exclusive``: the minimum itself is refused; ``exclusive_maximum``: the maximum). ``optional``:
    ``None`` passes. :class:`ValueError` naming ``name``, the range and the value otherwise."""
    if value is None and optional:
        return None
    what = _describe(integer, minimum, maximum, exclusive, exclusive_maximum)
    suffix = " (or None)" if optional else ""
    valid = not isinstance(value, bool) and isinstance(value, numbers.Integral if integer else numbers.Real)
    if valid:
        value = int(value) if integer else float(value)
        valid = (integer or math.isfinite(value)) and \
            (minimum is None or (value > minimum if exclusive else value >= minimum)) and \
            (maximum is None or (value < maximum if exclusive_maximum else value <= maximum))
    if not valid:
        raise ValueError(f"{name} must be {what}{suffix}, got {value!r}")
    return value


def check_choice(name: str, value, choices: tuple) -> None:
    """:class:`ValueError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_flag(name: str, value) -> bool:
    """:class:`ValueError` unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value
