"""The connection pool under `ResilientTransport`: httpcore's, with HTTP/2 connections that know
when a request was not processed (`_http2.py`) and that respect the server's stream limit.

httpcore's pool places every queued request on the first available HTTP/2 connection, however
many streams that connection may carry; requests beyond the server's ``MAX_CONCURRENT_STREAMS``
then wait there for a slot while the pool could have opened another connection. This pool counts
the requests it placed on each connection and opens another connection (up to
``max_connections``) once one is full.

Only direct connections are built this way; with a ``proxy`` the transport keeps httpx's own
pool (and so httpcore's proxy connections).
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

import httpx
from httpcore import AsyncConnectionInterface, AsyncConnectionPool, Origin
from httpcore._async.connection import AsyncHTTPConnection
from httpcore._async.http11 import AsyncHTTP11Connection

from ._http2 import LOCAL_MAX_STREAMS, OriginKey, ResilientHTTP2Connection, origin_key

if TYPE_CHECKING:
    from httpcore import Request, Response

__all__ = ["ResilientConnectionPool", "build_http_transport"]


def build_http_transport(**options: Any) -> httpx.AsyncHTTPTransport:
    """An `httpx.AsyncHTTPTransport` built from httpx's own options, whose pool (for direct
    connections) is a `ResilientConnectionPool` with the same settings."""
    transport = httpx.AsyncHTTPTransport(**options)
    pool = transport._pool
    if type(pool) is AsyncConnectionPool:  # not a proxy
        limits: httpx.Limits = options["limits"]
        transport._pool = ResilientConnectionPool(
            ssl_context=pool._ssl_context,  # the context httpx built from verify/cert/trust_env
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=options["http1"],
            http2=options["http2"],
            uds=options["uds"],
            local_address=options["local_address"],
            retries=options["retries"],
            socket_options=options["socket_options"],
        )
    return transport


class ResilientConnectionPool(AsyncConnectionPool):
    """`httpcore.AsyncConnectionPool` whose connections are `_HTTPConnection` and whose request
    placement respects each HTTP/2 connection's stream capacity."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Requests per connection each origin's server accepts, learned from its GOAWAYs.
        self._request_limits: dict[OriginKey, int] = {}

    def create_connection(self, origin: Origin) -> AsyncConnectionInterface:
        return _HTTPConnection(
            self._request_limits,
            origin=origin,
            ssl_context=self._ssl_context,
            keepalive_expiry=self._keepalive_expiry,
            http1=self._http1,
            http2=self._http2,
            retries=self._retries,
            local_address=self._local_address,
            uds=self._uds,
            network_backend=self._network_backend,
            socket_options=self._socket_options,
        )

    def _assign_requests_to_connections(self) -> list[AsyncConnectionInterface]:
        # httpcore's algorithm (close what is closed, expired or surplus idle; then place each
        # queued request on an available connection, a new one, or one that replaces an idle
        # connection), plus: a connection is full once it carries `stream_capacity` requests.
        closing: list[AsyncConnectionInterface] = []
        connections = self._connections
        idle_count = sum(1 for connection in connections if connection.is_idle())
        for connection in list(connections):
            if connection.is_closed():
                connections.remove(connection)
            elif connection.has_expired():
                connections.remove(connection)
                closing.append(connection)
            elif connection.is_idle() and idle_count > self._max_keepalive_connections:
                connections.remove(connection)
                closing.append(connection)
                idle_count -= 1

        load: collections.Counter[int] = collections.Counter()
        queued = []
        for pool_request in self._requests:
            if pool_request.connection is None:
                queued.append(pool_request)
            else:
                load[id(pool_request.connection)] += 1

        for pool_request in queued:
            origin = pool_request.request.url.origin
            chosen = None
            for connection in connections:
                if (
                    connection.can_handle_request(origin)
                    and connection.is_available()
                    and load[id(connection)] < _capacity(connection)
                ):
                    chosen = connection
                    break
            if chosen is None:
                if len(connections) >= self._max_connections:
                    idle = next((c for c in connections if c.is_idle()), None)
                    if idle is None:
                        continue  # stays queued until a connection frees up
                    connections.remove(idle)
                    closing.append(idle)
                chosen = self.create_connection(origin)
                connections.append(chosen)
            pool_request.assign_to_connection(chosen)
            load[id(chosen)] += 1
        return closing


def _capacity(connection: AsyncConnectionInterface) -> int:
    if isinstance(connection, _HTTPConnection):
        return connection.stream_capacity
    return 1  # pragma: no cover - this pool only creates _HTTPConnection


class _HTTPConnection(AsyncHTTPConnection):
    """httpcore's connection (connect, TLS, ALPN), speaking HTTP/2 through
    `ResilientHTTP2Connection`."""

    def __init__(self, request_limits: dict[OriginKey, int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._request_limits = request_limits

    @property
    def stream_capacity(self) -> int:
        inner = self._connection
        if isinstance(inner, ResilientHTTP2Connection):
            return inner.stream_capacity
        if inner is None and self.is_available():
            # Still connecting, and may well become HTTP/2.
            return min(
                LOCAL_MAX_STREAMS,
                self._request_limits.get(origin_key(self._origin), LOCAL_MAX_STREAMS),
            )
        return 1

    async def handle_async_request(self, request: Request) -> Response:
        if not self.can_handle_request(request.url.origin):  # pragma: no cover - pool guards
            raise RuntimeError(
                f"Attempted to send request to {request.url.origin} on connection to {self._origin}"
            )
        try:
            async with self._request_lock:
                if self._connection is None:
                    stream = await self._connect(request)
                    ssl_object = stream.get_extra_info("ssl_object")
                    http2_negotiated = (
                        ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"
                    )
                    if http2_negotiated or (self._http2 and not self._http1):
                        self._connection = ResilientHTTP2Connection(
                            self._origin,
                            stream,
                            self._keepalive_expiry,
                            request_limits=self._request_limits,
                        )
                    else:
                        self._connection = AsyncHTTP11Connection(
                            origin=self._origin,
                            stream=stream,
                            keepalive_expiry=self._keepalive_expiry,
                        )
        except BaseException:
            self._connect_failed = True
            raise
        return await self._connection.handle_async_request(request)
