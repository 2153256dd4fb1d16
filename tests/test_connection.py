"""The connection layer (`httpx_resilience._connection`) against real servers on 127.0.0.1.

Hypercorn (tests/support/server.py) for ordinary HTTP/1.1; a raw socket server
(tests/support/raw.py) for the cases Hypercorn will not play (stalls at a chosen point, bodies
ended by the connection's close, interim responses). Every test runs under asyncio and trio, and
the HTTP/1.1 tests over both parsers (httptools and h11).
"""

from __future__ import annotations

import ast
import gc
import random
import socket
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import httpx_resilience
from httpx_resilience import AsyncConnectionPoolTransport, ResilientTransport, RetryConfig
from httpx_resilience._classify import FailureKind, classify_error
from httpx_resilience._connection.http11 import PARSERS
from tests.support.raw import RawServer, full_listener, read_head
from tests.support.server import FaultApp, ServerThread

pytestmark = pytest.mark.anyio

CONNECTION_SRC = Path(httpx_resilience.__file__).parent / "_connection"


@pytest.fixture(params=PARSERS)
def parser(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def make_client(
    url: str, parser: str, timeout: float | httpx.Timeout = 5.0, **kwargs: Any
) -> tuple[httpx.AsyncClient, AsyncConnectionPoolTransport]:
    transport = AsyncConnectionPoolTransport(http1_parser=parser, **kwargs)
    return httpx.AsyncClient(transport=transport, base_url=url, timeout=timeout), transport


def stats(transport: AsyncConnectionPoolTransport) -> Any:
    pool_stats = transport.pool_stats
    assert pool_stats is not None
    return pool_stats


def assert_nothing_held(transport: AsyncConnectionPoolTransport) -> None:
    pool_stats = stats(transport)
    assert (pool_stats.in_use, pool_stats.waiting) == (0, 0), pool_stats


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (bounded: 5 s); fail naming ``what``."""
    for _ in range(250):
        if condition():
            return
        await anyio.sleep(0.02)
    pytest.fail(f"timed out waiting until {what}")


# --- keep-alive, bodies, streaming ---------------------------------------------------------------


async def test_keep_alive_reuses_one_connection(
    h1_server: ServerThread, parser: str, key: str
) -> None:
    client, transport = make_client(h1_server.url, parser)
    async with client:
        for _ in range(5):
            response = await client.get(f"/ok/{key}")
            assert response.status_code == 200
            assert response.extensions["http_version"] == b"HTTP/1.1"
            assert isinstance(response.extensions["reason_phrase"], bytes)
            assert response.http_version == "HTTP/1.1"
        assert stats(transport)[:3] == (1, 1, 0)
    assert h1_server.app.hits(key) == 5  # type: ignore[attr-defined]


async def test_request_bodies_bytes_stream_and_multipart(
    h1_server: ServerThread, parser: str, key: str
) -> None:
    app = h1_server.app
    assert isinstance(app, FaultApp)

    async def parts() -> AsyncIterator[bytes]:
        for index in range(50):
            yield b"%05d," % index

    big = bytes(range(256)) * 1024  # 256 KiB: more than one write
    client, transport = make_client(h1_server.url, parser)
    async with client:
        assert (await client.post(f"/ok/{key}", content=b"small")).status_code == 200
        assert (await client.post(f"/ok/{key}", content=big)).status_code == 200
        assert (await client.post(f"/ok/{key}", content=parts())).status_code == 200
        files = {"upload": ("a.txt", b"file-content", "text/plain")}
        assert (await client.post(f"/ok/{key}", data={"f": "v"}, files=files)).status_code == 200
        assert_nothing_held(transport)
        assert stats(transport).connections == 1
    received = app.received[key]
    assert [r.body for r in received[:3]] == [
        b"small",
        big,
        b"".join(b"%05d," % i for i in range(50)),
    ]
    assert received[2].headers.get("transfer-encoding") == "chunked"
    assert b"file-content" in received[3].body
    assert b'name="f"' in received[3].body


async def test_streaming_response_and_early_close(
    h1_server: ServerThread, parser: str, key: str
) -> None:
    client, transport = make_client(h1_server.url, parser)
    async with client:
        async with client.stream("GET", f"/big/{key}?size=3000000") as response:
            total = 0
            async for chunk in response.aiter_raw():
                total += len(chunk)
        assert total == 3_000_000
        assert stats(transport)[:3] == (1, 1, 0)  # read to the end: kept alive
        async with client.stream("GET", f"/big/{key}?size=5000000") as response:
            assert response.status_code == 200  # closed with its body unread
        # Closed before its end: the connection is discarded, nothing is held.
        assert stats(transport)[:3] == (1, 1, 0) or stats(transport).connections == 0
        assert_nothing_held(transport)
        response = await client.get(f"/ok/{key}")
        assert response.json()["hits"] == 3


async def test_head_and_bodiless_responses_keep_the_connection(
    h1_server: ServerThread, parser: str, key: str
) -> None:
    client, transport = make_client(h1_server.url, parser)
    async with client:
        head = await client.head(f"/big/{key}?size=1000")
        assert (head.status_code, head.headers["content-length"], head.content) == (
            200,
            "1000",
            b"",
        )
        deleted = await client.delete("/users/1")
        assert (deleted.status_code, deleted.content) == (204, b"")
        again = await client.get(f"/big/{key}?size=1000")
        assert len(again.content) == 1000
        assert stats(transport)[:3] == (1, 1, 0)


async def test_connection_close_is_honoured(h1_server: ServerThread, parser: str, key: str) -> None:
    client, transport = make_client(h1_server.url, parser)
    async with client:
        response = await client.get(f"/ok/{key}", headers={"connection": "close"})
        assert response.status_code == 200
        assert stats(transport).connections == 0
        assert (await client.get(f"/ok/{key}")).status_code == 200


async def test_stale_idle_connection_is_replaced_before_anything_is_sent(
    parser: str, key: str
) -> None:
    server = ServerThread(FaultApp(), keep_alive_timeout=0.2)
    server.start()
    try:
        client, transport = make_client(server.url, parser)
        async with client:
            assert (await client.get(f"/ok/{key}")).status_code == 200
            pool = transport._pool
            assert pool is not None
            (conn,) = list(pool._idle_all)
            await wait_until(
                lambda: not conn.is_reusable(time.monotonic()), "the server closed the connection"
            )
            response = await client.post(f"/ok/{key}", content=b"once")
            assert response.json()["hits"] == 2
            assert stats(transport)[:3] == (1, 1, 0)
        assert [r.body for r in server.app.received[key]] == [b"", b"once"]  # type: ignore[attr-defined]
    finally:
        server.stop()


async def test_keepalive_expiry_is_checked_on_the_connection_picked(
    h1_server: ServerThread, parser: str, key: str
) -> None:
    limits = httpx.Limits(keepalive_expiry=0.0)
    client, transport = make_client(h1_server.url, parser, limits=limits)
    async with client:
        for _ in range(3):
            assert (await client.get(f"/ok/{key}")).status_code == 200
        assert stats(transport).connections <= 1
        assert_nothing_held(transport)


# --- the raw server's cases ----------------------------------------------------------------------


def _respond(body_parts: list[bytes], head: bytes) -> Callable[[socket.socket], None]:
    def handler(sock: socket.socket) -> None:
        read_head(sock)
        sock.sendall(head)
        for part in body_parts:
            sock.sendall(part)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)

    return handler


async def test_body_ended_by_the_connection_closing(parser: str) -> None:
    head = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n"
    with RawServer(_respond([b"first ", b"second"], head)) as server:
        client, transport = make_client(server.url, parser)
        async with client:
            response = await client.get("/")
            assert response.content == b"first second"
            assert response.extensions["reason_phrase"] == b"OK"
            assert stats(transport).connections == 0


@pytest.mark.parametrize(
    ("value", "encoding", "text"),
    [
        (b"plain", "ascii", "plain"),
        ("caf\u00e9".encode(), "utf-8", "caf\u00e9"),
        (b"caf\xe9", "iso-8859-1", "caf\u00e9"),
    ],
)
async def test_response_header_encoding_is_httpx_own(
    parser: str, value: bytes, encoding: str, text: str
) -> None:
    # The layer tells httpx that all-ASCII headers are ASCII; anything else httpx works out.
    head = b"HTTP/1.1 200 OK\r\nx-name: " + value + b"\r\ncontent-length: 2\r\n\r\nok"
    with RawServer(_respond([], head)) as server:
        client, _ = make_client(server.url, parser)
        async with client:
            response = await client.get("/")
            assert response.headers.encoding == encoding
            assert response.headers["x-name"] == text
            assert response.headers.raw[0] == (b"x-name", value)
            assert httpx.Headers(response.headers.raw).encoding == encoding


async def test_bodies_arrive_intact_across_reads_of_every_size(parser: str) -> None:
    # Reads land in a buffer the connection reuses (and grows once a read fills it): every
    # response's bytes must be its own, whatever sizes the reads come in. Two responses on one
    # connection, written in pieces of uneven sizes, with bytes that never repeat a pattern.
    bodies = [random.Random(seed).randbytes(size) for seed, size in ((1, 700_001), (2, 90_017))]

    def handler(sock: socket.socket) -> None:
        for body in bodies:
            read_head(sock)
            sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body))
            offset, step = 0, 1
            while offset < len(body):
                sock.sendall(body[offset : offset + step])
                offset += step
                step = step * 7 % 300_007 + 1
        sock.recv(1)

    with RawServer(handler) as server:
        client, transport = make_client(server.url, parser)
        async with client:
            for body in bodies:
                async with client.stream("GET", "/") as response:
                    received = b"".join([chunk async for chunk in response.aiter_raw()])
                assert received == body
            assert stats(transport)[:2] == (1, 1)  # one connection, kept alive


async def test_a_request_saying_connection_close_closes_it(parser: str) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"  # the server would keep it

    def handler(sock: socket.socket) -> None:
        read_head(sock)
        sock.sendall(head)
        sock.recv(1)

    with RawServer(handler) as server:
        client, transport = make_client(server.url, parser)
        async with client:
            response = await client.get("/", headers={"Connection": "close"})
            assert response.content == b"ok"
            assert stats(transport).connections == 0


async def test_interim_100_continue_is_skipped(parser: str) -> None:
    head = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"
    with RawServer(_respond([], head)) as server:
        client, _ = make_client(server.url, parser)
        async with client:
            response = await client.post("/", content=b"data")
            assert (response.status_code, response.content) == (201, b"ok")
            assert response.extensions["reason_phrase"] == b"Created"


async def test_early_response_while_the_body_is_still_being_written(parser: str) -> None:
    def handler(sock: socket.socket) -> None:
        read_head(sock)
        sock.sendall(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
        sock.close()  # unread request bytes: the kernel answers further data with RST

    with RawServer(handler) as server:
        client, transport = make_client(server.url, parser)
        async with client:
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = await client.post("/", content=b"x" * 20_000_000)
            except httpx.TransportError as exc:
                outcome = exc
            if isinstance(outcome, httpx.Response):
                assert outcome.status_code == 413
            else:
                # The reset may destroy the answer before it is read: an error, never a hang.
                assert isinstance(outcome, (httpx.ReadError, httpx.RemoteProtocolError))
                assert classify_error(outcome) is FailureKind.MAYBE_PROCESSED
            assert_nothing_held(transport)


async def test_a_body_that_ends_in_the_read_that_pauses_reading_leaves_it_usable(
    parser: str,
) -> None:
    # Just over the 1 MiB high-water mark, read while the caller is busy: the read that pauses
    # the socket also ends the message. The connection goes back idle; its next response
    # must still arrive (it did not: reading stayed paused and the request timed out).
    body = b"x" * (1024 * 1024 + 100 * 1024)
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body

    def handler(sock: socket.socket) -> None:
        for _ in range(2):
            if not read_head(sock):
                return
            sock.sendall(answer)
        sock.recv(1)

    with RawServer(handler) as server:
        client, transport = make_client(server.url, parser, timeout=5.0)
        async with client:
            for _ in range(2):
                async with client.stream("GET", "/") as response:
                    await anyio.sleep(0.3)  # the whole body arrives meanwhile
                    assert len(await response.aread()) == len(body)
            assert server.accepted == 1  # the second request reused the connection
            assert_nothing_held(transport)


async def test_closing_the_transport_fails_a_request_in_flight(parser: str) -> None:
    # A request waiting for its answer when the transport closes fails at once with a
    # ReadError; it used to wait forever on asyncio, whatever its read timeout.
    def handler(sock: socket.socket) -> None:
        read_head(sock)
        sock.recv(1)

    with RawServer(handler) as server:
        client, transport = make_client(server.url, parser, timeout=30.0)
        outcome: list[BaseException] = []

        async def request() -> None:
            try:
                await client.get("/")
            except httpx.TransportError as exc:
                outcome.append(exc)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                group.start_soon(request)
                await wait_until(lambda: stats(transport).in_use == 1, "the request is sent")
                await anyio.sleep(0.1)
                await transport.aclose()
        assert len(outcome) == 1
        assert isinstance(outcome[0], httpx.ReadError)
        assert classify_error(outcome[0]) is FailureKind.MAYBE_PROCESSED
        assert_nothing_held(transport)
        await client.aclose()


async def test_invalid_response_is_a_remote_protocol_error(parser: str) -> None:
    with RawServer(_respond([], b"HTTP/1.1 abc\r\n\r\n")) as server:
        client, transport = make_client(server.url, parser)
        async with client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get("/")
            assert_nothing_held(transport)


async def test_a_server_closing_without_answer(parser: str) -> None:
    def handler(sock: socket.socket) -> None:
        read_head(sock)
        sock.close()

    with RawServer(handler) as server:
        client, transport = make_client(server.url, parser)
        async with client:
            with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
                await client.get("/")
            assert_nothing_held(transport)
            assert stats(transport).connections == 0


async def test_unix_domain_socket(parser: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = str(Path(directory) / "s.sock")
        head = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nuds"
        with RawServer(_respond([], head), path=path):
            client, _ = make_client("http://localhost", parser, uds=path)
            async with client:
                assert (await client.get("/")).content == b"uds"


async def test_local_address_and_socket_options(h1_server: ServerThread, parser: str) -> None:
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    client, transport = make_client(
        h1_server.url, parser, local_address="127.0.0.1", socket_options=options
    )
    async with client:
        assert (await client.get("/ok/x")).status_code == 200
        pool = transport._pool
        assert pool is not None
        (conn,) = list(pool._idle_all)
        stream: Any = conn._stream
        sock = (
            stream._transport.get_extra_info("socket")
            if hasattr(stream, "_transport")
            else stream._socket
        )
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockname()[0] == "127.0.0.1"


# --- connect and TLS -----------------------------------------------------------------------------


async def test_connect_failures_map_to_httpx_errors(
    h2_server: ServerThread, client_ssl_context: ssl.SSLContext, parser: str
) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    client, transport = make_client(f"http://127.0.0.1:{port}", parser, retries=1)
    async with client:
        with pytest.raises(httpx.ConnectError) as refused:
            await client.get("/")
        assert classify_error(refused.value) is FailureKind.NOT_SENT
        assert_nothing_held(transport)
        assert stats(transport).connections == 0
    client, _ = make_client(h2_server.url, parser)  # default trust store: not the test CA
    async with client:
        with pytest.raises(httpx.ConnectError) as untrusted:
            await client.get("/ok/x")
        assert classify_error(untrusted.value) is FailureKind.FATAL
    client, _ = make_client(h2_server.url, parser, verify=client_ssl_context)
    async with client:
        response = await client.get("/ok/x")
        assert (response.status_code, response.http_version) == (200, "HTTP/1.1")
    with full_listener() as listener:
        timeout = httpx.Timeout(5.0, connect=0.2)
        client, transport = make_client(f"http://127.0.0.1:{listener.port}", parser, timeout)
        async with client:
            with pytest.raises(httpx.ConnectTimeout) as timed_out:
                await client.get("/")
            assert classify_error(timed_out.value) is FailureKind.NOT_SENT
            assert_nothing_held(transport)


async def test_http2_goes_through_the_layer_and_proxies_through_httpxs_transport(
    h2_server: ServerThread, client_ssl_context: ssl.SSLContext
) -> None:
    transport = AsyncConnectionPoolTransport(http2=True, verify=client_ssl_context)
    async with httpx.AsyncClient(transport=transport, base_url=h2_server.url) as client:
        response = await client.get("/ok/x")
        assert response.http_version == "HTTP/2"
        assert response.extensions["http_version"] == b"HTTP/2"
        assert tuple(stats(transport)) == (1, 1, 0, 0)  # one connection, idle, kept
    proxied = AsyncConnectionPoolTransport(proxy="http://127.0.0.1:9")
    assert proxied.pool_stats is None
    assert isinstance(proxied._delegate, httpx.AsyncHTTPTransport)
    await proxied.aclose()


def test_invalid_configuration_names_the_class_and_field() -> None:
    with pytest.raises(ValueError, match=r"AsyncConnectionPoolTransport: http1 and http2"):
        AsyncConnectionPoolTransport(http1=False)
    with pytest.raises(ValueError, match=r"AsyncConnectionPoolTransport.http1_parser .*'h11'"):
        AsyncConnectionPoolTransport(http1_parser="llhttp")
    # The same checks as ResilientTransport's connection options (issue 12), under this name.
    with pytest.raises(ValueError, match=r"AsyncConnectionPoolTransport.retries must be >= 0"):
        AsyncConnectionPoolTransport(retries=-1)
    with pytest.raises(TypeError, match=r"AsyncConnectionPoolTransport.limits must be"):
        AsyncConnectionPoolTransport(limits=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"AsyncConnectionPoolTransport.verify must be"):
        AsyncConnectionPoolTransport(verify=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"AsyncConnectionPoolTransport.socket_options must"):
        AsyncConnectionPoolTransport(socket_options="x")  # type: ignore[arg-type]


# --- the pool: limits, fairness, timeouts --------------------------------------------------------


async def test_pool_timeout_is_not_sent(h1_server: ServerThread, parser: str, key: str) -> None:
    timeout = httpx.Timeout(5.0, pool=0.2)
    limits = httpx.Limits(max_connections=1)
    client, transport = make_client(h1_server.url, parser, timeout, limits=limits)
    async with client:
        async with client.stream("GET", f"/big/{key}?size=3000000"):
            with pytest.raises(httpx.PoolTimeout) as timed_out:
                await client.get(f"/ok/{key}")
            assert classify_error(timed_out.value) is FailureKind.NOT_SENT
            assert stats(transport).waiting == 0
        assert_nothing_held(transport)
        assert (await client.get(f"/ok/{key}")).status_code == 200


async def test_waiters_are_served_first_come_first_served(
    h1_server: ServerThread, parser: str, key: str
) -> None:
    client, transport = make_client(h1_server.url, parser, limits=httpx.Limits(max_connections=1))
    order: list[int] = []
    async with client:

        async def one(index: int) -> None:
            await client.get(f"/ok/{key}")
            order.append(index)

        async with (
            anyio.create_task_group() as group,
            client.stream("GET", f"/big/{key}?size=3000000"),
        ):
            for index in range(8):
                group.start_soon(one, index)

                def waits(expected: int = index + 1) -> bool:
                    return bool(stats(transport).waiting == expected)

                await wait_until(waits, "the request waits")
    assert order == list(range(8))


async def test_an_idle_connection_of_another_origin_makes_room(
    h1_server: ServerThread, parser: str, key: str
) -> None:
    other_origin = h1_server.url.replace("127.0.0.1", "localhost")  # same server, other origin
    client, transport = make_client(h1_server.url, parser, limits=httpx.Limits(max_connections=1))
    async with client:
        for url in (h1_server.url, other_origin, h1_server.url):
            assert (await client.get(f"{url}/ok/{key}")).status_code == 200
            assert stats(transport)[:3] == (1, 1, 0)
        pool = transport._pool
        assert pool is not None
        assert len(pool._origins) == 1  # nothing kept for an origin with no connection


async def test_max_keepalive_connections(h1_server: ServerThread, parser: str, key: str) -> None:
    limits = httpx.Limits(max_connections=10, max_keepalive_connections=2)
    client, transport = make_client(h1_server.url, parser, limits=limits)
    async with client:
        async with anyio.create_task_group() as group:
            for _ in range(30):
                group.start_soon(client.get, f"/ok/{key}")
        assert stats(transport).connections <= 2
        assert stats(transport).connections == stats(transport).idle
        assert_nothing_held(transport)


# --- cancellation at each stage ------------------------------------------------------------------


def _silent(sock: socket.socket) -> None:
    sock.recv(1)  # never answers; returns when the client or the server's close ends it


def _head_then_stall(sock: socket.socket) -> None:
    read_head(sock)
    sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
    sock.recv(1)


STAGES = ["waiting", "connecting", "tls", "writing", "reading-head", "reading-body", "closing"]


@pytest.mark.parametrize("stage", STAGES)
async def test_cancellation_gives_the_slot_back(
    stage: str, h1_server: ServerThread, parser: str, key: str
) -> None:
    limits = httpx.Limits(max_connections=1)
    with (
        RawServer(_silent) as silent,
        RawServer(_head_then_stall) as stall,
        full_listener() as full,
    ):
        client, transport = make_client(h1_server.url, parser, limits=limits)
        async with client:
            if stage == "waiting":
                async with client.stream("GET", f"/big/{key}?size=3000000"):
                    with anyio.move_on_after(0.2) as scope:
                        await client.get(f"/ok/{key}")
                    assert scope.cancelled_caught
                    assert stats(transport).waiting == 0
            elif stage == "closing":
                async with client.stream("GET", f"{stall.url}/") as response:
                    with anyio.CancelScope() as scope:
                        scope.cancel()
                        await response.aclose()
            else:
                url = {
                    "connecting": f"http://127.0.0.1:{full.port}/",
                    "tls": f"https://127.0.0.1:{silent.port}/",
                    "writing": f"{silent.url}/",
                    "reading-head": f"{h1_server.url}/slow/{key}?delay=5",
                    "reading-body": f"{stall.url}/",
                }[stage]
                content = b"x" * 50_000_000 if stage == "writing" else None
                with anyio.move_on_after(0.3) as scope:
                    async with client.stream("POST", url, content=content) as response:
                        async for _ in response.aiter_raw():
                            pass
                assert scope.cancelled_caught
            assert_nothing_held(transport)
            assert (await client.get(f"/ok/{key}")).status_code == 200
            assert_nothing_held(transport)
    gc.collect()  # an unclosed socket would warn here (warnings are errors in this suite)


# --- many at once --------------------------------------------------------------------------------


@pytest.mark.slow
async def test_ten_thousand_requests_at_once_with_default_limits(
    h1_server: ServerThread, key: str
) -> None:
    transport = AsyncConnectionPoolTransport()
    timeout = httpx.Timeout(60.0)
    done = 0
    async with httpx.AsyncClient(transport=transport, base_url=h1_server.url, timeout=timeout) as c:

        async def one(index: int) -> None:
            nonlocal done
            response = await c.get(f"/ok/{key}-{index % 10}")
            assert response.status_code == 200
            done += 1

        with anyio.fail_after(300):
            async with anyio.create_task_group() as group:
                for index in range(10_000):
                    group.start_soon(one, index)
        assert_nothing_held(transport)
    assert done == 10_000
    app = h1_server.app
    assert sum(app.hits(f"{key}-{n}") for n in range(10)) == 10_000  # type: ignore[attr-defined]


# --- ResilientTransport on the layer -------------------------------------------------------------


async def test_resilient_transport_uses_the_layer_for_http1(
    h1_server: ServerThread, key: str
) -> None:
    retry = RetryConfig(base_delay=0.01, jitter=False, budget_ratio=None)
    transport = ResilientTransport(http2=False, retry=retry)
    assert isinstance(transport.transport, AsyncConnectionPoolTransport)
    async with httpx.AsyncClient(transport=transport, base_url=h1_server.url) as client:
        assert (await client.get(f"/flaky/{key}?fail=1")).status_code == 200
        assert h1_server.app.hits(key) == 2  # type: ignore[attr-defined]
        assert (await client.get(f"/drop/{key}-get?fail=1")).status_code == 200
        assert h1_server.app.hits(f"{key}-get") == 2  # type: ignore[attr-defined]
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await client.post(f"/drop/{key}-post?fail=1", content=b"once")
        assert h1_server.app.hits(f"{key}-post") == 1  # type: ignore[attr-defined]


# --- no private names ----------------------------------------------------------------------------


def _private_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            names = [f"{node.value.id}.{node.attr}"]
        found += [
            name
            for name in names
            if name.split(".")[0] in ("httpx", "httpcore")
            and any(part.startswith("_") for part in name.split(".")[1:])
        ]
    return found


@pytest.mark.parametrize(
    "path",
    sorted((CONNECTION_SRC.parent).rglob("*.py")),
    ids=lambda p: str(p.relative_to(CONNECTION_SRC.parent)),
)
def test_no_module_uses_private_httpx_or_httpcore_names(path: Path) -> None:
    assert _private_imports(path) == []


def test_the_private_name_check_can_fail(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import httpx\nfrom httpcore._async import x\nfrom httpx._config import DEFAULT_LIMITS\n"
        "y = httpx._types\n"
    )
    assert _private_imports(sample) == [
        "httpcore._async",
        "httpcore._async.x",
        "httpx._config",
        "httpx._config.DEFAULT_LIMITS",
        "httpx._types",
    ]


async def test_read_and_write_timeouts(h1_server: ServerThread, parser: str, key: str) -> None:
    client, transport = make_client(h1_server.url, parser)
    async with client:
        # A short read timeout after a long one, and a long one after a short one: the
        # connection's one read timer is re-armed for each. (Short, but not so short that a
        # pause of the test process, whose server thread answers, could exceed it.)
        fast = httpx.Timeout(5.0, read=1.0)
        assert (await client.get(f"/ok/{key}", timeout=fast)).status_code == 200
        with pytest.raises(httpx.ReadTimeout) as timed_out:
            await client.get(f"/slow/{key}?delay=5", timeout=httpx.Timeout(5.0, read=1.5))
        assert classify_error(timed_out.value) is FailureKind.MAYBE_PROCESSED
        assert (await client.get(f"/ok/{key}", timeout=httpx.Timeout(60.0))).status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            await client.get(f"/slow/{key}?delay=5", timeout=fast)
        assert_nothing_held(transport)
    with RawServer(_silent) as silent:
        client, transport = make_client(silent.url, parser, httpx.Timeout(5.0, write=0.2))
        async with client:
            with pytest.raises(httpx.WriteTimeout):
                await client.post("/", content=b"x" * 50_000_000)
            assert_nothing_held(transport)
