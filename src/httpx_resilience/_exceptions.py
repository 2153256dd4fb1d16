"""The exceptions httpx-resilience adds. Each is also an httpx exception, so ``except`` clauses
written for httpx keep working.

* ResilienceError (a mix-in: catches every exception of this package)
* httpx.TransportError
  + httpx.TimeoutException
    - DeadlineExceeded (also ResilienceError)

Errors the inner transport raised are re-raised unchanged (their own httpx type), with the
attempts behind them readable through `get_retry_history`.
"""

from __future__ import annotations

import httpx

__all__ = ["DeadlineExceeded", "ResilienceError"]


class ResilienceError(Exception):
    """Base of every exception raised by httpx-resilience itself."""


class DeadlineExceeded(ResilienceError, httpx.TimeoutException):
    """``RetryConfig.total_timeout`` ran out while an attempt was in flight."""
