"""The record of a request's attempts, attached to its final response or error."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import httpx

if TYPE_CHECKING:
    from ._client import APIResponse

__all__ = ["HISTORY_EXTENSION", "Attempt", "attach_history", "get_retry_history"]

#: The ``response.extensions`` key under which the final response carries its attempts.
HISTORY_EXTENSION = "retry_history"
_EXCEPTION_ATTRIBUTE = "retry_history"


class Attempt(NamedTuple):
    """One attempt at sending a request and what followed it. (A named tuple: cheap to make.)

    Attributes:
        number: 1 for the first attempt, 2 for the first retry, and so on.
        status: The response status, or None if the attempt raised.
        error: The exception the attempt raised, or None if it got a response.
        elapsed: Seconds from sending to the response headers (or the error).
        wait: Seconds waited before the next attempt, or None if none followed.
        reason: Why a retry followed (e.g. ``"status 503"``) or why none did
            (e.g. ``"retries exhausted"``, ``"method not retryable"``).
    """

    number: int
    status: int | None
    error: BaseException | None
    elapsed: float
    wait: float | None
    reason: str

    @property
    def retried(self) -> bool:
        """Whether another attempt followed this one."""
        return self.wait is not None


def attach_history(target: httpx.Response | BaseException, history: tuple[Attempt, ...]) -> None:
    if isinstance(target, httpx.Response):
        target.extensions[HISTORY_EXTENSION] = history
    else:
        setattr(target, _EXCEPTION_ATTRIBUTE, history)


def get_retry_history(
    target: httpx.Response | APIResponse | BaseException,
) -> tuple[Attempt, ...]:
    """The attempts behind a response, or behind an error, that went through
    `ResilientTransport`.

    ``target`` may be an `httpx.Response`, an `APIResponse`, an exception the transport raised,
    or one raised from it: an `AsyncAPIClient` error (`ServerError`, `APIConnectionError`,
    ...) or the ``raise_for_status()`` error of a response. Empty if ``target`` did not pass
    through a `ResilientTransport`.

    Raises:
        TypeError: ``target`` is none of these.
    """
    if not isinstance(target, (httpx.Response, BaseException)):
        response = getattr(target, "response", None)  # an APIResponse
        if not isinstance(response, httpx.Response):
            raise TypeError(
                "get_retry_history() takes an httpx.Response, an APIResponse or an exception, "
                f"got {type(target).__name__}"
            )
        target = response
    seen = 0
    current: httpx.Response | BaseException | None = target
    # An error the facade raised is chained (__cause__) to the transport's; one with a response
    # (an error status) finds the history on that response. A chain is short: bound the walk.
    while current is not None and seen < _MAX_CHAIN:
        seen += 1
        if isinstance(current, httpx.Response):
            return tuple(current.extensions.get(HISTORY_EXTENSION, ()))
        history = getattr(current, _EXCEPTION_ATTRIBUTE, None)
        if history is not None:
            return tuple(history)
        response = getattr(current, "response", None)
        current = response if isinstance(response, httpx.Response) else current.__cause__
    return ()


_MAX_CHAIN = 8
