"""The HTTP/2 connection's receive window against nginx, which sets END_STREAM on a body's
last DATA (acknowledged when it arrives): whatever way each body ends (read fully, closed after
one chunk, closed unread), every byte received is given back, none twice."""

from __future__ import annotations

import ssl
from typing import Any

import anyio
import httpx
import pytest
import trustme

from httpx_resilience import AsyncConnectionPoolTransport
from httpx_resilience._connection.http2 import HTTP2Connection
from tests.support.nginx import NginxFiles

pytestmark = pytest.mark.anyio

_MB = 1024 * 1024


def _h2_connections(transport: AsyncConnectionPoolTransport) -> list[HTTP2Connection]:
    pool: Any = transport._pool
    return [conn for conn in pool._open if isinstance(conn, HTTP2Connection)]


def _window_whole(conn: HTTP2Connection) -> bool:
    """Every byte received on the connection is given back or waits in h2's count of bytes
    processed (none lost, none counted twice)."""
    manager: Any = conn._h2._inbound_flow_control_window_manager
    return bool(manager.current_window_size + manager._bytes_processed == manager.max_window_size)


async def test_nginx_receive_window_survives_every_way_of_ending_a_body(
    ca: trustme.CA, client_ssl_context: ssl.SSLContext
) -> None:
    """30 responses of 1 MiB (more than the connection's 16 MiB window) on one connection,
    read fully, closed after one chunk, or closed unread; nginx sets END_STREAM on each
    body's last DATA. Then a full download still completes on the same connection, and the
    connection's window accounts for every byte."""
    body = bytes(range(256)) * (4 * 1024)  # 1 MiB
    with NginxFiles({"big": body}, ca=ca) as nginx:
        transport = AsyncConnectionPoolTransport(http2=True, verify=client_ssl_context)
        async with httpx.AsyncClient(transport=transport, base_url=nginx.https_url) as client:
            with anyio.fail_after(120):
                for index in range(30):
                    kind = index % 3
                    if kind == 0:
                        response = await client.get("/big")
                        assert response.http_version == "HTTP/2"
                        assert response.content == body
                    elif kind == 1:  # one chunk, then closed (the transport's stream)
                        request = client.build_request("GET", "/big")
                        raw = await transport.handle_async_request(request)
                        assert raw.status_code == 200
                        stream: Any = raw.stream
                        assert await stream.__aiter__().__anext__()
                        await raw.aclose()
                    else:  # closed unread
                        async with client.stream("GET", "/big") as response:
                            assert response.status_code == 200
                for _ in range(3):
                    assert (await client.get("/big")).content == body
            conns = _h2_connections(transport)
            assert len(conns) == 1
            assert _window_whole(conns[0])
