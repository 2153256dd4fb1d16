"""The retry decision: given one failed attempt, retry or not, and after how long.

Pure: the times, the random source and the budget come in as arguments, so every rule is tested
without sockets or sleeping. The transport (`_transport.py`) does the I/O around it.

The order of the checks is the order of the documented decision table:

1. Is the outcome retryable at all (status in ``retry_on_status``; error not FATAL)?
2. May this request be sent again (method rule; replayable body)?
3. Are retries left?
4. How long to wait (``Retry-After`` or backoff), and does that wait fit the cap and deadline?
5. Does the retry budget allow it? (Asked last, so a refusal for another reason spends nothing.)

A shell whose budget must be fetched before it can answer (a fleet's, through a shared store:
`_fleet.py`) decides steps 1-4 with ``budget=None``, fetches only for a retry, and then takes
step 5 alone with `spend_budget`: a request that stops for any other reason never costs the
fleet a retry, nor a call to the store.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from ._budget import RetryBudget
from ._config import RetryConfig
from ._retry_after import parse_retry_after, parse_retry_after_ms

__all__ = [
    "BUDGET_EXHAUSTED",
    "PAST_DEADLINE",
    "RETRY_AFTER_STATUSES",
    "Decision",
    "FailureKind",
    "backoff_delay",
    "decide",
    "spend_budget",
]

#: Statuses whose ``Retry-After`` header is honoured (RFC 9110 §10.2.3, RFC 6585 §4).
RETRY_AFTER_STATUSES = frozenset({429, 503})

#: The reason of a retry the budget refused (the instrumentation reports it apart).
BUDGET_EXHAUSTED = "retry budget exhausted"

#: The reason of a retry whose wait would pass the request's ``total_timeout``.
PAST_DEADLINE = "wait would pass total_timeout"


class FailureKind(enum.Enum):
    """Whether a failed attempt could have reached the server (`_classify.py` sorts the
    transport's exceptions into these)."""

    NOT_PROCESSED = "not processed"
    NOT_SENT = "not sent"
    MAYBE_PROCESSED = "maybe processed"
    FATAL = "fatal"


@dataclass(frozen=True, slots=True)
class Decision:
    """``retry`` and the ``wait`` before it in seconds, with a short human ``reason``."""

    retry: bool
    wait: float
    reason: str


def backoff_delay(config: RetryConfig, retry_number: int, random: Callable[[], float]) -> float:
    """The backoff wait before retry ``retry_number`` (1-based): capped exponential, jittered.

    With ``jitter`` j the wait is drawn uniformly from ``[delay * (1 - j), delay]``.
    """
    try:
        delay = min(
            config.max_delay, config.base_delay * config.backoff_factor ** (retry_number - 1)
        )
    except OverflowError:  # a large exponent overflows float before min() could cap it
        delay = config.max_delay
    jitter = float(config.jitter)
    if jitter:
        delay -= delay * jitter * random()
    return delay


def decide(
    config: RetryConfig,
    *,
    attempt: int,
    status: int | None = None,
    error: BaseException | None = None,
    kind: FailureKind | None = None,
    retry_after: str | None = None,
    retry_after_ms: str | None = None,
    method_retryable: bool,
    replayable: bool,
    now: float,
    wall_now: float,
    deadline: float | None,
    random: Callable[[], float],
    budget: RetryBudget | None,
) -> Decision:
    """Decide what follows attempt number ``attempt`` (1-based), which ended in ``status``
    (a response) or ``error`` (an exception raised by the inner transport, of failure
    ``kind``: the shell classifies it, so this module needs no httpx).

    ``method_retryable`` says whether the request may be repeated after it possibly reached the
    server (idempotent method or ``Idempotency-Key``); ``replayable`` whether its body can be
    sent again. ``now`` and ``deadline`` are on the monotonic clock, ``wall_now`` is Unix time
    for ``Retry-After`` dates; a usable ``retry_after_ms`` (the ``retry-after-ms`` header) takes
    precedence over ``retry_after``. Spends one unit of ``budget`` if, and only if, it says retry.
    """
    if error is not None:
        if kind is None:
            raise TypeError("decide(): an error needs its FailureKind (kind=...)")
        if kind is FailureKind.FATAL:
            return Decision(False, 0.0, "error not retryable")
        if kind is FailureKind.MAYBE_PROCESSED and not method_retryable:
            return Decision(False, 0.0, "method not retryable after a possibly processed request")
        cause = f"{type(error).__name__} ({kind.value})"
    else:
        if status not in config.retry_on_status:  # type: ignore[operator]
            return Decision(False, 0.0, "status not retryable")
        if not method_retryable:
            return Decision(False, 0.0, "method not retryable")
        cause = f"status {status}"
    if not replayable:
        return Decision(False, 0.0, "request body cannot be replayed")
    if attempt > config.max_retries:
        return Decision(False, 0.0, "retries exhausted")

    wait = None
    if config.respect_retry_after and status in RETRY_AFTER_STATUSES:
        if retry_after_ms is not None:
            wait = parse_retry_after_ms(retry_after_ms)
        if wait is None and retry_after is not None:
            wait = parse_retry_after(retry_after, wall_now)
        if wait is not None and wait > config.retry_after_cap:
            return Decision(False, 0.0, "Retry-After above retry_after_cap")
    if wait is None:
        wait = backoff_delay(config, attempt, random)
    if deadline is not None and now + wait >= deadline:
        return Decision(False, 0.0, PAST_DEADLINE)
    if budget is not None and not budget.try_spend(now):
        return Decision(False, 0.0, BUDGET_EXHAUSTED)
    return Decision(True, wait, cause)


def spend_budget(
    decision: Decision, budget: RetryBudget | None, now: float, deadline: float | None
) -> Decision:
    """Step 5 of `decide` alone, for a ``decision`` that `decide` made with ``budget=None``.

    A stop is returned as it is, spending nothing. A retry stays one if its wait still fits
    ``deadline`` at ``now`` (fetching the budget took time) and ``budget`` allows it; it
    spends one unit of ``budget`` if, and only if, it stays a retry.
    """
    if not decision.retry:
        return decision
    if deadline is not None and now + decision.wait >= deadline:
        return Decision(False, 0.0, PAST_DEADLINE)
    if budget is not None and not budget.try_spend(now):
        return Decision(False, 0.0, BUDGET_EXHAUSTED)
    return decision
