"""Self-test of the loopback fault servers, the fault proxy and their fixtures."""

from __future__ import annotations

import ssl
from collections.abc import Callable

import httpx
import pytest
import trustme

from tests.support.nginx import NginxFiles
from tests.support.server import FaultApp, FaultProxy, ServerInfo, ServerThread

pytestmark = pytest.mark.anyio

HTTP_DATE = "Wed, 21 Oct 2015 07:28:00 GMT"


def _client(server: ServerInfo, timeout: httpx.Timeout | float = 5.0) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(**server.client_kwargs)
    return httpx.AsyncClient(transport=transport, timeout=timeout)


def _app(server: ServerThread) -> FaultApp:
    assert isinstance(server.app, FaultApp)
    return server.app


async def test_ok_speaks_the_expected_protocol(server: ServerInfo, key: str) -> None:
    async with _client(server) as client:
        response = await client.get(f"{server.url}/ok/{key}")
    assert response.status_code == 200
    assert response.http_version == server.http_version
    expected_version = "1.1" if server.http_version == "HTTP/1.1" else "2"
    assert response.json() == {"hits": 1, "method": "GET", "http_version": expected_version}
    assert server.app.hits(key) == 1


async def test_requests_are_recorded(server: ServerInfo, key: str) -> None:
    assert server.app.hits(key) == 0
    assert server.app.received[key] == []
    async with _client(server) as client:
        response = await client.post(
            f"{server.url}/ok/{key}", content=b"payload", headers={"X-Test": "yes"}
        )
    assert response.json()["method"] == "POST"
    [received] = server.app.received[key]
    assert received.method == "POST"
    assert received.body == b"payload"
    assert received.headers["x-test"] == "yes"


@pytest.mark.parametrize("retry_after", ["1", HTTP_DATE, "garbage"])
async def test_flaky_fails_then_succeeds(server: ServerInfo, key: str, retry_after: str) -> None:
    url = f"{server.url}/flaky/{key}"
    params = {"fail": "2", "retry_after": retry_after}
    async with _client(server) as client:
        responses = [await client.get(url, params=params) for _ in range(3)]
    assert [r.status_code for r in responses] == [503, 503, 200]
    assert [r.headers.get("retry-after") for r in responses] == [retry_after, retry_after, None]
    assert responses[2].json() == {"hits": 3}
    assert server.app.hits(key) == 3


async def test_flaky_custom_status_and_status_route(server: ServerInfo, key: str) -> None:
    async with _client(server) as client:
        flaky = await client.get(f"{server.url}/flaky/{key}", params={"status": "429"})
        after = await client.get(f"{server.url}/flaky/{key}")
        status = await client.get(f"{server.url}/status/{key}", params={"code": "404"})
        missing = await client.get(f"{server.url}/nope/{key}")
    assert (flaky.status_code, "retry-after" in flaky.headers) == (429, False)
    assert after.status_code == 200
    assert status.status_code == 404
    assert missing.status_code == 404
    assert server.app.hits(key) == 3  # Unknown routes are not recorded.


async def test_big_body(server: ServerInfo, key: str) -> None:
    async with _client(server) as client:
        response = await client.get(f"{server.url}/big/{key}", params={"size": "200000"})
    assert response.status_code == 200
    assert len(response.content) == 200000


async def test_slow_times_out_and_was_recorded(server: ServerInfo, key: str) -> None:
    url = f"{server.url}/slow/{key}"
    async with _client(server, timeout=httpx.Timeout(5.0, read=0.2)) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(url, params={"delay": "2", "fail": "1"})
        assert server.app.hits(key) == 1
        response = await client.get(url, params={"delay": "2", "fail": "1"})
    assert response.status_code == 200
    assert response.json() == {"hits": 2}


async def test_midbody_cuts_the_body(server: ServerInfo, key: str) -> None:
    async with _client(server) as client:
        async with client.stream("GET", f"{server.url}/midbody/{key}") as response:
            assert response.status_code == 200
            assert response.headers["content-length"] == "1000"
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                await response.aread()
        assert server.app.hits(key) == 1
        # The client recovers on a new connection.
        after = await client.get(f"{server.url}/ok/{key}")
    assert after.json()["hits"] == 2


async def test_refusing_proxy_then_listening(
    make_fault_proxy: Callable[..., FaultProxy], h1_server: ServerThread, key: str
) -> None:
    proxy = make_fault_proxy(listening=False)
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{proxy.url}/ok/{key}")
        assert _app(h1_server).hits(key) == 0
        proxy.start_listening()
        response = await client.get(f"{proxy.url}/ok/{key}")
    assert response.status_code == 200
    assert response.json()["hits"] == 1
    assert proxy.connections == 1


async def test_proxy_drops_a_response(
    fault_proxy: FaultProxy, h1_server: ServerThread, key: str
) -> None:
    app = _app(h1_server)
    fault_proxy.drop_responses(1)
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport()) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(f"{fault_proxy.url}/ok/{key}", content=b"first")
        assert app.hits(key) == 1  # The server acted; the client saw no answer.
        response = await client.post(f"{fault_proxy.url}/ok/{key}", content=b"second")
    assert response.status_code == 200
    assert response.json()["hits"] == 2
    assert [r.body for r in app.received[key]] == [b"first", b"second"]
    assert fault_proxy.dropped == 1


async def test_nginx_files_serves_over_http1_and_http2(
    ca: trustme.CA, client_ssl_context: ssl.SSLContext
) -> None:
    # The benchmarks' server (benchmarks/throughput.py): one file, plain HTTP/1.1 and TLS with
    # HTTP/2 chosen by ALPN, with a certificate from the tests' CA.
    content = b'{"id": 1}\n'
    with NginxFiles({"data.json": content}, ca=ca) as nginx:
        async with httpx.AsyncClient(timeout=5.0) as client:
            plain = await client.get(f"{nginx.http_url}/data.json")
        async with httpx.AsyncClient(http2=True, verify=client_ssl_context, timeout=5.0) as client:
            tls = await client.get(f"{nginx.https_url}/data.json")
            missing = await client.get(f"{nginx.https_url}/other.json")
    assert (plain.http_version, plain.content) == ("HTTP/1.1", content)
    assert plain.headers["content-type"] == "application/json"
    assert (tls.http_version, tls.content) == ("HTTP/2", content)
    assert missing.status_code == 404
