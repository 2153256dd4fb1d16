"""Retry-After parsing: both RFC 9110 forms, past dates, garbage — and it never raises."""

from __future__ import annotations

import calendar
import email.utils
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from httpx_resilience._retry_after import parse_retry_after

NOW = float(calendar.timegm((2026, 11, 21, 12, 0, 0, 0, 0, 0)))  # Sat, 21 Nov 2026 12:00:00 GMT


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("5", 5.0),
        (" 120 ", 120.0),
        ("1.5", 1.5),
        (b"7", 7.0),
        ("Sat, 21 Nov 2026 12:00:30 GMT", 30.0),  # IMF-fixdate
        ("Saturday, 21-Nov-26 12:01:00 GMT", 60.0),  # obsolete RFC 850
        ("Sat Nov 21 12:00:10 2026", 10.0),  # obsolete asctime
        ("Sun Nov  1 12:00:10 2026", 0.0),  # asctime with a padded day, in the past
        ("Sat, 21 Nov 2026 11:00:00 GMT", 0.0),  # a past date means now
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
    ],
)
def test_valid_values(value: str | bytes, expected: float) -> None:
    assert parse_retry_after(value, NOW) == pytest.approx(expected)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "soon",
        "-5",
        "+5",
        "1e3",
        "nan",
        "inf",
        "5 seconds",
        "Sat, 21 Nov 2026 12:00:30 UTC",
        "Sat, 21 Foo 2026 12:00:30 GMT",
        "Sat, 32 Nov 2026 12:00:30 GMT",
        "Sat, 21 Nov 2026 25:00:30 GMT",
        "\u0663",  # an Arabic-Indic digit: not delta-seconds
    ],
)
def test_unusable_values_give_none(value: str) -> None:
    assert parse_retry_after(value, NOW) is None


def test_date_from_email_utils_round_trips() -> None:
    header = email.utils.formatdate(NOW + 42, usegmt=True)
    assert parse_retry_after(header, NOW) == 42.0


@given(st.text())
def test_never_raises_on_any_text(value: str) -> None:
    result = parse_retry_after(value, NOW)
    assert result is None or result >= 0.0


@given(st.binary())
def test_never_raises_on_any_bytes(value: bytes) -> None:
    result = parse_retry_after(value, NOW)
    assert result is None or result >= 0.0


@given(st.integers(min_value=0, max_value=10**6))
def test_delta_seconds_are_exact(seconds: int) -> None:
    assert parse_retry_after(str(seconds), NOW) == float(seconds)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Sunday, 06-Nov-94 08:49:37 GMT", 0.0),  # 1994, not 2094: long past
        ("Monday, 21-Dec-26 12:00:00 GMT", 30 * 86400.0),
    ],
)
def test_rfc850_two_digit_years(value: str, expected: float) -> None:
    assert parse_retry_after(value, NOW) == expected


@pytest.mark.parametrize(
    "value",
    ["Mon, 01 Jan 0000 00:00:00 GMT", "Mon Jan  1 00:00:00 0000", "Mon, 31 Dec 9999 23:59:60 GMT"],
)
def test_extreme_dates_do_not_raise(value: str) -> None:
    result = parse_retry_after(value, NOW)
    assert result is None or result >= 0.0


@given(
    day=st.integers(0, 99),
    month=st.sampled_from(["Jan", "Feb", "Jun", "Dec", "Foo"]),
    year=st.integers(0, 9999),
    hour=st.integers(0, 99),
    minute=st.integers(0, 99),
    second=st.integers(0, 99),
    form=st.sampled_from(["imf", "rfc850", "asctime"]),
)
def test_never_raises_on_date_shaped_values(
    day: int, month: str, year: int, hour: int, minute: int, second: int, form: str
) -> None:
    """Random text almost never looks like a date; these always do, with any numbers in it."""
    clock = f"{hour:02d}:{minute:02d}:{second:02d}"
    value = {
        "imf": f"Sat, {day:02d} {month} {year:04d} {clock} GMT",
        "rfc850": f"Saturday, {day:02d}-{month}-{year % 100:02d} {clock} GMT",
        "asctime": f"Sat {month} {day:2d} {clock} {year:04d}",
    }[form]
    result = parse_retry_after(value, NOW)
    assert result is None or result >= 0.0


@pytest.mark.parametrize("value", ["9" * 400, "2" * 309, "9" * 400 + ".5", " " + "7" * 1000])
def test_values_too_large_to_represent_are_infinite_not_absent(value: str) -> None:
    # A wait longer than any float is longer than any cap: "above the cap", never "no header".
    assert parse_retry_after(value, NOW) == math.inf
