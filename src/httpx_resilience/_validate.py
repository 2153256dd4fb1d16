"""Validation of configuration values, with messages that name the field and the allowed range."""

from __future__ import annotations

import math

__all__ = ["check_number"]


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
