"""The circuit breaker's state machine: per-origin circuits, their transitions and the admit check.

States per origin (scheme, host, port)::

    CLOSED --(failures reach the threshold)--> OPEN --(recovery_time passes)--> HALF_OPEN
    HALF_OPEN --(a probe succeeds)--> CLOSED
    HALF_OPEN --(a probe fails)--> OPEN

Two ways to trip: ``failure_threshold`` consecutive failures (the default), or, when
``failure_rate_threshold`` is set, a failure ratio at or above it over the last ``window``
seconds once at least ``minimum_calls`` were seen there (as Polly and resilience4j do).

Sans-IO: the breaker never awaits, sleeps or locks. Every method runs to completion without a
suspension point, so within one event loop no lock is needed and thousands of concurrent
requests never serialise. The clock is injectable. Memory stays bounded: an origin gets state
only once it fails, an origin that is closed and healthy again drops it, and at most
``max_origins`` origins are tracked (the least recently touched closed ones are evicted first).

Pure: no httpx, no event loop, no hooks (see `tests/test_core_imports.py`). A refusal is a return
value here; the shell (`_breaker.py`, `CircuitBreaker`) raises `CircuitOpenError` for it and
accepts URLs where an `Origin` is expected. Transitions are reported through `report`, which the
instrumentation shell (`_instrument/_hooks.py`) plugs its hook dispatch into when it is imported.
"""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from functools import partial
from typing import NamedTuple

from ._logging import logger
from ._origin import Origin
from ._validate import check_callable, check_number, check_optional_str, check_statuses
from ._window import SlidingCounts

__all__ = [
    "CircuitState",
    "CircuitTable",
    "Origin",
    "Permit",
    "StateListener",
    "open_from_fleet",
    "report",
]


class CircuitState(str, enum.Enum):
    """The state of one origin's circuit."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class Permit(NamedTuple):
    """Leave to send one request: hand it back with the request's outcome."""

    origin: Origin
    generation: int  # 0: admitted while closed; else the half-open phase it probes


# ``tuple.__new__(Permit, fields)``: a `Permit` without the named tuple's Python-level ``__new__``.
_new_permit = tuple.__new__

StateListener = Callable[[Origin, CircuitState, CircuitState], None]


class _Circuit:
    """One origin's state. Consecutive count, or windowed counts in rate mode."""

    __slots__ = ("consecutive", "counts", "generation", "in_flight", "opened_at", "state")

    def __init__(self, window: float) -> None:
        self.state = CircuitState.CLOSED
        self.consecutive = 0
        self.opened_at = 0.0
        self.in_flight = 0  # probes admitted in the current half-open phase
        self.generation = 0  # which half-open phase: probes carry it in their Permit
        self.counts = SlidingCounts(window)  # rate mode: first = calls, second = failures


def _no_report(
    table: CircuitTable, origin: Origin, old: CircuitState, new: CircuitState, retry_in: float
) -> None:
    return None


#: Where a circuit table reports its transitions, as ``(table, origin, old, new, retry_in)``
#: (``retry_in``: for ``new`` open, the seconds until a probe is let through; else 0). The
#: instrumentation shell (`_instrument/_hooks.py`) plugs its hook dispatch in here when it is
#: imported, so that this pure module imports no hooks.
report: Callable[[CircuitTable, Origin, CircuitState, CircuitState, float], None] = _no_report

_check = partial(check_number, "CircuitBreaker")


class CircuitTable:
    """The per-origin state machine of a `CircuitBreaker` (its shell, in `_breaker.py`).

    Takes the arguments `CircuitBreaker` documents, and checks them under that name (the class
    users construct). Every method takes an `Origin`; `_admit` returns a refusal rather than
    raising it.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        recovery_time: float = 30.0,
        name: str | None = None,
        *,
        failure_rate_threshold: float | None = None,
        window: float = 30.0,
        minimum_calls: int = 10,
        half_open_max_calls: int = 1,
        failure_statuses: Iterable[int] = range(500, 600),
        on_state_change: StateListener | None = None,
        max_origins: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check("failure_threshold", failure_threshold, minimum=1, integer=True)
        _check("recovery_time", recovery_time, maximum=10**9)
        _check("failure_rate_threshold", failure_rate_threshold, minimum=0.0, maximum=1.0,
               allow_none=True)  # fmt: skip
        if failure_rate_threshold == 0:
            raise ValueError("CircuitBreaker.failure_rate_threshold must be > 0 and <= 1, got 0")
        _check("window", window, minimum=0.001, maximum=10**9)
        _check("minimum_calls", minimum_calls, minimum=1, integer=True)
        _check("half_open_max_calls", half_open_max_calls, minimum=1, integer=True)
        _check("max_origins", max_origins, minimum=1, integer=True)
        check_optional_str("CircuitBreaker", "name", name)
        check_callable("CircuitBreaker", "on_state_change", on_state_change, allow_none=True)
        check_callable("CircuitBreaker", "clock", clock)
        statuses = check_statuses("CircuitBreaker", "failure_statuses", failure_statuses)
        self.failure_threshold = failure_threshold
        self.recovery_time = float(recovery_time)
        self.name = name
        self.failure_rate_threshold = failure_rate_threshold
        self.window = float(window)
        self.minimum_calls = minimum_calls
        self.half_open_max_calls = half_open_max_calls
        self.failure_statuses = statuses
        self.on_state_change = on_state_change
        self.max_origins = max_origins
        self._clock = clock
        self._circuits: OrderedDict[Origin, _Circuit] = OrderedDict()

    def __repr__(self) -> str:
        mode = (
            f"failure_rate_threshold={self.failure_rate_threshold}"
            if self.failure_rate_threshold is not None
            else f"failure_threshold={self.failure_threshold}"
        )
        return f"CircuitBreaker(name={self.name!r}, {mode}, recovery_time={self.recovery_time})"

    # --- reading ----------------------------------------------------------------------------

    def state(self, origin: Origin) -> CircuitState:
        """The circuit state of ``origin`` now."""
        circuit = self._circuits.get(origin)
        if circuit is None:
            return CircuitState.CLOSED
        if circuit.state is CircuitState.OPEN and self._clock() >= self._reopens_at(circuit):
            return CircuitState.HALF_OPEN
        return circuit.state

    def states(self) -> dict[Origin, CircuitState]:
        """The state of every origin whose circuit is not closed."""
        states = {origin: self.state(origin) for origin in list(self._circuits)}
        return {origin: st for origin, st in states.items() if st is not CircuitState.CLOSED}

    def retry_in(self, origin: Origin) -> float:
        """Seconds until ``origin``'s open circuit lets a probe through (0 if it would now)."""
        circuit = self._circuits.get(origin)
        if circuit is None or circuit.state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, self._reopens_at(circuit) - self._clock())

    # --- the protocol a transport follows: admit, then record exactly one outcome ------------

    def _admit(self, origin: Origin) -> Permit | float:
        """Ask to send a request to ``origin``. Returns a `Permit` to pass to exactly one of
        `record_success`, `record_failure` or `record_ignored`; or, when the circuit refuses,
        the seconds until it lets a probe through (a float, 0.0 while probes are out)."""
        circuit = self._circuits.get(origin)
        if circuit is None or circuit.state is CircuitState.CLOSED:
            return _new_permit(Permit, (origin, 0))  # Permit(origin, 0), one frame less
        if circuit.state is CircuitState.OPEN:
            retry_in = self._reopens_at(circuit) - self._clock()
            if retry_in > 0:
                return retry_in
            self._transition(origin, circuit, CircuitState.HALF_OPEN)
        if circuit.in_flight >= self.half_open_max_calls:
            return 0.0  # probes are out: they decide
        circuit.in_flight += 1
        return Permit(origin, circuit.generation)

    def record_success(self, permit: Permit) -> None:
        """The admitted request succeeded."""
        origin = permit.origin
        circuit = self._circuits.get(origin)
        if circuit is None:
            if self.failure_rate_threshold is None:
                return  # the common case: a healthy origin carries no state at all
            circuit = self._new_circuit(origin)  # rate mode counts successes too
        if self._is_probe(circuit, permit):
            circuit.in_flight -= 1
            self._transition(origin, circuit, CircuitState.CLOSED)
            del self._circuits[origin]
        elif permit.generation == 0 and circuit.state is CircuitState.CLOSED:
            if self.failure_rate_threshold is None:
                del self._circuits[origin]  # a success breaks the run of failures
            else:
                circuit.counts.add(self._clock(), first=1)
        # else: a straggler admitted before the circuit opened, or a stale probe: no say.

    def record_failure(self, permit: Permit) -> None:
        """The admitted request failed in a way that counts against the upstream."""
        origin = permit.origin
        circuit = self._circuits.get(origin)
        if circuit is None:
            circuit = self._new_circuit(origin)
        else:
            self._circuits.move_to_end(origin)
        if self._is_probe(circuit, permit):
            self._open(origin, circuit)
        elif permit.generation != 0 or circuit.state is not CircuitState.CLOSED:
            return  # a straggler or a stale probe
        elif self.failure_rate_threshold is None:
            circuit.consecutive += 1
            if circuit.consecutive >= self.failure_threshold:
                self._open(origin, circuit)
        else:
            counts = circuit.counts
            counts.add(self._clock(), first=1, second=1)
            if (
                counts.first >= self.minimum_calls
                and counts.second >= self.failure_rate_threshold * counts.first
            ):
                self._open(origin, circuit)

    def record_ignored(self, permit: Permit) -> None:
        """The admitted request ended in a way that says nothing about the upstream
        (cancelled, a local error): free its probe slot, count nothing."""
        circuit = self._circuits.get(permit.origin)
        if circuit is not None and self._is_probe(circuit, permit):
            circuit.in_flight -= 1

    # --- internals --------------------------------------------------------------------------

    @staticmethod
    def _is_probe(circuit: _Circuit, permit: Permit) -> bool:
        """Whether ``permit`` is a probe of the circuit's current half-open phase."""
        return (
            permit.generation != 0
            and permit.generation == circuit.generation
            and circuit.state is CircuitState.HALF_OPEN
        )

    def _reopens_at(self, circuit: _Circuit) -> float:
        return circuit.opened_at + self.recovery_time

    def _new_circuit(self, origin: Origin) -> _Circuit:
        if len(self._circuits) >= self.max_origins:
            self._evict()
        circuit = self._circuits[origin] = _Circuit(self.window)
        return circuit

    def _evict(self) -> None:
        for origin, circuit in self._circuits.items():
            if circuit.state is CircuitState.CLOSED:
                del self._circuits[origin]
                return
        # Every tracked origin is open: memory stays bounded, so the oldest open one goes.
        self._circuits.popitem(last=False)

    def _open(self, origin: Origin, circuit: _Circuit) -> None:
        circuit.opened_at = self._clock()
        circuit.consecutive = 0
        self._transition(origin, circuit, CircuitState.OPEN)

    def _transition(self, origin: Origin, circuit: _Circuit, new: CircuitState) -> None:
        old = circuit.state
        circuit.state = new
        circuit.in_flight = 0  # probes of an earlier phase have no say in this one
        if new is CircuitState.HALF_OPEN:
            circuit.generation += 1
        # Logged by the default LoggingHook, like every other report.
        retry_in = self.recovery_time if new is CircuitState.OPEN else 0.0
        report(self, origin, old, new, retry_in)
        if self.on_state_change is not None:
            try:
                self.on_state_change(origin, old, new)
            except Exception:  # a broken hook must not break requests
                logger.exception("CircuitBreaker on_state_change hook raised")


def open_from_fleet(table: CircuitTable, origin: Origin, retry_in: float) -> None:
    """The fleet's shared state (`_fleet.py`) says ``origin``'s circuit is open for
    ``retry_in`` more seconds: open it in ``table`` too (or keep it open at least that long).
    A local probe in flight loses its say. A function, not a method: it is for the fleet
    only, and `CircuitBreaker`, a public class, inherits every method of `CircuitTable`."""
    circuit = table._circuits.get(origin)
    if circuit is None:
        circuit = table._new_circuit(origin)
    opened_at = table._clock() + retry_in - table.recovery_time
    if circuit.state is CircuitState.OPEN:
        circuit.opened_at = max(circuit.opened_at, opened_at)
        return
    circuit.consecutive = 0
    circuit.opened_at = opened_at
    table._transition(origin, circuit, CircuitState.OPEN)
