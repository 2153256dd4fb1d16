"""The retry budget: retries are at most a share of recent traffic, so outages don't multiply load.

This is the budget of Finagle and Envoy. When an upstream fails every request, per-request retry
limits still multiply its load by ``1 + max_retries`` exactly when it can least bear it; a budget
caps the extra load at ``ratio`` of the requests seen in the last ``window`` seconds, plus a floor
of ``min_per_second`` so that a quiet client can still retry its occasional failure.

Pure and synchronous: the caller passes the current time. O(1) per call, fixed memory.
"""

from __future__ import annotations

from typing import Literal

from ._window import SlidingCounts

__all__ = ["BudgetSource", "RetryBudget"]

#: Whose budget a reading is (`TransportStats.budget_source`): ``"local"`` the transport's own,
#: ``"fleet"`` the fleet's through a state store, ``"fallback"`` this worker's allowance while
#: the store is unavailable.
BudgetSource = Literal["local", "fleet", "fallback"]


class RetryBudget:
    """Counts requests and retries over a sliding window and says whether one more retry fits."""

    __slots__ = ("_counts", "_floor", "_ratio")

    def __init__(self, ratio: float, min_per_second: float, window: float) -> None:
        self._ratio = ratio
        self._floor = min_per_second * window
        self._counts = SlidingCounts(window)  # first: requests, second: retries

    def record_request(self, now: float) -> None:
        """Count one request (not a retry) made at ``now``."""
        self._counts.add(now, 1)

    def try_spend(self, now: float) -> bool:
        """Count a retry at ``now`` and return True if the budget allows it; else count nothing."""
        counts = self._counts
        counts.slide(now)
        if counts.second + 1 > self._floor + self._ratio * counts.first:
            return False
        counts.add(now, second=1)
        return True

    def available(self, now: float) -> float:
        """How many retries the budget would allow at ``now`` (for observability and tests).
        Changes nothing (`SlidingCounts.peek`): `ResilientTransport.stats` may call it from
        another thread."""
        requests, retries = self._counts.peek(now)
        return max(0.0, self._floor + self._ratio * requests - retries)

    def reading(self, now: float) -> tuple[float | None, BudgetSource, float | None]:
        """For `TransportStats`: ``(available(now), "local", None)``; the budget shared by a
        store reads differently (`SharedBudget.reading`)."""
        return self.available(now), "local", None
