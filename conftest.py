"""Shared pytest fixtures: loopback HTTP/1.1 and HTTP/2 fault servers, a fault proxy."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme

from tests.support.server import FaultApp, FaultProxy, ServerInfo, ServerThread

# The shared servers keep connections open for many requests (Hypercorn's default closes one
# after 1,000 requests, sending GOAWAY on HTTP/2). Tests about servers that close connections
# often make servers of their own.
LONG_LIVED: dict[str, Any] = {"keep_alive_max_requests": 1_000_000, "keep_alive_timeout": 60}


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every ``@pytest.mark.anyio`` test on asyncio and on trio."""
    backend: str = request.param
    return backend


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """The test certificate authority that signs the TLS server's certificate."""
    return trustme.CA()


@pytest.fixture(scope="session")
def client_ssl_context(ca: trustme.CA) -> ssl.SSLContext:
    """A default client SSL context that also trusts :func:`ca`."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture(scope="session")
def h1_server() -> Iterator[ServerThread]:
    """Plain HTTP/1.1 server (``http://127.0.0.1:PORT``) with its own FaultApp."""
    server = ServerThread(FaultApp(), **LONG_LIVED)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def h2_server(ca: trustme.CA) -> Iterator[ServerThread]:
    """TLS server with ALPN h2/http1.1 (``https://127.0.0.1:PORT``), own FaultApp."""
    server = ServerThread(FaultApp(), ca=ca, **LONG_LIVED)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _fault_app(server: ServerThread) -> FaultApp:
    app = server.app
    assert isinstance(app, FaultApp)
    return app


@pytest.fixture(params=["h1", "h2"])
def server(request: pytest.FixtureRequest, client_ssl_context: ssl.SSLContext) -> ServerInfo:
    """The HTTP/1.1 server, then the HTTP/2 server.

    ``httpx.AsyncHTTPTransport(**server.client_kwargs)`` talks to it with the
    protocol named by ``server.http_version``.
    """
    if request.param == "h1":
        h1: ServerThread = request.getfixturevalue("h1_server")
        return ServerInfo(url=h1.url, app=_fault_app(h1), http_version="HTTP/1.1", client_kwargs={})
    h2: ServerThread = request.getfixturevalue("h2_server")
    return ServerInfo(
        url=h2.url,
        app=_fault_app(h2),
        http_version="HTTP/2",
        client_kwargs={"http2": True, "verify": client_ssl_context},
    )


@pytest.fixture
def key() -> str:
    """A fresh key, so each test has its own server-side state."""
    return uuid.uuid4().hex


@pytest.fixture
def make_fault_proxy(h1_server: ServerThread) -> Iterator[Callable[..., FaultProxy]]:
    """Factory: ``make_fault_proxy(listening=False)`` -> FaultProxy in front of h1_server.

    A proxy made with ``listening=False`` refuses connections until its
    ``start_listening()`` is called. Every proxy made is closed at teardown.
    """
    proxies: list[FaultProxy] = []

    def make(listening: bool = False) -> FaultProxy:
        proxy = FaultProxy("127.0.0.1", h1_server.port, listening=listening)
        proxies.append(proxy)
        return proxy

    try:
        yield make
    finally:
        errors: list[BaseException] = []
        for proxy in proxies:
            try:
                proxy.close()
            except BaseException as exc:  # Close the others anyway.
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def fault_proxy(make_fault_proxy: Callable[..., FaultProxy]) -> FaultProxy:
    """A listening FaultProxy in front of h1_server (``http://127.0.0.1:PORT``)."""
    return make_fault_proxy(listening=True)
