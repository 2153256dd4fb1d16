"""The connection layer's HTTP/2 (`_connection/http2.py` and the pool's stream capacity) against
real servers on 127.0.0.1, under asyncio and trio.

Hypercorn over TLS (ALPN) for ordinary traffic and the 10,000-request burst; the scripted h2
server (`tests.support.h2server`, HTTP/2 by prior knowledge) for stream limits and stalls at a
chosen point; a raw socket server for a connection whose HTTP/2 preface never comes. The GOAWAY,
REFUSED_STREAM and protocol-violation cases are in ``test_http2_close.py``.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import httpx
import pytest

from httpx_resilience import AsyncConnectionPoolTransport, ResilientTransport
from tests.support.h2server import H2Server, Plan
from tests.support.raw import RawServer, full_listener
from tests.support.server import ServerThread

pytestmark = pytest.mark.anyio

ONE_SLOT = httpx.Limits(max_connections=1, max_keepalive_connections=1)


def h2c(**kwargs: Any) -> AsyncConnectionPoolTransport:
    """HTTP/2 by prior knowledge over plain TCP, as the scripted server speaks it."""
    return AsyncConnectionPoolTransport(http1=False, http2=True, **kwargs)


def assert_nothing_held(transport: AsyncConnectionPoolTransport) -> None:
    stats = transport.pool_stats
    assert stats is not None
    assert (stats.in_use, stats.waiting) == (0, 0), stats


async def gather(count: int, send: Callable[[int], Awaitable[httpx.Response]]) -> list[Any]:
    results: list[Any] = [None] * count

    async def one(index: int) -> None:
        results[index] = await send(index)

    async with anyio.create_task_group() as group:
        for index in range(count):
            group.start_soon(one, index)
    return results


# --- multiplexing ----------------------------------------------------------------------------


async def test_concurrent_requests_share_one_connection() -> None:
    with H2Server(lambda _: Plan(delay=0.3)) as server:
        transport = h2c()
        async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
            with anyio.fail_after(10):
                responses = await gather(10, lambda i: client.get(f"/m{i}"))
            assert [r.status_code for r in responses] == [200] * 10
            assert {r.http_version for r in responses} == {"HTTP/2"}
            assert tuple(transport.pool_stats or ()) == (1, 1, 0, 0)
    assert server.connections == 1
    assert server.max_active == 10  # all ten at once, on that one connection
    assert sorted(p.path for p in server.processed) == sorted(f"/m{i}" for i in range(10))


async def test_a_second_connection_opens_beyond_max_concurrent_streams() -> None:
    with H2Server(lambda _: Plan(max_concurrent_streams=3, delay=0.3)) as server:
        transport = h2c()
        async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
            with anyio.fail_after(10):
                responses = await gather(7, lambda i: client.get(f"/s{i}"))
            assert [r.status_code for r in responses] == [200] * 7
            assert_nothing_held(transport)
    assert server.connections == 3  # 3 + 3 + 1 streams
    assert server.max_active <= 3
    assert sorted(p.path for p in server.processed) == sorted(f"/s{i}" for i in range(7))


async def test_full_connections_and_max_connections_queue_the_rest_in_order() -> None:
    # One connection allowed, one stream on it: the requests go one after another, each on
    # the same connection, in the order they asked.
    limits = httpx.Limits(max_connections=1)
    with H2Server(lambda _: Plan(max_concurrent_streams=1, delay=0.05)) as server:
        transport = h2c(limits=limits)
        async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
            order: list[int] = []

            async def send(index: int) -> httpx.Response:
                await anyio.sleep(index * 0.01)  # ask in index order
                response = await client.get(f"/q{index}")
                order.append(index)
                return response

            with anyio.fail_after(10):
                responses = await gather(5, send)
            assert [r.status_code for r in responses] == [200] * 5
            assert_nothing_held(transport)
    assert order == [0, 1, 2, 3, 4]
    assert server.connections == 1
    assert server.max_active == 1


async def test_a_stream_closed_early_resets_only_itself(
    h2_server: ServerThread, client_ssl_context: ssl.SSLContext, key: str
) -> None:
    transport = AsyncConnectionPoolTransport(http2=True, verify=client_ssl_context)
    async with httpx.AsyncClient(transport=transport, base_url=h2_server.url) as client:
        with anyio.fail_after(10):
            async with client.stream("GET", f"/big/{key}?size=5000000") as big:
                assert big.http_version == "HTTP/2"
                # Another request on the same connection while the big one is open.
                other = await client.get(f"/ok/{key}")
                assert other.json()["http_version"] == "2"
            # Closed before its 5 MB body was read: its stream is reset, the connection stays.
            after = await client.get(f"/big/{key}?size=100000")
        assert len(after.content) == 100_000
        assert tuple(transport.pool_stats or ()) == (1, 1, 0, 0)


async def test_response_extensions_and_streamed_bodies(
    h2_server: ServerThread, client_ssl_context: ssl.SSLContext, key: str
) -> None:
    transport = AsyncConnectionPoolTransport(http2=True, verify=client_ssl_context)
    async with httpx.AsyncClient(transport=transport, base_url=h2_server.url) as client:

        async def body() -> AsyncIterator[bytes]:
            for _ in range(40):
                yield b"x" * 10_000  # 400 kB: more than the initial flow-control window

        response = await client.post(f"/ok/{key}", content=body())
        assert response.status_code == 200
        assert response.extensions["http_version"] == b"HTTP/2"
        assert h2_server.app.received[key][-1].body == b"x" * 400_000  # type: ignore[attr-defined]
        received = 0
        async with client.stream("GET", f"/big/{key}?size=3000000") as streamed:
            async for chunk in streamed.aiter_bytes():
                received += len(chunk)
        assert received == 3_000_000
        assert_nothing_held(transport)


async def test_ten_thousand_requests_at_once_with_default_limits(
    h2_server: ServerThread, client_ssl_context: ssl.SSLContext, key: str
) -> None:
    transport = ResilientTransport(verify=client_ssl_context)  # HTTP/2, httpx's default limits
    inner = transport.transport
    assert isinstance(inner, AsyncConnectionPoolTransport)
    timeout = httpx.Timeout(120.0)
    async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
        with anyio.fail_after(300):
            responses = await gather(
                10_000, lambda i: client.get(f"{h2_server.url}/ok/{key}-{i % 10}")
            )
        stats = inner.pool_stats
        assert stats is not None
        assert (stats.in_use, stats.waiting) == (0, 0), stats
        assert stats.connections <= 100  # max_connections
    assert [r.status_code for r in responses] == [200] * 10_000
    assert {r.http_version for r in responses} == {"HTTP/2"}
    hits = sum(h2_server.app.hits(f"{key}-{n}") for n in range(10))  # type: ignore[attr-defined]
    assert hits == 10_000


# --- cancellation at each stage: the stream and the slot come back ---------------------------


async def next_request_succeeds(transport: AsyncConnectionPoolTransport) -> None:
    """With one connection slot, a leaked slot would make this request time out."""
    with H2Server() as server:
        async with httpx.AsyncClient(transport=transport, timeout=5.0) as client:
            with anyio.fail_after(10):
                response = await client.get(f"{server.url}/next")
    assert response.status_code == 200
    assert response.http_version == "HTTP/2"
    assert_nothing_held(transport)


async def test_cancelled_while_waiting_for_a_stream_slot() -> None:
    with H2Server(lambda _: Plan(max_concurrent_streams=1, delay=1.0)) as server:
        transport = h2c(limits=ONE_SLOT)
        async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
            async with anyio.create_task_group() as group:
                first: list[httpx.Response] = []

                async def hold() -> None:
                    first.append(await client.get("/holds-the-stream"))

                group.start_soon(hold)
                await anyio.sleep(0.2)
                with anyio.move_on_after(0.2) as scope:
                    await client.get("/waits")
                assert scope.cancelled_caught
                stats = transport.pool_stats
                assert stats is not None
                assert stats.waiting == 0
            assert first[0].status_code == 200
            assert_nothing_held(transport)
            assert [p.path for p in server.processed] == ["/holds-the-stream"]
            await next_request_succeeds(transport)


async def test_cancelled_while_connecting() -> None:
    transport = h2c(limits=ONE_SLOT)
    with full_listener() as listener:
        async with httpx.AsyncClient(transport=transport, timeout=5.0) as client:
            with anyio.move_on_after(0.2) as scope:
                await client.get(f"http://127.0.0.1:{listener.port}/")
            assert scope.cancelled_caught
            assert transport.pool_stats == (0, 0, 0, 0)
            await next_request_succeeds(transport)


def _silent(conn: socket.socket) -> None:
    """Accept, read what comes, never send a byte: no SETTINGS, so no HTTP/2 connection."""
    conn.settimeout(0.1)
    for _ in range(100):  # at most ~10 s
        try:
            if not conn.recv(65536):
                return
        except TimeoutError:
            continue


async def test_cancelled_while_waiting_for_the_servers_preface() -> None:
    # Two requests: the first opens the connection and waits for the server's SETTINGS, the
    # second waits for a stream on that connection (slots are free: it does not open its own).
    # Both are cancelled.
    transport = h2c()
    with RawServer(_silent) as silent:
        async with httpx.AsyncClient(transport=transport, timeout=5.0) as client:
            with anyio.move_on_after(0.3) as scope:
                await gather(2, lambda i: client.get(f"{silent.url}/{i}"))
            assert scope.cancelled_caught
            assert transport.pool_stats == (0, 0, 0, 0)
            assert silent.accepted == 1  # the second waited for the first's connection
            await next_request_succeeds(transport)


async def test_cancelled_while_writing_the_body() -> None:
    # The server withholds flow-control window: the 200 kB body stalls after 64 kB.
    with H2Server(lambda _: Plan(withhold_window=True)) as server:
        transport = h2c(limits=ONE_SLOT)
        async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
            with anyio.move_on_after(0.3) as scope:
                await client.post("/upload", content=b"x" * 200_000)
            assert scope.cancelled_caught
            assert_nothing_held(transport)
        assert server.processed == []
    await next_request_succeeds(transport)


async def test_cancelled_while_a_body_generator_waits() -> None:
    closed: list[bool] = []

    async def body() -> AsyncIterator[bytes]:
        try:
            yield b"first"
            await anyio.sleep(10)
            yield b"never"
        finally:
            closed.append(True)

    with H2Server() as server:
        transport = h2c(limits=ONE_SLOT)
        async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
            with anyio.move_on_after(0.3) as scope:
                await client.post("/upload", content=body())
            assert scope.cancelled_caught
            assert_nothing_held(transport)
            assert closed == [True]
            # The connection itself is fine: only that stream was reset.
            assert (await client.get("/after")).status_code == 200
        assert server.connections == 1
    await next_request_succeeds(transport)


async def test_cancelled_while_reading_the_head() -> None:
    with H2Server(lambda _: Plan(delay=3.0)) as server:
        transport = h2c(limits=ONE_SLOT)
        async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
            with anyio.move_on_after(0.3) as scope:
                await client.get("/slow")
            assert scope.cancelled_caught
            assert_nothing_held(transport)
    await next_request_succeeds(transport)


async def test_cancelled_while_reading_the_body() -> None:
    with H2Server(lambda _: Plan(stall_body=True)) as server:
        transport = h2c(limits=ONE_SLOT)
        async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
            async with client.stream("GET", "/stalls") as response:
                assert response.status_code == 200
                with anyio.move_on_after(0.3) as scope:
                    await response.aread()
                assert scope.cancelled_caught
            assert_nothing_held(transport)
    await next_request_succeeds(transport)


@pytest.mark.parametrize("http2", [True, False], ids=["HTTP/2", "HTTP/1.1"])
async def test_a_request_built_with_a_stream_is_sent(
    h2_server: ServerThread, client_ssl_context: ssl.SSLContext, key: str, http2: bool
) -> None:
    # httpx builds redirected requests with ``stream=``: their content was never "read".
    transport = AsyncConnectionPoolTransport(http2=http2, verify=client_ssl_context)
    async with httpx.AsyncClient(transport=transport) as client:
        url = httpx.URL(f"{h2_server.url}/ok/{key}")
        request = httpx.Request(
            "POST",
            url,
            headers={"host": url.netloc.decode(), "content-length": "7"},
            stream=httpx.ByteStream(b"payload"),
        )
        response = await client.send(request)
    assert response.status_code == 200
    assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    assert h2_server.app.received[key][-1].body == b"payload"  # type: ignore[attr-defined]


def test_what_the_pool_learns_per_origin_is_bounded() -> None:
    from httpx_resilience._connection.pool import _ORIGIN_MEMORY, _BoundedMemory

    memory = _BoundedMemory()
    for index in range(_ORIGIN_MEMORY + 10):
        memory[("https", f"host{index}", 443)] = index
    memory[("https", "host20", 443)] = 3  # learned again: kept as the newest
    assert len(memory) == _ORIGIN_MEMORY
    assert ("https", "host0", 443) not in memory  # the oldest are forgotten first
    assert memory[("https", "host20", 443)] == 3
    assert next(reversed(memory)) == ("https", "host20", 443)
