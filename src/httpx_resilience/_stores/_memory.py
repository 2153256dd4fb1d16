"""`MemoryStore`: the `StateStore` operations on in-process dictionaries.

The reference semantics of the protocol (the Redis scripts do the same on the server) and a
way to share circuits, budget and cool-downs between transports of one process that do not
share the objects themselves. Pure: no I/O; the clock is injectable; every entry expires like a
Redis key does, so memory stays bounded by the origins in use.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

from .._circuit import CircuitState
from .._validate import check_number
from .._window import SlidingCounts
from ._protocol import (
    CLOSED_VIEW,
    AvailabilityListener,
    BudgetPolicy,
    BudgetView,
    CircuitOp,
    CircuitPolicy,
    CircuitView,
    StoreRead,
    StoreSettings,
    check_settings,
)

__all__ = ["MemoryStore"]


class _Circuit:
    __slots__ = (
        "counts", "expires", "fails", "in_flight", "open_until", "probe", "probe_until",
        "run_start",
    )  # fmt: skip

    def __init__(self, window: float) -> None:
        self.open_until = 0.0  # 0: closed
        self.fails = 0
        self.run_start = 0.0  # count mode: when the run of failures began
        self.probe = ""
        self.probe_until = 0.0
        self.counts = SlidingCounts(window)  # rate mode: calls, failures
        self.expires = 0.0
        self.in_flight: dict[str, float] = {}  # count mode: reservation token -> lease end

    def live_in_flight(self, now: float) -> int:
        """The reservations whose lease still runs (the others are dropped)."""
        for token in [t for t, until in self.in_flight.items() if until <= now]:
            del self.in_flight[token]
        return len(self.in_flight)


class MemoryStore:
    """Shared state in this process's memory (see `StateStore`).

    The transport's link to a store (`_fleet.py`) flushes and reads in background tasks, which
    it runs on asyncio only: on trio a transport given any store keeps to local state.

    Args:
        clock: Monotonic seconds. For tests.
        max_keys: Entries kept at most; expired ones are dropped first. Default 100,000.
        timeout: Seconds one call may take before the transport gives up on it and uses local
            state. Default 0.1.
        sync_interval: Seconds between the transport's background flushes and reads: how
            stale its view of the fleet may be on the happy path. Default 0.25.
        retry_interval: Seconds the transport keeps to local state after a failed call
            before it tries the store again. Default 1.0.
        probe_lease: Seconds a half-open probe's claim lasts if its result never comes (its
            worker died). Default 10.
        on_availability: Called as ``(available, error)`` when the store stops answering
            (with the error) and when it answers again (with None).
    """

    async_libraries = frozenset({"asyncio"})

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
        timeout: float = 0.1,
        sync_interval: float = 0.25,
        retry_interval: float = 1.0,
        probe_lease: float = 10.0,
        on_availability: AvailabilityListener | None = None,
    ) -> None:
        settings = StoreSettings(timeout, sync_interval, retry_interval, probe_lease)
        check_settings("MemoryStore", settings)
        self.timeout = float(timeout)
        self.sync_interval = float(sync_interval)
        self.retry_interval = float(retry_interval)
        self.probe_lease = float(probe_lease)
        self.on_availability = on_availability
        check_number("MemoryStore", "max_keys", max_keys, minimum=1, integer=True)
        self._clock = clock
        self._max_keys = max_keys
        self._circuits: dict[tuple[str, str], _Circuit] = {}
        self._budgets: dict[str, tuple[SlidingCounts, float]] = {}
        self._cool_downs: dict[tuple[str, str], float] = {}

    def __repr__(self) -> str:
        return "MemoryStore()"

    async def circuit(
        self,
        scope: str,
        origin: str,
        op: CircuitOp,
        policy: CircuitPolicy,
        *,
        failures: int = 0,
        successes: int = 0,
        success_age: float | None = None,
        token: str = "",
    ) -> tuple[CircuitView, bool]:
        return self.circuit_now(
            scope, origin, op, policy,
            failures=failures, successes=successes, success_age=success_age, token=token,
        )  # fmt: skip

    def circuit_now(
        self,
        scope: str,
        origin: str,
        op: CircuitOp,
        policy: CircuitPolicy,
        *,
        failures: int = 0,
        successes: int = 0,
        success_age: float | None = None,
        token: str = "",
    ) -> tuple[CircuitView, bool]:
        """`circuit`, synchronously."""
        now = self._clock()
        key = (scope, origin)
        circuit = self._circuits.get(key)
        if circuit is not None and circuit.expires <= now:
            del self._circuits[key]
            circuit = None
        if op == "read" or (op == "admit" and policy.failure_rate_threshold is not None):
            return _view(circuit, now), False
        if op == "admit":
            if circuit is None:
                return CLOSED_VIEW, True
            if circuit.open_until != 0:
                return _view(circuit, now), False
            if circuit.fails == 0:
                return _view(circuit, now), True
            if circuit.fails + circuit.live_in_flight(now) + 1 > policy.in_flight_limit:
                return _view(circuit, now), False
            circuit.in_flight[token] = now + policy.probe_lease
            circuit.expires = now + policy.ttl
            return _view(circuit, now), True
        if op == "probe":
            if circuit is None or circuit.open_until == 0:
                return _view(circuit, now), True
            if circuit.open_until > now or circuit.probe_until > now:
                return _view(circuit, now), False
            circuit.probe, circuit.probe_until = token, now + policy.probe_lease
            circuit.expires = now + policy.ttl
            return _view(circuit, now), True
        if op == "release":
            if circuit is not None and token:
                if circuit.probe == token:
                    circuit.probe, circuit.probe_until = "", 0.0
                circuit.in_flight.pop(token, None)
            return _view(circuit, now), False
        if op == "result":
            if circuit is None or not token or circuit.probe != token:
                return _view(circuit, now), False
            if failures:
                _open(circuit, now, policy)
                circuit.expires = now + policy.ttl
            else:
                del self._circuits[key]
                circuit = None
            return _view(circuit, now), False
        # report
        if circuit is not None and token:
            circuit.in_flight.pop(token, None)
        if circuit is not None and circuit.open_until != 0:
            return _view(circuit, now), False  # stragglers have no say while open
        if circuit is None:
            if policy.failure_rate_threshold is None and not failures:
                return CLOSED_VIEW, False
            self._make_room(now)
            circuit = self._circuits[key] = _Circuit(policy.window)
        if policy.failure_rate_threshold is None:
            if success_age is not None and now - success_age >= circuit.run_start:
                circuit.fails = 0  # the success came during the run: it breaks it
            if circuit.fails == 0 and failures:
                circuit.run_start = now
            circuit.fails += failures
            if circuit.fails >= policy.failure_threshold:
                _open(circuit, now, policy)
            elif circuit.fails == 0 and not circuit.live_in_flight(now):
                del self._circuits[key]
                return CLOSED_VIEW, False
        else:
            counts = circuit.counts
            counts.add(now, first=failures + successes, second=failures)
            if (
                failures
                and counts.first >= policy.minimum_calls
                and counts.second >= policy.failure_rate_threshold * counts.first
            ):
                _open(circuit, now, policy)
        circuit.expires = now + policy.ttl
        return _view(circuit, now), False

    async def budget(
        self, scope: str, requests: int, want: int, policy: BudgetPolicy, *, retries: int = 0
    ) -> BudgetView:
        now = self._clock()
        entry = self._budgets.get(scope)
        if entry is None or entry[1] <= now:
            entry = (SlidingCounts(policy.window), 0.0)
        counts = entry[0]
        counts.add(now, first=requests, second=retries)
        granted = 0
        if want > 0:  # as many as fit: spent + granted <= floor + ratio * requests
            room = policy.floor + policy.ratio * counts.first - counts.second
            granted = max(0, min(int(want), math.floor(room)))
            if granted:
                counts.add(now, second=granted)
        self._budgets[scope] = (counts, now + 2 * policy.window)
        left = policy.floor + policy.ratio * counts.first - counts.second
        return BudgetView(granted, int(counts.first), left)

    async def note_cool_down(self, scope: str, origin: str, seconds: float) -> None:
        now = self._clock()
        key = (scope, origin)
        self._make_room(now)
        self._cool_downs[key] = max(self._cool_downs.get(key, 0.0), now + seconds)

    async def read(
        self,
        scope: str,
        origins: list[str],
        policy: CircuitPolicy | None,
        *,
        requests: int = 0,
        retries: int = 0,
        budget: BudgetPolicy | None = None,
        reports: Mapping[str, tuple[int, float | None]] | None = None,
    ) -> dict[str, tuple[CircuitView, float]]:
        budget_view = None
        if budget is not None:
            budget_view = await self.budget(scope, requests, 0, budget, retries=retries)
        now = self._clock()
        views = StoreRead(budget=budget_view)
        for origin in origins:
            view = CLOSED_VIEW
            if policy is not None:
                report = None if reports is None else reports.get(origin)
                if report is None:
                    view = self.circuit_now(scope, origin, "read", policy)[0]
                else:
                    successes, age = report
                    view = self.circuit_now(
                        scope, origin, "report", policy, successes=successes, success_age=age
                    )[0]
            left = self._cool_downs.get((scope, origin), 0.0) - now
            views[origin] = (view, max(0.0, left))
        return views

    async def aclose(self) -> None:
        return None

    def _make_room(self, now: float) -> None:
        if len(self._circuits) + len(self._cool_downs) < self._max_keys:
            return
        for key in [k for k, c in self._circuits.items() if c.expires <= now]:
            del self._circuits[key]
        for key in [k for k, until in self._cool_downs.items() if until <= now]:
            del self._cool_downs[key]
        while len(self._circuits) + len(self._cool_downs) >= self._max_keys:
            if self._cool_downs:
                del self._cool_downs[next(iter(self._cool_downs))]
            else:
                del self._circuits[next(iter(self._circuits))]


def _open(circuit: _Circuit, now: float, policy: CircuitPolicy) -> None:
    circuit.open_until = now + policy.recovery_time
    circuit.fails = 0
    circuit.probe, circuit.probe_until = "", 0.0
    circuit.counts = SlidingCounts(policy.window)
    circuit.in_flight.clear()  # requests still out are stragglers now: no say


def _view(circuit: _Circuit | None, now: float) -> CircuitView:
    if circuit is None or circuit.open_until == 0:
        return CircuitView(CircuitState.CLOSED, 0.0, 0 if circuit is None else circuit.fails)
    if circuit.open_until > now:
        return CircuitView(CircuitState.OPEN, circuit.open_until - now, 0)
    return CircuitView(CircuitState.HALF_OPEN, 0.0, 0)
