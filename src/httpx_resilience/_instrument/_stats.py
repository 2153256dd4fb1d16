"""`ResilientTransport.stats()`: a snapshot per origin for health endpoints.

Cheap and non-blocking: the transport counts each attempt per origin in a `SlidingCounts`
window (O(1), fixed memory per origin, at most ``MAX_ORIGINS`` origins), and a snapshot only
reads those counters, the circuit breaker's states and the retry budget (with a state store,
the fleet's budget as the store's latest answer left it: no store call). Nothing awaits.

The connection layer reports its pool in two ways, both looked up on the inner transport:
pool-wide through its ``pool_stats`` property (the own HTTP/1.1 layer's ``PoolStats``: idle,
in use, waiting), which fills `TransportStats.pool`; and per origin through a
``connection_stats() -> Mapping[Origin, ConnectionStats]`` method, which fills
`OriginStats.connections` (no layer implements it yet). A transport without them (httpx's own,
used for HTTP/2 and proxies) leaves both None.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .._breaker import CircuitBreaker, CircuitState, Origin
from .._budget import BudgetSource
from .._window import SlidingCounts

__all__ = [
    "MAX_ORIGINS",
    "STATS_WINDOW",
    "AttemptCounts",
    "ConnectionStats",
    "ConnectionStatsProvider",
    "OriginStats",
    "TransportStats",
    "snapshot",
]

#: Seconds of history behind `OriginStats.failure_rate`.
STATS_WINDOW = 60.0
#: Origins tracked at most; the one first seen is dropped to make room.
MAX_ORIGINS = 1000


@dataclass(frozen=True, slots=True)
class ConnectionStats:
    """One origin's connections, as the connection layer reports them.

    Attributes:
        in_use: Connections carrying a request now.
        idle: Open connections carrying none.
        waiting: Requests waiting for a connection.
    """

    in_use: int
    idle: int
    waiting: int


@runtime_checkable
class ConnectionStatsProvider(Protocol):
    """What an inner transport implements to add its pool to `ResilientTransport.stats`."""

    def connection_stats(self) -> Mapping[Origin, ConnectionStats]: ...


@dataclass(frozen=True, slots=True)
class OriginStats:
    """One origin, now.

    Attributes:
        origin: The origin.
        circuit: Its circuit state (closed without a circuit breaker).
        attempts: Attempts sent to it in the last `TransportStats.window` seconds.
        failures: Those that failed: an error that counts against the upstream (not a
            cancellation, not a stream the server refused to process), a 5xx, or a status
            the retry policy retries.
        failure_rate: ``failures / attempts``, or None without attempts.
        retry_in: Seconds until its open circuit lets a probe through; 0 unless open.
        connections: Its connections, if the connection layer reports them; else None.
    """

    origin: Origin
    circuit: CircuitState
    attempts: int
    failures: int
    failure_rate: float | None
    retry_in: float
    connections: ConnectionStats | None


@dataclass(frozen=True, slots=True)
class TransportStats:
    """A `ResilientTransport` now, for a health endpoint.

    Attributes:
        budget_left: Retries the retry budget that decides this transport's next retry
            allows, never below 0 (a retry needs 1); None without a budget. Which budget,
            by ``budget_source``:

            * ``"local"`` (no state store): the transport's own, now: ``budget_min_per_second
              x budget_window + budget_ratio x`` its requests over the last
              ``budget_window`` seconds, less its retries there.
            * ``"fleet"`` (a state store shares the budget): the fleet's, the same sum over
              every worker's requests and retries (a worker's retries granted and not spent
              yet count as spent), as the store last reported it to this transport,
              ``budget_age`` seconds ago: at its latest retry's budget call or background
              read (every ``sync_interval`` while requests flow). Other workers' requests
              and retries since are not in it. None before the store's first answer.
            * ``"fallback"`` (the store unavailable: for ``retry_interval`` after a failed
              call, or always on an event loop the store does not support): what this
              worker may spend on its own until the store answers again: its share of what
              the fleet had left at the last answer (its requests over the fleet's) plus
              ``budget_ratio`` of its requests since, less its retries since; if the store
              never answered, ``budget_ratio`` of its own requests less its retries.
        window: Seconds of history behind each origin's counts.
        origins: Every origin the transport sent to recently, its breaker tracks, or its
            connection layer reports, sorted.
        pool: The connection pool's counts over all origins, if the connection layer reports
            them (the own HTTP/1.1 layer does; httpx's, used for HTTP/2, does not); else None.
        budget_source: ``"local"``, ``"fleet"`` or ``"fallback"``: whose number
            ``budget_left`` is (above); None without a budget.
        budget_age: ``"fleet"`` only: seconds since the store's answer behind
            ``budget_left`` (None before it; None for the other sources, which are exact
            now).
    """

    budget_left: float | None
    window: float
    origins: tuple[OriginStats, ...]
    pool: ConnectionStats | None = None
    budget_source: BudgetSource | None = None
    budget_age: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: origins keyed by ``"scheme://host:port"``."""
        pool = self.pool
        return {
            "budget_left": self.budget_left,
            "budget_source": self.budget_source,
            "budget_age": self.budget_age,
            "window": self.window,
            "pool": None
            if pool is None
            else {"in_use": pool.in_use, "idle": pool.idle, "waiting": pool.waiting},
            "origins": {
                str(o.origin): {
                    "circuit": o.circuit.value,
                    "attempts": o.attempts,
                    "failures": o.failures,
                    "failure_rate": o.failure_rate,
                    "retry_in": o.retry_in,
                    "connections": None
                    if o.connections is None
                    else {
                        "in_use": o.connections.in_use,
                        "idle": o.connections.idle,
                        "waiting": o.connections.waiting,
                    },
                }
                for o in self.origins
            },
        }


class AttemptCounts:
    """Attempts and failures per origin over a sliding window. Not thread-safe: one event loop
    owns a transport."""

    __slots__ = ("_counts", "window")

    def __init__(self, window: float = STATS_WINDOW) -> None:
        self.window = window
        self._counts: dict[Origin, SlidingCounts] = {}

    def record(self, origin: Origin, now: float, failed: bool) -> None:
        counts = self._counts.get(origin)
        if counts is None:
            if len(self._counts) >= MAX_ORIGINS:
                del self._counts[next(iter(self._counts))]
            counts = self._counts[origin] = SlidingCounts(self.window)
        counts.add(now, 1, 1 if failed else 0)

    def read(self, now: float) -> dict[Origin, tuple[int, int]]:
        result = {}
        for origin, counts in list(self._counts.items()):
            result[origin] = counts.peek(now)  # changes nothing: stats() may run elsewhere
        return result


def snapshot(
    counts: AttemptCounts,
    now: float,
    breaker: CircuitBreaker | None,
    budget: tuple[float | None, BudgetSource, float | None] | None,
    inner: object,
) -> TransportStats:
    """``budget``: the retry budget's `RetryBudget.reading`, or None without one."""
    seen = counts.read(now)
    circuits = {} if breaker is None else breaker.states()
    connections: Mapping[Origin, ConnectionStats] = {}
    if isinstance(inner, ConnectionStatsProvider):
        connections = inner.connection_stats()
    origins = []
    for origin in sorted({*seen, *circuits, *connections}):
        attempts, failures = seen.get(origin, (0, 0))
        state = circuits.get(origin, CircuitState.CLOSED)
        origins.append(
            OriginStats(
                origin=origin,
                circuit=state,
                attempts=attempts,
                failures=failures,
                failure_rate=failures / attempts if attempts else None,
                retry_in=0.0 if breaker is None else breaker.retry_in(origin),
                connections=connections.get(origin),
            )
        )
    left, source, age = (None, None, None) if budget is None else budget
    return TransportStats(left, counts.window, tuple(origins), _pool(inner), source, age)


def _pool(inner: object) -> ConnectionStats | None:
    """The inner transport's ``pool_stats`` (any object with ``in_use``, ``idle`` and
    ``waiting``), as `ConnectionStats`."""
    counts = getattr(inner, "pool_stats", None)
    if counts is None:
        return None
    try:
        return ConnectionStats(int(counts.in_use), int(counts.idle), int(counts.waiting))
    except (AttributeError, TypeError, ValueError):
        return None
