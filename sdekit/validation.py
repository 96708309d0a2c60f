"""One place for the checks of user-given numbers and names, with one message style:
``<name> must be <what>, got <value>``."""
from __future__ import annotations

import math
import operator
from typing import Iterable


def positive_int(value, name: str, *, minimum: int = 1) -> int:
    """``value`` as an ``int`` (Python, numpy or 0-d torch integers; not bools, not floats) of at
    least ``minimum``; :class:`ValueError` otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {number}")
    return number


def finite_number(value, name: str, *, minimum: float | None = None, strict: bool = False) -> float:
    """``value`` as a finite ``float`` (``> minimum`` when ``strict``, else ``>= minimum``)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum}"
    if not math.isfinite(number) or (minimum is not None and (number <= minimum if strict
                                                              else number < minimum)):
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return number


def choice(value, choices: Iterable[str], name: str) -> str:
    """``value`` if it is one of ``choices``; :class:`ValueError` listing them otherwise."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value
