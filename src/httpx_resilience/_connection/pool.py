"""The connection pool: per-origin idle connections and FIFO waiters, O(1) per request.

Bookkeeping (all of it synchronous, so no lock is needed on one event loop):

* ``_total``: connections that exist or are being opened; never above ``max_connections``.
* per origin, ``idle``: connections that may take a request now, most recently used last (a
  request takes the warmest one; expiry and liveness are checked on that one only);
  ``_idle_all``: the same connections across origins, oldest first, to close when another
  origin needs the slot or when more than ``max_keepalive_connections`` would be idle.
* ``_waiters``: requests waiting for a connection, first come first served across origins, and
  the same waiters per origin. A released connection goes to the first waiter of its origin;
  a freed slot (a connection closed) to the first waiter of any origin, who opens a new one.

Every lease ends in `_release` exactly once, whatever happens: the response ends, is closed early,
the request fails, or the caller is cancelled at any await (waiting for a slot, connecting, TLS,
writing, reading the head or the body, closing). A waiter granted a connection at the moment it
is cancelled hands it on.

A connection says how many more requests it may take (``capacity``); HTTP/1.1 connections take
one. HTTP/2 connections (stream capacity, per-origin learned request limits) are meant to plug in
here by reporting a larger capacity and staying in ``idle`` while they have some.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any, NamedTuple

import anyio
import httpx
import sniffio

from .connect import AnyIOStream, ConnectOptions, connect
from .http11 import HTTP11Connection, make_parser

__all__ = ["ConnectionPool", "PoolStats"]

OriginKey = tuple[str, str, int]
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ALPN_HTTP11 = ["http/1.1"]


class PoolStats(NamedTuple):
    """A snapshot of a pool's counts."""

    connections: int  #: open or being opened
    idle: int  #: open and not carrying a request
    in_use: int  #: open (or opening) and leased to a request
    waiting: int  #: requests waiting for a connection


class _NewConnection:
    """The grant of a slot: the holder opens a connection in it."""

    __repr__ = object.__repr__


_NEW = _NewConnection()
_Grant = HTTP11Connection | _NewConnection


class _Origin:
    __slots__ = ("idle", "waiters")

    def __init__(self) -> None:
        self.idle: collections.OrderedDict[HTTP11Connection, None] = collections.OrderedDict()
        self.waiters: collections.OrderedDict[_Waiter, None] = collections.OrderedDict()


class _Waiter:
    """A request waiting for a connection. asyncio: one future; elsewhere: an anyio Event."""

    __slots__ = ("_event", "_future", "key", "value")

    def __init__(self, key: OriginKey, loop: asyncio.AbstractEventLoop | None) -> None:
        self.key = key
        self.value: _Grant | None = None
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
        use_anyio: bool = False,
    ) -> None:
        self._options = options
        self._max_connections = max_connections if max_connections is not None else 1 << 62
        self._max_idle = (
            max_keepalive_connections if max_keepalive_connections is not None else 1 << 62
        )
        self._keepalive_expiry = keepalive_expiry
        self._parser = parser
        self._use_anyio = use_anyio
        self._origins: dict[OriginKey, _Origin] = {}
        self._idle_all: collections.OrderedDict[HTTP11Connection, None] = collections.OrderedDict()
        self._waiters: collections.OrderedDict[_Waiter, None] = collections.OrderedDict()
        self._open: set[HTTP11Connection] = set()
        self._to_close: list[HTTP11Connection] = []
        self._total = 0

    # --- introspection ------------------------------------------------------------------------

    @property
    def stats(self) -> PoolStats:
        idle = len(self._idle_all)
        return PoolStats(self._total, idle, self._total - idle, len(self._waiters))

    # --- a request ------------------------------------------------------------------------------

    async def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        if scheme != "http" and scheme != "https":
            raise httpx.UnsupportedProtocol(
                f"Request URL has an unsupported protocol '{scheme}://'.", request=request
            )
        host = url.host
        if not host:
            raise httpx.UnsupportedProtocol("Request URL is missing a host.", request=request)
        port = url.port or _DEFAULT_PORTS[scheme]
        key = (scheme, host, port)
        timeouts: dict[str, Any] = request.extensions.get("timeout") or {}
        loop = None
        if not self._use_anyio and sniffio.current_async_library() == "asyncio":
            loop = asyncio.get_running_loop()
        if self._to_close:
            await self._close_pending()
        grant = self._acquire(key)
        if grant is None:
            grant = await self._wait(key, timeouts.get("pool"), loop)
        if grant is _NEW:
            try:
                conn = await self._connect(key, request, timeouts, loop)
            except BaseException:
                self._slot_freed()
                raise
        else:
            assert isinstance(grant, HTTP11Connection)
            conn = grant
        try:
            return await conn.handle(request, timeouts)
        except BaseException:
            conn.close()
            self._release(conn)
            raise

    def _acquire(self, key: OriginKey) -> _Grant | None:
        """A connection, a slot for a new one, or None: wait."""
        origin = self._origins.get(key)
        if origin is not None and origin.idle:
            idle = origin.idle
            now = time.monotonic()
            while idle:
                conn, _ = idle.popitem()
                del self._idle_all[conn]
                if conn.is_reusable(now):
                    conn.leased = True
                    if not idle and not origin.waiters:
                        del self._origins[key]
                    return conn
                self._discard(conn)
                self._total -= 1
            self._forget(key, origin)
        if self._waiters:
            return None  # first come, first served
        if self._total < self._max_connections:
            self._total += 1
            return _NEW
        if self._idle_all:
            # Full, but another origin has an idle connection: replace it.
            conn, _ = self._idle_all.popitem(last=False)
            other = self._origins[conn.key]
            del other.idle[conn]
            self._forget(conn.key, other)
            self._discard(conn)
            return _NEW
        return None

    async def _wait(
        self, key: OriginKey, seconds: float | None, loop: asyncio.AbstractEventLoop | None
    ) -> _Grant:
        waiter = _Waiter(key, loop)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin()
        origin.waiters[waiter] = None
        self._waiters[waiter] = None
        try:
            await waiter.wait(seconds)
        except BaseException:
            value = waiter.value
            if value is None:
                del self._waiters[waiter]
                del origin.waiters[waiter]
                self._forget(key, origin)
            elif value is _NEW:
                self._slot_freed()
            else:
                assert isinstance(value, HTTP11Connection)
                self._release(value)
            raise
        value = waiter.value
        assert value is not None
        return value

    async def _connect(
        self,
        key: OriginKey,
        request: httpx.Request,
        timeouts: dict[str, Any],
        loop: asyncio.AbstractEventLoop | None,
    ) -> HTTP11Connection:
        scheme, host, port = key
        sni = request.extensions.get("sni_hostname")
        stream = await connect(
            self._options,
            scheme=scheme,
            host=host,
            port=port,
            sni_hostname=sni if isinstance(sni, str) else None,
            alpn=_ALPN_HTTP11,
            seconds=timeouts.get("connect"),
            use_asyncio=loop is not None,
        )
        if stream.alpn not in (None, "http/1.1"):
            await stream.aclose()
            raise httpx.ConnectError(
                f"the server chose {stream.alpn!r} by ALPN; this connection speaks HTTP/1.1 only"
            )
        conn = HTTP11Connection(
            stream, make_parser(self._parser), key, self._keepalive_expiry, self._release
        )
        conn.leased = True
        self._open.add(conn)
        return conn

    # --- giving back -----------------------------------------------------------------------------

    def _release(self, conn: HTTP11Connection) -> None:
        """The end of a lease (called exactly once per lease; later calls do nothing)."""
        if not conn.leased:
            return
        conn.leased = False
        origin = self._origins.get(conn.key)
        if conn.capacity <= 0:
            self._discard(conn)
            self._slot_freed()
            return
        if origin is not None and origin.waiters:
            waiter, _ = origin.waiters.popitem(last=False)
            del self._waiters[waiter]
            self._forget(conn.key, origin)
            conn.leased = True
            waiter.grant(conn)
            return
        if self._waiters:
            # Requests for other origins wait for a slot: this connection makes room.
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

    def _slot_freed(self) -> None:
        self._total -= 1
        if self._waiters:
            self._total += 1
            self._grant_new()

    def _grant_new(self) -> None:
        waiter, _ = self._waiters.popitem(last=False)
        origin = self._origins[waiter.key]
        del origin.waiters[waiter]
        self._forget(waiter.key, origin)
        waiter.grant(_NEW)

    def _expire_oldest(self) -> None:
        """Close the oldest idle connection if it has expired: O(1), and over time it keeps
        expired connections from lingering behind warmer ones."""
        conn = next(iter(self._idle_all))
        if conn.expires_at <= time.monotonic():
            del self._idle_all[conn]
            origin = self._origins[conn.key]
            del origin.idle[conn]
            self._discard(conn)
            self._total -= 1
            self._forget(conn.key, origin)

    def _forget(self, key: OriginKey, origin: _Origin) -> None:
        if not origin.idle and not origin.waiters:
            self._origins.pop(key, None)

    def _discard(self, conn: HTTP11Connection) -> None:
        conn.close()
        self._open.discard(conn)
        if isinstance(conn._stream, AnyIOStream):
            self._to_close.append(conn)  # its socket is shut down; release it with an await

    async def _close_pending(self) -> None:
        pending, self._to_close = self._to_close, []
        for conn in pending:
            await conn.aclose()

    async def aclose(self) -> None:
        """Close every connection. Requests still running fail; the pool stays usable."""
        for conn in list(self._idle_all):
            self._discard(conn)
            self._total -= 1
        self._idle_all.clear()
        for key, origin in list(self._origins.items()):
            origin.idle.clear()
            self._forget(key, origin)
        for conn in list(self._open):
            conn.close()
            self._open.discard(conn)
            if isinstance(conn._stream, AnyIOStream):
                self._to_close.append(conn)
        await self._close_pending()
