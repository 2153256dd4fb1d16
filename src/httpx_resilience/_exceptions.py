"""The exceptions httpx-resilience adds. Every one is a `ResilienceError` and also an httpx
exception, so ``except`` clauses written for httpx keep working.

Raised by `ResilientTransport` (errors of the inner transport itself are re-raised unchanged,
with their own httpx type and the attempts behind them readable through `get_retry_history`):

* CircuitOpenError ........................ also httpx.TransportError
* CoolDownError ........................... also httpx.TransportError
* DeadlineExceeded ........................ also httpx.TimeoutException

Raised by the `AsyncAPIClient` facade, each chained (``__cause__``) to the httpx error behind it:

* APIClientError .......................... base: request, response, status_code
  + APIConnectionError .................... also httpx.TransportError
    - APICircuitOpenError ................. the origin's circuit is open: origin, retry_in
  + APITimeoutError ....................... also httpx.TimeoutException
  + APIStatusError ........................ also httpx.HTTPStatusError: any 4xx/5xx answer
    - AuthenticationError ................. 401
      · PermissionDeniedError ............. 403
    - ResourceNotFoundError ............... 404
    - RateLimitError ...................... 429: retry_after
    - ServerError ......................... 5xx
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from ._origin import Origin

__all__ = [
    "APICircuitOpenError",
    "APIClientError",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "CircuitOpenError",
    "CoolDownError",
    "DeadlineExceeded",
    "PermissionDeniedError",
    "RateLimitError",
    "ResilienceError",
    "ResourceNotFoundError",
    "ServerError",
]


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


class CoolDownError(ResilienceError, httpx.TransportError):
    """The origin is cooling down after a ``429``/``503`` with ``Retry-After``, and the wait
    left is longer than the `CoolDown`'s ``max_wait`` or would pass the request's
    ``total_timeout``: the request was failed at once and never sent.

    Attributes:
        origin: The `Origin` (scheme, host, port) that asked clients to wait.
        retry_in: Seconds until its cool-down window ends.
        reason: Why the request was not held: ``"max_wait"`` or ``"total_timeout"``.
    """

    def __init__(
        self,
        origin: Origin,
        retry_in: float,
        reason: str,
        *,
        request: httpx.Request | None = None,
    ) -> None:
        limit = "CoolDown.max_wait" if reason == "max_wait" else "the request's total_timeout"
        super().__init__(
            f"{origin} asked clients to wait (Retry-After); {retry_in:.1f}s left is more than "
            f"{limit} allows: failing at once, nothing sent",
            request=request,
        )
        self.origin = origin
        self.retry_in = retry_in
        self.reason = reason


class APIClientError(ResilienceError, httpx.HTTPError):
    """Base of every error the `AsyncAPIClient` facade raises.

    Attributes:
        message: What happened: method, URL (credentials redacted), status and a bounded
            snippet of the server's error body where there was one.
        request: The `httpx.Request`, when one was built.
        response: The `httpx.Response`, for errors that carry one.
        status_code: The response status, or None.
    """

    def __init__(
        self,
        message: str,
        *,
        request: httpx.Request | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        httpx.HTTPError.__init__(self, message)
        self.message = message
        if request is not None:
            self.request = request
        self.response = response
        self.status_code = None if response is None else response.status_code


class APIConnectionError(APIClientError, httpx.TransportError):
    """The request got no answer: refused or dropped connection, DNS or TLS failure, ..."""


class APICircuitOpenError(APIConnectionError):
    """The origin's circuit is open: failed fast, nothing sent. Has ``origin`` and ``retry_in``."""

    def __init__(
        self,
        message: str,
        *,
        origin: Origin,
        retry_in: float,
        request: httpx.Request | None = None,
    ) -> None:
        super().__init__(message, request=request)
        self.origin = origin
        self.retry_in = retry_in


class APITimeoutError(APIClientError, httpx.TimeoutException):
    """The request timed out (connect, read, write, pool, or the overall deadline)."""


class APIStatusError(APIClientError, httpx.HTTPStatusError):
    """The server answered with a 4xx or 5xx status."""

    def __init__(self, message: str, *, request: httpx.Request, response: httpx.Response) -> None:
        super().__init__(message, request=request, response=response)
        self.response: httpx.Response = response


class AuthenticationError(APIStatusError):
    """401 Unauthorized (and, through `PermissionDeniedError`, 403 Forbidden)."""


class PermissionDeniedError(AuthenticationError):
    """403 Forbidden."""


class ResourceNotFoundError(APIStatusError):
    """404 Not Found."""


class RateLimitError(APIStatusError):
    """429 Too Many Requests. ``retry_after``: the seconds the server asked to wait, or None
    if it sent no usable ``Retry-After``; ``math.inf`` if the value was too large to represent
    (a longer wait than any cap)."""

    def __init__(
        self,
        message: str,
        *,
        request: httpx.Request,
        response: httpx.Response,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, request=request, response=response)
        self.retry_after = retry_after


class ServerError(APIStatusError):
    """A 5xx answer."""
