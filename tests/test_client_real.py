"""AsyncAPIClient against real servers on 127.0.0.1: mapping, auth, JSON, streaming, limits."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest

from httpx_resilience import (
    APICircuitOpenError,
    APIClientError,
    APIConnectionError,
    APIKeyAuth,
    APIStatusError,
    APITimeoutError,
    AsyncAPIClient,
    AuthenticationError,
    BearerAuth,
    CircuitBreaker,
    PermissionDeniedError,
    RateLimitError,
    ResourceNotFoundError,
    RetryConfig,
    ServerError,
    api_key_auth,
    bearer_token_auth,
    get_retry_history,
    oauth_token_auth,
    set_testing,
)
from tests.support.server import FaultProxy, ServerInfo, ServerThread

pytestmark = pytest.mark.anyio

SECRET = "tok-5ecr3t-value"


@pytest.fixture(autouse=True)
def no_retry_waits() -> Iterator[None]:
    """The documented testing switch: retries happen, their waits take no time."""
    set_testing(True)
    yield
    set_testing(False)


def api_for(server: ServerInfo, **kwargs: Any) -> AsyncAPIClient:
    verify = server.client_kwargs.get("verify")
    if verify is not None:
        kwargs.setdefault("verify", verify)
    return AsyncAPIClient(server.url, **kwargs)


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (400, APIStatusError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, ResourceNotFoundError),
        (409, APIStatusError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
    ],
)
async def test_status_mapping(
    server: ServerInfo, key: str, code: int, error: type[APIStatusError]
) -> None:
    async with api_for(server, auth_token=SECRET) as api:
        with pytest.raises(error) as caught:
            await api.get(f"/status/{key}?code={code}&api_key={SECRET}")
    exc = caught.value
    assert type(exc) is error
    assert isinstance(exc, httpx.HTTPStatusError)
    assert exc.status_code == code == exc.response.status_code
    assert exc.request.method == "GET"
    # "code" is redacted too: it is also the name of OAuth's authorization-code parameter.
    reason = httpx.codes.get_reason_phrase(code)
    assert str(exc).startswith(
        f"GET {server.url}/status/{key}?code=[redacted]&api_key=[redacted] -> {code} {reason}: "
    )
    assert f"status {code} (hit " in str(exc)  # the server's body, quoted
    assert SECRET not in str(exc)
    assert SECRET not in repr(exc)
    if code == 403:
        assert isinstance(exc, AuthenticationError)  # "401/403 -> AuthenticationError" holds


async def test_rate_limit_carries_retry_after(server: ServerInfo, key: str) -> None:
    async with api_for(server, max_retries=0) as api:
        with pytest.raises(RateLimitError) as caught:
            await api.get(f"/status/{key}?code=429&retry_after=7")
    assert caught.value.retry_after == 7.0
    async with api_for(server, max_retries=0) as api:
        with pytest.raises(RateLimitError) as caught:
            await api.get(f"/status/{key}?code=429")
    assert caught.value.retry_after is None


async def test_connection_refused(make_fault_proxy: Callable[..., FaultProxy], key: str) -> None:
    proxy = make_fault_proxy(listening=False)
    async with AsyncAPIClient(proxy.url, auth_token=SECRET) as api:
        with pytest.raises(APIConnectionError) as caught:
            await api.post(f"/ok/{key}", json={"a": 1})
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert len(get_retry_history(caught.value.__cause__)) == 4  # never sent: retried, POST too
    assert str(caught.value).startswith(f"POST {proxy.url}/ok/{key}: ConnectError")
    assert SECRET not in str(caught.value)


async def test_timeout(server: ServerInfo, key: str) -> None:
    async with api_for(server, timeout=0.2) as api:
        with pytest.raises(APITimeoutError) as caught:
            await api.post(f"/slow/{key}?delay=3")
    assert isinstance(caught.value, httpx.TimeoutException)
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    assert server.app.hits(key) == 1  # a POST that timed out is never re-sent


async def test_open_circuit(h1_server: ServerThread, key: str) -> None:
    breaker = CircuitBreaker(failure_threshold=1, recovery_time=60.0)
    async with AsyncAPIClient(h1_server.url, circuit_breaker=breaker) as api:
        with pytest.raises(APICircuitOpenError) as caught:
            await api.get(f"/status/{key}?code=503")
        with pytest.raises(APICircuitOpenError) as caught:
            await api.get(f"/ok/{key}")
    assert isinstance(caught.value, APIConnectionError)
    assert caught.value.retry_in > 59
    assert caught.value.origin.port == h1_server.port


@pytest.mark.parametrize(
    ("kwargs", "header", "value"),
    [
        ({"auth_token": SECRET}, "authorization", f"Bearer {SECRET}"),
        ({"auth": bearer_token_auth(SECRET)}, "authorization", f"Bearer {SECRET}"),
        ({"auth": oauth_token_auth(SECRET)}, "authorization", f"Bearer {SECRET}"),
        ({"auth": api_key_auth(SECRET)}, "x-api-key", SECRET),
        ({"auth_headers": api_key_auth(SECRET, "X-Token")}, "x-token", SECRET),
        ({"auth": BearerAuth(SECRET)}, "authorization", f"Bearer {SECRET}"),
        ({"auth": APIKeyAuth(SECRET, header_name="X-Key")}, "x-key", SECRET),
    ],
)
async def test_auth_is_sent_and_never_shown(
    server: ServerInfo,
    key: str,
    kwargs: dict[str, Any],
    header: str,
    value: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with api_for(server, **kwargs) as api:
        await api.get(f"/flaky/{key}?fail=1")  # one retry: a log line
        with pytest.raises(APIStatusError) as caught:
            await api.get(f"/status/{key}?code=401")
        assert SECRET not in repr(api)
    assert server.app.received[key][0].headers[header] == value
    helpers = [repr(v) for v in kwargs.values() if not isinstance(v, str)]
    # Our logs and httpx's (hpack's DEBUG logs print every header it encodes: not ours to fix).
    logs = [
        r.getMessage()
        for r in caplog.records
        if r.name.split(".")[0] in ("httpx_resilience", "httpx")
    ]
    assert any("Retrying GET" in line for line in logs)
    for text in (str(caught.value), repr(caught.value), *logs, *helpers):
        assert SECRET not in text


async def test_data_json_text_and_none(server: ServerInfo, key: str) -> None:
    async with api_for(server) as api:
        created = await api.post("/users", json={"name": "Ada"})
        assert created.status_code == 201
        assert created.data == {"id": 1, "name": "Ada"}
        assert created.headers["content-type"] == "application/json"
        assert isinstance(created.response, httpx.Response)
        text = await api.get(f"/flaky/{key}?fail=0&status=503")
        assert text.data == {"hits": 1}
        deleted = await api.delete("/users/5")
        assert deleted.status_code == 204
        assert deleted.data is None
        assert await api.get_json("/users/3") == {"id": 3, "name": "Ada Lovelace"}
        assert await api.call({"method": "GET", "url": "/users/4"}) == {
            "id": 4,
            "name": "Ada Lovelace",
        }
        assert await api.call({"method": "POST", "url": "/users", "json": {"n": 2}}) == {
            "id": 1,
            "n": 2,
        }
        with pytest.raises(ResourceNotFoundError, match="user not found"):
            await api.get_json("/users/0")
        plain = await api.get(f"/status/{key}-text?code=200")
        assert plain.data == "status 200 (hit 1)\n"
        with pytest.raises(APIClientError, match="the body is not JSON"):
            await api.get_json(f"/status/{key}-text?code=200")


async def test_body_read_failure_of_a_get_is_retried(server: ServerInfo, key: str) -> None:
    async with api_for(server) as api:
        result = await api.get(f"/midbody/{key}?fail=1")
    assert result.response.content == b"0123456789" * 100
    assert server.app.hits(key) == 2


async def test_stream(server: ServerInfo, key: str) -> None:
    async with api_for(server) as api:
        async with api.stream("GET", f"/big/{key}?size=300000") as response:
            total = 0
            async for chunk in response.aiter_bytes():
                total += len(chunk)
        assert total == 300000
        assert response.is_closed
        with pytest.raises(ResourceNotFoundError):
            async with api.stream("GET", f"/status/{key}?code=404"):
                pytest.fail("the block must not run for an error status")


async def test_connection_options_reach_the_connections(
    h2_server: ServerThread, client_ssl_context: ssl.SSLContext, key: str
) -> None:
    async with AsyncAPIClient(h2_server.url, verify_ssl=client_ssl_context) as api:
        assert (await api.get(f"/ok/{key}")).response.http_version == "HTTP/2"
    async with AsyncAPIClient(h2_server.url, verify=client_ssl_context, http2=False) as api:
        assert (await api.get(f"/ok/{key}")).response.http_version == "HTTP/1.1"
    async with AsyncAPIClient(h2_server.url) as api:  # the default trust store: not our CA
        with pytest.raises(APIConnectionError, match=r"CERTIFICATE_VERIFY_FAILED|ConnectError"):
            await api.get(f"/ok/{key}")
    api = AsyncAPIClient(h2_server.url, verify=client_ssl_context, max_connections=3,
                         max_keepalive_connections=2)  # fmt: skip
    pool = api.client._transport.transport._pool  # type: ignore[attr-defined]
    assert (pool._max_connections, pool._max_idle) == (3, 2)
    await api.close()


async def test_retry_shorthands(h1_server: ServerThread, key: str) -> None:
    async with AsyncAPIClient(h1_server.url, max_retries=1, retry_delay=0.01) as api:
        with pytest.raises(ServerError):
            await api.get(f"/status/{key}?code=503")
        config = api.client._transport.retry  # type: ignore[attr-defined]
    assert h1_server.app.hits(key) == 2  # type: ignore[attr-defined]
    assert (config.max_retries, config.base_delay) == (1, 0.01)


async def test_a_thousand_concurrent_requests(
    server: ServerInfo, key: str, anyio_backend: str
) -> None:
    if anyio_backend == "trio" and server.http_version == "HTTP/1.1":
        # ~25 s in httpcore's pool queue (O(queued x connections) per event), the same under
        # both backends: run HTTP/1.1 once, under asyncio, to keep the suite within budget.
        pytest.skip("HTTP/1.1 variant runs under asyncio only")
    results: list[Any] = [None] * 1000
    # The server shares this process (and its GIL) with the client, so queueing for one of the
    # 100 pooled HTTP/1.1 connections may take longer than the default 10 s pool timeout; keeping
    # all 100 alive avoids reconnecting for most requests.
    timeout = httpx.Timeout(10.0, pool=60.0)
    async with api_for(server, timeout=timeout, max_keepalive_connections=100) as api:

        async def one(index: int) -> None:
            results[index] = (await api.get(f"/ok/{key}-{index % 10}")).data

        with anyio.fail_after(120):
            async with anyio.create_task_group() as group:
                for index in range(1000):
                    group.start_soon(one, index)
        stats = api.client._transport.transport.pool_stats  # type: ignore[attr-defined]
        assert (stats.in_use, stats.waiting) == (0, 0), stats
    assert all(r["http_version"] == server.http_version.removeprefix("HTTP/") for r in results)
    assert sum(server.app.hits(f"{key}-{n}") for n in range(10)) == 1000


async def test_cancelling_mid_request_leaks_nothing(server: ServerInfo, key: str) -> None:
    async with api_for(server) as api:
        with anyio.move_on_after(0.2):
            await api.get(f"/slow/{key}?delay=5")
        stats = api.client._transport.transport.pool_stats  # type: ignore[attr-defined]
        assert (stats.in_use, stats.waiting) == (0, 0), stats
        assert (await api.get(f"/ok/{key}")).status_code == 200


async def test_close_is_idempotent_and_a_closed_client_says_so(h1_server: ServerThread) -> None:
    api = AsyncAPIClient(h1_server.url)
    await api.close()
    await api.close()
    assert api.is_closed
    with pytest.raises(RuntimeError, match="AsyncAPIClient is closed"):
        await api.get("/ok/x")


async def test_a_given_client_is_used_and_not_closed(h1_server: ServerThread, key: str) -> None:
    async with httpx.AsyncClient() as client:
        async with AsyncAPIClient(h1_server.url, client=client) as api:
            assert (await api.get(f"/ok/{key}")).status_code == 200
        assert not client.is_closed
        with pytest.raises(TypeError, match="http2, max_connections cannot be combined"):
            AsyncAPIClient(client=client, http2=True, max_connections=5)


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="retry_config or max_retries/retry_delay"):
        AsyncAPIClient(retry_config=RetryConfig(), max_retries=2)
    with pytest.raises(ValueError, match="max_retries must be >= 0"):
        AsyncAPIClient(max_retries=-1)
    with pytest.raises(ValueError, match="verify or its alias verify_ssl"):
        AsyncAPIClient(verify=True, verify_ssl=ssl.create_default_context())
    with pytest.raises(TypeError, match=r"auth must be an httpx\.Auth or a dict"):
        AsyncAPIClient(auth="token")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="token must be a non-empty string"):
        bearer_token_auth("")
    assert repr(bearer_token_auth(SECRET)) == "AuthHeaders({'Authorization': '[secret]'})"
    assert SECRET not in repr(BearerAuth(SECRET))
    assert SECRET not in repr(APIKeyAuth(SECRET))
