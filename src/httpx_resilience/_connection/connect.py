"""Connect and TLS: open a byte stream to an origin, with ALPN, and hand received bytes to a sink.

Two implementations of one small stream interface (`NetworkStream`):

* `AsyncioStream`, the fast path under asyncio: an `asyncio.BufferedProtocol` that pushes the
  bytes of each read straight into the connection's parser, so reading costs no task and no
  `StreamReader` buffer; ``receive`` only waits for the next delivery. It is a *buffered*
  protocol because asyncio's transports give a plain protocol a fresh 256 KiB ``bytes`` per
  read (``sock.recv(262144)``, then shrunk). That costs little while the allocator keeps the
  memory, but about 9 µs a read where it maps and unmaps it each time: glibc does so while its
  mmap threshold is at its 128 KiB default, that is until the process has freed a larger block
  (measured: the layer alone at 50 concurrent requests, 60-70 µs of CPU per request then
  against 48 with this protocol). ``recv_into`` a buffer kept per connection, then a copy of
  the bytes read, costs about 1 µs either way.
* `AnyIOStream`, for trio (and any anyio backend): pulls bytes with anyio and pushes them into the
  same sink, so the HTTP code above is the same for both.

Errors are httpx's own types, so `_classify.py` keeps working: a failure or timeout while
connecting (TCP or TLS) is `httpx.ConnectError` / `httpx.ConnectTimeout` (the request was never
sent), while reading `httpx.ReadError` / `httpx.ReadTimeout`, while writing `httpx.WriteError` /
`httpx.WriteTimeout`. A TLS failure is chained (``from``) to its `ssl.SSLError`, which is how
`_classify` tells a certificate problem (fatal) from a dropped connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
import sys
from collections.abc import Coroutine, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc
import httpx
import sniffio
from anyio.streams.tls import TLSAttribute, TLSStream

if TYPE_CHECKING:
    from typing import TypeAlias

__all__ = [
    "AnyIOStream",
    "AsyncioStream",
    "ConnectOptions",
    "NetworkStream",
    "Sink",
    "SocketOption",
    "connect",
    "running_asyncio_loop",
]

#: A socket option as httpx takes it: ``(level, name, value)`` or ``(level, name, None, length)``.
SocketOption: TypeAlias = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)

#: httpcore's connect-retry backoff: 0 s, then 0.5 s, 1 s, 2 s, ...
_RETRY_BACKOFF_FACTOR = 0.5
#: Bytes asked for per read (anyio), and the first size of an asyncio connection's read buffer
#: (httpcore reads 64 KiB at a time too).
_READ_SIZE = 65536
#: What an asyncio connection's read buffer grows to once a read fills it (a large body): what
#: asyncio's transports read at a time. 64 KiB reads cost a large download about half as much
#: CPU again as 256 KiB ones (more loop turns per MiB).
_BULK_READ_SIZE = 262144


class Sink(Protocol):
    """What a stream hands received bytes to: the connection speaking HTTP over it."""

    def data_received(self, data: bytes) -> None: ...

    def eof_received(self, exc: BaseException | None) -> None:
        """The peer closed the connection (``exc`` None) or reading failed (``exc``)."""


class NetworkStream(Protocol):
    """A connected byte stream. ``receive`` waits until the sink has been handed more bytes (or
    the end of the stream); ``send`` writes all of ``data``. Both raise httpx's exceptions."""

    alpn: str | None

    def set_sink(self, sink: Sink) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    async def receive(self, seconds: float | None) -> None: ...

    async def send(self, data: bytes, seconds: float | None) -> None: ...

    def is_alive(self) -> bool:
        """False once the stream is known closed, or has bytes waiting while idle."""

    def abort(self) -> None:
        """Close at once, without waiting for anything: safe in any state, even cancelled."""

    async def aclose(self) -> None: ...


class _NullSink:
    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self, exc: BaseException | None) -> None:
        pass


_NULL_SINK = _NullSink()


class _EarlySink:
    """Holds what arrives before the connection sets its sink: an HTTP/2 server sends its
    SETTINGS as soon as the connection is up, possibly before `connect` has returned."""

    __slots__ = ("data", "eof", "error")

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.eof = False
        self.error: BaseException | None = None

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def eof_received(self, exc: BaseException | None) -> None:
        self.eof = True
        self.error = exc


class ConnectOptions:
    """The connection settings of one pool: immutable once built."""

    __slots__ = ("local_address", "retries", "socket_options", "ssl_context", "uds")

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        uds: str | None = None,
        local_address: str | None = None,
        retries: int = 0,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> None:
        self.ssl_context = ssl_context
        self.uds = uds
        self.local_address = local_address
        self.retries = retries
        self.socket_options: tuple[SocketOption, ...] = tuple(socket_options or ())


def running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio event loop when the caller runs under asyncio, else None (trio, or
    trio-asyncio in trio mode): sniffio's answer, in the order sniffio asks, without its
    ``asyncio.current_task()`` call, which costs more than the rest on every request."""
    name = sniffio.thread_local.name
    if name is None:
        name = sniffio.current_async_library_cvar.get()
    if name is not None and name != "asyncio":
        return None
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _backoff() -> Iterator[float]:
    yield 0.0
    delay = _RETRY_BACKOFF_FACTOR
    while True:
        yield delay
        delay *= 2


async def connect(
    options: ConnectOptions,
    *,
    scheme: str,
    host: str,
    port: int,
    sni_hostname: str | None,
    alpn: list[str],
    seconds: float | None,
    use_asyncio: bool,
) -> NetworkStream:
    """Open a stream to ``host:port`` (TLS for ``https``), retrying connect failures
    ``options.retries`` times with httpcore's backoff. Raises `httpx.ConnectError` or
    `httpx.ConnectTimeout`."""
    retries_left = options.retries
    delays = _backoff()
    while True:
        try:
            if use_asyncio:
                return await _connect_asyncio(
                    options, scheme, host, port, sni_hostname, alpn, seconds
                )
            return await _connect_anyio(options, scheme, host, port, sni_hostname, alpn, seconds)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            if retries_left <= 0:
                raise
            retries_left -= 1
            await anyio.sleep(next(delays))


def _ssl_for(options: ConnectOptions, scheme: str, alpn: list[str]) -> ssl.SSLContext | None:
    if scheme != "https":
        return None
    context = options.ssl_context
    # Set on every connect, as httpcore does: a context given as ``verify=`` may be shared
    # with transports that offer other protocols.
    context.set_alpn_protocols(alpn)
    return context


def _apply_socket_options(sock: socket.socket | None, options: ConnectOptions) -> None:
    if sock is None:
        return
    for option in options.socket_options:
        sock.setsockopt(*option)


def _connect_error(exc: BaseException) -> httpx.ConnectError:
    return httpx.ConnectError(str(exc) or type(exc).__name__)


async def _connect_asyncio(
    options: ConnectOptions,
    scheme: str,
    host: str,
    port: int,
    sni_hostname: str | None,
    alpn: list[str],
    seconds: float | None,
) -> NetworkStream:
    loop = asyncio.get_running_loop()
    context = _ssl_for(options, scheme, alpn)
    protocol = AsyncioStream(loop)
    server_hostname = (sni_hostname or host) if context is not None else None
    try:
        connecting: Coroutine[Any, Any, tuple[asyncio.BaseTransport, asyncio.BaseProtocol]]
        if options.uds is not None:
            connecting = loop.create_unix_connection(
                lambda: protocol,
                options.uds,
                ssl=context,
                server_hostname=server_hostname,
                ssl_handshake_timeout=seconds if context is not None else None,
            )
        else:
            connecting = loop.create_connection(
                lambda: protocol,
                host,
                port,
                ssl=context,
                server_hostname=server_hostname,
                local_addr=None if options.local_address is None else (options.local_address, 0),
                ssl_handshake_timeout=seconds if context is not None else None,
            )
        transport, _ = await asyncio.wait_for(connecting, seconds)
    except asyncio.TimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc) or "timed out while connecting") from exc
    except (OSError, ssl.SSLError) as exc:
        raise _connect_error(exc) from exc
    try:
        _apply_socket_options(transport.get_extra_info("socket"), options)
        ssl_object = transport.get_extra_info("ssl_object")
        protocol.alpn = None if ssl_object is None else ssl_object.selected_alpn_protocol()
    except BaseException:
        transport.abort()
        raise
    return protocol


class AsyncioStream(asyncio.BufferedProtocol):
    """The asyncio fast path: the bytes of each read go into the sink's parser at once."""

    __slots__ = (
        "_buffer",
        "_closed",
        "_deadline",
        "_drain",
        "_error",
        "_loop",
        "_poller",
        "_sink",
        "_timer",
        "_transport",
        "_waiter",
        "_write_paused",
        "alpn",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # The transport reads into this (`get_buffer`); each read's bytes are copied out
        # (`buffer_updated`) before anything else runs, so one buffer serves every read. It
        # grows to `_BULK_READ_SIZE` once a read fills it.
        self._buffer = memoryview(bytearray(_READ_SIZE))
        # Read timeouts: one timer per connection, re-armed lazily (see `_on_timer`), instead
        # of a timer made and cancelled for every read.
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._sink: Sink = _EarlySink()
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._write_paused = False
        self._closed = False
        self._error: BaseException | None = None
        self._poller: select.poll | None = None  # made on first use by `has_unread`
        self.alpn: str | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        buffer = self._buffer
        data = bytes(buffer[:nbytes])
        if nbytes == len(buffer) and nbytes < _BULK_READ_SIZE:
            self._buffer = memoryview(bytearray(_BULK_READ_SIZE))
        self.data_received(data)

    def data_received(self, data: bytes) -> None:
        # Called by `buffer_updated`; also by a transport that does not support buffered
        # protocols.
        try:
            self._sink.data_received(data)
        finally:
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def eof_received(self) -> bool:
        self._lost(None)
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def _lost(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._error = exc
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            self._sink.eof_received(exc)
        finally:
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    # NetworkStream

    def set_sink(self, sink: Sink) -> None:
        early = self._sink
        self._sink = sink
        if isinstance(early, _EarlySink):
            for data in early.data:
                sink.data_received(data)
            if early.eof:
                sink.eof_received(early.error)

    def write(self, data: bytes) -> bool:
        """Write without waiting (for frames a callback must answer at once: HTTP/2 SETTINGS
        and PING acknowledgements, window updates). Returns whether the write buffer is over
        its high-water mark (`send` with ``b""`` then waits for it to drain). Does nothing on
        a closed stream: the sink has been told of the end."""
        transport = self._transport
        if not self._closed and transport is not None and not transport.is_closing():
            transport.write(data)
        return self._write_paused

    @property
    def writing_paused(self) -> bool:
        """Whether the write buffer is over its high-water mark."""
        return self._write_paused

    def has_unread(self) -> bool:
        """Whether bytes wait in the socket that the event loop has not delivered yet. (A
        write that fails makes asyncio drop them: HTTP/2 reads a GOAWAY before writing.)"""
        poller = self._poller
        if poller is None:
            transport = self._transport
            sock = None if transport is None else transport.get_extra_info("socket")
            if sock is None or sys.platform == "win32" or not hasattr(select, "poll"):
                return False  # pragma: no cover - no socket (a test double) or no poll()
            poller = self._poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
        return not self._closed and bool(poller.poll(0))

    def pause_reading(self) -> None:
        transport = self._transport
        if transport is not None and not self._closed:
            transport.pause_reading()

    def resume_reading(self) -> None:
        transport = self._transport
        if transport is not None and not self._closed:
            transport.resume_reading()

    async def receive(self, seconds: float | None) -> None:
        if self._closed:
            raise httpx.ReadError(_closed_message(self._error))
        loop = self._loop
        waiter = loop.create_future()
        self._waiter = waiter
        if seconds is not None:
            deadline = self._deadline = loop.time() + seconds
            timer = self._timer
            if timer is None or timer.when() > deadline:
                if timer is not None:
                    timer.cancel()
                self._timer = loop.call_at(deadline, self._on_timer)
        try:
            await waiter
        except _Expired:
            raise httpx.ReadTimeout("timed out while reading") from None
        finally:
            self._waiter = None
            self._deadline = None

    def _on_timer(self) -> None:
        # The timer may be older than the current read's deadline: re-arm it for that.
        self._timer = None
        deadline = self._deadline
        if deadline is None or self._closed:
            return
        if self._loop.time() >= deadline:
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(_Expired())
        else:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    async def send(self, data: bytes, seconds: float | None) -> None:
        transport = self._transport
        if self._closed or transport is None or transport.is_closing():
            raise httpx.WriteError(_closed_message(self._error))
        transport.write(data)
        if not self._write_paused:
            return
        drain = self._loop.create_future()
        self._drain = drain
        handle = None if seconds is None else self._loop.call_later(seconds, _expire, drain)
        try:
            await drain
        except _Expired:
            raise httpx.WriteTimeout("timed out while writing") from None
        finally:
            self._drain = None
            if handle is not None:
                handle.cancel()
        if self._closed:
            raise httpx.WriteError(_closed_message(self._error))

    def is_alive(self) -> bool:
        # Called only while idle: a close (or bytes) the event loop has not delivered yet
        # counts too, or a request would be written into a connection the server just closed.
        return not self._closed and not self.has_unread()

    def abort(self) -> None:
        transport = self._transport
        self._sink = _NULL_SINK
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if transport is not None:
            transport.abort()
        self._closed = True
        # A read or a drain in progress must end now: `_lost` ignores a stream already closed,
        # so nothing else would wake it (a request in flight during `aclose()` hung forever).
        waiter, drain = self._waiter, self._drain
        if waiter is not None and not waiter.done():
            waiter.set_exception(httpx.ReadError("the connection was closed"))
        if drain is not None and not drain.done():
            drain.set_result(None)  # `send` sees `_closed` and raises WriteError

    async def aclose(self) -> None:
        self.abort()


class _Expired(Exception):
    """A read or write waited past its timeout (private: mapped to httpx's timeouts)."""


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(_Expired())


def _closed_message(exc: BaseException | None) -> str:
    return "connection closed" if exc is None else str(exc) or type(exc).__name__


async def _connect_anyio(
    options: ConnectOptions,
    scheme: str,
    host: str,
    port: int,
    sni_hostname: str | None,
    alpn: list[str],
    seconds: float | None,
) -> NetworkStream:
    context = _ssl_for(options, scheme, alpn)
    stream: anyio.abc.ByteStream
    try:
        with anyio.fail_after(seconds):
            if options.uds is not None:
                raw: anyio.abc.SocketStream = await anyio.connect_unix(options.uds)
            else:
                raw = await anyio.connect_tcp(host, port, local_host=options.local_address)
            stream = raw
            try:
                _apply_socket_options(raw.extra(anyio.abc.SocketAttribute.raw_socket), options)
                if context is not None:
                    stream = await TLSStream.wrap(
                        raw,
                        hostname=sni_hostname or host,
                        ssl_context=context,
                        standard_compatible=False,
                    )
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await raw.aclose()
                raise
    except TimeoutError as exc:
        raise httpx.ConnectTimeout("timed out while connecting") from exc
    except (OSError, ssl.SSLError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
        raise _connect_error(exc) from exc
    alpn_chosen = stream.extra(TLSAttribute.alpn_protocol, None)
    ssl_object = stream.extra(TLSAttribute.ssl_object, None)
    sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    return AnyIOStream(stream, sock, alpn_chosen, ssl_object)


class AnyIOStream:
    """The portable path (trio, or asyncio when asked): reads with anyio, pushes into the sink."""

    __slots__ = ("_closed", "_sink", "_socket", "_ssl_object", "_stream", "alpn")

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        sock: socket.socket,
        alpn: str | None,
        ssl_object: ssl.SSLObject | None = None,
    ) -> None:
        self._stream = stream
        self._socket = sock
        self._sink: Sink = _NULL_SINK
        self._closed = False
        self._ssl_object = ssl_object
        self.alpn = alpn

    def set_sink(self, sink: Sink) -> None:
        self._sink = sink

    def pause_reading(self) -> None:
        pass  # pull-based: nothing is read unless asked for

    def resume_reading(self) -> None:
        pass

    async def receive(self, seconds: float | None) -> None:
        if self._closed:
            raise httpx.ReadError("connection closed")
        try:
            with anyio.fail_after(seconds):
                data = await self._stream.receive(_READ_SIZE)
        except TimeoutError:
            raise httpx.ReadTimeout("timed out while reading") from None
        except anyio.EndOfStream:
            self._closed = True
            self._sink.eof_received(None)
            return
        except (OSError, ssl.SSLError, anyio.BrokenResourceError) as exc:
            self._closed = True
            self._sink.eof_received(exc)
            return
        except anyio.ClosedResourceError as exc:
            self._closed = True
            self._sink.eof_received(exc)
            return
        self._sink.data_received(data)

    async def send(self, data: bytes, seconds: float | None) -> None:
        if self._closed:
            raise httpx.WriteError("connection closed")
        try:
            with anyio.fail_after(seconds):
                await self._stream.send(data)
        except TimeoutError:
            raise httpx.WriteTimeout("timed out while writing") from None
        except (
            OSError,
            ssl.SSLError,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
        ) as exc:
            # Reading may still find the server's answer (an early response): stay open.
            raise httpx.WriteError(str(exc) or type(exc).__name__) from exc

    def is_alive(self) -> bool:
        # Called only while idle: anything readable then (bytes or the end of the stream)
        # means the server closed the connection or broke the protocol. Over TLS that
        # includes what the TLS layer holds already: a read returns one TLS record, so the
        # records read from the socket with a response's last one wait there, and the socket
        # looks empty. They are handed to the sink (as a read would) and count as readable.
        if self._closed:
            return False
        if self._ssl_object is not None and self._deliver_buffered():
            return False
        return not _readable(self._socket)

    def _deliver_buffered(self) -> bool:
        """Hand the sink what the TLS layer can give without reading the socket; whether
        there was anything (bytes, or the end of the stream). Never blocks."""
        ssl_object = self._ssl_object
        assert ssl_object is not None
        delivered = False
        for _ in range(64):  # bounded: 64 records at most, then the caller reads as usual
            try:
                data = ssl_object.read(_READ_SIZE)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return delivered
            except (ssl.SSLError, OSError) as exc:  # close_notify, or a broken stream
                self._closed = True
                self._sink.eof_received(None if isinstance(exc, ssl.SSLZeroReturnError) else exc)
                return True
            if not data:
                self._closed = True
                self._sink.eof_received(None)
                return True
            self._sink.data_received(data)
            delivered = True
        return delivered

    def abort(self) -> None:
        # Closing the descriptor under anyio's stream could let the event loop watch a reused
        # one: shut the socket down now (the peer sees the close), release it in `aclose`.
        self._closed = True
        self._sink = _NULL_SINK
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)

    async def aclose(self) -> None:
        self._closed = True
        self._sink = _NULL_SINK
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(1.0),
            contextlib.suppress(Exception),
        ):
            await self._stream.aclose()
        with contextlib.suppress(OSError):
            self._socket.close()


def _readable(sock: socket.socket) -> bool:
    fd = sock.fileno()
    if fd < 0:
        return True
    if sys.platform == "win32" or not hasattr(select, "poll"):  # pragma: no cover
        readable, _, _ = select.select([fd], [], [], 0)
        return bool(readable)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))
