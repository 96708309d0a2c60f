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


def device(value, name: str = "device"):
    """``value`` (a :class:`torch.device` or its name, e.g. ``"cpu"``, ``"cuda:1"``) as a
    :class:`torch.device` this machine has; :class:`ValueError` for an unknown name, CUDA or MPS
    that is not available, or a CUDA index beyond the devices present (torch's own errors there are
    an ``AssertionError`` or a list of every backend it knows)."""
    import torch

    try:
        result = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name} must be a device such as 'cpu', 'cuda' or 'cuda:0', got {value!r}") from None
    if result.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} {value!r}: CUDA is not available on this machine; use 'cpu'")
        if result.index is not None and result.index >= torch.cuda.device_count():
            raise ValueError(f"{name} {value!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif result.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{name} {value!r}: MPS is not available on this machine; use 'cpu'")
    elif result.type not in ("cpu", "meta"):
        raise ValueError(f"{name} {value!r}: only cpu, cuda and mps devices are supported")
    return result
