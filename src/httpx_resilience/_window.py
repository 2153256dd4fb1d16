"""A pair of counters over a sliding time window, for the retry budget and the circuit breaker.

The window is split into ten buckets that slide with time, so each call is O(1) and memory is
fixed. Pure: the caller passes the current time. Not thread-safe; one event loop owns it.
"""

from __future__ import annotations

__all__ = ["SlidingCounts"]

_BUCKETS = 10


class SlidingCounts:
    """Counts of two kinds of event (``first``, ``second``) seen in the last ``window`` seconds."""

    __slots__ = ("_bucket", "_firsts", "_index", "_seconds", "_width", "first", "second")

    def __init__(self, window: float) -> None:
        self._width = window / _BUCKETS
        self._bucket: int | None = None
        self._index = 0  # the current bucket's index in the lists
        self._firsts = [0] * _BUCKETS
        self._seconds = [0] * _BUCKETS
        self.first = 0  # totals over the window as of the last call
        self.second = 0

    def add(self, now: float, first: int = 0, second: int = 0) -> None:
        """Slide the window to ``now`` and count the events given."""
        # Most calls land in the bucket of the call before: nothing slides, and the float
        # ``now // width`` is compared with the int bucket as it is (exactly).
        index = self._index if now // self._width == self._bucket else self.slide(now)
        if first:
            self._firsts[index] += first
            self.first += first
        if second:
            self._seconds[index] += second
            self.second += second

    def slide(self, now: float) -> int:
        """Drop what fell out of the window by ``now``; return the current bucket's index."""
        bucket = int(now // self._width)
        last = self._bucket
        if last != bucket:
            # Zero every bucket that slid out since the last call (all of them after a long
            # idle spell, or when the clock went backwards).
            stale = _BUCKETS if last is None or bucket < last else min(bucket - last, _BUCKETS)
            for step in range(1, stale + 1):
                index = (bucket - stale + step) % _BUCKETS
                self.first -= self._firsts[index]
                self.second -= self._seconds[index]
                self._firsts[index] = 0
                self._seconds[index] = 0
            self._bucket = bucket
            self._index = bucket % _BUCKETS
        return self._index

    def peek(self, now: float) -> tuple[int, int]:
        """The totals ``(first, second)`` over the window at ``now``, changing nothing: for
        readers such as `ResilientTransport.stats`, which may run in another thread than the
        one that counts (a read that slid the window could race with its slide, or, with a
        ``now`` read before the counting thread's latest event, take it for the clock going
        back and drop every count). A ``now`` in or before the latest call's bucket reads the
        totals as of that call. O(1)."""
        bucket = int(now // self._width)
        last, first, second = self._bucket, self.first, self.second
        if last is None or bucket <= last:
            return first, second
        stale = min(bucket - last, _BUCKETS)
        firsts, seconds = self._firsts, self._seconds
        for step in range(1, stale + 1):
            index = (bucket - stale + step) % _BUCKETS
            first -= firsts[index]
            second -= seconds[index]
        return first, second
