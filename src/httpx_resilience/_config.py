"""`RetryConfig`: what to retry, how long to wait, and how much retrying is allowed.

A `RetryConfig` is an immutable value, validated once at construction, so one instance can be
shared by every transport and request. Per-request progress (attempt count, deadline, history)
lives elsewhere (`_transport.py`); the transport-wide retry budget's counters live in `_budget.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial

from ._validate import check_bool, check_hashable_set, check_number, check_statuses

__all__ = ["DEFAULT_RETRY_METHODS", "DEFAULT_RETRY_STATUSES", "RetryConfig"]

_check_number = partial(check_number, "RetryConfig")

#: Methods RFC 9110 §9.2.2 defines as idempotent: repeating them has the effect of sending once.
DEFAULT_RETRY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

#: Statuses that say "try again later" rather than "your request is wrong".
DEFAULT_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """How a `ResilientTransport` retries. Immutable; every field is validated at construction.

    Waits: retry *n* (1-based) waits ``min(max_delay, base_delay * backoff_factor ** (n - 1))``,
    shortened at random by ``jitter`` (full jitter by default: a uniform draw from
    ``[0, delay]``). A usable ``Retry-After`` on a 429 or 503 replaces that wait and is never
    shortened by jitter.

    Attributes:
        max_retries: Retries after the first attempt; 0 turns retrying off. Default 3.
        base_delay: Seconds before the first retry, before jitter. Default 0.5.
        backoff_factor: Multiplier per further retry (>= 1). Default 2.0.
        max_delay: Upper bound of one backoff wait, in seconds. Default 10.0.
        jitter: Share of each backoff wait that is randomised: 1.0 (or ``True``) is full
            jitter, 0.0 (or ``False``) none. Default 1.0.
        retry_on_status: Response statuses that are retried. Default 429, 500, 502, 503, 504.
        retry_methods: Methods retried after the request may have reached the server
            (read/write errors, retryable statuses). Requests with an ``Idempotency-Key``
            header are retried whatever their method. Requests that never left the client
            (connect errors, pool timeouts) are retried for every method. Default: the
            idempotent methods GET, HEAD, OPTIONS, PUT, DELETE, TRACE.
        respect_retry_after: Honour ``Retry-After`` on 429 and 503. Default True.
        retry_after_cap: The longest ``Retry-After`` honoured, in seconds. A server asking
            for a longer wait gets no retry: its response is returned at once, since
            retrying sooner than asked would defy it and waiting that long would stall the
            caller. A value too large to represent (a 400-digit number) is above the cap
            too. Default 60.0.
        total_timeout: Overall deadline in seconds across all attempts and waits, or None
            for none. An attempt still running at the deadline is cancelled and
            `DeadlineExceeded` raised; a wait that would end past it is not started and the
            last response or error is handed back at once. Default None, as httpx's own
            timeouts are per operation.
        budget_ratio: Retry budget: retries may be at most this share of the requests seen
            in the last ``budget_window`` seconds, plus ``budget_min_per_second``. None turns
            the budget off. Default 0.2 (Envoy's and Finagle's 20 %).
        budget_min_per_second: Retries per second always allowed, so that a client with
            little traffic can still retry. Default 3.0.
        budget_window: Seconds of history the budget looks back over. Default 10.0.
        max_unprocessed_retries: Retries, on top of ``max_retries``, of a request the server
            provably did not process: its HTTP/2 stream was above the ``last_stream_id`` of
            the server's GOAWAY, or the server refused it with ``REFUSED_STREAM`` (RFC 9113
            §6.8, §8.7). They are sent at once, for every method, and spend neither
            ``max_retries`` nor the retry budget. Past this bound such a failure is retried
            under the ordinary rules (as a request that never reached the server), so a
            request is sent at most ``max_unprocessed_retries + max_retries + 1`` times.
            Default 10.
    """

    max_retries: int = 3
    base_delay: float = 0.5
    backoff_factor: float = 2.0
    max_delay: float = 10.0
    jitter: float | bool = 1.0
    retry_on_status: Iterable[int] = DEFAULT_RETRY_STATUSES
    retry_methods: Iterable[str] = DEFAULT_RETRY_METHODS
    respect_retry_after: bool = True
    retry_after_cap: float = 60.0
    total_timeout: float | None = None
    budget_ratio: float | None = 0.2
    budget_min_per_second: float = 3.0
    budget_window: float = 10.0
    max_unprocessed_retries: int = 10

    def __post_init__(self) -> None:
        _check_number("max_retries", self.max_retries, integer=True)
        _check_number("max_unprocessed_retries", self.max_unprocessed_retries, integer=True)
        _check_number("base_delay", self.base_delay)
        _check_number("backoff_factor", self.backoff_factor, minimum=1.0)
        _check_number("max_delay", self.max_delay)
        if self.max_delay < self.base_delay:
            raise ValueError(
                f"RetryConfig.max_delay must be >= base_delay ({self.base_delay!r}), "
                f"got {self.max_delay!r}"
            )
        jitter = float(self.jitter) if isinstance(self.jitter, bool) else self.jitter
        _check_number("jitter", jitter, maximum=1.0)
        _check_number("retry_after_cap", self.retry_after_cap)
        _check_number("total_timeout", self.total_timeout, allow_none=True)
        if self.total_timeout == 0:
            raise ValueError("RetryConfig.total_timeout must be > 0 or None, got 0")
        _check_number("budget_ratio", self.budget_ratio, allow_none=True, maximum=1e6)
        _check_number("budget_min_per_second", self.budget_min_per_second)
        _check_number("budget_window", self.budget_window, minimum=0.001, maximum=86400.0)
        check_bool("RetryConfig", "respect_retry_after", self.respect_retry_after)
        statuses = check_statuses("RetryConfig", "retry_on_status", self.retry_on_status)
        methods = check_hashable_set(
            "RetryConfig", "retry_methods", self.retry_methods, "method names such as 'GET'"
        )
        for method in methods:
            if not isinstance(method, str) or not method.isascii() or not method.isalpha():
                raise ValueError(
                    "RetryConfig.retry_methods must hold method names such as 'GET' "
                    f"(ASCII letters only), got {method!r:.80}"
                )
        set_field = object.__setattr__
        set_field(self, "jitter", float(jitter))
        set_field(self, "retry_on_status", statuses)
        set_field(self, "retry_methods", frozenset(str(m).upper() for m in methods))

    def replace(self, **changes: object) -> RetryConfig:
        """Return a copy with ``changes`` applied, validated like a new instance."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
