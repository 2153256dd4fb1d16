"""Stress: servers that close connections often lose no request (issue 6's headline proof).

5,000 mixed GETs and POSTs at concurrency 100 through `ResilientTransport` against real servers
that close connections all the time, in both ordinary ways: a small per-connection request
limit and a short idle timeout.

* HTTP/1.1: Hypercorn, ``keep_alive_max_requests=20`` and ``keep_alive_timeout=2`` s; the
  client's ``keepalive_expiry`` (0.5 s) is well below the server's idle timeout, as it must be: a
  request written while the server's idle close is on its way is the one race no HTTP/1.1
  client can recover safely for a POST (see docs/http2.md).
* HTTP/2 with TLS: nginx (``keepalive_requests 50``, ``keepalive_timeout 300ms``) in front of
  Hypercorn; nginx's GOAWAY is graceful. (Hypercorn's own HTTP/2 request limit is not: it
  drops answers to streams it accepted, which no client can recover safely; see docs/http2.md.)

Zero errors reach the caller, and the upstream's own count shows every POST processed exactly
once. Every worker pauses now and then for longer than the idle timeout, so idle closes race
with new requests too. Requests are bounded in number; the whole run in time.
"""

from __future__ import annotations

import collections
import ssl
from collections.abc import Iterator

import anyio
import httpx
import pytest
import trustme

from httpx_resilience import ResilientTransport, RetryConfig, get_retry_history
from tests.support.nginx import UPSTREAM_KEEP_ALIVE_TIMEOUT, NginxProxy
from tests.support.server import FaultApp, ServerThread

pytestmark = pytest.mark.anyio

REQUESTS = 5000
CONCURRENCY = 100
PAUSE_EVERY = 20  # each worker's requests between pauses
RUN_LIMIT = 240.0  # seconds: the run fails rather than hang


class Target:
    def __init__(self, url: str, app: FaultApp, options: dict[str, object], pause: float):
        self.url, self.app, self.options, self.pause = url, app, options, pause


@pytest.fixture(scope="module")
def h1_closing() -> Iterator[Target]:
    app = FaultApp()
    with ServerThread(app, keep_alive_max_requests=20, keep_alive_timeout=2.0) as server:
        limits = httpx.Limits(max_connections=100, keepalive_expiry=0.5)
        yield Target(server.url, app, {"limits": limits}, pause=2.1)


@pytest.fixture(scope="module")
def h2_closing(ca: trustme.CA, client_ssl_context: ssl.SSLContext) -> Iterator[Target]:
    app = FaultApp()
    with (
        ServerThread(
            app, keep_alive_max_requests=10**6, keep_alive_timeout=UPSTREAM_KEEP_ALIVE_TIMEOUT
        ) as upstream,
        NginxProxy(
            f"127.0.0.1:{upstream.port}", ca=ca, keepalive_requests=50, keepalive_timeout="300ms"
        ) as nginx,
    ):
        yield Target(nginx.url, app, {"verify": client_ssl_context}, pause=0.35)


# Both protocols run on this package's own connection layer (`AsyncConnectionPoolTransport`).
@pytest.mark.parametrize("protocol", ["HTTP/1.1", "HTTP/2"])
async def test_no_request_lost_when_servers_close_connections(
    protocol: str, request: pytest.FixtureRequest, anyio_backend: str
) -> None:
    fixture = "h1_closing" if protocol == "HTTP/1.1" else "h2_closing"
    target: Target = request.getfixturevalue(fixture)
    prefix = f"{anyio_backend}-{protocol.replace('/', '')}-"
    retry = RetryConfig(base_delay=0.01, max_delay=0.1, budget_ratio=None)
    options = {**target.options, "http2": protocol == "HTTP/2"}
    transport = ResilientTransport(retry=retry, **options)  # type: ignore[arg-type]
    errors: collections.Counter[str] = collections.Counter()
    versions: collections.Counter[str] = collections.Counter()
    resent = 0

    async def worker(first: int, client: httpx.AsyncClient) -> None:
        nonlocal resent
        for number, index in enumerate(range(first, REQUESTS, CONCURRENCY)):
            if number and number % PAUSE_EVERY == 0:
                await anyio.sleep(target.pause)
            method = "POST" if index % 2 else "GET"
            url = f"{target.url}/ok/{prefix}{index}"
            try:
                response = await client.request(method, url, content=b"x" if index % 2 else None)
            except httpx.HTTPError as exc:
                errors[f"{method} {type(exc).__name__}: {exc}"[:160]] += 1
                continue
            if response.status_code != 200:
                errors[f"{method} status {response.status_code}"] += 1
            versions[response.http_version] += 1
            resent += sum(
                1 for a in get_retry_history(response) if a.reason.startswith("not processed")
            )

    with anyio.fail_after(RUN_LIMIT):
        async with (
            httpx.AsyncClient(transport=transport, timeout=10.0) as client,
            anyio.create_task_group() as group,
        ):
            for first in range(CONCURRENCY):
                group.start_soon(worker, first, client)

    assert dict(errors) == {}
    assert versions == {protocol: REQUESTS}
    hits = [target.app.hits(f"{prefix}{index}") for index in range(REQUESTS)]
    posts = hits[1::2]
    assert posts == [1] * len(posts), "a POST was processed twice or never"
    assert min(hits[0::2]) >= 1
    if protocol == "HTTP/2":
        # The server really did turn requests away: nginx's GOAWAYs left streams unprocessed.
        assert resent > 0
