"""The connection pool: per-origin idle connections and FIFO waiters, O(1) per request, with
HTTP/1.1 connections (one request at a time) and HTTP/2 connections (many streams at once).

Bookkeeping (all of it synchronous, so no lock is needed on one event loop):

* ``_total``: connections that exist or are being opened; never above ``max_connections``.
* per origin, ``idle``: HTTP/1.1 connections that may take a request now, most recently used
  last (a request takes the warmest one; expiry and liveness are checked on that one only);
  ``shared``: HTTP/2 connections with room for another stream (`HTTP2Connection.capacity`);
  ``_idle_all``: connections carrying no request, across origins and protocols, oldest first, to
  close when another origin needs the slot or when more than ``max_keepalive_connections``
  would be idle.
* ``_waiters``: requests waiting for a connection slot, first come first served across
  origins, and the same waiters per origin. A released HTTP/1.1 connection goes to the first
  waiter when that one is for its origin (else it is closed, and its slot goes to the first
  waiter, who opens a new one); a stream freed on an HTTP/2 connection goes to the first
  waiter of its origin; a freed slot (a connection closed) to the first waiter of any origin.
* per origin, ``stream_waiters`` and ``pending``: requests waiting for a stream on an HTTP/2
  connection that is still being opened, and how many more streams the connections being
  opened are expected to take. While ``pending`` covers them, requests to an origin that may
  speak HTTP/2 wait for the connection being opened instead of each opening one (as hyper-util
  does, and httpcore, which waits for the first connection's ALPN answer). Expected is the
  origin's stream limit seen last (at first our own, 100; 1 for an origin that answered in
  HTTP/1.1), capped by its learned request limit. When the connection is up, its streams go to
  those waiters first; the ones it cannot take open connections of their own (or wait for a
  slot, at the back of the queue).

Every lease ends exactly once, whatever happens: the response ends, is closed early, the
request fails, or the caller is cancelled at any await (waiting for a slot or a stream,
connecting, TLS, the HTTP/2 preface, writing, reading the head or the body, closing). A waiter
granted a connection or a stream at the moment it is cancelled hands it on.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any, NamedTuple

import anyio
import anyio.lowlevel
import httpx

from .connect import AnyIOStream, ConnectOptions, connect, running_asyncio_loop
from .errors import not_processed
from .http2 import LOCAL_MAX_STREAMS, ConnectionUnavailable, HTTP2Connection
from .http11 import HTTP11Connection, make_parser

__all__ = ["ConnectionPool", "PoolStats"]

OriginKey = tuple[str, str, int]
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ALPN_HTTP11 = ["http/1.1"]
_ALPN_BOTH = ["h2", "http/1.1"]
_ALPN_HTTP2 = ["h2"]
#: How many origins' learned facts (stream limit, request limit) a pool remembers.
_ORIGIN_MEMORY = 1024

Connection = HTTP11Connection | HTTP2Connection


class PoolStats(NamedTuple):
    """A snapshot of a pool's counts."""

    connections: int  #: open or being opened
    idle: int  #: open and not carrying a request
    in_use: int  #: open (or opening) and carrying (or leased to) a request
    waiting: int  #: requests waiting for a connection or a stream


class _NewConnection:
    """The grant of a slot: the holder opens a connection in it. ``covers``: the streams
    beyond its own it is expected to carry (counted in the origin's ``pending``)."""

    __slots__ = ("covers",)

    def __init__(self, covers: int) -> None:
        self.covers = covers

    __repr__ = object.__repr__


_NEW = _NewConnection(0)
_Grant = HTTP11Connection | HTTP2Connection | _NewConnection


class _BoundedMemory(collections.OrderedDict[OriginKey, int]):
    """Per-origin facts, the most recently learned kept, at most ``_ORIGIN_MEMORY``."""

    def __setitem__(self, key: OriginKey, value: int) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        if len(self) > _ORIGIN_MEMORY:
            self.popitem(last=False)


class _Origin:
    __slots__ = ("idle", "pending", "shared", "stream_waiters", "waiters")

    def __init__(self) -> None:
        self.idle: collections.OrderedDict[HTTP11Connection, None] = collections.OrderedDict()
        self.shared: collections.OrderedDict[HTTP2Connection, None] = collections.OrderedDict()
        self.waiters: collections.OrderedDict[_Waiter, None] = collections.OrderedDict()
        self.stream_waiters: collections.OrderedDict[_Waiter, None] = collections.OrderedDict()
        self.pending = 0


class _Waiter:
    """A request waiting for a connection. asyncio: one future; elsewhere: an anyio Event."""

    __slots__ = ("_event", "_future", "for_stream", "key", "value")

    def __init__(self, key: OriginKey, loop: asyncio.AbstractEventLoop | None) -> None:
        self.key = key
        self.value: _Grant | None = None
        self.for_stream = False
        self._future: asyncio.Future[None] | None = None
        self._event: anyio.Event | None = None
        if loop is not None:
            self._future = loop.create_future()
        else:
            self._event = anyio.Event()

    def grant(self, value: _Grant) -> None:
        self.value = value
        if self._future is not None:
            if not self._future.done():
                self._future.set_result(None)
        else:
            assert self._event is not None
            self._event.set()

    async def wait(self, seconds: float | None) -> None:
        future = self._future
        if future is not None:
            loop = future.get_loop()
            handle = None if seconds is None else loop.call_later(seconds, _expire, future)
            try:
                await future
            finally:
                if handle is not None:
                    handle.cancel()
        else:
            assert self._event is not None
            try:
                with anyio.fail_after(seconds):
                    await self._event.wait()
            except TimeoutError:
                raise httpx.PoolTimeout("timed out waiting for a connection") from None


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(httpx.PoolTimeout("timed out waiting for a connection"))


class _StreamWait:
    """`_acquire`'s answer: wait for a stream on a connection being opened."""


_STREAM_WAIT = _StreamWait()


class ConnectionPool:
    """Connections to any number of origins under one ``max_connections``."""

    def __init__(
        self,
        options: ConnectOptions,
        *,
        max_connections: int | None,
        max_keepalive_connections: int | None,
        keepalive_expiry: float | None,
        parser: str,
        http1: bool = True,
        http2: bool = False,
        use_anyio: bool = False,
    ) -> None:
        self._options = options
        self._max_connections = max_connections if max_connections is not None else 1 << 62
        self._max_idle = (
            max_keepalive_connections if max_keepalive_connections is not None else 1 << 62
        )
        self._keepalive_expiry = keepalive_expiry
        self._parser = parser
        self._http1 = http1
        self._http2 = http2
        self._use_anyio = use_anyio
        self._origins: dict[OriginKey, _Origin] = {}
        self._idle_all: collections.OrderedDict[Connection, None] = collections.OrderedDict()
        self._waiters: collections.OrderedDict[_Waiter, None] = collections.OrderedDict()
        self._stream_waiting = 0
        self._open: set[Connection] = set()
        self._to_close: list[Connection] = []
        self._total = 0
        #: Requests per connection each origin's server accepts, learned from its GOAWAYs.
        self._request_limits: _BoundedMemory = _BoundedMemory()
        #: How many streams each origin's connections took at once (1: it spoke HTTP/1.1).
        self._origin_streams: _BoundedMemory = _BoundedMemory()

    # --- introspection ------------------------------------------------------------------------

    @property
    def stats(self) -> PoolStats:
        idle = len(self._idle_all)
        return PoolStats(
            self._total, idle, self._total - idle, len(self._waiters) + self._stream_waiting
        )

    # --- a request ------------------------------------------------------------------------------

    async def handle_request(
        self, request: httpx.Request, origin: tuple[str, str, int | None] | None = None
    ) -> httpx.Response:
        """Send ``request`` and read its response head. ``origin``: the request URL's
        ``(scheme, host, port)`` when the caller has them already (`ResilientTransport`
        reads them for its own per-origin state; three URL properties fewer per request)."""
        if origin is None:
            url = request.url
            scheme, host, port = url.scheme, url.host, url.port
        else:
            scheme, host, port = origin
        if scheme != "http" and scheme != "https":
            raise httpx.UnsupportedProtocol(
                f"Request URL has an unsupported protocol '{scheme}://'.", request=request
            )
        if not host:
            raise httpx.UnsupportedProtocol("Request URL is missing a host.", request=request)
        if not host.isascii():
            # ``url.host`` decodes an internationalized name ("faß.de"); connecting with it
            # would let Python's "idna" codec (IDNA 2003) encode it, into another domain
            # ("fass.de") for DNS, SNI and the certificate check. Use httpx's own encoding
            # (IDNA 2008, "xn--fa-hia.de"), as httpcore does.
            host = request.url.raw_host.decode("ascii")
        key = (scheme, host, port or _DEFAULT_PORTS[scheme])
        timeouts: dict[str, Any] = request.extensions.get("timeout") or {}
        loop = None if self._use_anyio else running_asyncio_loop()
        while True:
            if self._to_close:
                await self._close_pending()
            found = self._acquire(key)
            if found is None or isinstance(found, _StreamWait):
                grant = await self._wait(key, timeouts.get("pool"), loop, found is _STREAM_WAIT)
            else:
                grant = found
            conn: Connection
            fresh = isinstance(grant, _NewConnection)
            if isinstance(grant, _NewConnection):
                conn = await self._open_connection(key, grant, request, timeouts, loop)
            else:
                conn = grant
            if type(conn) is HTTP11Connection:
                try:
                    return await conn.handle(request, timeouts)
                except BaseException:
                    conn.close()
                    self._release(conn)
                    raise
            assert isinstance(conn, HTTP2Connection)
            try:
                # The connection ends the lease itself, on every path.
                return await conn.handle(request, timeouts)
            except ConnectionUnavailable:
                if not fresh:
                    continue  # nothing was sent: the connection is done for; place it again
            # The connection opened for this request took no stream (a GOAWAY with the
            # server's preface: a server being drained). Opening another at once could loop
            # for ever; the transport's bounded, backed-off resend of requests not processed
            # decides instead. (Raised out of the ``except``: its cause is the
            # `StreamNotProcessed` it carries.)
            if loop is not None:
                # asyncio closes the aborted socket in a callback: let it run now, or a caller
                # that blocks next (a test server's shutdown) keeps it open.
                await anyio.lowlevel.checkpoint()
            raise not_processed(
                f"the new HTTP/2 connection to {host}:{key[2]} took no request "
                "(the server sent GOAWAY at once): not processed"
            )

    def _acquire(self, key: OriginKey) -> _Grant | _StreamWait | None:
        """A connection, a slot for a new one, `_STREAM_WAIT`, or None: wait for a slot."""
        origin = self._origins.get(key)
        if origin is not None:
            if origin.shared:
                h2conn = self._take_stream(origin)
                if h2conn is not None:
                    return h2conn
            idle = origin.idle
            if idle:
                now = time.monotonic()
                while idle:
                    conn, _ = idle.popitem()
                    del self._idle_all[conn]
                    if conn.is_reusable(now):
                        conn.leased = True
                        self._forget(key, origin)
                        return conn
                    self._discard(conn)
                    self._total -= 1
                self._forget(key, origin)
            if origin.pending > len(origin.stream_waiters):
                return _STREAM_WAIT
        if self._waiters:
            return None  # first come, first served
        if self._total < self._max_connections:
            self._total += 1
            return self._new_grant(key)
        if self._idle_all:
            # Full, but a connection idles (another origin's, or a stale one): replace it.
            self._close_idle(next(iter(self._idle_all)))
            return self._new_grant(key)
        return None

    def _take_stream(self, origin: _Origin) -> HTTP2Connection | None:
        """A stream on one of the origin's HTTP/2 connections, or None. Amortised O(1): a
        connection found full or done for leaves ``shared`` and is not looked at again."""
        shared = origin.shared
        while shared:
            conn = next(iter(shared))
            if conn.leases == 0 and not conn.is_reusable(time.monotonic()):
                self._close_idle(conn)
                self._total -= 1
                continue
            if conn.capacity > 0:
                self._lease_stream(conn, origin)
                return conn
            if conn.leases == 0:
                # Idle, and the server allows no stream now (SETTINGS_MAX_CONCURRENT_STREAMS
                # = 0, a pause): close it like one that cannot be reused, or it would idle
                # outside ``shared`` for ever, counted in the total.
                self._close_idle(conn)
                self._total -= 1
                continue
            del shared[conn]
        return None

    def _lease_stream(self, conn: HTTP2Connection, origin: _Origin) -> None:
        if conn.leases == 0:
            self._idle_all.pop(conn, None)
        conn.leases += 1
        conn.placed += 1
        if conn.capacity <= 0:
            origin.shared.pop(conn, None)

    def _expected_streams(self, key: OriginKey) -> int:
        """How many requests a new connection to ``key`` is expected to carry at once."""
        if not self._http2 or (key[0] == "http" and self._http1):
            return 1
        expected = self._origin_streams.get(key, LOCAL_MAX_STREAMS)
        limit = self._request_limits.get(key)
        if limit is not None:
            expected = min(expected, limit)
        return max(expected, 1)

    def _new_grant(self, key: OriginKey) -> _NewConnection:
        covers = self._expected_streams(key) - 1
        if covers <= 0:
            return _NEW
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin()
        origin.pending += covers
        return _NewConnection(covers)

    async def _wait(
        self,
        key: OriginKey,
        seconds: float | None,
        loop: asyncio.AbstractEventLoop | None,
        for_stream: bool,
    ) -> _Grant:
        waiter = _Waiter(key, loop)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin()
        if for_stream:
            waiter.for_stream = True
            origin.stream_waiters[waiter] = None
            self._stream_waiting += 1
        else:
            origin.waiters[waiter] = None
            self._waiters[waiter] = None
        try:
            await waiter.wait(seconds)
        except BaseException:
            value = waiter.value
            if value is None:
                self._unqueue(waiter)
            elif isinstance(value, _NewConnection):
                self._connect_failed(key, value)
            else:
                self._give_back(value)
            raise
        value = waiter.value
        assert value is not None
        return value

    def _unqueue(self, waiter: _Waiter) -> None:
        origin = self._origins[waiter.key]
        if waiter.for_stream:
            del origin.stream_waiters[waiter]
            self._stream_waiting -= 1
        else:
            del self._waiters[waiter]
            del origin.waiters[waiter]
        self._forget(waiter.key, origin)

    async def _open_connection(
        self,
        key: OriginKey,
        grant: _NewConnection,
        request: httpx.Request,
        timeouts: dict[str, Any],
        loop: asyncio.AbstractEventLoop | None,
    ) -> Connection:
        try:
            conn = await self._connect(key, request, timeouts, loop)
        except BaseException:
            self._connect_failed(key, grant)
            raise
        origin = self._origins.get(key)
        if grant.covers:
            assert origin is not None
            origin.pending -= grant.covers
        self._open.add(conn)
        if isinstance(conn, HTTP2Connection):
            self._origin_streams[key] = conn.max_streams
            if origin is None:
                origin = self._origins[key] = _Origin()
            conn.leases = conn.placed = 1  # this request's stream
            self._serve(conn, origin)
            if conn.capacity > 0:
                origin.shared[conn] = None
        else:
            if self._http2:
                self._origin_streams[key] = 1
            conn.leased = True
        if origin is not None:
            self._reroute(key, origin)
            self._forget(key, origin)
        return conn

    def _connect_failed(self, key: OriginKey, grant: _NewConnection) -> None:
        """A slot granted for a new connection went unused (connect failed, or cancelled)."""
        origin = self._origins.get(key)
        if grant.covers and origin is not None:
            origin.pending -= grant.covers
        self._slot_freed()
        origin = self._origins.get(key)
        if origin is not None:
            self._reroute(key, origin)
            self._forget(key, origin)

    async def _connect(
        self,
        key: OriginKey,
        request: httpx.Request,
        timeouts: dict[str, Any],
        loop: asyncio.AbstractEventLoop | None,
    ) -> Connection:
        scheme, host, port = key
        sni = request.extensions.get("sni_hostname")
        if not self._http2:
            alpn = _ALPN_HTTP11
        elif not self._http1:
            alpn = _ALPN_HTTP2
        else:
            alpn = _ALPN_BOTH
        stream = await connect(
            self._options,
            scheme=scheme,
            host=host,
            port=port,
            sni_hostname=sni if isinstance(sni, str) else None,
            alpn=alpn,
            seconds=timeouts.get("connect"),
            use_asyncio=loop is not None,
        )
        # HTTP/2 when ALPN says so, or by prior knowledge when HTTP/1.1 is off (h2c over
        # http://), as httpx's own transport decides.
        if stream.alpn == "h2" or (self._http2 and not self._http1):
            try:
                conn = HTTP2Connection(
                    stream,
                    key,
                    self._keepalive_expiry,
                    self._release_stream,
                    self._request_limits,
                    self._stream_limit_raised,
                )
                await conn.start(timeouts.get("read"))
            except BaseException as exc:
                stream.abort()
                if isinstance(stream, AnyIOStream):
                    with anyio.CancelScope(shield=True):
                        await stream.aclose()
                elif isinstance(exc, Exception):
                    # asyncio closes an aborted socket in a callback: let it run now, or a
                    # caller that blocks next (a test server's shutdown) keeps it open.
                    await anyio.lowlevel.checkpoint()
                raise
            return conn
        if stream.alpn not in (None, "http/1.1"):
            await stream.aclose()
            raise httpx.ConnectError(
                f"the server chose {stream.alpn!r} by ALPN; this connection speaks HTTP/1.1 only"
            )
        return HTTP11Connection(
            stream, make_parser(self._parser), key, self._keepalive_expiry, self._release
        )

    # --- giving back -----------------------------------------------------------------------------

    def _give_back(self, conn: Connection) -> None:
        """End a lease that was granted but never used (the waiter was cancelled)."""
        if isinstance(conn, HTTP2Connection):
            self._release_stream(conn)
        else:
            self._release(conn)

    def _release(self, conn: HTTP11Connection) -> None:
        """The end of an HTTP/1.1 lease (called exactly once per lease; later calls do
        nothing)."""
        if not conn.leased:
            return
        conn.leased = False
        origin = self._origins.get(conn.key)
        if conn.capacity <= 0:
            self._discard(conn)
            self._slot_freed()
            return
        if origin is not None and (
            origin.stream_waiters
            # First come, first served across origins: the connection goes to its origin's
            # first waiter only if no request for another origin has waited longer, or a
            # busy origin would starve every other one.
            or (origin.waiters and next(iter(self._waiters)).key == conn.key)
        ):
            waiter = self._pop_waiter(origin)
            self._forget(conn.key, origin)
            conn.leased = True
            waiter.grant(conn)
            return
        if self._waiters:
            # The first request waiting is for another origin: this connection makes room.
            self._discard(conn)
            self._grant_new()
            return
        if len(self._idle_all) >= self._max_idle:
            self._discard(conn)
            self._total -= 1
            return
        if origin is None:
            origin = self._origins[conn.key] = _Origin()
        origin.idle[conn] = None
        self._idle_all[conn] = None
        self._expire_oldest()

    def _release_stream(self, conn: HTTP2Connection) -> None:
        """The end of a stream's lease on an HTTP/2 connection (called once per lease)."""
        conn.leases -= 1
        key = conn.key
        origin = self._origins.get(key)
        if not conn.usable:
            if origin is not None:
                origin.shared.pop(conn, None)
                self._forget(key, origin)
            if conn.leases == 0:
                self._discard(conn)
                self._slot_freed()
            return
        if origin is None:
            origin = self._origins[key] = _Origin()
        if origin.stream_waiters or origin.waiters:
            self._serve(conn, origin)
        capacity = conn.capacity
        if capacity > 0:
            origin.shared[conn] = None
        if conn.leases == 0:
            if capacity <= 0:  # its learned request limit is used up
                origin.shared.pop(conn, None)
                self._discard(conn)
                self._forget(key, origin)
                self._slot_freed()
                return
            if self._waiters:
                origin.shared.pop(conn, None)
                self._discard(conn)
                self._forget(key, origin)
                self._grant_new()
                return
            if len(self._idle_all) >= self._max_idle:
                origin.shared.pop(conn, None)
                self._discard(conn)
                self._forget(key, origin)
                self._total -= 1
                return
            conn.went_idle()
            self._idle_all[conn] = None
            self._expire_oldest()
        if capacity <= 0:  # else the origin keeps it in ``shared``
            self._forget(key, origin)

    def _stream_limit_raised(self, conn: HTTP2Connection) -> None:
        """The server raised MAX_CONCURRENT_STREAMS (SETTINGS) on an open connection: its new
        room goes to the origin's waiters first (FIFO), the rest back to ``shared``."""
        if conn not in self._open or conn.capacity <= 0:
            return
        key = conn.key
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin()
        self._origin_streams[key] = conn.max_streams
        self._serve(conn, origin)
        if conn.capacity > 0:
            origin.shared[conn] = None
        self._forget(key, origin)

    def _serve(self, conn: HTTP2Connection, origin: _Origin) -> None:
        """Give the connection's free streams to the origin's waiters, oldest first."""
        while (origin.stream_waiters or origin.waiters) and conn.capacity > 0:
            waiter = self._pop_waiter(origin)
            self._lease_stream(conn, origin)
            waiter.grant(conn)

    def _pop_waiter(self, origin: _Origin) -> _Waiter:
        if origin.stream_waiters:
            waiter, _ = origin.stream_waiters.popitem(last=False)
            self._stream_waiting -= 1
            return waiter
        waiter, _ = origin.waiters.popitem(last=False)
        del self._waiters[waiter]
        return waiter

    def _reroute(self, key: OriginKey, origin: _Origin) -> None:
        """Requests waiting for streams that the connections being opened will not carry
        (fewer than expected, HTTP/1.1, or a failure): the newest ones, in their order, open
        connections of their own, or else join the queue for a slot (at its back)."""
        waiting = origin.stream_waiters
        excess = len(waiting) - origin.pending
        if excess <= 0:
            return
        batch = [waiting.popitem()[0] for _ in range(excess)]
        batch.reverse()
        self._stream_waiting -= excess
        for waiter in batch:
            if len(waiting) < origin.pending:
                # Covered again, by a connection granted to an earlier one of the batch.
                waiting[waiter] = None
                self._stream_waiting += 1
            elif self._total < self._max_connections:
                self._total += 1
                waiter.grant(self._new_grant(key))
            elif self._idle_all:
                self._close_idle(next(iter(self._idle_all)))
                waiter.grant(self._new_grant(key))
            else:
                waiter.for_stream = False
                origin.waiters[waiter] = None
                self._waiters[waiter] = None

    def _slot_freed(self) -> None:
        self._total -= 1
        if self._waiters:
            self._total += 1
            self._grant_new()

    def _grant_new(self) -> None:
        waiter, _ = self._waiters.popitem(last=False)
        origin = self._origins[waiter.key]
        del origin.waiters[waiter]
        waiter.grant(self._new_grant(waiter.key))
        self._forget(waiter.key, origin)

    def _close_idle(self, conn: Connection) -> None:
        """Close a connection that carries no request; its slot is the caller's to reuse."""
        del self._idle_all[conn]
        origin = self._origins.get(conn.key)
        if origin is not None:
            if isinstance(conn, HTTP2Connection):
                origin.shared.pop(conn, None)
            else:
                origin.idle.pop(conn, None)
            self._forget(conn.key, origin)
        self._discard(conn)

    def _expire_oldest(self) -> None:
        """Close the oldest idle connection if it has expired: O(1), and over time it keeps
        expired connections from lingering behind warmer ones."""
        conn = next(iter(self._idle_all))
        if conn.expires_at <= time.monotonic():
            self._close_idle(conn)
            self._total -= 1

    def _forget(self, key: OriginKey, origin: _Origin) -> None:
        if (
            not origin.idle
            and not origin.waiters
            and not origin.shared
            and not origin.stream_waiters
            and not origin.pending
        ):
            self._origins.pop(key, None)

    def _discard(self, conn: Connection) -> None:
        conn.close()
        self._open.discard(conn)
        if isinstance(conn.stream, AnyIOStream):
            self._to_close.append(conn)  # its socket is shut down; release it with an await

    async def _close_pending(self) -> None:
        pending, self._to_close = self._to_close, []
        for conn in pending:
            await conn.aclose()

    async def aclose(self) -> None:
        """Close every connection. Requests still running fail; the pool stays usable."""
        on_asyncio = any(not isinstance(conn.stream, AnyIOStream) for conn in self._open)
        for conn in list(self._idle_all):
            self._discard(conn)
            self._total -= 1
        self._idle_all.clear()
        for key, origin in list(self._origins.items()):
            origin.idle.clear()
            origin.shared.clear()
            self._forget(key, origin)
        for conn in list(self._open):
            self._open.discard(conn)
            conn.close()
            if isinstance(conn.stream, AnyIOStream):
                self._to_close.append(conn)
        await self._close_pending()
        if on_asyncio:
            # asyncio closes aborted sockets in callbacks (everything else is closed by now):
            # let them run before returning.
            await anyio.lowlevel.checkpoint()
