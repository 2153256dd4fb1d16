"""Retry-After parsing: both RFC 9110 forms, past dates, garbage — and it never raises."""

from __future__ import annotations

import calendar
import email.utils

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
        "9" * 400,  # overflows float
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
