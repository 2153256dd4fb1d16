"""A pytest plugin for httpx's own test suite: `httpx.AsyncClient` builds this package's
`AsyncConnectionPoolTransport` wherever it would build its default `httpx.AsyncHTTPTransport`.

Loaded with ``-p substitute`` by ``run_httpx_suite.py``. It patches the name httpx's client
module looks up (a private module: this is a test harness, not library code), so tests that
build an `httpx.AsyncHTTPTransport` themselves still get httpx's.
"""

from __future__ import annotations

from typing import Any

import httpx._client

from httpx_resilience import AsyncConnectionPoolTransport


def pytest_configure(config: Any) -> None:
    setattr(httpx._client, "AsyncHTTPTransport", AsyncConnectionPoolTransport)  # noqa: B010
