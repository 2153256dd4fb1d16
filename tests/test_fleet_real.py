"""Several "workers" (transports, each with its own breaker, budget, cool-down and store
client) sharing state through a real redis-server, against a real Hypercorn upstream, all on
127.0.0.1. Each test compares with the same workers on local state where the issue asks for it.

asyncio only: redis-py's client is asyncio-only (the trio case is the last test). Recovery
times are short and real; tests wait for states with bounded loops and assert no durations.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio as aioredis

from httpx_resilience import (
    BudgetRefusal,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    CoolDown,
    Hook,
    Origin,
    RedisStore,
    ResilientTransport,
    RetryConfig,
    StoreAvailability,
    get_retry_history,
)
from httpx_resilience._stores._protocol import BudgetPolicy, CircuitPolicy
from tests.support.redis import DelayProxy, RedisServer, redis_server_or_skip
from tests.support.server import FaultProxy, ServerThread

pytestmark = pytest.mark.anyio

NO_RETRY = RetryConfig(max_retries=0, budget_ratio=None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer(redis_server_or_skip()) as server:
        yield server


class Worker:
    """One worker's transport and client, sharing through its own store client (or not)."""

    def __init__(
        self,
        url: str,
        redis_url: str | None,
        *,
        name: str,
        retry: RetryConfig = NO_RETRY,
        breaker: dict[str, Any] | None = None,
        cool_down: CoolDown | None = None,
        events: list[bool] | None = None,
        store_kwargs: dict[str, Any] | None = None,
        store: RedisStore | None = None,
        hooks: list[object] | None = None,
    ) -> None:
        self.store = store
        if store is None and redis_url is not None:
            hook = None if events is None else (lambda ok, error: events.append(ok))
            # A generous store timeout unless a test is about timeouts: a call that times
            # out means local state, and one pause of the test process (a GC pass, the
            # machine's scheduler) longer than the default 0.1 s would change what a test
            # about sharing sees.
            settings = {"timeout": 2.0, **(store_kwargs or {})}
            self.store = RedisStore.from_url(
                redis_url, prefix="test", on_availability=hook, **settings
            )
        self.breaker = CircuitBreaker(name=name, **(breaker or {})) if breaker else None
        self.transport = ResilientTransport(
            retry=retry,
            circuit_breaker=self.breaker,
            cool_down=cool_down if cool_down is not None else CoolDown(),
            state_store=self.store,
            hooks=hooks or (),
        )
        self.client = httpx.AsyncClient(transport=self.transport, base_url=url, timeout=10.0)

    async def get(self, path: str) -> int | str:
        """The status, or the name of the error."""
        try:
            return (await self.client.get(path)).status_code
        except httpx.HTTPError as error:
            return type(error).__name__

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.store is not None:
            await self.store.aclose()


@pytest.fixture
async def workers() -> AsyncIterator[Callable[..., list[Worker]]]:
    made: list[Worker] = []

    def make(count: int, *args: Any, **kwargs: Any) -> list[Worker]:
        new = [Worker(*args, **kwargs) for _ in range(count)]
        made.extend(new)
        return new

    yield make
    for worker in made:
        await worker.aclose()


async def until(condition: Callable[[], bool], *, tick: Callable[[], Any] | None = None) -> None:
    """Wait (at most ~10 s, in small steps) until ``condition()`` holds."""
    for _ in range(500):
        if condition():
            return
        if tick is not None:
            await tick()
        await anyio.sleep(0.02)
    raise AssertionError("condition never held")


async def test_an_outage_is_discovered_once_by_the_fleet(
    h1_server: ServerThread, redis_server: RedisServer, key: str, workers: Callable[..., Any]
) -> None:
    breaker = {"failure_threshold": 5, "recovery_time": 60.0}
    hits: dict[str, int] = {}
    for mode, redis_url in (("local", None), ("shared", redis_server.url)):
        fleet = workers(4, h1_server.url, redis_url, name=f"outage-{key}-{mode}", breaker=breaker)
        path = f"/status/{key}-{mode}?code=500"
        for _ in range(10):  # round robin: worker 1, 2, 3, 4, 1, ...
            for worker in fleet:
                await worker.get(path)
        hits[mode] = h1_server.app.hits(f"{key}-{mode}")  # type: ignore[attr-defined]
        assert all(w.breaker.states() for w in fleet)  # every worker's circuit is open
    assert hits == {"local": 4 * 5, "shared": 5}


async def test_requests_in_flight_while_the_fleet_counts_failures_are_bounded(
    h1_server: ServerThread, redis_server: RedisServer, key: str, workers: Callable[..., Any]
) -> None:
    # failure_threshold 8: the fleet lets failures + reserved requests out reach 10.
    breaker = {"failure_threshold": 8, "recovery_time": 60.0}
    # Requests held at the limit wait up to sync_interval for the ones out to decide.
    settings = {"sync_interval": 5.0}
    hits: dict[str, int] = {}
    outcomes: dict[str, list[int | str]] = {}
    for mode, redis_url in (("local", None), ("shared", redis_server.url)):
        fleet = workers(4, h1_server.url, redis_url, name=f"limit-{key}-{mode}",
                        breaker=breaker, store_kwargs=settings)  # fmt: skip
        for worker in fleet:  # one failure each: the fleet counts 4 (shared)
            assert await worker.get(f"/status/{key}-{mode}-first?code=500") == 500
        # Then 40 requests at once to an upstream that fails slowly.
        results: list[int | str] = []

        async def send(worker: Worker, mode: str = mode, out: list[int | str] = results) -> None:
            out.append(await worker.get(f"/status/{key}-{mode}?code=500&delay=0.2"))

        async with anyio.create_task_group() as group:
            for worker in fleet:
                for _ in range(10):
                    group.start_soon(send, worker)
        hits[mode] = h1_server.app.hits(f"{key}-{mode}")  # type: ignore[attr-defined]
        outcomes[mode] = sorted(results, key=str)
    # Local: each worker has seen 1 failure of 8, so all 40 go. Shared: 4 failures plus 6
    # requests out reach the limit; the others wait, and fail fast once those 6 opened the
    # circuit.
    assert hits == {"local": 40, "shared": 6}
    assert outcomes["shared"] == [500] * 6 + ["CircuitOpenError"] * 34


async def test_exactly_one_probe_per_half_open_period_fleet_wide(
    h1_server: ServerThread, redis_server: RedisServer, key: str, workers: Callable[..., Any]
) -> None:
    breaker = {"failure_threshold": 2, "recovery_time": 0.3}
    origin = Origin("http", "127.0.0.1", h1_server.port)
    probes: dict[str, int] = {}
    for mode, redis_url in (("local", None), ("shared", redis_server.url)):
        fleet = workers(4, h1_server.url, redis_url, name=f"probe-{key}-{mode}", breaker=breaker)
        for worker in fleet:  # open every worker's circuit
            for _ in range(2):
                await worker.get(f"/status/{key}-{mode}-down?code=500")
        await until(lambda f=fleet: all(  # type: ignore[misc]
            w.breaker.state(origin) is CircuitState.HALF_OPEN for w in f
        ))  # fmt: skip
        if redis_url is not None:  # and the fleet's circuit too (its clock is Redis's)
            store, name = fleet[0].store, f"probe-{key}-{mode}"
            policy = CircuitPolicy(2, 0.3, None, 10, 30.0, 10.0)
            for _ in range(500):
                view, _ = await store.circuit(name, str(origin), "read", policy)
                if view.state is CircuitState.HALF_OPEN:
                    break
                await anyio.sleep(0.01)
        # 40 requests at once while half-open: the probe hangs a second on the upstream, so
        # the half-open period cannot end while the others ask.
        slow = f"/slow/{key}-{mode}?delay=1"
        results: list[int | str] = []

        async def send(worker: Worker, path: str = slow, out: list[int | str] = results) -> None:
            out.append(await worker.get(path))

        async with anyio.create_task_group() as group:
            for worker in fleet:
                for _ in range(10):
                    group.start_soon(send, worker)
        probes[mode] = h1_server.app.hits(f"{key}-{mode}")  # type: ignore[attr-defined]
        assert results.count(200) == probes[mode]
        assert results.count("CircuitOpenError") == 40 - probes[mode]
    assert probes == {"local": 4, "shared": 1}


async def test_a_dead_probe_holder_blocks_the_fleet_only_for_its_lease(
    h1_server: ServerThread, redis_server: RedisServer, key: str, workers: Callable[..., Any]
) -> None:
    name = f"dead-{key}"
    fleet = workers(3, h1_server.url, redis_server.url, name=name,
                    breaker={"failure_threshold": 2, "recovery_time": 0.2},
                    store_kwargs={"probe_lease": 1.0, "sync_interval": 0.02})  # fmt: skip
    origin = str(Origin("http", "127.0.0.1", h1_server.port))
    for _ in range(2):  # the fleet's circuit opens
        assert await fleet[0].get(f"/status/{key}-open?code=500") == 500
    # A worker claims the half-open probe and dies: its claim is never answered.
    store, policy = fleet[0].store, CircuitPolicy(2, 0.2, None, 10, 30.0, 1.0)
    for _ in range(500):
        _, granted = await store.circuit(name, origin, "probe", policy, token="dead")
        if granted:
            break
        await anyio.sleep(0.01)
    assert granted
    # Until its lease ends the others fail fast; then exactly one of them probes.
    results: list[int | str] = []
    path = f"/status/{key}?code=500"
    for _ in range(200):
        for worker in fleet:
            results.append(await worker.get(path))
        if 500 in results:
            break
        await anyio.sleep(0.02)
    for worker in fleet:  # the probe failed: the circuit is open again
        results.append(await worker.get(path))
    # Right after the claim (its lease has most of 1 s to run), every worker failed fast.
    assert results[:3] == ["CircuitOpenError"] * 3
    assert results.count(500) == 1
    assert set(results) == {500, "CircuitOpenError"}
    assert h1_server.app.hits(key) == 1  # type: ignore[attr-defined]


async def test_the_retry_budget_is_fleet_wide(
    h1_server: ServerThread, redis_server: RedisServer, key: str, workers: Callable[..., Any]
) -> None:
    # floor 1 retry per 10 s window, plus 20 % of requests.
    retry = RetryConfig(
        max_retries=3, base_delay=0.0, max_delay=0.0, budget_ratio=0.2,
        budget_min_per_second=0.1, budget_window=10.0,
    )  # fmt: skip
    retries: dict[str, int] = {}
    for mode, redis_url in (("local", None), ("shared", redis_server.url)):
        fleet = workers(4, h1_server.url, redis_url, name=f"budget-{key}-{mode}", retry=retry)
        for _ in range(10):
            for worker in fleet:
                assert await worker.get(f"/status/{key}-{mode}?code=502") == 502
        retries[mode] = h1_server.app.hits(f"{key}-{mode}") - 40  # type: ignore[attr-defined]
    # Shared: at most the fleet's floor + 20 % of the fleet's 40 requests.
    assert 0 < retries["shared"] <= 1 + 0.2 * 40
    # Local: each worker has its own floor and 20 % of its own 10 requests.
    assert retries["local"] > retries["shared"]
    assert retries["local"] <= 4 * (1 + 0.2 * 10)


async def test_a_cool_down_is_shared(
    h1_server: ServerThread,
    redis_server: RedisServer,
    key: str,
    workers: Callable[..., Any],
    fault_proxy: FaultProxy,
) -> None:
    shared: dict[str, Any] = {"name": f"cool-{key}", "store_kwargs": {"sync_interval": 0.02}}
    [first] = workers(1, h1_server.url, redis_server.url, **shared)
    # The second fails at once instead of waiting.
    [second] = workers(1, h1_server.url, redis_server.url, cool_down=CoolDown(max_wait=1.0),
                       **shared)  # fmt: skip
    assert await second.get(f"/ok/{key}") == 200  # the second worker uses the origin too
    assert await first.get(f"/throttle/{key}-t?period=60&ms=20000") == 429
    origin = Origin("http", "127.0.0.1", h1_server.port)

    async def traffic_elsewhere() -> None:  # requests elsewhere keep its syncs going
        await second.client.get(f"{fault_proxy.url}/ok/{key}-elsewhere")

    cool = second.transport.cool_down
    assert cool is not None
    await until(lambda: cool.retry_in(origin) > 0, tick=traffic_elsewhere)
    assert await second.get(f"/throttle/{key}-t") == "CoolDownError"
    assert h1_server.app.throttled[f"{key}-t"] == 1  # type: ignore[attr-defined]


async def test_redis_killed_and_restarted_mid_run(
    h1_server: ServerThread, key: str, workers: Callable[..., Any], caplog: Any
) -> None:
    caplog.set_level(logging.WARNING, logger="httpx_resilience")
    server = RedisServer(redis_server_or_skip()).start()
    try:
        events: list[bool] = []
        settings = {"retry_interval": 0.1, "sync_interval": 0.02}
        breaker = {"failure_threshold": 3, "recovery_time": 60.0}
        first, second = workers(2, h1_server.url, server.url, name=f"kill-{key}",
                                breaker=breaker, events=events, store_kwargs=settings)  # fmt: skip
        results: list[int | str] = []
        for round_ in range(60):
            if round_ == 20:
                server.kill()
            for worker in (first, second):
                results.append(await worker.get(f"/ok/{key}"))
        # The outage is noticed, and no request failed because of it.
        assert results == [200] * 120
        assert events[:1] == [False]
        assert "using local state" in caplog.text
        # Local state still works: failures open this worker's own circuit.
        for _ in range(3):
            assert await first.get(f"/status/{key}-down?code=500") == 500
        assert await first.get(f"/status/{key}-down?code=500") == "CircuitOpenError"

        server.start()  # same port, empty

        async def tick() -> None:
            assert await second.get(f"/ok/{key}") == 200

        await until(lambda: events[-1:] == [True], tick=tick)
        assert "sharing state with the fleet resumed" in caplog.text
        # Sharing resumed: the second worker's failures open the first worker's circuit on
        # another origin without the first sending a single request there.
        proxy_origin_path = f"/status/{key}-again?code=500"
        for _ in range(3):
            assert await second.get(proxy_origin_path) == 500
        assert await first.get(proxy_origin_path) == "CircuitOpenError"
        assert h1_server.app.hits(f"{key}-again") == 3  # type: ignore[attr-defined]
    finally:
        server.stop()


async def test_a_slow_redis_does_not_slow_requests_beyond_the_timeout(
    h1_server: ServerThread, redis_server: RedisServer, key: str, workers: Callable[..., Any]
) -> None:
    with DelayProxy(redis_server.port) as proxy:
        events: list[bool] = []
        # The transport gives each store call up after 0.05 s (cancelling it); the client's
        # own socket timeouts are generous, so that what is checked below, with Redis fast
        # again, cannot fail by a pause of the test process: only cancellation protects
        # the connections here.
        client = aioredis.Redis.from_pool(  # the client owns (and closes) its pool
            aioredis.BlockingConnectionPool.from_url(
                proxy.url, max_connections=10, timeout=5.0, socket_timeout=5.0,
                socket_connect_timeout=5.0,
            )
        )  # fmt: skip
        slow = RedisStore(client, prefix="test", timeout=0.05, retry_interval=0.0,
                          on_availability=lambda ok, error: events.append(ok))  # fmt: skip
        [worker] = workers(1, h1_server.url, proxy.url, name=f"slow-{key}",
                           breaker={"failure_threshold": 3}, store=slow)  # fmt: skip
        assert await worker.get(f"/ok/{key}") == 200
        proxy.delay = 5.0
        # Failures wait for the store (each call given up after 0.05 s); nothing waits 5 s.
        with anyio.fail_after(4.0):
            for _ in range(3):
                assert await worker.get(f"/status/{key}?code=500") == 500
            assert await worker.get(f"/status/{key}?code=500") == "CircuitOpenError"
        assert False in events
        # Cancelled Redis calls left no stale answer behind: once fast again, every answer
        # is for its own question.
        proxy.delay = 0.0
        store = RedisStore.from_url(proxy.url, prefix=f"slow{key}")
        try:
            policy = CircuitPolicy(10, 60.0, None, 10, 30.0, 5.0)
            assert worker.store is not None
            for n in range(1, 4):
                view, _ = await worker.store.circuit("x", f"o{n}", "report", policy, failures=n)
                assert view.failures == n
            view, _ = await store.circuit("x", "o2", "read", policy)
            assert view.failures == 0  # another prefix
        finally:
            await store.aclose()
            await client.aclose()


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_on_trio_the_redis_store_keeps_to_local_state(
    h1_server: ServerThread, redis_server: RedisServer, key: str, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING, logger="httpx_resilience")
    store = RedisStore.from_url(redis_server.url)
    breaker = CircuitBreaker(failure_threshold=2)
    transport = ResilientTransport(retry=NO_RETRY, circuit_breaker=breaker, state_store=store)
    async with httpx.AsyncClient(transport=transport, base_url=h1_server.url) as client:
        assert (await client.get(f"/ok/{key}")).status_code == 200
        for _ in range(2):
            assert (await client.get(f"/status/{key}?code=500")).status_code == 500
        with pytest.raises(CircuitOpenError):
            await client.get(f"/ok/{key}")
    assert "does not work on trio: this transport keeps to local state" in caplog.text


class ConnectionCounter:
    """Counts the connections redis-server accepted since `start` (``INFO stats``:
    ``total_connections_received``), through a client of its own (its one connection is left
    out): connections a test's transport opened in the meantime, closed since or not, so at
    least as many as it had open at any moment."""

    def __init__(self, url: str) -> None:
        self._client = aioredis.Redis.from_url(url)
        self._base = 0

    async def _received(self) -> int:
        stats = await self._client.info("stats")
        return int(stats["total_connections_received"])

    async def start(self) -> None:
        await self._client.ping()  # its own connection is open before the count starts
        self._base = await self._received()

    async def opened(self) -> int:
        """Connections accepted since `start`, closed since or not."""
        return await self._received() - self._base

    async def aclose(self) -> None:
        await self._client.aclose()


BURST = 300
POOL_BOUND = 10  # RedisStore.from_url's max_connections by default


async def burst(worker: Worker, path: str, redis_url: str) -> tuple[list[int | str], int]:
    """`BURST` requests to ``path`` at once through ``worker``: what each got, and how many
    connections Redis accepted meanwhile (`ConnectionCounter`)."""
    counter = ConnectionCounter(redis_url)
    await counter.start()
    try:
        results: list[int | str] = []

        async def send() -> None:
            results.append(await worker.get(path))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                for _ in range(BURST):
                    group.start_soon(send)
        return results, await counter.opened()
    finally:
        await counter.aclose()


async def test_a_burst_of_failures_opens_few_redis_connections_and_the_fleet_circuit(
    h1_server: ServerThread, redis_server: RedisServer, key: str, workers: Callable[..., Any]
) -> None:
    # An origin every worker has used while it was healthy, then an outage: 300 requests at
    # once through one transport, all in flight before the first failure comes back, so all
    # reach the upstream; their 300 failures are reported at once.
    name = f"burst-{key}"
    breaker = {"failure_threshold": 5, "recovery_time": 60.0}
    [worker] = workers(1, h1_server.url, redis_server.url, name=name, breaker=breaker)
    assert await worker.get(f"/ok/{key}-warm") == 200
    results, opened = await burst(worker, f"/status/{key}?code=500&delay=0.2", redis_server.url)
    assert results == [500] * BURST
    assert h1_server.app.hits(key) == BURST  # type: ignore[attr-defined]
    # One transport, one store: at most its pool's bound of connections, however many
    # requests failed at once (with redis-py's default pool: one per concurrent call, 95
    # here, and past its 100 every call failed: the worker fell back to local state).
    assert opened <= POOL_BOUND, opened
    assert worker.store is not None
    assert worker.store.max_connections == POOL_BOUND
    # The failures reached the fleet: the circuit is open here, and for a worker that joins
    # now (its first request to the origin asks the fleet), without reaching the upstream.
    [other] = workers(1, h1_server.url, redis_server.url, name=name, breaker=breaker)
    for each in (worker, other):
        assert await each.get(f"/status/{key}?code=500") == "CircuitOpenError"
    assert h1_server.app.hits(key) == BURST  # type: ignore[attr-defined]


async def test_a_burst_while_the_fleet_counts_failures_opens_few_redis_connections(
    h1_server: ServerThread, redis_server: RedisServer, key: str, workers: Callable[..., Any]
) -> None:
    # The fleet has counted 4 failures of 8 for the origin; then 300 requests at once through
    # one transport to the upstream, which fails slowly: each request reserves an in-flight
    # place first (the fleet allows 10, failures included), the rest are held and ask again.
    breaker = {"failure_threshold": 8, "recovery_time": 60.0}
    settings = {"sync_interval": 5.0}  # held requests wait up to 5 s for the ones out
    worker, other = workers(2, h1_server.url, redis_server.url, name=f"held-{key}",
                            breaker=breaker, store_kwargs=settings)  # fmt: skip
    for each in (worker, other):
        for _ in range(2):
            assert await each.get(f"/status/{key}-first?code=500") == 500
    results, opened = await burst(worker, f"/status/{key}?code=500&delay=0.2", redis_server.url)
    # As with 40 requests from 4 workers (above): 6 places, 6 failures, and the circuit opens
    # fleet-wide; every held request fails fast.
    # (With redis-py's default pool, 100 concurrent calls failed with "Too many connections":
    # the worker fell back to local state and all 300 went.)
    assert h1_server.app.hits(key) == 6  # type: ignore[attr-defined]
    assert sorted(results, key=str) == [500] * 6 + ["CircuitOpenError"] * (BURST - 6)
    assert opened <= POOL_BOUND, opened
    assert worker.store is not None
    assert worker.store.max_connections == POOL_BOUND
    for each in (worker, other):
        assert await each.get(f"/status/{key}?code=500") == "CircuitOpenError"
    assert h1_server.app.hits(key) == 6  # type: ignore[attr-defined]


async def test_no_free_connection_within_the_timeout_is_a_store_failure(
    h1_server: ServerThread,
    redis_server: RedisServer,
    key: str,
    workers: Callable[..., Any],
    fault_proxy: FaultProxy,
) -> None:
    # The store's one connection is taken (checked out of its pool) and not given back: the
    # failures' reports wait for it, give up after the store's timeout, and the worker keeps
    # to local state (the hook says so; no caller sees an error). Given back, sharing resumes.
    events: list[bool] = []
    [worker] = workers(1, h1_server.url, redis_server.url, name=f"busy-{key}", events=events,
                       breaker={"failure_threshold": 3, "recovery_time": 60.0},
                       store_kwargs={"max_connections": 1, "timeout": 0.2,
                                     "retry_interval": 0.0})  # fmt: skip
    assert await worker.get(f"/ok/{key}") == 200
    assert worker.store is not None
    pool = worker.store._client.connection_pool
    try:
        taken = await pool.get_connection()
    except TypeError:  # redis-py before 5.3 wants a command's name
        taken = await pool.get_connection("PING")  # type: ignore[call-arg,unused-ignore]
    try:
        results = [await worker.get(f"/status/{key}-down?code=500") for _ in range(4)]
    finally:
        await pool.release(taken)
    assert results == [500, 500, 500, "CircuitOpenError"]  # the local breaker's decisions
    assert events[:1] == [False]

    async def tick() -> None:  # requests to another origin: their syncs ask the store
        assert (await worker.client.get(f"{fault_proxy.url}/ok/{key}")).status_code == 200

    await until(lambda: events[-1:] == [True], tick=tick)


async def test_a_burst_of_retried_failures_stays_within_the_fleet_budget_and_few_connections(
    h1_server: ServerThread, redis_server: RedisServer, key: str, workers: Callable[..., Any]
) -> None:
    # 300 requests at once, every answer 502, one retry each if the fleet's budget allows:
    # floor 1 + 20 % of the requests. Each failure that would be retried asks the budget.
    retry = RetryConfig(
        max_retries=1, base_delay=0.0, max_delay=0.0, budget_ratio=0.2,
        budget_min_per_second=0.1, budget_window=10.0,
    )  # fmt: skip
    [worker] = workers(1, h1_server.url, redis_server.url, name=f"retries-{key}", retry=retry)
    assert await worker.get(f"/ok/{key}-warm") == 200
    results, opened = await burst(worker, f"/status/{key}?code=502&delay=0.2", redis_server.url)
    assert results == [502] * BURST
    retries = h1_server.app.hits(key) - BURST  # type: ignore[attr-defined]
    assert 0 < retries <= 1 + 0.2 * (BURST + 1)  # the warm-up request counts too
    assert opened <= POOL_BOUND, opened


async def test_a_burst_to_an_origin_with_failures_stays_within_the_limit_with_a_slow_redis(
    h1_server: ServerThread, redis_server: RedisServer, key: str, workers: Callable[..., Any]
) -> None:
    # failure_threshold 20: failures + reserved requests out may reach 25. The fleet has
    # counted 1 failure; then 60 requests at once to an upstream that fails in 50 ms, through
    # a Redis that answers each call in about 0.1 s (within the 2 s timeout). Held requests
    # wait up to sync_interval (1 s). At most 24 places are granted: at most 24 requests
    # reach the upstream; their failures open the circuit and the others fail fast. (Asking
    # one request at a time took a round trip per place: most of the burst waited its turn
    # past sync_interval and went without a place.)
    breaker = {"failure_threshold": 20, "recovery_time": 60.0}
    with DelayProxy(redis_server.port) as proxy:
        [worker] = workers(1, h1_server.url, proxy.url, name=f"slow-{key}", breaker=breaker,
                           store_kwargs={"sync_interval": 1.0})  # fmt: skip
        assert await worker.get(f"/status/{key}-first?code=500") == 500  # the fleet's 1st
        proxy.delay = 0.05
        results: list[int | str] = []

        async def send() -> None:
            results.append(await worker.get(f"/status/{key}?code=500&delay=0.05"))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                for _ in range(60):
                    group.start_soon(send)
        proxy.delay = 0.0
    hits = h1_server.app.hits(key)  # type: ignore[attr-defined]
    assert hits <= 24, hits
    assert sorted(results, key=str) == [500] * hits + ["CircuitOpenError"] * (60 - hits)


async def test_requests_that_will_not_be_retried_take_nothing_from_the_fleet_budget(
    h1_server: ServerThread, redis_server: RedisServer, key: str, workers: Callable[..., Any]
) -> None:
    # Two workers, one retry per request, a budget floor of 600 retries per window (never the
    # limit here). First 20 POSTs at once through each, every answer 503: not retried (no
    # Idempotency-Key), so none may take a retry token from the fleet's budget. Then 20 GETs
    # at once through each, every answer 503: each is retried once, and each retry takes a
    # token; the GETs' last attempts take none. Before the fix, every failure of a request
    # whose policy retries its status made sure of a token first: the POSTs alone took 40.
    retry = RetryConfig(
        max_retries=1, base_delay=0.0, max_delay=0.0, budget_ratio=0.2,
        budget_min_per_second=10.0, budget_window=60.0,
    )  # fmt: skip
    prefix = f"budget-{key}"
    fleet = [
        workers(1, h1_server.url, None, name=prefix, retry=retry,
                store=RedisStore.from_url(redis_server.url, prefix=prefix, timeout=2.0))[0]
        for _ in range(2)
    ]  # fmt: skip
    inspector = aioredis.Redis.from_url(redis_server.url)

    async def spent() -> int:
        """The retries the fleet's budget counts as spent: its hash's ``t`` buckets (60 s
        window, 6 s buckets: none is reused during the test)."""
        buckets = await inspector.hmget(f"{prefix}:default:budget", [f"t{i}" for i in range(10)])
        return sum(int(count) for count in buckets if count is not None)

    async def at_once(method: str, path: str) -> list[int]:
        results: list[int] = []

        async def send(worker: Worker) -> None:
            results.append((await worker.client.request(method, path)).status_code)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                for worker in fleet:
                    for _ in range(20):
                        group.start_soon(send, worker)
        return results

    def tokens_at_hand() -> list[int]:
        return [worker.transport._fleet.retry_tokens for worker in fleet]

    try:
        assert await at_once("POST", f"/status/{key}-post?code=503&delay=0.05") == [503] * 40
        assert h1_server.app.hits(f"{key}-post") == 40  # type: ignore[attr-defined]
        assert tokens_at_hand() == [0, 0]
        assert await spent() == 0

        assert await at_once("GET", f"/status/{key}-get?code=503&delay=0.05") == [503] * 40
        assert h1_server.app.hits(f"{key}-get") == 80  # type: ignore[attr-defined]
        assert tokens_at_hand() == [0, 0]
        assert await spent() == 40
    finally:
        await inspector.aclose()


# --- what stats() and BudgetRefusal report with a shared budget ----------------------------


class Refusals(Hook):
    """Records the budget's refusals."""

    def __init__(self) -> None:
        self.seen: list[BudgetRefusal] = []

    def on_budget_refusal(self, refusal: BudgetRefusal) -> None:
        self.seen.append(refusal)


def budget_worker(
    make: Callable[..., list[Worker]], url: str, redis_url: str, prefix: str,
    retry: RetryConfig, sync_interval: float, hooks: list[object] | None = None,
) -> Worker:  # fmt: skip
    """A worker without a breaker (the budget's scope is "default") whose store has a prefix
    of its own: only this test's workers count in its budget."""
    store = RedisStore.from_url(redis_url, prefix=prefix, timeout=2.0, sync_interval=sync_interval,
                                retry_interval=600.0)  # fmt: skip
    [worker] = make(1, url, None, name=prefix, retry=retry, store=store, hooks=hooks)
    return worker


def fleet_of(worker: Worker) -> Any:
    fleet = worker.transport._fleet
    assert fleet is not None
    return fleet


async def synced(worker: Worker) -> None:
    """Wait until the worker's last background read is answered (at most ~10 s)."""
    fleet = fleet_of(worker)
    await until(lambda: fleet._sync_task is None and fleet.budget_seen_at is not None)


async def fleet_budget_left(redis_url: str, prefix: str, retry: RetryConfig) -> float:
    """What the fleet's budget has left, read from Redis by a client of the test's own."""
    assert retry.budget_ratio is not None
    policy = BudgetPolicy(retry.budget_ratio, retry.budget_min_per_second * retry.budget_window,
                          retry.budget_window)  # fmt: skip
    store = RedisStore.from_url(redis_url, prefix=prefix, timeout=2.0)
    try:
        return (await store.budget("default", 0, 0, policy)).left
    finally:
        await store.aclose()


async def test_stats_budget_left_is_the_fleets_budget_as_the_store_last_reported_it(
    h1_server: ServerThread, redis_server: RedisServer, key: str, workers: Callable[..., Any]
) -> None:
    # A floor of 10 retries per 40 s window plus half the requests; one retry per request.
    # (Binary fractions: every number below is exact, in Lua as in Python.)
    retry = RetryConfig(max_retries=1, base_delay=0.0, max_delay=0.0, budget_ratio=0.5,
                        budget_min_per_second=0.25, budget_window=40.0)  # fmt: skip
    prefix = f"view-{key}"
    a, b = (budget_worker(workers, h1_server.url, redis_server.url, prefix, retry, 0.02)
            for _ in range(2))  # fmt: skip
    assert b.transport.stats().budget_left is None  # the store has not answered yet
    assert b.transport.stats().budget_source == "fleet"

    # B's first request: its background read counts it and reads the fleet's budget.
    assert await b.get(f"/ok/{key}") == 200
    await synced(b)
    before = b.transport.stats()
    assert (before.budget_left, before.budget_source) == (10 + 0.5 * 1, "fleet")
    assert before.budget_age is not None

    # A: three GETs answered 503, each retried once with a token of the fleet's budget.
    for _ in range(3):
        assert await a.get(f"/status/{key}-503?code=503") == 503
    assert h1_server.app.hits(f"{key}-503") == 6  # type: ignore[attr-defined]
    await synced(a)
    # B made no store call since: its number is still the store's answer of then.
    assert b.transport.stats().budget_left == 10.5
    # Its next request (past its sync_interval) reads the budget again: A's retries are in.
    seen = fleet_of(b).budget_seen_at
    await anyio.sleep(0.05)
    assert await b.get(f"/ok/{key}") == 200
    await until(lambda: fleet_of(b).budget_seen_at != seen)
    await synced(b)
    after = b.transport.stats()
    # The fleet: 5 requests (B 2, A 3), 3 retries. B's own budget, the number reported
    # before, would say 10 + 0.5 * 2 = 11 with no retry of its own.
    assert (after.budget_left, after.budget_source) == (10 + 0.5 * 5 - 3, "fleet")
    assert after.budget_left == await fleet_budget_left(redis_server.url, prefix, retry)
    assert after.as_dict()["budget_source"] == "fleet"


async def test_a_budget_refusal_reports_what_the_fleet_said(
    h1_server: ServerThread, redis_server: RedisServer, key: str, workers: Callable[..., Any]
) -> None:
    # A floor of 1 retry per 32 s window plus 1/16 of the requests; one retry per request.
    # Each worker reads in the background once (its first request), then only its retries'
    # budget calls reach the store: every answer below is known exactly.
    retry = RetryConfig(max_retries=1, base_delay=0.0, max_delay=0.0, budget_ratio=0.0625,
                        budget_min_per_second=1 / 32, budget_window=32.0)  # fmt: skip
    prefix = f"refusal-{key}"
    hooks = {name: Refusals() for name in "ac"}
    a, c = (budget_worker(workers, h1_server.url, redis_server.url, prefix, retry, 3600.0,
                          hooks=[hooks[name]]) for name in "ac")  # fmt: skip
    for worker in (c, a):
        assert await worker.get(f"/ok/{key}") == 200
        await synced(worker)
    assert a.transport.stats().budget_left == 1 + 2 / 16
    # A: the first 503 is retried (1 + 3/16 left before it: 3/16 after); the second is not.
    assert await a.get(f"/status/{key}-503?code=503") == 503
    assert await a.get(f"/status/{key}-503?code=503") == 503
    assert h1_server.app.hits(f"{key}-503") == 3  # type: ignore[attr-defined]
    [refused] = hooks["a"].seen
    assert (refused.attempt, refused.available, refused.source) == (1, 4 / 16, "fleet")
    assert a.transport.stats().budget_left == 4 / 16
    # C: its retry is refused too. Its own budget (the number reported before) would have
    # said 1 + 2/16 left (a floor of 1 and 1/16 of its two requests), while refusing.
    assert await c.get(f"/status/{key}-503?code=503") == 503
    [refused] = hooks["c"].seen
    assert (refused.available, refused.source) == (5 / 16, "fleet")
    assert c.transport.stats().budget_left == 5 / 16
    assert await fleet_budget_left(redis_server.url, prefix, retry) == 5 / 16


# A floor of 4 retries per 32 s window plus 1/16 of the requests; one retry per request.
_SMALL_BUDGET = RetryConfig(max_retries=1, base_delay=0.0, max_delay=0.0, budget_ratio=0.0625,
                            budget_min_per_second=0.125, budget_window=32.0)  # fmt: skip


async def test_while_the_store_is_unavailable_stats_report_the_workers_own_allowance(
    h1_server: ServerThread, key: str, workers: Callable[..., Any]
) -> None:
    retry = _SMALL_BUDGET
    server = RedisServer(redis_server_or_skip()).start()
    try:
        prefix = f"fallback-{key}"
        refusals = Refusals()
        a = budget_worker(workers, h1_server.url, server.url, prefix, retry, 3600.0)
        b = budget_worker(workers, h1_server.url, server.url, prefix, retry, 3600.0,
                          hooks=[refusals])  # fmt: skip
        for worker in (a, b):
            assert await worker.get(f"/ok/{key}") == 200
            await synced(worker)
        # The fleet: 2 requests, no retry; B made one of them.
        assert b.transport.stats().budget_left == 4 + 2 / 16
        server.kill()
        # B's first 503: its budget call fails, the store is unavailable (for 600 s), and B
        # decides alone: half of what the fleet had left (its share of the requests) plus
        # 1/16 of its request since: 2 + 1/16 + 1/16, one retry of it spent.
        assert await b.get(f"/status/{key}-503?code=503") == 503
        stats = b.transport.stats()
        assert (stats.budget_left, stats.budget_source, stats.budget_age) == (
            2 + 2 / 16 - 1, "fallback", None,
        )  # fmt: skip
        assert await b.get(f"/status/{key}-503?code=503") == 503  # 1 + 3/16: retried
        assert b.transport.stats().budget_left == 3 / 16
        assert await b.get(f"/status/{key}-503?code=503") == 503  # 4/16: not retried
        assert h1_server.app.hits(f"{key}-503") == 5  # type: ignore[attr-defined]
        [refused] = refusals.seen
        assert (refused.available, refused.source) == (4 / 16, "fallback")
        # B's own budget alone would have said 4 + 4/16 - 2: a floor that is the fleet's.
        assert b.transport.stats().as_dict()["budget_left"] == 4 / 16
    finally:
        server.stop()


# --- a Retry-After above retry_after_cap: no budget call, but its cool-down is shared ------


class CountingStore(RedisStore):
    """A RedisStore that records the retries each budget call asks for (a background read
    counts requests in the same script, but through `read`, not here)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wanted: list[int] = []

    async def budget(self, scope: str, requests: int, want: int, *args: Any, **kw: Any) -> Any:
        self.wanted.append(want)
        return await super().budget(scope, requests, want, *args, **kw)


async def test_a_retry_after_above_the_cap_takes_no_token_but_shares_its_capped_cool_down(
    h1_server: ServerThread,
    redis_server: RedisServer,
    key: str,
    workers: Callable[..., Any],
    fault_proxy: FaultProxy,
) -> None:
    # The default RetryConfig (retry_after_cap 60 s, a budget) and CoolDown (max_cool_down
    # 300 s, max_wait 60 s); a 503 asking for an hour.
    prefix = f"cap-{key}"
    stores: list[CountingStore] = []
    for _ in range(2):
        store = CountingStore.from_url(redis_server.url, prefix=prefix, timeout=2.0,
                                       sync_interval=0.02)  # fmt: skip
        assert isinstance(store, CountingStore)  # closed by its worker
        stores.append(store)
    a, b = (workers(1, h1_server.url, None, name=prefix, retry=RetryConfig(), store=store)[0]
            for store in stores)  # fmt: skip
    origin = Origin("http", "127.0.0.1", h1_server.port)
    inspector = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await b.get(f"/ok/{key}") == 200  # B uses the origin too
        response = await a.client.get(f"/status/{key}-ra?code=503&retry_after=3600")
        assert response.status_code == 503
        [attempt] = get_retry_history(response)
        assert attempt.reason == "Retry-After above retry_after_cap"
        assert h1_server.app.hits(f"{key}-ra") == 1  # type: ignore[attr-defined]
        # Not retried: no budget call, no token in hand, nothing spent in the fleet's budget.
        assert (stores[0].wanted, fleet_of(a).retry_tokens) == ([], 0)
        spent = await inspector.hmget(f"{prefix}:default:budget", [f"t{i}" for i in range(10)])
        assert sum(int(count) for count in spent if count is not None) == 0
        # But the server asked every client to wait: the window is shared, cut to 300 s.
        cool_a = a.transport.cool_down
        assert cool_a is not None
        assert 60.0 < cool_a.retry_in(origin) <= 300.0
        cd_key = f"{prefix}:default:cd:{origin}"

        async def shared() -> int:
            return int(await inspector.pttl(cd_key))

        ttl = 0
        for _ in range(500):  # the share goes in the background (bounded: ~10 s)
            ttl = await shared()
            if ttl > 0:
                break
            await anyio.sleep(0.02)
        assert 60_000 < ttl <= 300_000
        # B learns of it at its next read (requests elsewhere keep its reads going), holds
        # at most 300 s too, and fails its request at once (above max_wait): nothing sent.
        cool_b = b.transport.cool_down
        assert cool_b is not None

        async def elsewhere() -> None:
            await b.client.get(f"{fault_proxy.url}/ok/{key}-elsewhere")

        await until(lambda: cool_b.retry_in(origin) > 0, tick=elsewhere)
        assert 60.0 < cool_b.retry_in(origin) <= 300.0
        assert await b.get(f"/ok/{key}") == "CoolDownError"
        assert h1_server.app.hits(key) == 1  # type: ignore[attr-defined]
        assert stores[1].wanted == []
    finally:
        await inspector.aclose()


async def test_a_shared_cool_down_stalls_the_fleet_no_longer_than_max_cool_down(
    h1_server: ServerThread,
    redis_server: RedisServer,
    key: str,
    workers: Callable[..., Any],
    fault_proxy: FaultProxy,
) -> None:
    # Every worker's CoolDown cuts windows to 0.5 s and fails a held request at once; a 503
    # asks for a day.
    shared: dict[str, Any] = {"name": f"stall-{key}", "store_kwargs": {"sync_interval": 0.02}}
    a, b = (workers(1, h1_server.url, redis_server.url, retry=RetryConfig(),
                    cool_down=CoolDown(max_cool_down=0.5, max_wait=0.0), **shared)[0]
            for _ in range(2))  # fmt: skip
    origin = Origin("http", "127.0.0.1", h1_server.port)
    cool_b = b.transport.cool_down
    assert cool_b is not None
    assert await b.get(f"/ok/{key}") == 200
    assert await a.get(f"/status/{key}-ra?code=503&retry_after=86400") == 503

    async def elsewhere() -> None:
        await b.client.get(f"{fault_proxy.url}/ok/{key}-elsewhere")

    await until(lambda: cool_b.retry_in(origin) > 0, tick=elsewhere)
    assert cool_b.retry_in(origin) <= 0.5
    # Held by the fleet's window, then sent again once it has run out (within ~10 s, not
    # a day); its answer ends the cool-down.
    for _ in range(500):
        result = await b.get(f"/ok/{key}")
        if result == 200:
            break
        assert result == "CoolDownError"
        await anyio.sleep(0.02)
    assert result == 200
    assert h1_server.app.hits(f"{key}-ra") == 1  # type: ignore[attr-defined]
    assert await a.get(f"/ok/{key}") == 200  # A's own window ran out too


# --- answers that come late: an older answer of the budget's must not overwrite a newer one --


class HeldReadStore(RedisStore):
    """A RedisStore whose background reads, once ``hold`` is set, reach Redis and are
    answered there at once, but reach the worker only when ``release`` is set: a read
    answered by Redis before a later call, delivered after it (the two answer on different
    connections, so the order they are delivered in is not the order Redis served them)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hold = False
        self.served = anyio.Event()  # a held read was answered by Redis
        self.release = anyio.Event()

    async def read(self, *args: Any, **kwargs: Any) -> Any:
        views = await super().read(*args, **kwargs)
        if self.hold:
            self.served.set()
            await self.release.wait()
        return views


class Availability(Hook):
    """Records what the store's availability events say."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    def on_store_availability(self, event: StoreAvailability) -> None:
        self.seen.append(event.available)


def held_worker(
    make: Callable[..., list[Worker]], url: str, redis_url: str, prefix: str,
    retry: RetryConfig, hooks: list[object] | None = None,
) -> tuple[Worker, HeldReadStore]:  # fmt: skip
    store = HeldReadStore.from_url(redis_url, prefix=prefix, timeout=5.0, sync_interval=0.05,
                                   retry_interval=600.0)  # fmt: skip
    assert isinstance(store, HeldReadStore)  # closed by its worker
    [worker] = make(1, url, None, name=prefix, retry=retry, store=store, hooks=hooks)
    return worker, store


async def test_a_read_answered_before_a_budget_call_does_not_overwrite_its_answer(
    h1_server: ServerThread, redis_server: RedisServer, key: str, workers: Callable[..., Any]
) -> None:
    retry = _SMALL_BUDGET
    prefix = f"late-{key}"
    a, store = held_worker(workers, h1_server.url, redis_server.url, prefix, retry)
    assert await a.get(f"/ok/{key}") == 200
    await synced(a)
    assert a.transport.stats().budget_left == 4 + 1 / 16
    # A's next read counts its request in Redis (4 + 2/16 left there), and comes late.
    store.hold = True
    await anyio.sleep(0.1)  # past sync_interval: the next request starts a read
    assert await a.get(f"/ok/{key}") == 200
    with anyio.fail_after(10):
        await store.served.wait()
    # Meanwhile a 503 is retried with a token its budget call got: 4 + 3/16 - 1 left.
    assert await a.get(f"/status/{key}-503?code=503") == 503
    assert h1_server.app.hits(f"{key}-503") == 2  # type: ignore[attr-defined]
    assert a.transport.stats().budget_left == 3 + 3 / 16
    # The late read arrives: what it says is older than what the budget call said.
    store.release.set()
    await until(lambda: fleet_of(a)._sync_task is None)
    assert await fleet_budget_left(redis_server.url, prefix, retry) == 3 + 3 / 16
    assert a.transport.stats().budget_left == 3 + 3 / 16


async def test_a_read_answered_before_the_store_went_down_does_not_renew_the_fallback(
    h1_server: ServerThread, key: str, workers: Callable[..., Any]
) -> None:
    retry = _SMALL_BUDGET
    server = RedisServer(redis_server_or_skip()).start()
    try:
        prefix = f"late-down-{key}"
        refusals, availability = Refusals(), Availability()
        a = budget_worker(workers, h1_server.url, server.url, prefix, retry, 3600.0)
        b, store = held_worker(workers, h1_server.url, server.url, prefix, retry,
                               [refusals, availability])  # fmt: skip
        for worker in (a, b):
            assert await worker.get(f"/ok/{key}") == 200
            await synced(worker)
        # The fleet: 2 requests, no retry; B's share is half of 4 + 2/16.
        assert b.transport.stats().budget_left == 4 + 2 / 16
        # B's next read counts its request in Redis and is answered; then Redis dies before
        # that answer reaches B.
        store.hold = True
        await anyio.sleep(0.1)  # past sync_interval
        assert await b.get(f"/ok/{key}") == 200
        with anyio.fail_after(10):
            await store.served.wait()
        server.kill()
        # B on its own: 2 + 1/16 and 1/16 per request since, less its retries: the first two
        # 503s are retried (2 + 3/16, then 1 + 4/16), then nothing is left (5/16).
        for _ in range(2):
            assert await b.get(f"/status/{key}-503?code=503") == 503
        assert h1_server.app.hits(f"{key}-503") == 4  # type: ignore[attr-defined]
        stats = b.transport.stats()
        assert (stats.budget_left, stats.budget_source) == (4 / 16, "fallback")
        # The read Redis answered before it died (before B spent those two retries) arrives
        # now: it must not hand B a fresh share, as if the two retries had not been spent.
        store.release.set()
        await until(lambda: fleet_of(b)._sync_task is None)
        assert b.transport.stats().budget_left == 4 / 16
        assert await b.get(f"/status/{key}-503?code=503") == 503
        assert h1_server.app.hits(f"{key}-503") == 5  # type: ignore[attr-defined]
        [refused] = refusals.seen
        assert (refused.available, refused.source) == (5 / 16, "fallback")
        # Nor does it say that the store answers again: it answered before it went down.
        assert availability.seen == [False]
    finally:
        server.stop()
