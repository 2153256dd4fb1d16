"""httpx-resilience: a resilient transport for httpx.

import httpx
from httpx_resilience import ResilientTransport

async with httpx.AsyncClient(transport=ResilientTransport()) as client:
    response = await client.get("https://api.example.com/users/1")
"""

from __future__ import annotations

from ._auth import (
    APIKeyAuth,
    AuthHeaders,
    BearerAuth,
    api_key_auth,
    bearer_token_auth,
    oauth_token_auth,
)
from ._breaker import CircuitBreaker, CircuitState, Origin
from ._client import APIResponse, AsyncAPIClient
from ._config import DEFAULT_RETRY_METHODS, DEFAULT_RETRY_STATUSES, RetryConfig
from ._connection.pool import PoolStats
from ._connection.transport import AsyncConnectionPoolTransport
from ._cooldown import CoolDown
from ._exceptions import (
    APICircuitOpenError,
    APIClientError,
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    CircuitOpenError,
    CoolDownError,
    DeadlineExceeded,
    PermissionDeniedError,
    RateLimitError,
    ResilienceError,
    ResourceNotFoundError,
    ServerError,
)
from ._history import HISTORY_EXTENSION, Attempt, get_retry_history
from ._instrument._hooks import (
    AttemptEnd,
    AttemptOutcome,
    AttemptStart,
    BudgetRefusal,
    CircuitChange,
    CoolDownEnd,
    CoolDownRefusal,
    CoolDownStart,
    FailFast,
    GiveUp,
    Hook,
    StoreAvailability,
    add_hook,
    get_hooks,
    set_hooks,
)
from ._instrument._log import LoggingHook
from ._instrument._otel import OpenTelemetryHook
from ._instrument._stats import ConnectionStats, OriginStats, TransportStats
from ._redact import (
    SECRET_NAME_MARKERS,
    SECRET_NAMES,
    LogRedactionFilter,
    add_secret_names,
    install_log_redaction,
    redact_url,
    uninstall_log_redaction,
)
from ._stores import MemoryStore, RedisStore, StateStore
from ._testing import is_testing, set_testing
from ._transport import READ_BODY_EXTENSION, RETRY_EXTENSION, ResilientTransport

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_RETRY_METHODS",
    "DEFAULT_RETRY_STATUSES",
    "HISTORY_EXTENSION",
    "READ_BODY_EXTENSION",
    "RETRY_EXTENSION",
    "SECRET_NAMES",
    "SECRET_NAME_MARKERS",
    "APICircuitOpenError",
    "APIClientError",
    "APIConnectionError",
    "APIKeyAuth",
    "APIResponse",
    "APIStatusError",
    "APITimeoutError",
    "AsyncAPIClient",
    "AsyncConnectionPoolTransport",
    "Attempt",
    "AttemptEnd",
    "AttemptOutcome",
    "AttemptStart",
    "AuthHeaders",
    "AuthenticationError",
    "BearerAuth",
    "BudgetRefusal",
    "CircuitBreaker",
    "CircuitChange",
    "CircuitOpenError",
    "CircuitState",
    "ConnectionStats",
    "CoolDown",
    "CoolDownEnd",
    "CoolDownError",
    "CoolDownRefusal",
    "CoolDownStart",
    "DeadlineExceeded",
    "FailFast",
    "GiveUp",
    "Hook",
    "LogRedactionFilter",
    "LoggingHook",
    "MemoryStore",
    "OpenTelemetryHook",
    "Origin",
    "OriginStats",
    "PermissionDeniedError",
    "PoolStats",
    "RateLimitError",
    "RedisStore",
    "ResilienceError",
    "ResilientTransport",
    "ResourceNotFoundError",
    "RetryConfig",
    "ServerError",
    "StateStore",
    "StoreAvailability",
    "TransportStats",
    "__version__",
    "add_hook",
    "add_secret_names",
    "api_key_auth",
    "bearer_token_auth",
    "get_hooks",
    "get_retry_history",
    "install_log_redaction",
    "is_testing",
    "oauth_token_auth",
    "redact_url",
    "set_hooks",
    "set_testing",
    "uninstall_log_redaction",
]
