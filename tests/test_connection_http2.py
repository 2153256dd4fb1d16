"""The connection layer's HTTP/2 (`_connection/http2.py` and the pool's stream capacity) against
real servers on 127.0.0.1, under asyncio and trio.

Hypercorn over TLS (ALPN) for ordinary traffic and the 10,000-request burst; the scripted h2
server (`tests.support.h2server`, HTTP/2 by prior knowledge) for stream limits and stalls at a
chosen point; the path-scripted h2 server (`tests.support.scripted_h2`) for flow control,
blocked writes, invalid headers and stream limits changed by SETTINGS; a raw socket server for a
connection whose HTTP/2 preface never comes (or ends without SETTINGS). The GOAWAY,
REFUSED_STREAM and protocol-violation cases are in ``test_http2_close.py``.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import h2.settings
import hpack
import httpx
import pytest

from httpx_resilience import AsyncConnectionPoolTransport, ResilientTransport
from httpx_resilience._classify import FailureKind, classify_error
from httpx_resilience._connection.http2 import HTTP2Connection
from tests.support.h2server import H2Server, Plan
from tests.support.raw import RawServer, full_listener
from tests.support.scripted_h2 import WINDOW, ScriptedServer, Upload, wait_for_arrival
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


# --- flow control, blocked writes and invalid headers (tests.support.scripted_h2) ------------


async def test_a_response_closed_early_gives_its_unread_window_back() -> None:
    """DATA queued for a response closed unread is acknowledged on the connection: the
    connection's receive window (65,535 + 2**24) is not lost for the responses after it."""
    # /fill sends the whole window but the 2 bytes of /ok's body, never ends, and is closed
    # unread; without the acknowledgement no later response on the connection gets any DATA.
    with ScriptedServer() as server:
        transport = h2c()
        timeout = httpx.Timeout(5.0)
        async with httpx.AsyncClient(
            transport=transport, base_url=server.url, timeout=timeout
        ) as client:
            with anyio.fail_after(60):
                async with client.stream("GET", f"/fill?n={WINDOW - 2}") as response:
                    assert response.status_code == 200
                    # Sent after all of /fill's DATA: once read, all of it is in the client.
                    assert (await client.get("/ok")).text == "ok"
                later = await client.get("/data?n=1000000")
            assert len(later.content) == 1_000_000
    assert server.connections == 1


async def wait_until_sent(server: ScriptedServer, path: str, size: int) -> None:
    """Wait (bounded) until the server has sent more than ``size`` bytes of DATA for ``path``."""
    for _ in range(1_000):
        if server.data_sent.get(path, 0) > size:
            return
        await anyio.sleep(0.01)
    raise AssertionError(
        f"the server sent only {server.data_sent.get(path, 0)} bytes for {path} (more than "
        f"{size} expected): the stream's window was not opened"
    )


async def test_a_streams_window_lets_the_server_send_ahead_of_the_reader() -> None:
    """A stream's receive window is opened to 65,535 + 2**24: the server sends far beyond the
    initial 65,535 bytes while the caller has read only the first chunk, and the 4 MB body is
    read to its end. (Without the wider window the server stops after 65,535 bytes plus what
    the caller acknowledged by reading, at most another 65,535.)"""
    path = "/data?n=4000000"
    with ScriptedServer() as server:
        transport = h2c()
        async with httpx.AsyncClient(
            transport=transport, base_url=server.url, timeout=httpx.Timeout(10.0)
        ) as client:
            with anyio.fail_after(60):
                async with client.stream("GET", path) as response:
                    chunks = response.aiter_raw()
                    received = len(await chunks.__anext__())
                    await wait_until_sent(server, path, 4 * 65_535)
                    async for chunk in chunks:
                        received += len(chunk)
            assert received == 4_000_000
            assert_nothing_held(transport)
    assert server.window_updates == [path]  # one WINDOW_UPDATE for the stream: the opening


async def test_downloads_longer_than_a_streams_window_are_read_whole(
    h2_server: ServerThread, client_ssl_context: ssl.SSLContext, key: str
) -> None:
    """Hypercorn over TLS: two 20 MB bodies at once (each longer than a stream's window,
    65,535 + 2**24, so its window is refilled as the caller reads) and a small request beside
    them, on one connection; read a chunk at a time."""
    transport = AsyncConnectionPoolTransport(http2=True, verify=client_ssl_context)
    size = 20_000_000
    async with httpx.AsyncClient(
        transport=transport, base_url=h2_server.url, timeout=httpx.Timeout(30.0)
    ) as client:
        sizes = [0, 0]

        async def download(index: int) -> None:
            async with client.stream("GET", f"/big/{key}-{index}?size={size}") as response:
                assert response.http_version == "HTTP/2"
                async for chunk in response.aiter_raw():
                    sizes[index] += len(chunk)

        with anyio.fail_after(120):
            async with anyio.create_task_group() as group:
                group.start_soon(download, 0)
                group.start_soon(download, 1)
                assert (await client.get(f"/ok/{key}")).status_code == 200
        assert sizes == [size, size]
        assert tuple(transport.pool_stats or ()) == (1, 1, 0, 0)


async def test_read_timeouts_hold_per_stream_on_a_shared_connection() -> None:
    """Each stream's read timeout holds on its own, whatever the order of the waits on the
    connection (under asyncio one timer serves them, armed for the earliest deadline): a short
    timeout that starts after a long one fires; the long ones, started before and beside it,
    do not, and are answered."""
    with ScriptedServer() as server:
        transport = h2c()
        async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
            results: dict[str, object] = {}

            async def held(name: str, read: float) -> None:
                try:
                    response = await client.get("/hold", timeout=httpx.Timeout(30.0, read=read))
                    results[name] = response.status_code
                except httpx.ReadTimeout:
                    results[name] = "ReadTimeout"

            async def arrived(count: int) -> None:
                for _ in range(1_000):
                    if server.arrived.count("/hold") >= count:
                        return
                    await anyio.sleep(0.01)
                raise AssertionError("the requests never reached the server")

            with anyio.fail_after(30):
                async with anyio.create_task_group() as group:
                    group.start_soon(held, "long, first", 30.0)
                    await arrived(1)
                    group.start_soon(held, "short", 0.3)
                    group.start_soon(held, "long, beside", 30.0)
                    await arrived(3)
                    for _ in range(1_000):
                        if "short" in results:
                            break
                        await anyio.sleep(0.01)
                    server.release()
            assert results == {"long, first": 200, "short": "ReadTimeout", "long, beside": 200}
            assert_nothing_held(transport)
    assert server.connections == 1


async def test_read_timeouts_of_many_streams_each_fire_for_their_own_stream() -> None:
    """Twenty streams held on one connection, started so that each short deadline comes
    before all the earlier ones (the asyncio timer is re-armed for every new wait) and beside
    long ones: exactly the short ones time out, the long ones are answered, and once the
    client is closed no timer is left armed on the connection."""
    with ScriptedServer() as server:
        transport = h2c()
        results: dict[int, object] = {}
        async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:

            async def held(index: int, read: float) -> None:
                try:
                    response = await client.get("/hold", timeout=httpx.Timeout(30.0, read=read))
                    results[index] = response.status_code
                except httpx.ReadTimeout:
                    results[index] = "ReadTimeout"

            short = [index for index in range(20) if index % 2]
            with anyio.fail_after(30):
                async with anyio.create_task_group() as group:
                    for index in range(20):
                        # Shorts: 1.9 s, 1.7 s, ... 0.1 s; each new one the earliest so far.
                        read = 30.0 if index not in short else 2.0 - 0.1 * index
                        group.start_soon(held, index, read)
                        for _ in range(1_000):
                            if server.arrived.count("/hold") > index:
                                break
                            await anyio.sleep(0.005)
                    for _ in range(2_000):
                        if all(index in results for index in short):
                            break
                        await anyio.sleep(0.01)
                    server.release()
            assert results == {
                index: "ReadTimeout" if index in short else 200 for index in range(20)
            }
            pool: Any = transport._pool
            conns = list(pool._open)
            assert len(conns) == 1
        assert all(getattr(conn, "_timer", None) is None for conn in conns)
    assert server.connections == 1


async def test_cookie_fields_in_a_response_are_joined_as_http2_says() -> None:
    """``cookie`` fields received are joined into one, after the others (RFC 9113 §8.2.3; h2's
    inbound normalization, done by the connection)."""
    with ScriptedServer() as server:
        async with httpx.AsyncClient(transport=h2c(), base_url=server.url) as client:
            with anyio.fail_after(30):
                response = await client.get("/cookies")
    assert response.text == "ok"
    assert response.headers.multi_items() == [
        ("x-one", "1"),
        ("x-two", "2"),
        ("cookie", "a=1; b=2"),
    ]


@pytest.mark.parametrize(
    "path", ["/no-status", "/status?value=abc", "/status?value=2000", "/status?value=099"]
)
async def test_a_response_without_a_valid_status_is_a_protocol_error(path: str) -> None:
    """A response head without ``:status``, or with one that is not three digits from 100, is the
    server breaking the protocol: `httpx.RemoteProtocolError` (not a 200, not a ValueError),
    and the connection goes on serving other requests."""
    with ScriptedServer() as server:
        transport = h2c()
        async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
            with anyio.fail_after(30):
                with pytest.raises(httpx.RemoteProtocolError, match="no valid :status"):
                    await client.get(path)
                assert (await client.get("/ok")).text == "ok"
            assert_nothing_held(transport)
    assert server.connections == 1


async def test_credentials_are_never_indexed_and_headers_are_normalized() -> None:
    """Authorization, Proxy-Authorization and a short Cookie go as HPACK "never indexed" fields
    (kept out of both sides' compression tables), names lowercased, values stripped, HTTP/1.1's
    connection headers dropped: h2's own outbound normalization, done once by the connection."""
    with ScriptedServer() as server:
        async with httpx.AsyncClient(transport=h2c(), base_url=server.url) as client:
            headers = {
                "Authorization": "Bearer s3cret",
                "Proxy-Authorization": "Basic cHJveHk6cHc=",
                "Cookie": "sid=abc",
                "X-Padded": "  value  ",
                "Connection": "keep-alive",
                "Keep-Alive": "timeout=5",
            }
            with anyio.fail_after(30):
                for _ in range(2):  # the second request: after the first filled the tables
                    assert (await client.get("/ok", headers=headers)).text == "ok"
    assert len(server.request_headers) == 2
    for fields in server.request_headers:
        never = {f[0] for f in fields if isinstance(f, hpack.NeverIndexedHeaderTuple)}
        assert never == {b"authorization", b"proxy-authorization", b"cookie"}
        plain = dict(fields)
        assert plain[b"x-padded"] == b"value"
        assert b"connection" not in plain
        assert b"keep-alive" not in plain
        assert plain[b"authorization"] == b"Bearer s3cret"
        assert all(bytes(n) == bytes(n).lower() for n, _ in fields)


@pytest.mark.parametrize("header", [("x-bad", "a\r\nb"), ("x-nul", "a\x00b"), ("host", "h\nx")])
async def test_cr_lf_or_nul_in_a_header_fails_only_its_request(header: tuple[str, str]) -> None:
    """A header value with CR, LF or NUL (RFC 9113 §8.2.1 forbids them; the server would answer
    with a connection error, failing every stream) is refused before a stream is opened, with
    a message that quotes nothing; a request in flight and the connection carry on."""
    with ScriptedServer() as server:
        async with httpx.AsyncClient(
            transport=h2c(), base_url=server.url, timeout=httpx.Timeout(10.0)
        ) as client:
            results: dict[str, Any] = {}

            async def held() -> None:
                results["held"] = (await client.get("/hold")).status_code

            with anyio.fail_after(30):
                async with anyio.create_task_group() as group:
                    group.start_soon(held)
                    await wait_for_arrival(server, "/hold")
                    with pytest.raises(httpx.LocalProtocolError) as refused:
                        await client.get("/ok", headers=[header])
                    results["next"] = (await client.get("/ok")).status_code
                    server.release()
    assert results == {"held": 200, "next": 200}
    assert header[1] not in str(refused.value)
    assert server.arrived == ["/hold", "/ok"]
    assert server.connections == 1
    assert server.errors == []


async def test_a_connect_request_is_refused_before_anything_is_sent() -> None:
    """CONNECT has no ``:scheme``/``:path`` in HTTP/2 (RFC 9113 §8.5), which this layer always
    sends: h2's checks refuse it before a stream is opened, and the connection goes on."""
    with ScriptedServer() as server:
        async with httpx.AsyncClient(transport=h2c(), base_url=server.url) as client:
            with anyio.fail_after(30):
                with pytest.raises(httpx.LocalProtocolError, match="CONNECT"):
                    await client.request("CONNECT", "/ok")
                assert (await client.get("/ok")).text == "ok"
    assert server.arrived == ["/ok"]
    assert server.connections == 1


@pytest.mark.parametrize("header", ["name", "host"])
async def test_header_fields_with_surrounding_whitespace_go_out_stripped(
    h2_server: ServerThread, client_ssl_context: ssl.SSLContext, key: str, header: str
) -> None:
    """A header name, or a Host value (it becomes ``:authority``), with surrounding whitespace
    (httpx takes both) goes out stripped, as h2's own normalization sent it: sent as given, a
    compliant server (Hypercorn, h2 underneath) takes it for a protocol error and closes the
    whole connection, failing every other request on it (RFC 9113 §8.2.1)."""
    if header == "name":
        headers = {"X-Padded ": "value"}
    else:
        headers = {"Host": f" {httpx.URL(h2_server.url).netloc.decode()} ", "X-Padded": "value"}
    transport = AsyncConnectionPoolTransport(http2=True, verify=client_ssl_context)
    outcome: dict[str, Any] = {}
    async with httpx.AsyncClient(transport=transport, base_url=h2_server.url) as client:

        async def other() -> None:
            try:
                outcome["other"] = (await client.get(f"/slow/{key}-other?delay=2")).status_code
            except httpx.TransportError as exc:
                outcome["other"] = type(exc).__name__

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                group.start_soon(other)
                for _ in range(1_000):  # the other request is in flight on the connection
                    if h2_server.app.hits(f"{key}-other"):  # type: ignore[attr-defined]
                        break
                    await anyio.sleep(0.01)
                try:
                    response = await client.get(f"/ok/{key}", headers=headers)
                    outcome["padded"] = response.status_code
                except httpx.TransportError as exc:
                    outcome["padded"] = type(exc).__name__
        stats = tuple(transport.pool_stats or ())
    assert outcome == {"padded": 200, "other": 200}
    assert stats == (1, 1, 0, 0)  # one connection, still open
    received = h2_server.app.received[key][-1]  # type: ignore[attr-defined]
    assert received.headers.get("x-padded") == "value"


async def test_a_header_h2_refuses_fails_only_its_request() -> None:
    """A request header HTTP/2 forbids (a user header named like a pseudo-header) is a
    LocalProtocolError raised before h2's state is touched: no stream is opened or reset, the
    HPACK state stays in step with the server's, and the other streams go on."""
    # h2 itself opens the stream and feeds the headers before the bad one to its encoder, and
    # only then raises: a RST_STREAM for a stream the server never saw is a connection error
    # (RFC 9113 §6.4), and the requests in flight would die with the connection.
    with ScriptedServer() as server:
        transport = h2c()
        async with httpx.AsyncClient(
            transport=transport, base_url=server.url, timeout=httpx.Timeout(10.0)
        ) as client:
            results: dict[str, Any] = {}

            async def held() -> None:
                try:
                    results["held"] = (await client.get("/hold")).status_code
                except httpx.TransportError as exc:
                    results["held"] = exc

            with anyio.fail_after(30):
                async with anyio.create_task_group() as group:
                    group.start_soon(held)
                    await wait_for_arrival(server, "/hold")
                    with pytest.raises(httpx.LocalProtocolError):
                        await client.get("/ok", headers={"x-first": "1", ":bad": "x"})
                    try:
                        results["next"] = (await client.get("/ok")).status_code
                    except httpx.TransportError as exc:
                        results["next"] = exc
                    server.release()
    assert results == {"held": 200, "next": 200}
    assert server.errors == []


async def test_reading_a_response_never_waits_on_a_blocked_write() -> None:
    """Acknowledging received DATA never makes a reader wait for a write the server does not
    read: a complete response is read (or at worst times out) while the connection's writes
    are stuck."""
    # The server stops reading (for 15 s) while an upload on one stream fills the socket
    # buffers; on another stream it sends a complete 9 MB response. Reading it makes the
    # client acknowledge DATA: under asyncio that write is buffered without waiting for the
    # buffer to drain, under trio it is left to the writer holding the write lock.
    with ScriptedServer(big_window=True, stall_seconds=15.0) as server:
        transport = h2c()
        async with httpx.AsyncClient(
            transport=transport, base_url=server.url, timeout=httpx.Timeout(3.0)
        ) as client:
            outcome: dict[str, Any] = {}

            async def upload() -> None:
                with contextlib.suppress(httpx.TransportError):
                    await client.post("/upload-stall", content=Upload())

            async def download() -> None:
                try:
                    async with client.stream("GET", "/wait-data?n=9000000") as response:
                        size = 0
                        async for chunk in response.aiter_raw():
                            size += len(chunk)
                    outcome["result"] = size
                except httpx.TransportError as exc:
                    outcome["result"] = type(exc).__name__
                outcome["server_was_still_stalled"] = not server.resumed

            with anyio.fail_after(60):
                async with anyio.create_task_group() as group:
                    group.start_soon(download)
                    await wait_for_arrival(server, "/wait-data?n=9000000")
                    group.start_soon(upload)
    assert outcome["server_was_still_stalled"], outcome
    assert outcome["result"] in (9_000_000, "ReadTimeout"), outcome


async def test_a_connection_whose_write_timed_out_takes_no_new_request() -> None:
    """After a WriteTimeout the connection takes no new stream (asyncio and trio alike): the
    next request opens a new connection instead of queueing behind the stuck write buffer."""
    with ScriptedServer(big_window=True, stall_seconds=15.0) as server:
        transport = h2c()
        async with httpx.AsyncClient(
            transport=transport, base_url=server.url, timeout=httpx.Timeout(3.0)
        ) as client:
            started = time.monotonic()
            with anyio.fail_after(60):
                with pytest.raises(httpx.WriteTimeout):
                    await client.post("/upload-stall", content=Upload())
                timed_out = time.monotonic() - started
                response = await client.get("/ok")
            assert response.text == "ok"
            stalled = not server.resumed
            elapsed = time.monotonic() - started
    # (Timings in the messages only: a failure seen once in a full run, not reproduced since.)
    assert stalled, f"the server read again before the end ({timed_out=:.2f} s, {elapsed=:.2f} s)"
    assert server.connections == 2, (server.connections, f"{timed_out=:.2f} s, {elapsed=:.2f} s")


class _AfterTheStall:
    """A request body made once the server has stopped reading (and has written what it sends
    before): one chunk of 16 MB, far more than the socket buffers hold with the client's
    ``SO_SNDBUF`` set small, so the write that carries it blocks. Not an async generator (see
    `Upload`)."""

    def __init__(self, server: ScriptedServer) -> None:
        self._server = server
        self._done = False

    def __aiter__(self) -> _AfterTheStall:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        for _ in range(1_000):
            if self._server.stalled:
                break
            await anyio.sleep(0.01)
        self._done = True
        return b"u" * 16_000_000


async def test_a_frame_read_before_a_blocked_write_leaves_it_its_write_timeout() -> None:
    """A frame from the server still unread when an upload's write begins (here a PING sent
    as the server stops reading) is read first, and the write that then blocks ends with
    `httpx.WriteTimeout` at the request's write timeout. (Under trio the acknowledgement used
    to be written quietly, together with the DATA the request had queued, under a one-second
    deadline with the failure kept quiet: the request failed after a second with "an earlier
    write on this connection failed", a WriteError. A late SETTINGS acknowledgement did the
    same to the test above, once, in a full run.)"""
    small_send_buffer = [(socket.SOL_SOCKET, socket.SO_SNDBUF, 65_536)]
    with ScriptedServer(big_window=True, stall_seconds=15.0) as server:
        transport = h2c(socket_options=small_send_buffer)
        async with httpx.AsyncClient(
            transport=transport, base_url=server.url, timeout=httpx.Timeout(3.0)
        ) as client:
            with anyio.fail_after(60):
                with pytest.raises(httpx.WriteTimeout):
                    await client.post("/upload-stall?ping=1", content=_AfterTheStall(server))
            stalled = not server.resumed
    assert server.stalled == 1
    assert stalled


class _WhileAnotherStreamAcknowledges:
    """A request body made once the server has stopped reading, at the moment another stream
    holds the connection's write lock to acknowledge one of the server's PINGs (trio: a
    reader's quiet flush; under asyncio nothing waits for a lock, and the chunk is made once
    the server stops reading): one chunk of 16 MB, so the write that carries it blocks. Not an
    async generator (see `Upload`)."""

    def __init__(self, server: ScriptedServer, transport: AsyncConnectionPoolTransport) -> None:
        self._server = server
        self._transport = transport
        self._done = False
        #: The write lock was seen held by another stream when the chunk was made (trio).
        self.behind_a_quiet_flush = False

    def __aiter__(self) -> _WhileAnotherStreamAcknowledges:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        self._done = True
        pool = self._transport._pool
        assert pool is not None
        (conn,) = pool._open
        assert isinstance(conn, HTTP2Connection)
        lock = conn._write_lock
        if lock is None:
            for _ in range(1_000):
                if self._server.stalled:
                    break
                await anyio.sleep(0.01)
        else:
            # The request's HEADERS are written: the server stops reading and sends PINGs,
            # which the reader reads and acknowledges under the write lock. Its write yields
            # once, even when it does not block: the chunk is made then.
            give_up = anyio.current_time() + 10
            for _ in range(10_000_000):
                if lock.locked():
                    self.behind_a_quiet_flush = True
                    break
                if anyio.current_time() > give_up:
                    break
                await anyio.lowlevel.checkpoint()
        return b"u" * 16_000_000


async def test_another_streams_quiet_flush_never_writes_an_uploads_data(
    anyio_backend: str,
) -> None:
    """An upload whose DATA is queued while another stream (a reader answering the server's
    PING) holds the write lock writes it under its own write timeout: the reader lets go of
    the lock to the writer waiting for it, rather than writing that DATA itself under its read
    timeout with the failure kept quiet -- which made the upload fail with "an earlier write on
    this connection failed", a WriteError, after the reader's timeout (trio)."""
    small_send_buffer = [(socket.SOL_SOCKET, socket.SO_SNDBUF, 65_536)]
    with ScriptedServer(big_window=True, stall_seconds=15.0) as server:
        transport = h2c(socket_options=small_send_buffer)
        async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
            body = _WhileAnotherStreamAcknowledges(server, transport)
            outcomes: dict[str, BaseException] = {}

            async def read() -> None:
                with pytest.raises(httpx.ReadTimeout) as caught:
                    await client.get("/hold", timeout=httpx.Timeout(10.0, read=1.0))
                outcomes["read"] = caught.value

            async def upload() -> None:
                with pytest.raises(httpx.TransportError) as caught:
                    await client.post(
                        "/upload-stall?ping=20", content=body, timeout=httpx.Timeout(3.0)
                    )
                outcomes["upload"] = caught.value

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(read)
                    await wait_for_arrival(server, "/hold")
                    tg.start_soon(upload)
            stalled = not server.resumed
    assert stalled
    assert body.behind_a_quiet_flush == (anyio_backend == "trio"), outcomes
    assert isinstance(outcomes["upload"], httpx.WriteTimeout), repr(outcomes["upload"])


class _WithAFrameUnread:
    """A request body made once the server has stopped reading and sent PINGs, which the
    client has not read yet: the event loop is held (a blocking wait) until the server says
    it has written the first, and a while longer; so is the end of the body. One chunk of
    16 MB, so the write that carries it blocks."""

    def __init__(self, server: ScriptedServer) -> None:
        self._server = server
        self._done = False

    def __aiter__(self) -> _WithAFrameUnread:
        return self

    async def __anext__(self) -> bytes:
        # No await: nothing is read meanwhile. The server sends a PING every 50 ms.
        if self._done:
            _hold_the_event_loop(0.1)  # the end of the body too finds a PING unread
            raise StopAsyncIteration
        self._done = True
        for _ in range(1_000):
            if self._server.stalled:
                break
            _hold_the_event_loop(0.01)
        _hold_the_event_loop(0.1)
        return b"u" * 16_000_000


def _hold_the_event_loop(seconds: float) -> None:
    """Block the event loop (nothing is read meanwhile)."""
    time.sleep(seconds)


async def test_an_acknowledgement_written_for_a_read_never_carries_an_uploads_data_away() -> None:
    """A frame from the server (a PING) unread when an upload queues its DATA is read before the
    write, and its acknowledgement is written at once -- under asyncio from the protocol
    callback, with whatever h2 has queued, the upload's DATA included. The upload's write then
    still waits for the buffer to drain, and ends with `httpx.WriteTimeout` at its write
    timeout. (Under asyncio the upload found nothing left to write, did not wait, and ended
    with a ReadTimeout at the read timeout: its 16 MB still in the buffer.)"""
    small_send_buffer = [(socket.SOL_SOCKET, socket.SO_SNDBUF, 65_536)]
    with ScriptedServer(big_window=True, stall_seconds=15.0) as server:
        transport = h2c(socket_options=small_send_buffer)
        async with httpx.AsyncClient(
            transport=transport,
            base_url=server.url,
            timeout=httpx.Timeout(30.0, write=2.0, read=3.0),
        ) as client:
            with anyio.fail_after(60):
                with pytest.raises(httpx.TransportError) as caught:
                    await client.post("/upload-stall?ping=20", content=_WithAFrameUnread(server))
            stalled = not server.resumed
    assert server.stalled == 1
    assert stalled
    assert isinstance(caught.value, httpx.WriteTimeout), repr(caught.value)


async def test_waiting_behind_a_blocked_writer_is_bounded_by_the_write_timeout() -> None:
    """A request whose write waits for another stream's blocked write (the server stops
    reading; that upload has no write timeout) ends with WriteTimeout within its own write
    timeout, not when the server reads again; the connection then takes no new stream."""
    with ScriptedServer(big_window=True, stall_seconds=15.0) as server:
        transport = h2c()
        async with httpx.AsyncClient(
            transport=transport, base_url=server.url, timeout=httpx.Timeout(10.0, write=None)
        ) as client:
            outcome: dict[str, Any] = {}

            async def blocked_upload() -> None:
                with contextlib.suppress(httpx.TransportError):
                    await client.post("/upload-stall", content=Upload())

            with anyio.fail_after(60):
                async with anyio.create_task_group() as group:
                    group.start_soon(blocked_upload)
                    await wait_for_arrival(server, "/upload-stall")
                    try:
                        await client.post(
                            "/ok", content=b"x" * 1_000_000, timeout=httpx.Timeout(10.0, write=1.0)
                        )
                    except httpx.TransportError as exc:
                        outcome["second"] = type(exc).__name__
                    outcome["server_was_still_stalled"] = not server.resumed
                    outcome["next"] = (await client.get("/ok")).text
                    group.cancel_scope.cancel()
    assert outcome == {"second": "WriteTimeout", "server_was_still_stalled": True, "next": "ok"}
    assert server.connections == 2


async def test_a_wait_for_the_write_lock_timing_out_fails_only_the_waiting_request() -> None:
    """A request that gives up waiting behind another stream's write (its own write timeout is
    shorter) ends with WriteTimeout; the write it waited for is not failed with it: that
    upload, whose server reads again within its write timeout, completes and is answered.
    The connection takes no new stream meanwhile."""
    with ScriptedServer(big_window=True, stall_seconds=4.0) as server:
        transport = h2c()
        async with httpx.AsyncClient(
            transport=transport, base_url=server.url, timeout=httpx.Timeout(20.0)
        ) as client:
            outcome: dict[str, Any] = {}

            async def upload() -> None:
                # Far more than the socket buffers hold: its write waits for the server.
                try:
                    response = await client.post("/upload-stall", content=Upload(megabytes=32))
                    outcome["upload"] = response.text
                except httpx.TransportError as exc:
                    outcome["upload"] = type(exc).__name__

            with anyio.fail_after(60):
                async with anyio.create_task_group() as group:
                    group.start_soon(upload)
                    await wait_for_arrival(server, "/upload-stall")
                    # Time for the upload to fill the socket buffers and block in its write
                    # (the request below then waits for it, rather than write first).
                    await anyio.sleep(1.0)
                    try:
                        await client.post(
                            "/ok", content=b"x" * 1_000_000, timeout=httpx.Timeout(20.0, write=0.5)
                        )
                    except httpx.TransportError as exc:
                        outcome["second"] = type(exc).__name__
                    outcome["server_was_still_stalled"] = not server.resumed
                    outcome["next"] = (await client.get("/ok")).text
    assert outcome == {
        "second": "WriteTimeout",
        "server_was_still_stalled": True,
        "next": "ok",
        "upload": "uploaded",
    }
    assert server.connections == 2
    assert_nothing_held(transport)


async def test_a_request_blocked_writing_without_a_write_timeout_can_be_cancelled() -> None:
    """With no write timeout, a request whose body the server does not read still ends when
    its caller cancels it (trio: the write is shielded only under a bounded deadline), and its
    lease ends."""
    with ScriptedServer(big_window=True, stall_seconds=15.0) as server:
        transport = h2c()
        timeout = httpx.Timeout(10.0, write=None)
        async with httpx.AsyncClient(
            transport=transport, base_url=server.url, timeout=timeout
        ) as client:
            with anyio.fail_after(60):
                with anyio.move_on_after(3) as scope:
                    await client.post("/upload-stall", content=Upload())
                stalled = not server.resumed
            assert scope.cancelled_caught
            stats = transport.pool_stats
    assert stalled
    assert stats is not None
    assert (stats.in_use, stats.waiting) == (0, 0), stats


# --- stream limits changed by SETTINGS ----------------------------------------------------------


async def test_requests_waiting_in_the_pool_get_the_streams_a_raised_limit_allows() -> None:
    """A server that raises SETTINGS_MAX_CONCURRENT_STREAMS on an open connection: the
    requests waiting in the pool get the new streams at once, in order (not only when a
    stream ends)."""
    # One connection allowed, one stream on it (held); a second request waits in the pool.
    # The server raises its limit to 10: the second request is answered while the first is
    # still held.
    with ScriptedServer(max_streams=1) as server:
        transport = h2c(limits=httpx.Limits(max_connections=1))
        timeout = httpx.Timeout(10.0, pool=3.0)
        async with httpx.AsyncClient(
            transport=transport, base_url=server.url, timeout=timeout
        ) as client:
            results: dict[str, Any] = {}

            async def send(name: str, path: str) -> None:
                try:
                    results[name] = (await client.get(path)).status_code
                except httpx.TransportError as exc:
                    results[name] = type(exc).__name__
                if name == "second":
                    results["first_still_held"] = "first" not in results

            with anyio.fail_after(30):
                async with anyio.create_task_group() as group:
                    group.start_soon(send, "first", "/hold")
                    await wait_for_arrival(server, "/hold")
                    group.start_soon(send, "second", "/ok")
                    for _ in range(1_000):
                        stats = transport.pool_stats
                        if stats is not None and stats.waiting == 1:
                            break
                        await anyio.sleep(0.01)
                    assert transport.pool_stats is not None
                    assert transport.pool_stats.waiting == 1
                    server.raise_limit(10)
                    for _ in range(1_000):
                        if "second" in results:
                            break
                        await anyio.sleep(0.01)
                    server.release()
    assert results == {"first": 200, "second": 200, "first_still_held": True}


async def test_a_stream_limit_lowered_mid_connection_is_kept() -> None:
    """The server lowers SETTINGS_MAX_CONCURRENT_STREAMS from 4 to 1 on an open connection
    (the connection keeps the limit as SETTINGS arrive): four concurrent requests then never
    share it beyond one stream (the server, which enforces its limit, sees no protocol error);
    the other three go on one new connection (the server's limit for new ones is still 4),
    and all four are answered."""
    with ScriptedServer(max_streams=4) as server:
        transport = h2c()
        async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
            results: list[int] = []
            with anyio.fail_after(30):
                assert (await client.get("/ok")).status_code == 200
                server.raise_limit(1)
                for _ in range(500):  # the client acknowledges the new SETTINGS
                    if server.acks >= 2:
                        break
                    await anyio.sleep(0.01)
                    await client.get("/ok")  # trio reads only while a request waits

                async def held() -> None:
                    results.append((await client.get("/hold")).status_code)

                async with anyio.create_task_group() as group:
                    for _ in range(4):
                        group.start_soon(held)
                    for _ in range(1_000):
                        if server.arrived.count("/hold") >= 4:
                            break
                        await anyio.sleep(0.01)
                    server.release()
            assert results == [200] * 4
            assert server.errors == []
            assert server.connections == 2
            assert_nothing_held(transport)


async def test_an_idle_connection_paused_by_settings_is_closed_cleanly() -> None:
    """An idle connection whose server sends SETTINGS_MAX_CONCURRENT_STREAMS = 0 (a pause) is
    closed like one that cannot be reused: it does not linger in the idle list, counted in the
    pool's total, for a later `_close_idle` to trip over its forgotten origin."""
    # The origin is forgotten once the new connection opened instead is refused; then the
    # pool is full (a held request to b), and c's request must make room.
    with ScriptedServer() as a, ScriptedServer() as b, ScriptedServer() as c:
        transport = h2c(limits=httpx.Limits(max_connections=2))
        async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5.0)) as client:
            results: dict[str, Any] = {}
            with anyio.fail_after(30):
                assert (await client.get(f"{a.url}/ok")).text == "ok"
                a.raise_limit(0)
                for _ in range(500):  # the client acknowledges the new SETTINGS (asyncio)
                    if a.acks >= 2:
                        break
                    await anyio.sleep(0.01)
                a.stop_listening()
                with pytest.raises(httpx.ConnectError):
                    await client.get(f"{a.url}/ok")

                async def held() -> None:
                    results["b"] = (await client.get(f"{b.url}/hold")).status_code

                async with anyio.create_task_group() as group:
                    group.start_soon(held)
                    await wait_for_arrival(b, "/hold")
                    try:
                        results["c"] = (await client.get(f"{c.url}/ok")).status_code
                    finally:
                        b.release()
            stats = transport.pool_stats
    assert results == {"b": 200, "c": 200}
    assert stats is not None
    assert (stats.in_use, stats.waiting) == (0, 0), stats


# --- a preface that never completes ------------------------------------------------------------


def _close_without_settings(conn: socket.socket) -> None:
    """Accept, read the client's preface, close without a SETTINGS frame."""
    conn.settimeout(2.0)
    with contextlib.suppress(OSError):
        conn.recv(65536)
        conn.shutdown(socket.SHUT_RDWR)


@pytest.mark.parametrize("handler", [_silent, _close_without_settings], ids=["silent", "closes"])
async def test_a_failed_http2_preface_is_a_connect_failure(
    handler: Callable[[socket.socket], None],
) -> None:
    """Nothing of a request is written before the server's SETTINGS arrive, so a preface that
    times out or a connection closed before it is a connect failure (ConnectTimeout /
    ConnectError): NOT_SENT, safe to retry for every method, a POST included."""
    transport = h2c()
    with RawServer(handler) as server:
        async with httpx.AsyncClient(
            transport=transport, timeout=httpx.Timeout(5.0, read=1.0)
        ) as client:
            with anyio.fail_after(20):
                with pytest.raises(httpx.TransportError) as caught:
                    await client.post(f"{server.url}/create", content=b"{}")
    assert classify_error(caught.value) is FailureKind.NOT_SENT, repr(caught.value)


async def test_a_refusal_the_pools_count_cannot_explain_retires_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """h2 refuses a stream the pool had room for: h2's count of open streams and the pool's
    leases disagree. No known path leads there, so the test makes h2 believe the server
    allows no stream while the connection (and the pool) still count 4. The request goes on a
    new connection, instead of being placed on the same one again and again without a pause
    (which held the event loop for ever)."""
    seen: list[HTTP2Connection] = []
    original = HTTP2Connection.handle

    async def counted(
        self: HTTP2Connection, request: httpx.Request, timeouts: dict[str, Any]
    ) -> httpx.Response:
        seen.append(self)
        if len(seen) > 10:
            raise AssertionError("placed on the refusing connection again and again")
        return await original(self, request, timeouts)

    monkeypatch.setattr(HTTP2Connection, "handle", counted)
    with ScriptedServer(max_streams=4) as server:
        transport = h2c()
        async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
            with anyio.fail_after(30):
                assert (await client.get("/ok")).status_code == 200
                first = seen[0]
                remote = first._h2.remote_settings
                remote[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 0
                remote.acknowledge()
                assert first.capacity == 4
                assert (await client.get("/ok")).status_code == 200
                assert (await client.get("/ok")).status_code == 200
        assert server.connections == 2
        assert seen[1] is first
        assert seen[2] is not first
        assert seen[3] is seen[2]
        assert first.capacity == 0
        assert server.errors == []
        assert_nothing_held(transport)


async def test_a_window_raised_by_settings_does_not_fail_the_connection_over_a_closed_stream() -> (
    None
):
    """The server opens stream 1's send window to 2**31 - 1 (WINDOW_UPDATE) and answers it;
    while a second request waits on the same connection, the server raises
    SETTINGS_INITIAL_WINDOW_SIZE by one. That grows the windows of the streams still open
    (RFC 9113 §6.9.2); stream 1 is closed, and its window is no reason to fail the connection
    (stock h2 has dropped it by then, when stream 3 opened): the second request is answered."""
    results: list[Any] = []
    with ScriptedServer() as server:
        transport = h2c()
        async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
            with anyio.fail_after(30):
                assert (await client.get("/credit")).status_code == 200

                async def held() -> None:
                    try:
                        results.append((await client.get("/hold")).status_code)
                    except httpx.TransportError as exc:
                        results.append(repr(exc))

                async with anyio.create_task_group() as group:
                    group.start_soon(held)
                    await wait_for_arrival(server, "/hold")
                    server.set_initial_window(65_536)
                    server.release()
            assert results == [200]
            assert server.connections == 1
            assert server.errors == []
            assert_nothing_held(transport)
