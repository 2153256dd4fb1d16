"""Validation of configuration values, with messages that name the class, the field and the
allowed values.

Every public constructor checks its arguments here, so a bad value fails at construction, not at
the first request. Messages never echo a value that may be a credential: callers validating
secrets use `check_header_value`, which names the header and the rule it broke instead.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "check_bool",
    "check_callable",
    "check_hashable_set",
    "check_header_name",
    "check_header_value",
    "check_headers",
    "check_number",
    "check_optional_str",
    "check_statuses",
    "check_type",
]

# RFC 9110 §5.1 token, §5.5 field-value: visible ASCII, spaces and tabs only between visible
# characters. h11 and h2 refuse anything else at send time, quoting the value in their error.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"(?:[\x21-\x7e](?:[ \t]*[\x21-\x7e])*)?")


def _show(value: object) -> str:
    """A bounded repr: a 400-digit int must not become a 400-digit message."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "<huge int>"
    return text if len(text) <= 80 else text[:77] + "..."


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
    ``[minimum, maximum]`` (an int if ``integer``; or None if ``allow_none``).

    Ints are compared exactly, so ``10**400`` is "too large", never an `OverflowError`.
    Integer fields state integer bounds (``>= 0``), float fields float bounds (``>= 0.0``).
    """
    if value is None and allow_none:
        return
    kind: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        noun = "an int" if integer else "a number"
        also = " or None" if allow_none else ""
        raise TypeError(f"{owner}.{name} must be {noun}{also}, got {_show(value)}")
    if isinstance(value, int):
        if not integer and math.isinf(maximum) and not _float_representable(value):
            raise ValueError(f"{owner}.{name} must be a finite number, got {_show(value)}")
        # Compared as ints: float(10**400) would overflow.
        in_range = (math.isinf(minimum) or value >= math.ceil(minimum)) and (
            math.isinf(maximum) or value <= math.floor(maximum)
        )
    else:
        assert isinstance(value, float)
        if not math.isfinite(value):
            raise ValueError(f"{owner}.{name} must be a finite number, got {_show(value)}")
        in_range = minimum <= value <= maximum
    if not in_range:
        upper = "" if math.isinf(maximum) else f" and <= {_bound(maximum, integer)}"
        raise ValueError(
            f"{owner}.{name} must be >= {_bound(minimum, integer)}{upper}, got {_show(value)}"
        )


def _float_representable(value: int) -> bool:
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _bound(number: float, integer: bool) -> str:
    return str(int(number)) if integer and float(number).is_integer() else str(float(number))


def check_bool(owner: str, name: str, value: object, *, allow_none: bool = False) -> None:
    """TypeError unless ``value`` is True or False (or None if ``allow_none``)."""
    if value is None and allow_none:
        return
    if not isinstance(value, bool):
        also = " or None" if allow_none else ""
        raise TypeError(f"{owner}.{name} must be a bool (True or False){also}, got {_show(value)}")


def check_callable(owner: str, name: str, value: object, *, allow_none: bool = False) -> None:
    """TypeError unless ``value`` can be called (or is None if ``allow_none``)."""
    if value is None and allow_none:
        return
    if not callable(value):
        also = " or None" if allow_none else ""
        raise TypeError(f"{owner}.{name} must be callable{also}, got {_show(value)}")


def check_type(
    owner: str, name: str, value: object, kind: type | tuple[type, ...], allowed: str
) -> None:
    """TypeError unless ``value`` is an instance of ``kind``; ``allowed`` describes it."""
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise TypeError(f"{owner}.{name} must be {allowed}, got {_show(value)}")


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def check_optional_str(owner: str, name: str, value: object) -> None:
    """TypeError unless ``value`` is a str or None."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{owner}.{name} must be a str or None, got {_show(value)}")


def check_hashable_set(owner: str, name: str, values: object, allowed: str) -> frozenset[Any]:
    """``values`` as a frozenset; TypeError naming the field unless it is a collection (not a
    string) of hashable items. ``allowed`` says what the items may be."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{owner}.{name} must be a collection of {allowed}, got {_show(values)}")
    items = list(values)
    for item in items:
        try:
            hash(item)
        except TypeError:
            raise TypeError(
                f"{owner}.{name} must hold {allowed}, got unhashable {type(item).__name__} "
                f"{_show(item)}"
            ) from None
    return frozenset(items)


def check_statuses(owner: str, name: str, values: object) -> frozenset[int]:
    """``values`` as a frozenset of HTTP status codes; TypeError/ValueError naming the field
    unless it is a collection of ints in 100-599."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{owner}.{name} must be a collection, got {_show(values)}")
    statuses = check_hashable_set(owner, name, values, "status codes 100-599")
    for status in statuses:
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError(f"{owner}.{name} must hold status codes 100-599, got {_show(status)}")
    return statuses


def check_header_name(owner: str, field: str, name: object) -> str:
    """``name`` if it is a valid header name (an RFC 9110 token); else TypeError/ValueError."""
    if isinstance(name, bytes):
        name = name.decode("latin-1")
    if not isinstance(name, str):
        raise TypeError(f"{owner}.{field} header names must be str, got {_show(name)}")
    if not _TOKEN.fullmatch(name):
        raise ValueError(
            f"{owner}.{field}: {_show(name)} is not a valid header name "
            "(letters, digits and !#$%&'*+-.^_`|~ only)"
        )
    return name


def header_value_problem(value: str | bytes) -> str | None:
    """What makes ``value`` unsendable as a header value, in words that never quote it; or
    None if it is fine. The rules are the ones h11 and h2 enforce when sending."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if _FIELD_VALUE.fullmatch(value):
        return None
    if "\r" in value or "\n" in value:
        return "contains a line break"
    if "\x00" in value:
        return "contains a NUL character"
    if value != value.strip(" \t"):
        return "has leading or trailing whitespace"
    if not value.isascii():
        return "contains non-ASCII characters"
    return "contains a control character"


def check_header_value(owner: str, field: str, name: str, value: object) -> str:
    """``value`` if it can be sent as the value of header ``name``; else TypeError/ValueError
    naming the header and the rule broken, never quoting the value (it may be a secret)."""
    if not isinstance(value, (str, bytes)):
        raise TypeError(
            f"{owner}.{field}: the value of header {name!r} must be a str, "
            f"got {type(value).__name__} (value not shown)"
        )
    problem = header_value_problem(value)
    if problem is not None:
        raise ValueError(
            f"{owner}.{field}: the value of header {name!r} {problem}; "
            "header values must be visible ASCII with inner spaces only (value not shown)"
        )
    return value.decode("ascii") if isinstance(value, bytes) else value


def check_headers(owner: str, field: str, headers: object) -> list[tuple[str, str]]:
    """The items of a header mapping (or list of pairs), each name and value checked."""
    if headers is None:
        return []
    items: Iterable[Any]
    if isinstance(headers, Mapping):
        items = headers.items()
    elif hasattr(headers, "multi_items"):  # httpx.Headers
        items = headers.multi_items()
    elif isinstance(headers, (list, tuple)):
        items = headers
    else:
        raise TypeError(
            f"{owner}.{field} must be a dict of header names to values, got "
            f"{type(headers).__name__}"
        )
    checked = []
    for item in items:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise TypeError(f"{owner}.{field} must hold (name, value) pairs")
        name = check_header_name(owner, field, item[0])
        checked.append((name, check_header_value(owner, field, name, item[1])))
    return checked
