"""`CircuitBreaker`: fail fast while an upstream is down, and find out by itself when it is back.

States per origin (scheme, host, port)::

    CLOSED --(failures reach the threshold)--> OPEN --(recovery_time passes)--> HALF_OPEN
    HALF_OPEN --(a probe succeeds)--> CLOSED
    HALF_OPEN --(a probe fails)--> OPEN

Two ways to trip: ``failure_threshold`` consecutive failures (the default), or, when
``failure_rate_threshold`` is set, a failure ratio at or above it over the last ``window``
seconds once at least ``minimum_calls`` were seen there (as Polly and resilience4j do).

The state machine is the sans-IO core's (`_circuit.py`: no httpx, no hooks). This shell adds
what needs httpx: `admit` raises `CircuitOpenError` (an `httpx.TransportError`) for the core's
refusal, and `state` and `retry_in` take a URL too. Transitions reach the instrumentation hooks
through `_circuit.report`, which `_instrument/_hooks.py` plugs into when it is imported.
"""

from __future__ import annotations

import httpx

from ._circuit import CircuitState, CircuitTable, Permit
from ._exceptions import CircuitOpenError
from ._origin import Origin, origin_of

__all__ = ["CircuitBreaker", "CircuitState", "Origin", "Permit"]


class CircuitBreaker(CircuitTable):
    """Per-origin circuit breaking, shared by every transport it is given to.

    Args:
        failure_threshold: Consecutive failures that open a circuit (count mode). Default 5.
        recovery_time: Seconds a circuit stays open before a probe is let through. Default 30.
        name: A label for logs and reprs.
        failure_rate_threshold: If set (0 < x <= 1), trip on the failure ratio over ``window``
            instead of a consecutive count. Default None (count mode).
        window: Seconds of history the failure ratio looks back over. Default 30.
        minimum_calls: Calls needed in ``window`` before the ratio may trip. Default 10.
        half_open_max_calls: Probes let through at once while half-open. Default 1.
        failure_statuses: Response statuses counted as failures. Default 500-599.
        on_state_change: Called as ``(origin, old, new)`` on every transition.
        max_origins: Origins tracked at most; closed ones are evicted first. Default 10,000.
        clock: Monotonic seconds. For tests.
    """

    def state(self, origin: Origin | str) -> CircuitState:
        """The circuit state of ``origin`` now (an `Origin` or a URL)."""
        return CircuitTable.state(self, _as_origin(origin))

    def retry_in(self, origin: Origin | str) -> float:
        """Seconds until ``origin``'s open circuit lets a probe through (0 if it would now)."""
        return CircuitTable.retry_in(self, _as_origin(origin))

    def admit(self, origin: Origin) -> Permit:
        """Ask to send a request to ``origin``. Returns a `Permit` to pass to exactly one of
        `record_success`, `record_failure` or `record_ignored`; raises `CircuitOpenError`
        (without a request attached) when the circuit refuses."""
        permit = self._admit(origin)
        if isinstance(permit, Permit):
            return permit
        raise CircuitOpenError(origin, permit, self.name)


def _as_origin(origin: Origin | str) -> Origin:
    if isinstance(origin, Origin):
        return origin
    url = httpx.URL(origin)
    return origin_of(url.scheme, url.host, url.port)
