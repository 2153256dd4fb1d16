"""The exceptions httpx-resilience adds. Each is also an httpx exception, so ``except`` clauses
written for httpx keep working.

* ResilienceError (a mix-in: catches every exception of this package)
* httpx.TransportError
  + CircuitOpenError (also ResilienceError)
  + httpx.TimeoutException
    - DeadlineExceeded (also ResilienceError)

Errors the inner transport raised are re-raised unchanged (their own httpx type), with the
attempts behind them readable through `get_retry_history`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from ._breaker import Origin

__all__ = ["CircuitOpenError", "DeadlineExceeded", "ResilienceError"]


class ResilienceError(Exception):
    """Base of every exception raised by httpx-resilience itself."""


class DeadlineExceeded(ResilienceError, httpx.TimeoutException):
    """``RetryConfig.total_timeout`` ran out while an attempt was in flight."""


class CircuitOpenError(ResilienceError, httpx.TransportError):
    """The origin's circuit is open: the request was failed fast and never sent.

    Attributes:
        origin: The `Origin` (scheme, host, port) whose circuit refused the request.
        retry_in: Seconds until the circuit lets a probe through (0.0 while probes are
            under way in the half-open state).
        breaker_name: The `CircuitBreaker`'s name, or None.
    """

    def __init__(
        self,
        origin: Origin,
        retry_in: float,
        breaker_name: str | None = None,
        *,
        request: httpx.Request | None = None,
    ) -> None:
        label = f"circuit {breaker_name!r}" if breaker_name else "circuit"
        super().__init__(
            f"{label} open for {origin}: failing fast; next probe in {retry_in:.1f}s",
            request=request,
        )
        self.origin = origin
        self.retry_in = retry_in
        self.breaker_name = breaker_name
