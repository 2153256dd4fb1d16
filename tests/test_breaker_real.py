"""Circuit breaking against real servers on 127.0.0.1: an upstream goes down and comes back."""

from __future__ import annotations

import ssl
from collections.abc import Callable

import anyio
import httpx
import pytest

from httpx_resilience import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    Origin,
    ResilientTransport,
    RetryConfig,
    get_retry_history,
)
from tests.support.server import FaultProxy, ServerInfo, ServerThread

pytestmark = pytest.mark.anyio

RETRY = RetryConfig(max_retries=5, base_delay=0.0, max_delay=0.0, budget_ratio=None)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def no_wait(seconds: float) -> None:
    await anyio.lowlevel.checkpoint()


async def test_outage_opens_fails_fast_and_recovers(
    make_fault_proxy: Callable[..., FaultProxy], h1_server: ServerThread, key: str
) -> None:
    proxy = make_fault_proxy(listening=True)
    app = h1_server.app
    clock = Clock()
    changes: list[tuple[Origin, CircuitState, CircuitState]] = []
    breaker = CircuitBreaker(
        failure_threshold=3,
        recovery_time=30.0,
        name="upstream",
        clock=clock,
        on_state_change=lambda origin, old, new: changes.append((origin, old, new)),
    )
    transport = ResilientTransport(retry=RETRY, circuit_breaker=breaker, sleep=no_wait)
    down = Origin("http", "127.0.0.1", proxy.port)
    async with httpx.AsyncClient(transport=transport) as client:
        # 1. The upstream answers 503: the third failure opens the circuit and the retry loop
        #    stops at once instead of spending its remaining retries.
        with pytest.raises(CircuitOpenError) as caught:
            await client.get(f"{proxy.url}/status/{key}?code=503")
        assert app.hits(key) == 3  # type: ignore[attr-defined]
        assert caught.value.origin == down
        assert caught.value.retry_in == 30.0
        assert isinstance(caught.value, httpx.TransportError)
        history = get_retry_history(caught.value)
        assert [a.status for a in history] == [503, 503, 503]
        assert (history[-1].reason, history[-1].retried) == ("circuit open", False)
        assert breaker.state(down) is CircuitState.OPEN

        # 2. While open: fail fast, no socket opened, nothing reaches the server.
        connections = proxy.connections
        for _ in range(20):
            with pytest.raises(CircuitOpenError, match="circuit 'upstream' open for http://127"):
                await client.get(f"{proxy.url}/ok/{key}")
        assert proxy.connections == connections
        assert app.hits(key) == 3  # type: ignore[attr-defined]

        # 3. Another origin through the same transport is unaffected throughout.
        response = await client.get(f"{h1_server.url}/ok/{key}-other")
        assert response.status_code == 200

        # 4. The listener goes away. After recovery_time one probe goes out, is refused, and
        #    the circuit re-opens; the error says why, chained to the refusal.
        proxy.stop_listening()
        clock.now += 30.0
        with pytest.raises(CircuitOpenError) as caught:
            await client.get(f"{proxy.url}/ok/{key}")
        assert isinstance(caught.value.__cause__, httpx.ConnectError)
        assert len(get_retry_history(caught.value)) == 1
        assert breaker.state(down) is CircuitState.OPEN

        # 5. The upstream is back: after recovery_time the probe succeeds and closes it.
        proxy.start_listening()
        clock.now += 30.0
        response = await client.get(f"{proxy.url}/ok/{key}")
        assert response.status_code == 200
        assert breaker.state(down) is CircuitState.CLOSED
        response = await client.get(f"{proxy.url}/ok/{key}")
        assert response.status_code == 200

    assert [(old.value, new.value) for _, old, new in changes] == [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
    ]
    assert {origin for origin, _, _ in changes} == {down}


async def test_half_open_lets_one_probe_through_concurrent_callers_fail_fast(
    h1_server: ServerThread, key: str
) -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, recovery_time=10.0, clock=clock)
    transport = ResilientTransport(retry=RETRY, circuit_breaker=breaker, sleep=no_wait)
    async with httpx.AsyncClient(transport=transport, base_url=h1_server.url) as client:
        with pytest.raises(CircuitOpenError):
            await client.get(f"/status/{key}?code=500")
        clock.now += 10.0
        outcomes: list[int | str] = []

        async def call() -> None:
            try:
                outcomes.append((await client.get(f"/slow/{key}-probe?delay=0.3")).status_code)
            except CircuitOpenError:
                outcomes.append("fast")

        async with anyio.create_task_group() as group:
            for _ in range(10):
                group.start_soon(call)
    assert sorted(outcomes, key=str) == [200] + ["fast"] * 9
    assert h1_server.app.hits(f"{key}-probe") == 1  # type: ignore[attr-defined]


async def test_client_errors_do_not_count(server: ServerInfo, key: str) -> None:
    breaker = CircuitBreaker(failure_threshold=2)
    transport = ResilientTransport(
        retry=RETRY, circuit_breaker=breaker, sleep=no_wait, **server.client_kwargs
    )
    async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
        for code in (400, 404, 409, 422, 429):
            response = await client.get(f"/status/{key}?code={code}")
            assert response.status_code == code
    assert breaker.states() == {}


async def test_cancellation_does_not_count(h1_server: ServerThread, key: str) -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    transport = ResilientTransport(retry=RETRY, circuit_breaker=breaker, sleep=no_wait)
    async with httpx.AsyncClient(transport=transport, base_url=h1_server.url) as client:
        for _ in range(3):
            with anyio.move_on_after(0.1):
                await client.get(f"/slow/{key}?delay=2")
        response = await client.get(f"/ok/{key}")
    assert response.status_code == 200
    assert breaker.states() == {}


async def test_shared_breaker_across_mounts(
    h1_server: ServerThread, h2_server: ServerThread, client_ssl_context: ssl.SSLContext, key: str
) -> None:
    breaker = CircuitBreaker(failure_threshold=2, recovery_time=60.0)
    plain = ResilientTransport(retry=RETRY, circuit_breaker=breaker, sleep=no_wait)
    tls = ResilientTransport(
        retry=RETRY, circuit_breaker=breaker, sleep=no_wait, verify=client_ssl_context
    )
    mounts = {"http://": plain, "https://": tls}
    async with httpx.AsyncClient(mounts=mounts) as client:
        with pytest.raises(CircuitOpenError):
            await client.get(f"{h1_server.url}/status/{key}?code=502")
        response = await client.get(f"{h2_server.url}/ok/{key}")
        assert response.status_code == 200
        assert response.http_version == "HTTP/2"
    assert plain.circuit_breaker is tls.circuit_breaker
    assert list(breaker.states().values()) == [CircuitState.OPEN]


async def test_retries_disabled_per_request_still_go_through_the_breaker(
    h1_server: ServerThread, key: str
) -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    transport = ResilientTransport(retry=RETRY, circuit_breaker=breaker, sleep=no_wait)
    async with httpx.AsyncClient(transport=transport, base_url=h1_server.url) as client:
        response = await client.get(f"/status/{key}?code=503", extensions={"retry": None})
        assert response.status_code == 503
        with pytest.raises(CircuitOpenError):
            await client.get(f"/ok/{key}", extensions={"retry": None})
    assert h1_server.app.hits(key) == 1  # type: ignore[attr-defined]
