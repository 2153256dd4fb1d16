"""ResilientTransport against real servers on 127.0.0.1: Hypercorn over HTTP/1.1 and HTTP/2+TLS.

Every test runs under asyncio and trio; those taking ``server`` run over both protocols. Waits go
through a recording sleeper, so no test sleeps through real backoff.
"""

from __future__ import annotations

import email.utils
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

from httpx_resilience import (
    AsyncConnectionPoolTransport,
    DeadlineExceeded,
    ResilientTransport,
    RetryConfig,
    get_retry_history,
)
from tests.support.server import FaultProxy, ServerInfo, ServerThread

pytestmark = pytest.mark.anyio

NO_JITTER = RetryConfig(base_delay=0.25, jitter=False, budget_ratio=None)


class Sleeper:
    """Records each wait and yields to the event loop instead of sleeping; runs a hook first."""

    def __init__(self, hook: Callable[[float], Any] | None = None) -> None:
        self.waits: list[float] = []
        self.hook = hook

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.hook is not None:
            self.hook(seconds)
        await anyio.lowlevel.checkpoint()


def make_client(
    server: ServerInfo,
    config: RetryConfig = NO_JITTER,
    sleeper: Sleeper | None = None,
    **kwargs: Any,
) -> httpx.AsyncClient:
    transport = ResilientTransport(
        retry=config, sleep=sleeper or Sleeper(), **server.client_kwargs, **kwargs
    )
    return httpx.AsyncClient(transport=transport, base_url=server.url, timeout=5.0)


def pool_of(client: httpx.AsyncClient) -> Any:
    transport = client._transport
    assert isinstance(transport, ResilientTransport)
    inner = transport.transport
    assert isinstance(inner, AsyncConnectionPoolTransport)
    return inner


def assert_pool_idle(client: httpx.AsyncClient) -> None:
    """No request is waiting for or holding a connection (or an HTTP/2 stream)."""
    stats = pool_of(client).pool_stats
    assert stats is not None
    assert (stats.in_use, stats.waiting) == (0, 0), stats


def chain(exc: BaseException | None) -> list[BaseException]:
    """An exception and everything it was raised from or during, in order."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


# --- retrying what is safe -------------------------------------------------------------------


async def test_negotiates_the_servers_protocol(server: ServerInfo, key: str) -> None:
    async with make_client(server) as client:
        response = await client.get(f"/ok/{key}")
    assert response.status_code == 200
    assert response.http_version == server.http_version
    assert response.json()["http_version"] == server.http_version.removeprefix("HTTP/")


async def test_failures_then_success(server: ServerInfo, key: str) -> None:
    sleeper = Sleeper()
    async with make_client(server, sleeper=sleeper) as client:
        response = await client.get(f"/flaky/{key}?fail=2&status=502")
    assert response.status_code == 200
    assert response.json() == {"hits": 3}
    assert server.app.hits(key) == 3
    assert [a.status for a in get_retry_history(response)] == [502, 502, 200]
    assert sleeper.waits == [0.25, 0.5]


async def test_retries_run_out_on_a_status_and_the_last_response_is_returned(
    server: ServerInfo, key: str
) -> None:
    async with make_client(server, NO_JITTER.replace(max_retries=2)) as client:
        response = await client.get(f"/status/{key}?code=500")
    assert response.status_code == 500
    assert response.text == "status 500 (hit 3)\n"  # the last response, still readable
    assert server.app.hits(key) == 3
    assert get_retry_history(response)[-1].reason == "retries exhausted"


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_delta_seconds(server: ServerInfo, key: str, status: int) -> None:
    sleeper = Sleeper()
    async with make_client(server, sleeper=sleeper) as client:
        response = await client.get(f"/flaky/{key}?fail=1&status={status}&retry_after=7")
    assert response.status_code == 200
    assert sleeper.waits == [7.0]


async def test_retry_after_http_date(server: ServerInfo, key: str) -> None:
    sleeper = Sleeper()
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    async with make_client(server, sleeper=sleeper) as client:
        response = await client.get(f"/flaky/{key}?fail=1&status=503&retry_after={when}")
    assert response.status_code == 200
    [wait] = sleeper.waits
    assert 27.0 <= wait <= 30.0  # whole seconds in the header, some time spent in between


async def test_retry_after_in_the_past_means_now(server: ServerInfo, key: str) -> None:
    sleeper = Sleeper()
    async with make_client(server, sleeper=sleeper) as client:
        past = "Thu, 01 Jan 2015 00:00:00 GMT"
        response = await client.get(f"/flaky/{key}?fail=1&status=429&retry_after={past}")
    assert response.status_code == 200
    assert sleeper.waits == [0.0]


async def test_unparseable_retry_after_falls_back_to_backoff(server: ServerInfo, key: str) -> None:
    sleeper = Sleeper()
    async with make_client(server, sleeper=sleeper) as client:
        response = await client.get(f"/flaky/{key}?fail=2&status=503&retry_after=soon-ish")
    assert response.status_code == 200
    assert sleeper.waits == [0.25, 0.5]


async def test_retry_after_above_the_cap_returns_at_once(server: ServerInfo, key: str) -> None:
    sleeper = Sleeper()
    config = NO_JITTER.replace(retry_after_cap=60.0)
    async with make_client(server, config, sleeper=sleeper) as client:
        response = await client.get(f"/flaky/{key}?fail=1&status=503&retry_after=3600")
    assert response.status_code == 503
    assert server.app.hits(key) == 1
    assert sleeper.waits == []
    assert get_retry_history(response)[0].reason == "Retry-After above retry_after_cap"


async def test_a_wait_past_the_deadline_is_not_started(server: ServerInfo, key: str) -> None:
    sleeper = Sleeper()
    config = NO_JITTER.replace(total_timeout=5.0)
    async with make_client(server, config, sleeper=sleeper) as client:
        response = await client.get(f"/flaky/{key}?fail=1&status=429&retry_after=10")
    assert response.status_code == 429
    assert sleeper.waits == []
    assert get_retry_history(response)[0].reason == "wait would pass total_timeout"


async def test_deadline_cancels_a_slow_attempt(server: ServerInfo, key: str) -> None:
    config = NO_JITTER.replace(total_timeout=0.5)
    async with make_client(server, config) as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as caught:
            await client.get(f"/slow/{key}?delay=5")
        assert time.monotonic() - started < 4.0
        assert_pool_idle(client)
    assert isinstance(caught.value, httpx.TimeoutException)
    assert len(get_retry_history(caught.value)) == 1


# --- never sending twice what the server may have acted on ----------------------------------


async def test_post_is_not_retried_on_a_status(server: ServerInfo, key: str) -> None:
    async with make_client(server) as client:
        response = await client.post(f"/flaky/{key}?fail=1&status=503", json={"n": 1})
    assert response.status_code == 503
    assert server.app.hits(key) == 1
    assert get_retry_history(response)[0].reason == "method not retryable"


async def test_post_with_idempotency_key_is_retried(server: ServerInfo, key: str) -> None:
    async with make_client(server) as client:
        response = await client.post(
            f"/flaky/{key}?fail=1&status=503", json={"n": 1}, headers={"Idempotency-Key": key}
        )
    assert response.status_code == 200
    assert [r.body for r in server.app.received[key]] == [b'{"n":1}', b'{"n":1}']


async def test_connection_dropped_before_the_response(server: ServerInfo, key: str) -> None:
    async with make_client(server) as client:
        response = await client.get(f"/drop/{key}?fail=1")
        assert response.status_code == 200
        assert server.app.hits(key) == 2
        error = get_retry_history(response)[0].error
        assert isinstance(error, httpx.RemoteProtocolError)

        post_key = key + "-post"
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            await client.post(f"/drop/{post_key}?fail=1", content=b"pay once")
        assert server.app.hits(post_key) == 1  # reached the server once, never re-sent
        [attempt] = get_retry_history(caught.value)
        assert attempt.reason == "method not retryable after a possibly processed request"

        keyed = key + "-keyed"
        response = await client.post(
            f"/drop/{keyed}?fail=1", content=b"x", headers={"Idempotency-Key": keyed}
        )
        assert response.status_code == 200
        assert server.app.hits(keyed) == 2
        assert_pool_idle(client)


async def test_read_timeout_retries_get_but_not_post(server: ServerInfo, key: str) -> None:
    async with make_client(server) as client:
        # 1 s: the first attempt times out; the retry, answered at once, must not (a pause
        # of the test process, whose server thread answers, must not exceed it).
        response = await client.get(f"/slow/{key}?delay=3&fail=1", timeout=1.0)
        assert response.status_code == 200
        assert server.app.hits(key) == 2
        assert isinstance(get_retry_history(response)[0].error, httpx.ReadTimeout)

        post_key = key + "-post"
        with pytest.raises(httpx.ReadTimeout):
            await client.post(f"/slow/{post_key}?delay=3&fail=1", content=b"x", timeout=1.0)
        assert server.app.hits(post_key) == 1


async def test_refused_connection_is_retried_even_for_post(
    make_fault_proxy: Callable[..., FaultProxy], h1_server: ServerThread, key: str
) -> None:
    proxy = make_fault_proxy(listening=False)
    sleeper = Sleeper(hook=lambda _: proxy.start_listening())  # the upstream comes up
    transport = ResilientTransport(retry=NO_JITTER, sleep=sleeper)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.post(f"{proxy.url}/ok/{key}", content=b"exactly once")
    assert response.status_code == 200
    [first, second] = get_retry_history(response)
    assert isinstance(first.error, httpx.ConnectError)
    assert first.reason == "ConnectError (not sent)"
    assert second.status == 200
    assert [r.body for r in h1_server.app.received[key]] == [b"exactly once"]  # type: ignore[attr-defined]


async def test_refused_until_retries_run_out(
    make_fault_proxy: Callable[..., FaultProxy], key: str
) -> None:
    proxy = make_fault_proxy(listening=False)
    transport = ResilientTransport(retry=NO_JITTER, sleep=Sleeper())
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.post(f"{proxy.url}/ok/{key}", content=b"x")
    history = get_retry_history(caught.value)
    assert len(history) == 4
    assert history[-1].error is caught.value
    assert history[-1].reason == "retries exhausted"


async def test_proxy_dropped_response_is_not_resent_for_post(
    fault_proxy: FaultProxy, h1_server: ServerThread, key: str
) -> None:
    transport = ResilientTransport(retry=NO_JITTER, sleep=Sleeper())
    async with httpx.AsyncClient(transport=transport) as client:
        fault_proxy.drop_responses(1)
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(f"{fault_proxy.url}/ok/{key}", content=b"x")
        assert h1_server.app.hits(key) == 1  # type: ignore[attr-defined]
        fault_proxy.drop_responses(1)
        response = await client.put(f"{fault_proxy.url}/ok/{key}", content=b"x")
        assert response.status_code == 200
        assert h1_server.app.hits(key) == 3  # type: ignore[attr-defined]


# --- never retried ---------------------------------------------------------------------------


async def test_tls_verification_failure_is_not_retried(h2_server: ServerThread) -> None:
    sleeper = Sleeper()
    transport = ResilientTransport(retry=NO_JITTER, sleep=sleeper)  # does not trust the test CA
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.get(f"{h2_server.url}/ok/tls")
    assert any(isinstance(exc, ssl.SSLCertVerificationError) for exc in chain(caught.value))
    assert len(get_retry_history(caught.value)) == 1
    assert sleeper.waits == []


@pytest.mark.parametrize("code", [400, 401, 403, 404, 409, 422, 501])
async def test_other_statuses_are_not_retried(server: ServerInfo, key: str, code: int) -> None:
    async with make_client(server) as client:
        response = await client.get(f"/status/{key}?code={code}")
    assert response.status_code == code
    assert server.app.hits(key) == 1


async def test_unsupported_protocol_is_not_retried() -> None:
    sleeper = Sleeper()
    async with httpx.AsyncClient(transport=ResilientTransport(sleep=sleeper)) as client:
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get("ftp://127.0.0.1/file")
    assert sleeper.waits == []


# --- bodies ----------------------------------------------------------------------------------


async def test_byte_bodies_are_replayed_intact(server: ServerInfo, key: str) -> None:
    payload = bytes(range(256)) * 100
    async with make_client(server) as client:
        response = await client.put(f"/flaky/{key}?fail=2", content=payload)
    assert response.status_code == 200
    assert [r.body for r in server.app.received[key]] == [payload] * 3


async def test_streamed_bodies_are_never_resent(server: ServerInfo, key: str) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"part one, "
        yield b"part two"

    async with make_client(server) as client:
        response = await client.put(f"/flaky/{key}?fail=1", content=body())
    assert response.status_code == 503  # the original response, not StreamConsumed
    assert [r.body for r in server.app.received[key]] == [b"part one, part two"]
    assert get_retry_history(response)[0].reason == "request body cannot be replayed"


async def test_body_cut_mid_way_reaches_the_caller_as_an_httpx_error(
    server: ServerInfo, key: str
) -> None:
    async with make_client(server) as client:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await client.get(f"/midbody/{key}")
        assert server.app.hits(key) == 1
        assert_pool_idle(client)


async def test_read_body_extension_retries_a_body_cut_mid_way(server: ServerInfo, key: str) -> None:
    async with make_client(server) as client:
        response = await client.get(f"/midbody/{key}?fail=1", extensions={"read_body": True})
        assert response.status_code == 200
        assert response.content == b"0123456789" * 100
        assert response.elapsed.total_seconds() >= 0
        assert server.app.hits(key) == 2
        assert isinstance(get_retry_history(response)[0].error, httpx.RemoteProtocolError)

        post_key = key + "-post"
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(f"/midbody/{post_key}?fail=1", extensions={"read_body": True})
        assert server.app.hits(post_key) == 1
        assert_pool_idle(client)


# --- resources and cancellation --------------------------------------------------------------


async def test_discarded_responses_are_closed_so_one_connection_suffices(
    server: ServerInfo, key: str
) -> None:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with make_client(server, limits=limits) as client:
        response = await client.get(
            f"/flaky/{key}?fail=3&status=503", timeout=httpx.Timeout(5.0, pool=0.5)
        )
        assert response.status_code == 200
        assert_pool_idle(client)


async def test_cancelled_during_a_wait_starts_no_attempt(server: ServerInfo, key: str) -> None:
    waiting = anyio.Event()

    async def slow_sleep(seconds: float) -> None:
        waiting.set()
        await anyio.sleep(30)

    transport = ResilientTransport(retry=NO_JITTER, sleep=slow_sleep, **server.client_kwargs)
    async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
        async with anyio.create_task_group() as group:
            group.start_soon(client.get, f"/flaky/{key}?fail=1")
            with anyio.fail_after(5):
                await waiting.wait()
            group.cancel_scope.cancel()
        await anyio.sleep(0.1)
        assert server.app.hits(key) == 1
        assert_pool_idle(client)


async def test_cancelled_during_an_attempt_leaks_nothing(server: ServerInfo, key: str) -> None:
    sleeper = Sleeper()
    async with make_client(server, sleeper=sleeper) as client:
        with anyio.move_on_after(0.3) as scope:
            await client.get(f"/slow/{key}?delay=5")
        assert scope.cancelled_caught
        await anyio.sleep(0.1)
        assert server.app.hits(key) == 1
        assert sleeper.waits == []
        assert_pool_idle(client)


async def test_a_thousand_flaky_requests_leave_no_connection_in_use(
    server: ServerInfo, key: str
) -> None:
    """Every endpoint fails once, then succeeds: half with 503; the other half drop the
    connection before responding (HTTP/1.1) or answer 429 with Retry-After (HTTP/2, where cutting
    the connection would also cut sibling streams mid-body, outside any transport's reach)."""
    limits = httpx.Limits(max_connections=20, max_keepalive_connections=20)
    second = (
        "drop/{}?fail=1"
        if server.http_version == "HTTP/1.1"
        else ("flaky/{}?fail=1&status=429&retry_after=0")
    )
    results: list[int] = []
    async with make_client(server, limits=limits) as client:

        async def worker(first: int) -> None:
            for index in range(first, 1000, 50):
                path = "flaky/{}?fail=1" if index % 2 else second
                response = await client.get("/" + path.format(f"{key}-{index}"))
                results.append(response.status_code)

        with anyio.fail_after(120):
            async with anyio.create_task_group() as group:
                for first in range(50):
                    group.start_soon(worker, first)
        assert_pool_idle(client)
    assert results == [200] * 1000
    assert all(server.app.hits(f"{key}-{index}") == 2 for index in range(1000))


# --- budget, mounts, logging -----------------------------------------------------------------


async def test_budget_caps_load_on_a_failing_upstream(server: ServerInfo, key: str) -> None:
    config = NO_JITTER.replace(budget_ratio=0.2, budget_min_per_second=0.0)
    async with make_client(server, config) as client:
        for _ in range(50):
            response = await client.get(f"/status/{key}?code=503")
            assert response.status_code == 503
    # Without a budget: 50 x 4 = 200 requests. With it: 50 + 20 % of 50.
    assert server.app.hits(key) == 60


async def test_per_host_mounts(h1_server: ServerThread, key: str) -> None:
    patient = ResilientTransport(retry=NO_JITTER.replace(max_retries=5), sleep=Sleeper())
    mounts = {f"all://127.0.0.1:{h1_server.port}": patient}
    async with httpx.AsyncClient(mounts=mounts) as client:
        response = await client.get(f"{h1_server.url}/flaky/{key}?fail=5")
    assert response.status_code == 200
    assert len(get_retry_history(response)) == 6


async def test_one_log_line_per_retry(
    server: ServerInfo, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="httpx_resilience")
    async with make_client(server) as client:
        await client.get(f"/flaky/{key}?fail=2&token=abc123")
    lines = [r.getMessage() for r in caplog.records if r.name == "httpx_resilience"]
    assert len(lines) == 2
    assert lines[0] == (
        f"Retrying GET {server.url}/flaky/{key}?fail=2&token=[redacted] after attempt 1 of 4: "
        "status 503; waiting 0.250s"
    )
    assert "abc123" not in "".join(lines)
