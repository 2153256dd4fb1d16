"""Guards for the connection-layer review (review14): reading what anyio's TLS layer holds on
an idle connection (`AnyIOStream.is_alive`) must not discard healthy keep-alive connections
(TLS 1.3 session tickets are not data), nor lose or duplicate response bytes on HTTP/2 under
concurrency; the httptools writer's framing by the declared length must accept every body httpx
sends. Real servers on 127.0.0.1; both event loops (the anyio path is trio's).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
import trustme

from httpx_resilience import AsyncConnectionPoolTransport
from httpx_resilience._connection.http11 import PARSERS
from httpx_resilience._demo.asgi import Receive, Scope, Send, request_body, respond
from tests.support.raw import RawServer, read_head
from tests.support.server import ServerThread

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("tls_max", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_tls_keepalive_reuses_one_connection(
    parser: str, tls_max: ssl.TLSVersion, ca: trustme.CA, client_ssl_context: ssl.SSLContext
) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.maximum_version = tls_max
    server_context.num_tickets = 4 if tls_max == ssl.TLSVersion.TLSv1_3 else 0
    ca.issue_cert("127.0.0.1").configure_cert(server_context)

    def handler(raw: socket.socket) -> None:
        with server_context.wrap_socket(raw.dup(), server_side=True) as sock:
            for _ in range(60):
                if not read_head(sock):
                    return
                sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    with RawServer(handler) as server:
        transport = AsyncConnectionPoolTransport(verify=client_ssl_context, http1_parser=parser)
        async with httpx.AsyncClient(transport=transport, timeout=5.0) as client:
            for _ in range(50):
                response = await client.get(f"https://127.0.0.1:{server.port}/")
                assert response.content == b"ok"
            assert server.accepted == 1


@pytest.mark.parametrize("http2", [False, True], ids=["HTTP/1.1", "HTTP/2"])
async def test_hypercorn_tls_keepalive_reuses_one_connection(
    http2: bool, ca: trustme.CA, client_ssl_context: ssl.SSLContext
) -> None:
    peers: list[object] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = await request_body(scope, receive, send)
        if body is None:
            return
        peers.append(tuple(scope["client"]))
        await respond(send, 200, b"ok")

    server = ServerThread(app, ca=ca)
    server.start()
    try:
        transport = AsyncConnectionPoolTransport(
            verify=client_ssl_context, http2=http2, http1=not http2
        )
        async with httpx.AsyncClient(transport=transport, timeout=5.0) as client:
            for _ in range(50):
                response = await client.get(f"{server.url}/x")
                assert response.content == b"ok"
                assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    finally:
        server.stop()
    assert len(peers) == 50
    assert len(set(peers)) == 1


async def test_hypercorn_h2_concurrent_bodies_intact(
    ca: trustme.CA, client_ssl_context: ssl.SSLContext
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = await request_body(scope, receive, send)
        if body is None:
            return
        n = int(scope["path"].rsplit("/", 1)[1])
        await respond(send, 200, bytes([n % 251]) * (50_000 + n * 997) + body)

    server = ServerThread(app, ca=ca)
    server.start()
    results: dict[int, bytes] = {}
    try:
        transport = AsyncConnectionPoolTransport(verify=client_ssl_context, http2=True)
        async with httpx.AsyncClient(transport=transport, timeout=10.0) as client:

            async def one(n: int) -> None:
                for k in range(3):
                    r = await client.post(f"{server.url}/x/{n}", content=b"%d-%d" % (n, k) * 3000)
                    results[n * 10 + k] = r.content
                    assert (
                        r.content
                        == bytes([n % 251]) * (50_000 + n * 997) + b"%d-%d" % (n, k) * 3000
                    )

            async with anyio.create_task_group() as tg:
                for n in range(30):
                    tg.start_soon(one, n)
    finally:
        server.stop()
    assert len(results) == 90


@pytest.mark.parametrize("parser", PARSERS)
async def test_upload_framings(parser: str) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = await request_body(scope, receive, send)
        if body is None:
            return
        await respond(send, 200, b"%d:" % len(body) + body[:64])

    async def gen(parts: list[bytes]) -> AsyncIterator[bytes]:
        for p in parts:
            yield p

    server = ServerThread(app)
    server.start()
    try:
        transport = AsyncConnectionPoolTransport(http1_parser=parser)
        async with httpx.AsyncClient(transport=transport, timeout=5.0) as client:
            url = f"{server.url}/u"
            r = await client.post(
                url, content=gen([b"ab", b"", b"cd"]), headers={"content-length": "4"}
            )
            assert r.content == b"4:abcd"
            r = await client.post(url, content=gen([b"ab", b"cd"]))
            assert r.content == b"4:abcd"
            r = await client.post(url, content=gen([]))
            assert r.content == b"0:"
            r = await client.post(url, files={"f": ("a.txt", b"x" * 70000)}, data={"k": "v"})
            assert r.content.startswith(b"70")
            r = await client.post(url, content=b"")
            assert r.content == b"0:"
            r = await client.request("GET", url, content=b"body")
            assert r.content == b"4:body"
            r = await client.request("HEAD", url, content=b"body")
            assert r.content == b""
            r = await client.post(url, content=b"y" * 200_000)
            assert r.content.startswith(b"200000:")
            r = await client.get(url)
            assert r.content == b"0:"
    finally:
        server.stop()
