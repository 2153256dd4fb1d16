"""httpx-resilience: a resilient transport for httpx.

import httpx
from httpx_resilience import ResilientTransport

async with httpx.AsyncClient(transport=ResilientTransport()) as client:
    response = await client.get("https://api.example.com/users/1")
"""

from __future__ import annotations

from ._breaker import CircuitBreaker, CircuitState, Origin
from ._config import DEFAULT_RETRY_METHODS, DEFAULT_RETRY_STATUSES, RetryConfig
from ._exceptions import CircuitOpenError, DeadlineExceeded, ResilienceError
from ._history import HISTORY_EXTENSION, Attempt, get_retry_history
from ._testing import is_testing, set_testing
from ._transport import READ_BODY_EXTENSION, RETRY_EXTENSION, ResilientTransport

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_RETRY_METHODS",
    "DEFAULT_RETRY_STATUSES",
    "HISTORY_EXTENSION",
    "READ_BODY_EXTENSION",
    "RETRY_EXTENSION",
    "Attempt",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "DeadlineExceeded",
    "Origin",
    "ResilienceError",
    "ResilientTransport",
    "RetryConfig",
    "__version__",
    "get_retry_history",
    "is_testing",
    "set_testing",
]
