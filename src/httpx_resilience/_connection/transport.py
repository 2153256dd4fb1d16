"""`AsyncConnectionPoolTransport`: this package's connection layer behind httpx's transport API.

A drop-in for `httpx.AsyncHTTPTransport` (the same keyword arguments). Requests to direct
origins go through this package's pool (`pool.py`), HTTP/1.1 connections (`http11.py`) and
HTTP/2 connections (`http2.py`). Proxied requests (``proxy=...``) go through httpx's own
`httpx.AsyncHTTPTransport` (its public API; httpcore's proxy connections underneath).
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import TypeAlias

import httpx

from .._validate import check_bool, check_number, check_optional_str, check_type
from .connect import ConnectOptions, SocketOption
from .http11 import PARSERS, default_parser
from .pool import ConnectionPool, PoolStats

__all__ = ["DEFAULT_LIMITS", "AsyncConnectionPoolTransport", "build_transport", "direct_send"]

#: httpx's default pool limits (the same values as httpx's own default).
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)

CertTypes: TypeAlias = str | tuple[str, str] | tuple[str, str, str]
ProxyTypes: TypeAlias = str | httpx.URL | httpx.Proxy


def check_connection_options(
    owner: str,
    *,
    verify: object,
    cert: object,
    proxy: object,
    trust_env: object,
    http1: object,
    http2: object,
    limits: object,
    uds: object,
    local_address: object,
    retries: object,
    socket_options: object,
) -> None:
    """The checks of `httpx.AsyncHTTPTransport`'s keyword arguments, shared by every class
    that takes them: TypeError/ValueError naming ``owner``, the argument and the allowed
    values."""
    check_type(owner, "verify", verify, (ssl.SSLContext, str, bool),
               "True, False, a CA bundle path or an ssl.SSLContext")  # fmt: skip
    # Their values are not shown: a cert list may hold the key's password, a proxy given
    # as a dict or an object its credentials.
    if not isinstance(cert, (str, tuple, type(None))):
        raise TypeError(
            f"{owner}.cert must be a certificate file path, a (cert, key[, password]) tuple or "
            f"None, got {type(cert).__name__} (value not shown)"
        )
    if not isinstance(proxy, (str, httpx.URL, httpx.Proxy, type(None))):
        raise TypeError(
            f"{owner}.proxy must be a proxy URL, an httpx.Proxy or None, "
            f"got {type(proxy).__name__} (value not shown)"
        )
    for name, flag in (("trust_env", trust_env), ("http1", http1), ("http2", http2)):
        check_bool(owner, name, flag)
    if http1 is False and http2 is False:
        raise ValueError(f"{owner}: http1 and http2 cannot both be False")
    check_type(owner, "limits", limits, httpx.Limits, "an httpx.Limits")
    assert isinstance(limits, httpx.Limits)
    check_number(owner, "limits.max_connections", limits.max_connections, minimum=1,
                 integer=True, allow_none=True)  # fmt: skip
    check_number(owner, "limits.max_keepalive_connections", limits.max_keepalive_connections,
                 integer=True, allow_none=True)  # fmt: skip
    check_number(owner, "limits.keepalive_expiry", limits.keepalive_expiry, allow_none=True)
    check_optional_str(owner, "uds", uds)
    check_optional_str(owner, "local_address", local_address)
    check_number(owner, "retries", retries, integer=True)
    if socket_options is not None and (
        isinstance(socket_options, (str, bytes)) or not isinstance(socket_options, Iterable)
    ):
        raise TypeError(
            f"{owner}.socket_options must be a list of socket options or None, "
            f"got {type(socket_options).__name__}"
        )


def _check_parser(parser: str | None) -> None:
    if parser is not None and parser not in PARSERS:
        raise ValueError(
            f"AsyncConnectionPoolTransport.http1_parser must be one of "
            f"{', '.join(repr(p) for p in PARSERS)} or None, got {parser!r}"
        )


class AsyncConnectionPoolTransport(httpx.AsyncBaseTransport):
    """An `httpx.AsyncHTTPTransport` replacement whose connection pool is this package's own:
    O(1) per request, FIFO among waiting requests, HTTP/2 streams multiplexed up to each
    connection's limit, and every cancellation gives its stream and connection slot back.

    Takes `httpx.AsyncHTTPTransport`'s keyword arguments, with the same meaning and defaults,
    plus ``http1_parser``. With a ``proxy`` the requests go through httpx's own transport.

    Args:
        verify: How to verify the server's certificate, as in httpx: True (certifi's CA
            bundle) or an `ssl.SSLContext`.
        cert: A client certificate: a path, or ``(certfile, keyfile[, password])``.
        trust_env: Read ``SSL_CERT_FILE``/``SSL_CERT_DIR`` (as httpx's
            `httpx.create_ssl_context` does).
        http1: Speak HTTP/1.1.
        http2: Speak HTTP/2: offered by ALPN over TLS; with ``http1=False`` also over plain
            ``http://`` (prior knowledge), as in httpx.
        limits: ``max_connections`` (open or opening), ``max_keepalive_connections`` (idle
            ones kept) and ``keepalive_expiry`` (seconds an idle connection is reused for);
            httpx's defaults: 100, 20 and 5 s.
        proxy: An HTTP(S) or SOCKS proxy URL or `httpx.Proxy` (through httpx's transport).
        uds: Connect to this Unix domain socket instead of the URL's host and port.
        local_address: The local IP address to connect from.
        retries: How many times to retry a failed connect (0 s, 0.5 s, 1 s, ... apart).
        socket_options: ``setsockopt`` arguments applied to each new socket.
        http1_parser: ``"httptools"`` (llhttp, in C; the default when installed) or ``"h11"``
            (pure Python); None reads ``HTTPX_RESILIENCE_HTTP11_PARSER``.
    """

    def __init__(
        self,
        verify: ssl.SSLContext | str | bool = True,
        cert: CertTypes | None = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = DEFAULT_LIMITS,
        proxy: ProxyTypes | None = None,
        uds: str | None = None,
        local_address: str | None = None,
        retries: int = 0,
        socket_options: Iterable[SocketOption] | None = None,
        *,
        http1_parser: str | None = None,
    ) -> None:
        check_connection_options(
            "AsyncConnectionPoolTransport", verify=verify, cert=cert, proxy=proxy,
            trust_env=trust_env, http1=http1, http2=http2, limits=limits, uds=uds,
            local_address=local_address, retries=retries, socket_options=socket_options,
        )  # fmt: skip
        _check_parser(http1_parser)
        self._delegate: httpx.AsyncBaseTransport | None = None
        self._pool: ConnectionPool | None = None
        if proxy is not None:
            self._delegate = httpx.AsyncHTTPTransport(
                verify=verify, cert=cert, trust_env=trust_env, http1=http1, http2=http2,
                limits=limits, proxy=proxy, uds=uds, local_address=local_address,
                retries=retries, socket_options=socket_options,
            )  # fmt: skip
            return
        self._pool = ConnectionPool(
            ConnectOptions(
                httpx.create_ssl_context(verify=verify, cert=cert, trust_env=trust_env),
                uds=uds,
                local_address=local_address,
                retries=retries,
                socket_options=socket_options,
            ),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            parser=http1_parser or default_parser(),
            http1=http1,
            http2=http2,
        )

    @property
    def pool_stats(self) -> PoolStats | None:
        """The pool's counts (connections, idle, in use, waiting); None when the requests go
        through httpx's own transport (a proxy)."""
        return None if self._pool is None else self._pool.stats

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        pool = self._pool
        if pool is not None:
            return await pool.handle_request(request)
        assert self._delegate is not None
        return await self._delegate.handle_async_request(request)

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
        else:
            assert self._delegate is not None
            await self._delegate.aclose()

    async def __aenter__(self) -> AsyncConnectionPoolTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()


def direct_send(
    transport: httpx.AsyncBaseTransport,
) -> (
    Callable[[httpx.Request, tuple[str, str, int | None] | None], Awaitable[httpx.Response]] | None
):
    """What a wrapper may await instead of ``transport.handle_async_request``: the pool's own
    method, when ``transport`` is exactly this package's transport with a pool (not proxied,
    not a subclass that may override `handle_async_request`). Else None. It takes the request
    and its URL's ``(scheme, host, port)``, or None for the pool to read them."""
    if type(transport) is AsyncConnectionPoolTransport and transport._pool is not None:
        return transport._pool.handle_request
    return None


def build_transport(
    *,
    verify: ssl.SSLContext | str | bool,
    cert: CertTypes | None,
    trust_env: bool,
    http1: bool,
    http2: bool,
    limits: httpx.Limits,
    proxy: ProxyTypes | None,
    uds: str | None,
    local_address: str | None,
    retries: int,
    socket_options: Iterable[SocketOption] | None,
) -> httpx.AsyncBaseTransport:
    """The inner transport `ResilientTransport` builds: this layer, which hands proxied
    requests to httpx's own transport."""
    options = {
        "verify": verify, "cert": cert, "trust_env": trust_env, "http1": http1,
        "http2": http2, "limits": limits, "proxy": proxy, "uds": uds,
        "local_address": local_address, "retries": retries, "socket_options": socket_options,
    }  # fmt: skip
    return AsyncConnectionPoolTransport(**options)  # type: ignore[arg-type]
