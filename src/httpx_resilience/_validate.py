"""Validation of configuration values, with messages that name the field and the allowed range."""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["check_number", "check_statuses"]


def check_number(
    owner: str,
    name: str,
    value: object,
    *,
    minimum: float = 0.0,
    maximum: float = math.inf,
    integer: bool = False,
    allow_none: bool = False,
) -> None:
    """Raise TypeError or ValueError unless ``value`` is a finite number in
    ``[minimum, maximum]`` (an int if ``integer``; or None if ``allow_none``)."""
    if value is None and allow_none:
        return
    kind: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        noun = "an int" if integer else "a number"
        raise TypeError(f"{owner}.{name} must be {noun}, got {value!r}")
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        raise ValueError(f"{owner}.{name} must be a finite number, got {value!r}")
    if not minimum <= number <= maximum:
        upper = "" if math.isinf(maximum) else f" and <= {maximum}"
        raise ValueError(f"{owner}.{name} must be >= {minimum}{upper}, got {value!r}")


def check_statuses(owner: str, name: str, values: object) -> frozenset[int]:
    """``values`` as a frozenset of HTTP status codes; TypeError/ValueError naming the field
    unless it is a collection of ints in 100-599."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{owner}.{name} must be a collection, got {values!r}")
    statuses = frozenset(values)
    for status in statuses:
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError(f"{owner}.{name} must hold status codes 100-599, got {status!r}")
    return statuses
