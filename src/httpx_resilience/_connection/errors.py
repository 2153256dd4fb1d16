"""The connection layer's one exception of its own: "the server did not process this request".

`StreamNotProcessed` is an `httpx.RemoteProtocolError`, so code that knows only httpx sees an
ordinary protocol error; `_classify.py` recognises it (`is_not_processed`) and the transport
sends such a request again for every method, without spending the user's retries
(`RetryConfig.max_unprocessed_retries`).
"""

from __future__ import annotations

import httpx

__all__ = ["StreamNotProcessed", "is_not_processed", "not_processed"]


class StreamNotProcessed(httpx.RemoteProtocolError):
    """The server provably did not process the request: its HTTP/2 stream was above the
    ``last_stream_id`` of the server's GOAWAY, or the server refused it with
    ``REFUSED_STREAM`` (RFC 9113 §6.8, §8.7). Safe to send again on another connection,
    whatever the method."""


def is_not_processed(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was caused by, a `StreamNotProcessed`."""
    cause: BaseException | None = exc
    for _ in range(4):  # a little slack for wrappers that chain it
        if cause is None:
            return False
        if isinstance(cause, StreamNotProcessed):
            return True
        cause = cause.__cause__
    return False


def not_processed(message: str) -> httpx.RemoteProtocolError:
    """The error for a request the server provably did not process: an
    `httpx.RemoteProtocolError` caused by a `StreamNotProcessed` (the shape httpx gave it when
    it came from httpcore)."""
    error = httpx.RemoteProtocolError(message)
    error.__cause__ = StreamNotProcessed(message)
    return error
