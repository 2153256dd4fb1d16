"""The record of a request's attempts, attached to its final response or error."""

from __future__ import annotations

from typing import NamedTuple

import httpx

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


def get_retry_history(target: httpx.Response | BaseException) -> tuple[Attempt, ...]:
    """The attempts behind a response or an error raised by `ResilientTransport`.

    Empty if ``target`` did not pass through a `ResilientTransport`.
    """
    if isinstance(target, httpx.Response):
        history = target.extensions.get(HISTORY_EXTENSION, ())
    else:
        history = getattr(target, _EXCEPTION_ATTRIBUTE, ())
    return tuple(history)
