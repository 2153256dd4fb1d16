"""HTTP/1.1 over one connection: write a request, parse the response, keep the connection alive.

The parser is llhttp (C, through httptools) where httptools is installed, with h11 as the
pure-Python fallback; ``HTTPX_RESILIENCE_HTTP11_PARSER=h11`` (or the transport's ``http1_parser``)
selects it, so the suite can run on both. Both parsers sit behind one small interface
(`_HttptoolsParser`, `_H11Parser`): ``start`` a response cycle, ``feed`` bytes, ``feed_eof``,
and read ``head_done``/``complete``/``status``/``headers``/``body``/``keep_alive``.

A connection is handed received bytes by its stream (`connect.Sink`) and is, at any time, either
idle (no request: any byte or end of stream then means the server closed it or broke the
protocol, so it is never reused; on a new connection, bytes that come before its first request
are that request's response, as httpx reads them) or carrying one request. Its response's body
chunks go into a list owned by that response; the connection goes back to the pool when the body
has been read to its end or the response is closed, as with httpx's own transport. A response
closed before its whole message arrived closes its connection (what remains unread could be
anything).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import anyio
import h11
import httpx

from .connect import NetworkStream

try:
    import httptools

    _HAVE_HTTPTOOLS = True
except ImportError:  # pragma: no cover - httptools is a dependency; h11 is the fallback
    _HAVE_HTTPTOOLS = False

__all__ = ["PARSERS", "HTTP11Connection", "default_parser", "make_parser"]

PARSERS = ("httptools", "h11")
_PARSER_ENV = "HTTPX_RESILIENCE_HTTP11_PARSER"
_HTTP_11 = b"HTTP/1.1"
_HTTP_10 = b"HTTP/1.0"
#: Pause reading once a response has this many unread body bytes buffered; resume below it.
_HIGH_WATER = 1 << 20
#: Request bodies up to this size go out in the same write as the request head.
_COALESCE = 1 << 16
#: The most a response head (with any interim responses before it) may take: httpcore's
#: bound (h11's ``max_incomplete_event_size``), so a server cannot make the client hold an
#: endless head, and heads httpx reads are read here too.
MAX_HEAD_SIZE = 100 * 1024


def default_parser() -> str:
    """The parser named by ``HTTPX_RESILIENCE_HTTP11_PARSER``, else httptools when installed."""
    chosen = os.environ.get(_PARSER_ENV, "").strip().lower()
    if chosen:
        if chosen not in PARSERS:
            raise ValueError(f"{_PARSER_ENV} must be one of {', '.join(PARSERS)}, got {chosen!r}")
        return chosen
    return "httptools" if _HAVE_HTTPTOOLS else "h11"


class Parser(Protocol):
    head_done: bool
    complete: bool
    status: int
    reason: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    body: list[bytes]
    buffered: int
    keep_alive: bool

    def start(self, method: bytes) -> None: ...

    def request_head(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
    ) -> bytes: ...

    def request_data(self, data: bytes) -> bytes:
        """``data`` framed as the request head declared (chunked, or counted against its
        Content-Length: more than declared raises `httpx.LocalProtocolError`)."""

    def request_end(self) -> bytes:
        """The end of the body (raises `httpx.LocalProtocolError` if fewer bytes than the
        declared Content-Length were sent)."""

    def feed(self, data: bytes) -> None: ...

    def feed_eof(self) -> None: ...


def make_parser(name: str) -> Parser:
    if name == "httptools":
        if not _HAVE_HTTPTOOLS:  # pragma: no cover
            raise RuntimeError("the httptools parser was asked for but httptools is not installed")
        return _HttptoolsParser()
    return _H11Parser()


class _HttptoolsParser:
    """llhttp, through httptools. The request is written by hand (it is a few joins)."""

    __slots__ = (
        "_chunked",
        "_close",
        "_dirty",
        "_head_bytes",
        "_head_only",
        "_informational",
        "_parser",
        "_remaining",
        "body",
        "buffered",
        "complete",
        "head_done",
        "headers",
        "keep_alive",
        "reason",
        "status",
        "version",
    )

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._close = False  # the request said "Connection: close"
        self._chunked = False  # the request's body is sent chunked
        self._remaining = 0  # else: the bytes of body its Content-Length still expects
        self._head_bytes = 0  # bytes fed while the response head was not yet complete
        self._dirty = False
        self._head_only = False
        self._informational = False
        self.head_done = False
        self.complete = False
        self.status = 0
        self.reason = b""
        self.version = _HTTP_11
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.buffered = 0
        self.keep_alive = False

    def start(self, method: bytes) -> None:
        if self._dirty:
            # After a HEAD response, or a response cut short, llhttp's state is not at a
            # message boundary: start afresh.
            self._parser = httptools.HttpResponseParser(self)
            self._dirty = False
        self._head_only = method == b"HEAD"
        self._informational = False
        self._head_bytes = 0
        self.head_done = False
        self.complete = False
        self.reason = b""
        self.headers = []
        self.body = []
        self.buffered = 0
        self.keep_alive = False

    def request_head(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
    ) -> bytes:
        parts = [method, b" ", target, b" HTTP/1.1\r\n"]
        close = chunked = False
        length: int | None = None
        sizes = _FRAMING_NAME_SIZES
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
            if len(name) in sizes:
                lowered = name.lower()
                if lowered == b"connection":
                    close = b"close" in value.lower()
                elif lowered == b"content-length":
                    length = _content_length(value, length)
                elif lowered == b"transfer-encoding":
                    # The body is framed as the head says, as h11 does (Transfer-Encoding
                    # wins over Content-Length): anything else lets the server read part of
                    # the body as another request.
                    if value.strip().lower() != b"chunked":
                        raise httpx.LocalProtocolError(
                            "Only Transfer-Encoding: chunked is supported"
                        )
                    chunked = True
        self._close = close
        self._chunked = chunked
        self._remaining = length or 0
        parts.append(b"\r\n")
        head = b"".join(parts)
        # One check for the whole head: a CR or LF inside a method, target, name or value
        # would add lines (request splitting), and a NUL cuts a field short in some servers;
        # h11 refuses all three, and so does the HTTP/2 writer. (``0 in head``, a NUL octet,
        # is one memchr: several times faster than searching for b"\x00".)
        lines = len(headers) + 2
        if head.count(b"\n") != lines or head.count(b"\r") != lines or 0 in head:
            raise httpx.LocalProtocolError(
                "Illegal header value: CR, LF or NUL in the request head"
            )
        return head

    def request_data(self, data: bytes) -> bytes:
        if self._chunked:
            return b"%x\r\n%b\r\n" % (len(data), data)
        remaining = self._remaining - len(data)
        if remaining < 0:
            raise httpx.LocalProtocolError("Too much data for declared Content-Length")
        self._remaining = remaining
        return data

    def request_end(self) -> bytes:
        if self._chunked:
            return b"0\r\n\r\n"
        if self._remaining:
            raise httpx.LocalProtocolError("Too little data for declared Content-Length")
        return b""

    # httptools callbacks. llhttp goes on parsing after a message ends, within the same
    # ``feed_data``: what it finds there (a response nobody asked for, a 204's body) is not
    # this response's, and the connection is not reused. Trailer fields (after a chunked
    # body) are dropped, as httpcore does.

    def on_message_begin(self) -> None:
        if self.complete:
            self._dirty = True
            self.keep_alive = False

    def on_status(self, reason: bytes) -> None:
        if not self.complete:
            self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        # Not a trailer, nor a header of bytes beyond the response. llhttp strips only the
        # leading whitespace of a value (``rstrip`` returns the value itself when there is
        # none to strip: cheaper than testing first).
        if not self.head_done:
            self.headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        parser = self._parser
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # 100 Continue and other interim responses: skipped, as httpx does.
            self._informational = True
            self.headers = []
            return
        self.status = status
        self.version = _HTTP_11 if parser.get_http_version() == "1.1" else _HTTP_10
        self.head_done = True
        if self._head_only:
            self.keep_alive = parser.should_keep_alive() and not self._close
            self.complete = True
            self._dirty = True

    def on_body(self, body: bytes) -> None:
        if self.complete:  # a body after a HEAD response's head, or beyond the response
            self._dirty = True
            self.keep_alive = False
            return
        self.body.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self.complete:  # a HEAD response
            return
        self.keep_alive = self._parser.should_keep_alive() and not self._close
        self.complete = True

    def feed(self, data: bytes) -> None:
        if self.complete:
            self._dirty = True  # bytes beyond the response: the connection is not reused
            self.keep_alive = False
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._dirty = True
            self.keep_alive = False
            self.complete = True  # 101 Switching Protocols: no body, connection not reused
        except httptools.HttpParserError as exc:
            self._dirty = True
            if self.complete:  # the bytes beyond the response are not its concern
                self.keep_alive = False
                return
            raise httpx.RemoteProtocolError(f"invalid HTTP/1.1 response: {exc}") from exc
        if not self.head_done:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_SIZE:
                self._dirty = True
                raise httpx.RemoteProtocolError(
                    f"invalid HTTP/1.1 response: the head is larger than {MAX_HEAD_SIZE} bytes"
                )

    def feed_eof(self) -> None:
        self._dirty = True
        if not self.head_done or self.complete:
            return
        # A body without Content-Length or chunked framing ends with the connection; httptools
        # has no "finish" call, so tell that case apart here (rare, so no cost per header).
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == b"content-length" or (
                lowered == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                return
        self.keep_alive = False
        self.complete = True


class _H11Parser:
    """h11 (pure Python): writes the request and parses the response."""

    __slots__ = (
        "_conn",
        "_head_bytes",
        "body",
        "buffered",
        "complete",
        "head_done",
        "headers",
        "keep_alive",
        "reason",
        "status",
        "version",
    )

    def __init__(self) -> None:
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_SIZE)
        self._head_bytes = 0
        self.head_done = False
        self.complete = False
        self.status = 0
        self.reason = b""
        self.version = _HTTP_11
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.buffered = 0
        self.keep_alive = False

    def start(self, method: bytes) -> None:
        conn = self._conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        self._head_bytes = 0
        self.head_done = False
        self.complete = False
        self.reason = b""
        self.headers = []
        self.body = []
        self.buffered = 0
        self.keep_alive = False

    def request_head(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
    ) -> bytes:
        try:
            data = self._conn.send(h11.Request(method=method, target=target, headers=headers))
        except h11.LocalProtocolError as exc:
            message = str(exc)
        else:
            return data or b""
        # h11 quotes the value it refuses: a credential with a stray newline would be in the
        # message. Raised outside the ``except``, so no exception in its chain shows it either.
        if message.startswith("Illegal header value"):
            message = "Illegal header value (not shown: it may be a credential)"
        raise httpx.LocalProtocolError(message)

    def request_data(self, data: bytes) -> bytes:
        try:
            return self._conn.send(h11.Data(data=data)) or b""
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc)) from exc

    def request_end(self) -> bytes:
        try:
            return self._conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc)) from exc

    def feed(self, data: bytes) -> None:
        if self.complete:
            self.keep_alive = False
            return
        self._conn.receive_data(data)
        self._events()
        if not self.head_done:
            # h11 bounds each event; interim responses are events of their own, so an endless
            # run of them is bounded here, as the httptools parser bounds the whole head.
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_SIZE:
                raise httpx.RemoteProtocolError(
                    f"invalid HTTP/1.1 response: the head is larger than {MAX_HEAD_SIZE} bytes"
                )

    def feed_eof(self) -> None:
        if self.complete:
            return
        self._conn.receive_data(b"")
        self._events()

    def _events(self) -> None:
        conn = self._conn
        while not self.complete:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(f"invalid HTTP/1.1 response: {exc}") from exc
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Response):
                self.status = event.status_code
                self.reason = event.reason
                self.version = b"HTTP/" + event.http_version
                self.headers = list(event.headers.raw_items())
                self.head_done = True
            elif isinstance(event, h11.Data):
                self.body.append(bytes(event.data))
                self.buffered += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.complete = True
                # Bytes already received beyond the response (a response nobody asked for, a
                # 204's body): h11 would take them for the next response on the connection.
                self.keep_alive = (
                    conn.our_state is h11.DONE
                    and conn.their_state is h11.DONE
                    and not conn.trailing_data[0]
                )
            elif isinstance(event, h11.ConnectionClosed):
                return  # the caller sees the end of the stream
            # InformationalResponse: skipped, as httpx does.


_IDLE, _ACTIVE, _CLOSED = 0, 1, 2


class HTTP11Connection:
    """One HTTP/1.1 connection. The pool leases it for one request at a time (`capacity`)."""

    __slots__ = (
        "_broken",
        "_early",
        "_eof",
        "_eof_error",
        "_error",
        "_keepalive_expiry",
        "_parser",
        "_paused",
        "_release",
        "_state",
        "_stream",
        "expires_at",
        "key",
        "leased",
    )

    def __init__(
        self,
        stream: NetworkStream,
        parser: Parser,
        key: Any,
        keepalive_expiry: float | None,
        release: Callable[[HTTP11Connection], None],
    ) -> None:
        self._stream = stream
        self._parser = parser
        self.key = key
        self._keepalive_expiry = keepalive_expiry
        self._release = release
        self._state = _IDLE
        self._broken = False
        self._eof = False
        self._eof_error: BaseException | None = None
        self._error: httpx.RemoteProtocolError | None = None
        self._paused = False
        #: Bytes received before the first request (None once it is under way).
        self._early: list[bytes] | None = []
        self.expires_at = float("inf")
        #: Held by a request (set and cleared by the pool only).
        self.leased = False
        stream.set_sink(self)

    # --- what the pool asks ---------------------------------------------------------------

    @property
    def stream(self) -> NetworkStream:
        """The byte stream the connection runs on (the pool closes an anyio one with an
        await)."""
        return self._stream

    @property
    def capacity(self) -> int:
        """How many more requests this connection may take now (HTTP/1.1: one, when idle)."""
        return 1 if self._state == _IDLE and not self._broken else 0

    def is_reusable(self, now: float) -> bool:
        """Idle, alive and not expired: a request may be written to it (nothing sent yet)."""
        return (
            self._state == _IDLE
            and not self._broken
            and not self._eof
            and now < self.expires_at
            and self._stream.is_alive()
        )

    def close(self) -> None:
        """Close at once (safe in any state, even while cancelled)."""
        self._state = _CLOSED
        self._stream.abort()

    async def aclose(self) -> None:
        self._state = _CLOSED
        await self._stream.aclose()

    # --- connect.Sink -----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._state != _ACTIVE or self._error is not None:
            self._broken = True  # bytes nobody asked for: never reuse this connection
            early = self._early
            if early is not None and self._state == _IDLE:
                # A new connection, and the server answers before the request (a 503 as it
                # accepts, say): the answer to its first request, as httpx reads it.
                early.append(data)
            return
        parser = self._parser
        try:
            parser.feed(data)
        except httpx.RemoteProtocolError as exc:
            self._error = exc
            return
        if parser.buffered > _HIGH_WATER and not self._paused:
            self._paused = True
            self._stream.pause_reading()

    def eof_received(self, exc: BaseException | None) -> None:
        self._eof = True
        self._eof_error = exc
        if self._state == _ACTIVE:
            # The end of the stream may complete a body that runs until the close; anything
            # else it cuts short is reported by `_check_read`.
            with contextlib.suppress(httpx.RemoteProtocolError):
                self._parser.feed_eof()

    # --- one request ------------------------------------------------------------------------

    async def handle(self, request: httpx.Request, timeouts: dict[str, Any]) -> httpx.Response:
        """Send ``request`` and read the response head. The body arrives through the returned
        response's stream; the connection goes back to the pool when it ends or is closed."""
        parser = self._parser
        url = request.url
        method = request.method.encode("ascii")
        parser.start(method)
        self._state = _ACTIVE
        self._error = None
        stream = self._stream
        write_timeout = timeouts.get("write")
        read_timeout = timeouts.get("read")
        head = parser.request_head(method, url.raw_path, request.headers.raw)
        if self._early is not None:
            self._receive_early()
        body = request.stream
        try:
            if type(body) is httpx.ByteStream:
                try:
                    content = request.content
                except httpx.RequestNotRead:
                    # A request built with ``stream=`` (httpx's redirects are): bytes in memory.
                    content = await request.aread()
                if len(content) <= _COALESCE:
                    await stream.send(
                        head + parser.request_data(content) + parser.request_end()
                        if content
                        else head + parser.request_end(),
                        write_timeout,
                    )
                else:
                    data = parser.request_data(content)
                    end = parser.request_end()
                    await stream.send(head, write_timeout)
                    await stream.send(data, write_timeout)
                    if end:
                        await stream.send(end, write_timeout)
            else:
                await self._send_streamed(request, head, write_timeout)
        except httpx.WriteError:
            # The server may have answered already and closed (a 413, say): read that answer;
            # if there is none, the read error below says what happened. Half a request went
            # out: the connection is never reused, whatever the answer says about keep-alive.
            self._broken = True
        while not parser.head_done:
            self._check_read(request)
            await stream.receive(read_timeout)
        response = httpx.Response(
            parser.status,
            stream=_ResponseStream(self, parser.body, read_timeout),
            extensions={"http_version": parser.version, "reason_phrase": parser.reason},
        )
        # httpx finds the headers' encoding on first use by decoding every name and value
        # (ASCII, else UTF-8, else Latin-1); for all-ASCII headers, nearly all, say so at once.
        headers = parser.headers
        response.headers = httpx.Headers(headers, "ascii" if _all_ascii(headers) else None)
        return response

    def _receive_early(self) -> None:
        """The first request: parse what the server sent before it (after the request head,
        which h11 must have seen first) as its response. The connection is not reused."""
        early, self._early = self._early, None
        if not early:
            return
        for data in early:
            self.data_received(data)
        if self._eof:
            with contextlib.suppress(httpx.RemoteProtocolError):
                self._parser.feed_eof()

    async def _send_streamed(
        self, request: httpx.Request, head: bytes, seconds: float | None
    ) -> None:
        parser, stream = self._parser, self._stream
        await stream.send(head, seconds)
        body = request.stream
        assert isinstance(body, httpx.AsyncByteStream), (
            "a sync body cannot go through an async transport"
        )
        chunks = body.__aiter__()
        try:
            async for chunk in chunks:
                if chunk:
                    await stream.send(parser.request_data(chunk), seconds)
        finally:
            # Stopped early (a write failed, the body was too long, cancelled): close the
            # body's async generator now, not when it is collected (trio warns then).
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
        end = parser.request_end()
        if end:
            await stream.send(end, seconds)

    def _check_read(self, request: httpx.Request | None) -> None:
        """Raise what keeps the current response from going on: a parse error, or the end of
        the stream."""
        if self._error is not None:
            raise self._error
        if self._eof and not self._parser.complete:
            exc = self._eof_error
            if exc is not None:
                raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
            if not self._parser.head_done:
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body"
            )

    async def receive_body(self, seconds: float | None) -> None:
        self._check_read(None)
        if self._paused:
            self._paused = False
            self._stream.resume_reading()
        await self._stream.receive(seconds)
        self._check_read(None)

    def consumed(self, size: int) -> None:
        self._parser.buffered -= size

    def _finish(self) -> None:
        """The response ended: back to the pool, reusable when both sides agree."""
        parser = self._parser
        if self._paused:
            # The read that crossed the high-water mark may also have ended the message: an
            # idle connection must read, or the next response (or the server's close) is
            # never seen.
            self._paused = False
            self._stream.resume_reading()
        if (
            parser.keep_alive
            and self._state == _ACTIVE  # not closed meanwhile (the pool's `aclose`)
            and not self._eof
            and not self._broken
            and self._error is None
        ):
            self._state = _IDLE
            if self._keepalive_expiry is not None:
                self.expires_at = time.monotonic() + self._keepalive_expiry
        else:
            self.close()
        self._release(self)

    def abandon(self) -> None:
        """The response was closed before its end: close the connection, free the slot."""
        self.close()
        self._release(self)


#: The lengths of the request header names the writer looks at (Connection, Content-Length,
#: Transfer-Encoding): one set lookup per header, a lower() only for those lengths.
_FRAMING_NAME_SIZES = frozenset((10, 14, 17))


def _content_length(value: bytes, previous: int | None) -> int:
    """A request's Content-Length, checked as h11 checks it: digits only, and every value
    (repeated headers, comma-separated lists) the same."""
    length = previous
    for item in value.split(b","):
        item = item.strip()
        if not item.isdigit():
            raise httpx.LocalProtocolError("bad Content-Length")
        if length is not None and int(item) != length:
            raise httpx.LocalProtocolError("conflicting Content-Length headers")
        length = int(item)
    assert length is not None
    return length


def _all_ascii(headers: list[tuple[bytes, bytes]]) -> bool:
    # A plain loop: twice as fast as all() over a generator for a handful of headers.
    for name, value in headers:  # noqa: SIM110
        if not (name.isascii() and value.isascii()):
            return False
    return True


class _ResponseStream(httpx.AsyncByteStream):
    """A response body: chunks already parsed, then more read from the connection."""

    __slots__ = ("_chunks", "_conn", "_timeout")

    def __init__(self, conn: HTTP11Connection, chunks: list[bytes], seconds: float | None) -> None:
        self._chunks = chunks
        self._timeout = seconds
        # Held until the body has been read to its end or the response is closed, as httpx's
        # own transport does (``max_connections`` bounds open responses); then None.
        self._conn: HTTP11Connection | None = conn

    def __aiter__(self) -> AsyncIterator[bytes]:
        # The stream is its own iterator (no async generator to finalise if the caller stops
        # early); it can be iterated once, like httpx's own response streams.
        return self

    async def __anext__(self) -> bytes:
        chunks = self._chunks
        while True:
            if chunks:
                chunk = chunks.pop() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                conn = self._conn
                if conn is not None:
                    conn.consumed(len(chunk))
                return chunk
            conn = self._conn
            if conn is None:
                raise StopAsyncIteration
            if conn._parser.complete:
                self._conn = None
                conn._finish()
                continue
            try:
                await conn.receive_body(self._timeout)
            except BaseException:
                self._conn = None
                conn.abandon()
                raise

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if conn._parser.complete:
                conn._finish()
            else:
                conn.abandon()
