"""HTTP/1.1 message framing in the connection layer, against a raw socket server on 127.0.0.1.

What a response's bytes may and may not become (bytes after a response, trailers, the size of
a head, header whitespace), and what a request's declared framing obliges the writer to send
(Content-Length, chunked). Every test runs under asyncio and trio and over both parsers
(httptools and h11): the two must agree with each other and with httpx's own transport.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import AsyncGenerator, Callable

import httpx
import pytest
import trustme

from httpx_resilience import AsyncConnectionPoolTransport
from httpx_resilience._connection.http11 import PARSERS
from tests.support.raw import RawServer, read_head

pytestmark = pytest.mark.anyio


@pytest.fixture(params=PARSERS)
def parser(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def make_client(url: str, parser: str) -> tuple[httpx.AsyncClient, AsyncConnectionPoolTransport]:
    transport = AsyncConnectionPoolTransport(http1_parser=parser)
    return httpx.AsyncClient(transport=transport, base_url=url, timeout=5.0), transport


def answer_every_request(payload: bytes) -> Callable[[socket.socket], None]:
    """A handler that answers each request head on a connection with ``payload``."""

    def handler(sock: socket.socket) -> None:
        for _ in range(10):
            if not read_head(sock):
                return
            sock.sendall(payload)

    return handler


# --- what a response's bytes may become ----------------------------------------------------------


async def test_bytes_after_a_response_in_the_same_read_are_not_taken_for_it(parser: str) -> None:
    # One write: a complete response, then the bytes of another nobody asked for (a broken or
    # hostile server, or a proxy out of step). The response is the first message alone, and
    # the connection is not reused: the extra bytes must not become the next request's answer.
    # (httptools merged the two into one response, 201 with body b"okhello" and content-length
    # "2, 5"; h11 kept the extra bytes and handed them to the next request on the connection.)
    extra = b"HTTP/1.1 201 Smuggled\r\nx-smuggled: 1\r\ncontent-length: 5\r\n\r\nhello"
    payload = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok" + extra
    with RawServer(answer_every_request(payload)) as server:
        client, transport = make_client(server.url, parser)
        async with client:
            for _ in range(2):
                response = await client.get("/")
                assert (response.status_code, response.content) == (200, b"ok")
                assert response.headers.get_list("content-length") == ["2"]
                assert "x-smuggled" not in response.headers
            assert server.accepted == 2  # the first connection was not reused
            assert transport.pool_stats is not None
            assert transport.pool_stats.in_use == 0


async def test_bytes_after_a_response_in_a_tls_record_of_their_own_are_not_taken_for_the_next(
    parser: str, ca: trustme.CA, client_ssl_context: ssl.SSLContext
) -> None:
    # Over TLS a read returns one TLS record. A response, then bytes nobody asked for in a
    # record of their own, arriving together: the second record waits in the TLS layer
    # (anyio's, on trio) once the response has been read, and the socket looks empty, so the
    # idle connection looked reusable and the bytes became the next request's response (a
    # "201 Smuggled" for a GET never answered so). The connection must not be reused.
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    extra = b"HTTP/1.1 201 Smuggled\r\nx-smuggled: 1\r\ncontent-length: 5\r\n\r\nhello"

    def handler(raw: socket.socket) -> None:
        # A duplicate descriptor, so that RawServer.close can still shut the connection down.
        with server_context.wrap_socket(raw.dup(), server_side=True) as sock:
            for _ in range(5):
                if not read_head(sock):
                    return
                # Two records, one TCP segment (corked): both arrive in one read.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
                sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                sock.sendall(extra)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)

    with RawServer(handler) as server:
        transport = AsyncConnectionPoolTransport(verify=client_ssl_context, http1_parser=parser)
        async with httpx.AsyncClient(transport=transport, timeout=5.0) as client:
            for _ in range(3):
                response = await client.get(f"https://127.0.0.1:{server.port}/")
                assert (response.status_code, response.content) == (200, b"ok")
                assert "x-smuggled" not in response.headers
            assert server.accepted == 3


@pytest.mark.parametrize(
    ("method", "status"),
    [("GET", b"204 No Content"), ("GET", b"304 Not Modified"), ("HEAD", b"200 OK")],
)
async def test_a_body_sent_where_none_belongs_is_not_taken_for_the_next_response(
    parser: str, method: str, status: bytes
) -> None:
    # 204, 304 and a response to HEAD have no body whatever their headers say; bytes a server
    # sends after one anyway must not be read as the start of the next response on the
    # connection (h11 read them so: "illegal status line"), nor swallowed as a body that
    # leaves the connection reusable (llhttp after HEAD): the connection is not reused.
    payload = b"HTTP/1.1 %b\r\ncontent-length: 5\r\n\r\nhello" % status
    with RawServer(answer_every_request(payload)) as server:
        client, _ = make_client(server.url, parser)
        async with client:
            for _ in range(2):
                response = await client.request(method, "/")
                assert (response.status_code, response.content) == (int(status[:3]), b"")
            assert server.accepted == 2


async def test_trailers_are_not_merged_into_the_response_headers(parser: str) -> None:
    # Trailer fields come after the body; httpx (through httpcore) drops them. They must never
    # join the header section the caller reads: a trailer "content-encoding: gzip" made httpx
    # try to gunzip the plain body (DecodingError) when the trailers arrived in the same read
    # as the head (httptools).
    payload = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\nx-trailer: t\r\ncontent-encoding: gzip\r\n\r\n"
    )
    with RawServer(answer_every_request(payload)) as server:
        client, _ = make_client(server.url, parser)
        async with client:
            for _ in range(2):
                response = await client.get("/")
                assert response.content == b"ok"
                assert "x-trailer" not in response.headers
                assert "content-encoding" not in response.headers
            assert server.accepted == 1  # trailers end the message cleanly: kept alive


async def test_header_values_lose_surrounding_whitespace(parser: str) -> None:
    # RFC 9110 §5.5: optional whitespace around a field value is not part of it (h11 and
    # httpcore strip it; llhttp kept the trailing part).
    payload = b"HTTP/1.1 200 OK\r\nx-a:  \t spaced \t \r\ncontent-type: text/plain \r\n"
    payload += b"content-length: 2\r\n\r\nok"
    with RawServer(answer_every_request(payload)) as server:
        client, _ = make_client(server.url, parser)
        async with client:
            response = await client.get("/")
            assert response.headers["x-a"] == "spaced"
            assert response.headers["content-type"] == "text/plain"


def _head_in_two_writes(size: int) -> Callable[[socket.socket], None]:
    head = b"HTTP/1.1 200 OK\r\n"
    head += b"".join(b"x-h%d: %s\r\n" % (i, b"a" * 1000) for i in range(size // 1010))
    head += b"content-length: 2\r\n\r\nok"

    def handler(sock: socket.socket) -> None:
        for _ in range(10):
            if not read_head(sock):
                return
            half = len(head) // 2
            sock.sendall(head[:half])
            time.sleep(0.1)  # the client reads the first half on its own
            sock.sendall(head[half:])

    return handler


async def test_a_response_head_up_to_100_kib_is_read(parser: str) -> None:
    # httpcore accepts a response head of up to 100 KiB (MAX_INCOMPLETE_EVENT_SIZE), in any
    # number of reads; h11's own default, 16 KiB, failed heads that httpx reads.
    with RawServer(_head_in_two_writes(60 * 1024)) as server:
        client, _ = make_client(server.url, parser)
        async with client:
            response = await client.get("/")
            assert (response.status_code, response.content) == (200, b"ok")
            assert len(response.headers) > 50


async def test_a_response_head_over_100_kib_is_refused(parser: str) -> None:
    # The bound on what a server can make the client hold before a response even starts:
    # httptools had none (a 300 KiB head, or an endless one, was read whole).
    with RawServer(_head_in_two_writes(300 * 1024)) as server:
        client, transport = make_client(server.url, parser)
        async with client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get("/")
            assert transport.pool_stats is not None
            assert transport.pool_stats.in_use == 0


def _endless_interim_responses(sock: socket.socket) -> None:
    read_head(sock)
    with contextlib.suppress(OSError):
        for _ in range(20_000):  # bounded: 500 KB of "100 Continue", then a final response
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


async def test_an_endless_run_of_interim_responses_is_refused(parser: str) -> None:
    # Interim (1xx) responses are skipped, but not without end: each arrives well within the
    # read timeout, so nothing else would stop a server that never sends the final response.
    # They count toward the 100 KiB bound on the head.
    with RawServer(_endless_interim_responses) as server:
        client, transport = make_client(server.url, parser)
        async with client:
            with pytest.raises(httpx.RemoteProtocolError, match="larger than"):
                await client.get("/")
            assert transport.pool_stats is not None
            assert transport.pool_stats.in_use == 0


# --- what a request's declared framing obliges the writer to send --------------------------------


def _record_then_answer(received: list[bytes]) -> Callable[[socket.socket], None]:
    """Read whatever the client sends (until it stops for 0.5 s), record it, answer 200 with
    the bytes after the head as the body."""

    def handler(sock: socket.socket) -> None:
        sock.settimeout(0.5)
        data = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        received.append(data)
        body = data.partition(b"\r\n\r\n")[2]
        head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        sock.sendall(head + body)

    return handler


async def _six_bytes() -> AsyncGenerator[bytes, None]:
    yield b"abc"
    yield b"XYZ"


@pytest.mark.parametrize("kind", ["bytes", "stream"])
async def test_more_body_than_the_declared_content_length_is_refused(
    parser: str, kind: str
) -> None:
    # A request declaring Content-Length: 3 whose body is longer must not be sent as is: the
    # server would read the rest as the next request (request smuggling). httptools wrote the
    # bytes regardless; h11 (and so httpx's own transport) refuses with LocalProtocolError.
    smuggled = b"abcGET /XYZ HTTP/1.1\r\nhost: x\r\n\r\n"
    received: list[bytes] = []
    with RawServer(_record_then_answer(received)) as server:
        client, transport = make_client(server.url, parser)
        async with client, contextlib.aclosing(_six_bytes()) as stream:
            content = smuggled if kind == "bytes" else stream
            with pytest.raises(httpx.LocalProtocolError, match="Too much data"):
                await client.post("/", content=content, headers={"Content-Length": "3"})
            assert transport.pool_stats is not None
            assert transport.pool_stats.in_use == 0
    assert all(b"XYZ" not in data for data in received)


async def test_less_body_than_the_declared_content_length_is_refused(parser: str) -> None:
    # The server would wait for the missing bytes (or take the next request's for them).
    received: list[bytes] = []
    with RawServer(_record_then_answer(received)) as server:
        client, _ = make_client(server.url, parser)
        async with client:
            with pytest.raises(httpx.LocalProtocolError, match="Too little data"):
                await client.post("/", content=_six_bytes(), headers={"Content-Length": "10"})


async def test_a_body_under_transfer_encoding_chunked_is_sent_chunked(parser: str) -> None:
    # A caller's "Transfer-Encoding: chunked" with a bytes body (httpx adds Content-Length: 6
    # too): h11 sends the body chunked, as the header says; httptools sent it raw, which the
    # server reads as chunk sizes (a body starting "0\r\n\r\n" would end the request there).
    received: list[bytes] = []
    with RawServer(_record_then_answer(received)) as server:
        client, _ = make_client(server.url, parser)
        async with client:
            response = await client.post(
                "/", content=b"abcdef", headers={"Transfer-Encoding": "chunked"}
            )
            assert response.content == b"6\r\nabcdef\r\n0\r\n\r\n"


async def test_a_transfer_encoding_other_than_chunked_is_refused(parser: str) -> None:
    # The writer frames only chunked bodies; h11 refuses any other request Transfer-Encoding.
    received: list[bytes] = []
    with RawServer(_record_then_answer(received)) as server:
        client, _ = make_client(server.url, parser)
        async with client:
            with pytest.raises(httpx.LocalProtocolError):
                await client.post("/", content=b"abc", headers={"Transfer-Encoding": "gzip"})


@pytest.mark.parametrize(
    "bad", ["\n", "\r", "\x00", "\r\nx-injected: 1"], ids=["LF", "CR", "NUL", "CRLF-header"]
)
async def test_an_invalid_header_value_is_refused_without_showing_it(parser: str, bad: str) -> None:
    # A credential with a stray newline (read from a file, say), or a NUL, is refused before
    # anything is sent (httptools sent a NUL as is); the error names neither the value nor
    # keeps an exception that does (h11's message is "Illegal header value b'Bearer ...'").
    secret = "s3cr3t-token-value"
    received: list[bytes] = []
    with RawServer(_record_then_answer(received)) as s:
        client, _ = make_client(s.url, parser)
        async with client:
            with pytest.raises(httpx.LocalProtocolError) as caught:
                await client.get("/", headers={"Authorization": f"Bearer {secret}{bad}"})
    assert all(secret.encode() not in data for data in received)
    chain: list[BaseException] = []
    exc: BaseException | None = caught.value
    while exc is not None and len(chain) < 10:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for link in chain:
        assert secret not in str(link)
        assert secret not in repr(link)
        assert all(secret not in repr(arg) for arg in link.args)
