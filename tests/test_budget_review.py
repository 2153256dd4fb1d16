"""Adversarial review of the fleet retry budget change (only a retry asks for a token)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from httpx_resilience import (
    AttemptEnd,
    AttemptStart,
    CircuitBreaker,
    CircuitOpenError,
    Hook,
    MemoryStore,
    OpenTelemetryHook,
    RedisStore,
    ResilientTransport,
    RetryConfig,
    get_retry_history,
)
from tests.support.redis import RedisServer, redis_server_or_skip
from tests.support.server import ServerThread
from tests.test_fleet_unit import GatedBudgetStore

pytestmark = pytest.mark.anyio

RETRY_ONCE = RetryConfig(
    max_retries=1, base_delay=0.0, max_delay=0.0, budget_ratio=0.2,
    budget_min_per_second=10.0, budget_window=10.0,
)  # fmt: skip


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class HeldBudgetStore(MemoryStore):
    """A MemoryStore whose budget calls that want retries never answer."""

    async def budget(self, scope: str, requests: int, want: int, *args: Any, **kw: Any) -> Any:
        if want:
            await anyio.sleep_forever()
        return await super().budget(scope, requests, want, *args, **kw)


class Ends(Hook):
    def __init__(self) -> None:
        self.events: list[str] = []

    def on_attempt(self, start: AttemptStart) -> Callable[[AttemptEnd], None]:
        self.events.append("start")
        return lambda end: self.events.append(f"end {end.outcome.value}")


def _read_error(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadError("reset", request=request)


class HeldReportStore(MemoryStore):
    """A MemoryStore whose reports of failures never answer."""

    async def circuit(self, scope: str, origin: str, op: Any, *args: Any, **kw: Any) -> Any:
        if op == "report":
            await anyio.sleep_forever()
        return await super().circuit(scope, origin, op, *args, **kw)


def _503(request: httpx.Request) -> httpx.Response:
    return httpx.Response(503)


@pytest.mark.parametrize(
    ("handler", "held"),
    [
        (_read_error, "budget"),
        (_503, "budget"),
        (_read_error, "report"),
        (_503, "report"),
    ],
)
async def test_cancelled_while_waiting_for_the_fleet_ends_the_attempt(
    handler: Any, held: str
) -> None:
    # A request cancelled while it waits for the fleet (its retry token, or the report of
    # its failure): its attempt's hooks (an OpenTelemetry span) must be ended, whether the
    # attempt failed with an error or a retried status.
    options: dict[str, Any] = {}
    store: MemoryStore
    if held == "budget":
        store = HeldBudgetStore(timeout=30.0, sync_interval=600.0, retry_interval=600.0)
    else:
        store = HeldReportStore(timeout=30.0, sync_interval=600.0, retry_interval=600.0)
        options["circuit_breaker"] = CircuitBreaker(failure_threshold=5)
    hook = Ends()
    transport = ResilientTransport(
        httpx.MockTransport(handler), retry=RETRY_ONCE, state_store=store, hooks=[hook],
        **options,
    )  # fmt: skip
    async with httpx.AsyncClient(transport=transport) as client:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(client.get, "http://a.example/")
                await anyio.wait_all_tasks_blocked()
                group.cancel_scope.cancel()
    assert hook.events == ["start", "end cancelled"]


async def test_a_wait_for_a_fleet_token_stops_at_the_total_timeout() -> None:
    # total_timeout "bounds everything"; the retry decision is known before the token is
    # asked for, and a token arriving once the retry's wait would pass the deadline is no
    # retry (`spend_budget`). So the wait for the store must not outlast the deadline: a slow
    # store (timeout=30 s here) must not hold a request with total_timeout=0.3 s for 30 s.
    store = HeldBudgetStore(timeout=30.0, sync_interval=600.0, retry_interval=600.0)
    hits = [0]

    def busy(request: httpx.Request) -> httpx.Response:
        hits[0] += 1
        return httpx.Response(503)

    retry = RETRY_ONCE.replace(total_timeout=0.3)
    transport = ResilientTransport(httpx.MockTransport(busy), retry=retry, state_store=store)
    async with httpx.AsyncClient(transport=transport) as client:
        with anyio.fail_after(10):  # a guard: the store would hold it 30 s
            response = await client.get("http://a.example/")
    assert response.status_code == 503
    assert hits[0] == 1
    [attempt] = response.extensions["retry_history"]
    assert attempt.reason in ("wait would pass total_timeout", "retry budget exhausted")


async def test_a_request_cancelled_before_its_batch_is_sent_takes_no_fleet_token() -> None:
    # A retry batch not sent yet (a budget call is in flight): a request in it is cancelled.
    # It stops anyway, so the fleet must not be asked for a token on its behalf (it would be
    # counted as spent fleet-wide and sit unused in this worker).
    from httpx_resilience._fleet import Fleet, SharedBudget

    store = GatedBudgetStore(timeout=10.0, sync_interval=600.0)
    fleet = Fleet(store, breaker=None, cool_down=None, retry=RETRY_ONCE)
    budget = SharedBudget(fleet, RETRY_ONCE)
    spent: list[bool] = []

    async def retry() -> None:
        await fleet.reserve_retry()
        spent.append(budget.try_spend(0.0))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(retry)  # its batch's call goes out, held at the gate
            await anyio.wait_all_tasks_blocked()
            with anyio.CancelScope() as scope:  # a second request joins the next batch
                async with anyio.create_task_group() as inner:
                    inner.start_soon(retry)
                    await anyio.wait_all_tasks_blocked()
                    scope.cancel()
            store.gate.set()
    await anyio.wait_all_tasks_blocked()
    for _ in range(20):  # let the background budget task finish its loop
        await anyio.lowlevel.checkpoint()
    assert spent == [True]
    assert store.wanted == [1]  # not [1, 1]: nobody waits for the second batch
    assert fleet.retry_tokens == 0
    await fleet.aclose()


async def test_a_circuit_opened_while_waiting_for_the_token_stops_the_retry() -> None:
    # Request A's 503 is retried; while it waits for its token (the budget call held), B's
    # 503 opens the circuit. A's token comes: A does not retry (CircuitOpenError, reason
    # "circuit open") and spends nothing: the token stays at hand for the next retry.
    store = GatedBudgetStore(timeout=10.0, sync_interval=600.0)
    hits = [0]

    def busy(request: httpx.Request) -> httpx.Response:
        hits[0] += 1
        return httpx.Response(503)

    breaker = CircuitBreaker(failure_threshold=2, recovery_time=600.0)
    transport = ResilientTransport(
        httpx.MockTransport(busy), retry=RETRY_ONCE, state_store=store, circuit_breaker=breaker
    )
    errors: dict[str, BaseException] = {}

    async def get(name: str) -> None:
        try:
            await client.get("http://a.example/")
        except CircuitOpenError as error:
            errors[name] = error

    async with httpx.AsyncClient(transport=transport) as client:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(get, "A")
                await anyio.wait_all_tasks_blocked()  # A waits for its token
                assert store.wanted == [1]
                await get("B")  # its failure opens the circuit: no retry, no token asked
                assert store.wanted == [1]
                store.gate.set()
    assert hits[0] == 2
    assert set(errors) == {"A", "B"}
    assert [a.reason for a in get_retry_history(errors["A"])] == ["circuit open"]
    fleet = transport._fleet
    assert fleet is not None
    assert fleet.retry_tokens == 1


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer(redis_server_or_skip()) as server:
        yield server


async def test_a_paused_redis_holds_a_retry_no_longer_than_its_total_timeout(
    h1_server: ServerThread, redis_server: RedisServer, key: str
) -> None:
    # The same as `test_a_wait_for_a_fleet_token_stops_at_the_total_timeout`, against a real
    # redis-server whose writes are paused (CLIENT PAUSE WRITE: the budget's script waits)
    # and a real Hypercorn upstream answering 503. The store's timeout is 30 s; the request's
    # total_timeout 0.3 s: it must end by its deadline, not wait out the store.
    store = RedisStore.from_url(redis_server.url, prefix=f"pause-{key}", timeout=30.0)
    inspector = aioredis.Redis.from_url(redis_server.url)
    retry = RETRY_ONCE.replace(total_timeout=0.3)
    transport = ResilientTransport(retry=retry, state_store=store)
    try:
        async with httpx.AsyncClient(transport=transport, base_url=h1_server.url) as client:
            assert (
                await client.get(f"/status/{key}-warm?code=200")
            ).status_code == 200  # connected
            await inspector.client_pause(20000, all=False)  # WRITE: the budget script waits
            try:
                with anyio.fail_after(10):  # a guard: the paused store would hold it 20 s
                    response = await client.get(f"/status/{key}?code=503")
            finally:
                await inspector.client_unpause()
        assert response.status_code == 503
        assert h1_server.app.hits(key) == 1  # type: ignore[attr-defined]
        [attempt] = get_retry_history(response)
        assert attempt.reason == "wait would pass total_timeout"
    finally:
        await inspector.aclose()
        await store.aclose()


async def test_an_otel_span_ends_when_a_failed_request_is_cancelled_waiting_for_redis(
    h1_server: ServerThread, redis_server: RedisServer, key: str
) -> None:
    # Real Hypercorn (the connection cut before any answer: a GET the server may have acted
    # on, retried), a real redis-server with writes paused (the retry's token does not
    # come), the real OpenTelemetryHook. The caller cancels the request while it waits for
    # the token: the attempt's span must still end (on main it never did: no span exported).
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    hook = OpenTelemetryHook(tracer_provider=provider)
    store = RedisStore.from_url(redis_server.url, prefix=f"otel-{key}", timeout=30.0)
    inspector = aioredis.Redis.from_url(redis_server.url)
    transport = ResilientTransport(retry=RETRY_ONCE, state_store=store, hooks=[hook])
    fleet = transport._fleet
    assert fleet is not None
    try:
        async with httpx.AsyncClient(transport=transport, base_url=h1_server.url) as client:
            assert (await client.get(f"/status/{key}-warm?code=200")).status_code == 200
            exporter.clear()
            await inspector.client_pause(20000, all=False)  # WRITE: the budget script waits
            try:
                with anyio.fail_after(10):
                    async with anyio.create_task_group() as group:
                        group.start_soon(client.get, f"/drop/{key}?fail=5")
                        for _ in range(500):  # until its token is asked for (~10 s at most)
                            if fleet._asking_budget:
                                break
                            await anyio.sleep(0.02)
                        assert fleet._asking_budget
                        group.cancel_scope.cancel()
            finally:
                await inspector.client_unpause()
        assert h1_server.app.hits(key) == 1  # type: ignore[attr-defined]
        spans = [s for s in exporter.get_finished_spans() if s.name == "GET"]
        assert len(spans) == 1
    finally:
        provider.shutdown()
        await inspector.aclose()
        await store.aclose()
