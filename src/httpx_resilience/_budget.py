"""The retry budget: retries are at most a share of recent traffic, so outages don't multiply load.

This is the budget of Finagle and Envoy. When an upstream fails every request, per-request retry
limits still multiply its load by ``1 + max_retries`` exactly when it can least bear it; a budget
caps the extra load at ``ratio`` of the requests seen in the last ``window`` seconds, plus a floor
of ``min_per_second`` so that a quiet client can still retry its occasional failure.

Pure and synchronous: the caller passes the current time. Counts are kept in ten buckets that
slide with time, so each call is O(1) and memory is fixed. Not thread-safe; one event loop owns it.
"""

from __future__ import annotations

__all__ = ["RetryBudget"]

_BUCKETS = 10


class RetryBudget:
    """Counts requests and retries over a sliding window and says whether one more retry fits."""

    __slots__ = (
        "_bucket",
        "_bucket_width",
        "_floor",
        "_ratio",
        "_requests",
        "_requests_total",
        "_retries",
        "_retries_total",
    )

    def __init__(self, ratio: float, min_per_second: float, window: float) -> None:
        self._ratio = ratio
        self._floor = min_per_second * window
        self._bucket_width = window / _BUCKETS
        self._requests = [0] * _BUCKETS
        self._retries = [0] * _BUCKETS
        self._requests_total = 0
        self._retries_total = 0
        self._bucket: int | None = None

    def record_request(self, now: float) -> None:
        """Count one request (not a retry) made at ``now``."""
        index = self._advance(now)
        self._requests[index] += 1
        self._requests_total += 1

    def try_spend(self, now: float) -> bool:
        """Count a retry at ``now`` and return True if the budget allows it; else count nothing."""
        index = self._advance(now)
        if self._retries_total + 1 > self._floor + self._ratio * self._requests_total:
            return False
        self._retries[index] += 1
        self._retries_total += 1
        return True

    def available(self, now: float) -> float:
        """How many retries the budget would allow at ``now`` (for observability and tests)."""
        self._advance(now)
        return max(0.0, self._floor + self._ratio * self._requests_total - self._retries_total)

    def _advance(self, now: float) -> int:
        bucket = int(now // self._bucket_width)
        last = self._bucket
        if last != bucket:
            # Zero every bucket that slid out of the window since the last call (all of them
            # after a long idle spell, or when the clock went backwards).
            stale = _BUCKETS if last is None or bucket < last else min(bucket - last, _BUCKETS)
            for step in range(1, stale + 1):
                index = (bucket - stale + step) % _BUCKETS
                self._requests_total -= self._requests[index]
                self._retries_total -= self._retries[index]
                self._requests[index] = 0
                self._retries[index] = 0
            self._bucket = bucket
        return bucket % _BUCKETS
