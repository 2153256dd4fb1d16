"""Whether a failed attempt could have reached the server: the question every retry rests on.

``NOT_PROCESSED``: the server said it did not process the request (an HTTP/2 stream above the
``last_stream_id`` of its GOAWAY, or refused with ``REFUSED_STREAM``; see
`_connection/http2.py`); retried for every method, at first without spending retries
(``RetryConfig.max_unprocessed_retries``).
``NOT_SENT``: the request provably never left the client (no connection, or no pool slot), so
sending it again cannot repeat any effect; retried for every method.
``MAYBE_PROCESSED``: the request may have reached the server and been acted on (the connection
broke while writing or reading, a read timed out, the server closed the connection); retried
only for idempotent methods or requests carrying an ``Idempotency-Key``.
``FATAL``: retrying cannot help (TLS/certificate failures, invalid URLs, unsupported protocols,
errors in the request itself); never retried.
"""

from __future__ import annotations

import ssl

import httpx

from ._connection.errors import is_not_processed
from ._decision import FailureKind
from ._exceptions import DeadlineExceeded

__all__ = ["FailureKind", "classify_error", "counts_against_upstream"]


# SSL errors that mean "the connection dropped", not "this TLS setup can never work".
_TRANSIENT_SSL_ERRORS = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def classify_error(exc: BaseException) -> FailureKind:
    """Classify an exception raised by a transport. Anything not an httpx error is FATAL."""
    if isinstance(exc, httpx.RemoteProtocolError) and is_not_processed(exc):
        return FailureKind.NOT_PROCESSED
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return FailureKind.FATAL if _is_tls_failure(exc) else FailureKind.NOT_SENT
    if isinstance(exc, httpx.PoolTimeout):
        return FailureKind.NOT_SENT
    if isinstance(
        exc,
        (httpx.ReadError, httpx.WriteError, httpx.TimeoutException, httpx.RemoteProtocolError),
    ):
        return FailureKind.MAYBE_PROCESSED
    # The rest: LocalProtocolError (we would send something invalid), UnsupportedProtocol,
    # ProxyError, CloseError, InvalidURL, and non-httpx exceptions such as programming errors.
    return FailureKind.FATAL


def _is_tls_failure(exc: BaseException) -> bool:
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLError) and not isinstance(cause, _TRANSIENT_SSL_ERRORS):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def counts_against_upstream(exc: BaseException) -> bool:
    """Whether a circuit breaker counts ``exc`` as the upstream failing: connection errors and
    timeouts do; local rejections (a pool timeout, an open circuit, the overall deadline), a
    server's orderly refusal (NOT_PROCESSED) and FATAL errors do not."""
    # DeadlineExceeded: our own deadline cut the attempt, however healthy the upstream.
    if isinstance(exc, (httpx.PoolTimeout, DeadlineExceeded)):
        return False
    return classify_error(exc) not in (FailureKind.FATAL, FailureKind.NOT_PROCESSED)
