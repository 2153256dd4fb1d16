"""Parsing the ``Retry-After`` header (RFC 9110 §10.2.3). Pure: the current time is an argument."""

from __future__ import annotations

import calendar
import re
import time

__all__ = ["parse_retry_after", "parse_retry_after_ms"]

_MONTHS = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
_TIME = r"(\d{2}):(\d{2}):(\d{2})"
# The three HTTP-date forms of RFC 9110 §5.6.7; recipients must accept all three.
_IMF_FIXDATE = re.compile(
    rf"[A-Za-z]{{3}}, (\d{{2}}) ([A-Za-z]{{3}}) (\d{{4}}) {_TIME} GMT", re.ASCII
)
_RFC850_DATE = re.compile(
    rf"[A-Za-z]{{6,9}}, (\d{{2}})-([A-Za-z]{{3}})-(\d{{2}}) {_TIME} GMT", re.ASCII
)
_ASCTIME_DATE = re.compile(rf"[A-Za-z]{{3}} ([A-Za-z]{{3}}) ([ \d]\d) {_TIME} (\d{{4}})", re.ASCII)
_SECONDS = re.compile(r"\d+(\.\d+)?", re.A)


def parse_retry_after(value: str | bytes, now: float) -> float | None:
    """Return the seconds to wait that ``value`` asks for, or None if it is not usable.

    ``value`` is delta-seconds or an HTTP-date; ``now`` is the current Unix time. A date in the
    past means "now" (0.0). Delta-seconds too large to represent as a float (a 400-digit
    number, say) give ``math.inf``: the server asked for a longer wait than any cap, which is
    not the same as asking for nothing. Anything unparseable or negative (``nan``, ``inf``,
    ``-5``, ``1e3``) gives None, so the caller falls back to its own backoff. Never raises.
    """
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    text = value.strip()
    if _SECONDS.fullmatch(text):
        # Only digits got here, so float() cannot fail; it overflows to inf, never raises.
        return float(text)
    when = _parse_http_date(text, now)
    if when is None:
        return None
    return max(0.0, when - now)


def parse_retry_after_ms(value: str | bytes) -> float | None:
    """Return the seconds that a ``retry-after-ms`` header asks to wait (the OpenAI and
    Anthropic APIs send it, in milliseconds, beside ``Retry-After``), or None if it is not a
    non-negative decimal number. Like `parse_retry_after`, a number too large for a float
    gives ``math.inf``. Never raises."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    text = value.strip()
    if not _SECONDS.fullmatch(text):
        return None
    return float(text) / 1000.0


def _parse_http_date(text: str, now: float) -> float | None:
    if match := _IMF_FIXDATE.fullmatch(text):
        day, month, year, hour, minute, second = match.groups()
    elif match := _RFC850_DATE.fullmatch(text):
        day, month, year, hour, minute, second = match.groups()
        # RFC 9110 §5.6.7: a two-digit year that looks more than 50 years in the future is
        # the most recent year in the past with those digits.
        this_year = time.gmtime(now).tm_year if now > 0 else 1970
        full = this_year // 100 * 100 + int(year)
        if full > this_year + 50:
            full -= 100
        year = str(full)
    elif match := _ASCTIME_DATE.fullmatch(text):
        month, day, hour, minute, second, year = match.groups()
    else:
        return None
    month_number = _MONTHS.get(month.lower())
    if month_number is None:
        return None
    fields = (int(year), month_number, int(day), int(hour), int(minute), int(second))
    if not (1 <= fields[2] <= 31 and fields[3] <= 23 and fields[4] <= 59 and fields[5] <= 60):
        return None
    try:
        return float(calendar.timegm((*fields, 0, 0, 0)))
    except (ValueError, OverflowError):  # year 0 and the like
        return None
