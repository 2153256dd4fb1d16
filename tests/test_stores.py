"""The `StateStore` contract, run against `MemoryStore` and against `RedisStore` on a real
redis-server of the tests' own (127.0.0.1, a free port): the two must agree.

Time passes for real here (Redis reads its own clock), so recovery times are short and the
tests wait for a state with a bounded loop; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator

import anyio
import pytest
import redis
import redis.asyncio as aioredis
import redis.exceptions

from httpx_resilience import CircuitState, MemoryStore, RedisStore, StateStore
from httpx_resilience._stores._protocol import BudgetPolicy, CircuitPolicy, StoreRead
from tests.support.redis import DelayProxy, RedisServer, redis_server_or_skip

pytestmark = pytest.mark.anyio

COUNT = CircuitPolicy(3, 0.2, None, 10, 30.0, 5.0)
RATE = CircuitPolicy(3, 0.2, 0.5, 4, 30.0, 5.0)
STORE_TIMEOUT = 2.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's client is asyncio-only


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer(redis_server_or_skip()) as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, key: str) -> AsyncIterator[StateStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    # A generous timeout: these tests are about what the store answers, not how fast. With
    # the default 0.1 s, one pause of the test process (a GC pass, the machine's scheduler)
    # while 20 calls open their connections made a call raise `TimeoutError` (seen in CI).
    redis_store = RedisStore.from_url(server.url, prefix=f"t{key}", timeout=STORE_TIMEOUT)
    try:
        yield redis_store
    finally:
        await redis_store.aclose()


async def wait_for_state(store: StateStore, state: CircuitState, origin: str = "o") -> None:
    for _ in range(200):
        view, _ = await store.circuit("s", origin, "read", COUNT)
        if view.state is state:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never reached {state}")


async def test_count_mode_opens_at_the_threshold(store: StateStore) -> None:
    view, _ = await store.circuit("s", "o", "report", COUNT, failures=2)
    assert (view.state, view.failures) == (CircuitState.CLOSED, 2)
    view, _ = await store.circuit("s", "o", "report", COUNT, failures=1)
    assert view.state is CircuitState.OPEN
    assert 0 < view.retry_in <= 0.2 + 1e-9
    # Stragglers have no say while it is open.
    view, _ = await store.circuit("s", "o", "report", COUNT, successes=5, success_age=0.0)
    assert view.state is CircuitState.OPEN


async def test_a_success_breaks_the_run(store: StateStore) -> None:
    await store.circuit("s", "o", "report", COUNT, failures=2)
    view, _ = await store.circuit("s", "o", "report", COUNT, failures=1, success_age=0.0)
    assert (view.state, view.failures) == (CircuitState.CLOSED, 1)
    view, _ = await store.circuit("s", "o", "report", COUNT, successes=1, success_age=0.0)
    assert (view.state, view.failures) == (CircuitState.CLOSED, 0)


async def test_a_success_breaks_only_a_run_that_began_before_it(store: StateStore) -> None:
    await store.circuit("s", "o", "report", COUNT, failures=1)
    await asyncio.sleep(0.05)  # the run began at least 50 ms ago
    # A success 10 s ago (reported late, by a worker that flushes now) came before the run.
    view, _ = await store.circuit("s", "o", "report", COUNT, failures=1, success_age=10.0)
    assert view.failures == 2
    view, _ = await store.circuit("s", "o", "report", COUNT, successes=1, success_age=0.0)
    assert view.failures == 0


async def test_admit_reserves_in_flight_places_while_the_fleet_counts_failures(
    store: StateStore,
) -> None:
    assert COUNT.in_flight_limit == 4  # threshold 3, and one more
    # No failures: granted without a reservation.
    view, granted = await store.circuit("s", "o", "admit", COUNT, token="healthy")
    assert (view.state, view.failures, granted) == (CircuitState.CLOSED, 0, True)
    await store.circuit("s", "o", "report", COUNT, failures=2)
    # 2 failures + 2 reservations = the limit: the third request is refused (held).
    grants = [(await store.circuit("s", "o", "admit", COUNT, token=f"r{n}"))[1] for n in range(3)]
    assert grants == [True, True, False]
    # A reserved request's success gives its place back and breaks the run.
    view, _ = await store.circuit("s", "o", "report", COUNT, successes=1, success_age=0.0,
                                  token="r0")  # fmt: skip
    assert view.failures == 0
    await store.circuit("s", "o", "report", COUNT, failures=2)
    # r1 is still out: 2 + 1 + 1 = 4, one more place.
    grants = [(await store.circuit("s", "o", "admit", COUNT, token=f"s{n}"))[1] for n in range(2)]
    assert grants == [True, False]
    await store.circuit("s", "o", "release", COUNT, token="s0")  # cancelled: place back
    assert (await store.circuit("s", "o", "admit", COUNT, token="s2"))[1]
    # The reserved requests fail: the circuit opens and refuses everything.
    view, _ = await store.circuit("s", "o", "report", COUNT, failures=1, token="r1")
    assert view.state is CircuitState.OPEN
    view, granted = await store.circuit("s", "o", "admit", COUNT, token="late")
    assert (view.state, granted) == (CircuitState.OPEN, False)


async def test_a_dead_workers_reservation_ends_with_its_lease(store: StateStore) -> None:
    short = CircuitPolicy(3, 0.2, None, 10, 30.0, 0.05)  # 50 ms leases
    await store.circuit("s", "o", "report", short, failures=2)
    assert (await store.circuit("s", "o", "admit", short, token="a"))[1]
    assert (await store.circuit("s", "o", "admit", short, token="b"))[1]
    assert not (await store.circuit("s", "o", "admit", short, token="c"))[1]
    for _ in range(200):  # a and b never report: their leases run out
        if (await store.circuit("s", "o", "admit", short, token="c"))[1]:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the reservations never expired")


async def test_origins_and_scopes_are_apart(store: StateStore) -> None:
    await store.circuit("s", "o", "report", COUNT, failures=3)
    assert (await store.circuit("s", "other", "read", COUNT))[0].state is CircuitState.CLOSED
    assert (await store.circuit("t", "o", "read", COUNT))[0].state is CircuitState.CLOSED


async def test_exactly_one_probe_per_half_open_period(store: StateStore) -> None:
    long = CircuitPolicy(3, 600.0, None, 10, 30.0, 5.0)
    await store.circuit("s", "long", "report", long, failures=3)
    _, granted = await store.circuit("s", "long", "probe", long, token="early")
    assert not granted  # still open
    await store.circuit("s", "o", "report", COUNT, failures=3)
    await wait_for_state(store, CircuitState.HALF_OPEN)
    claims = await asyncio.gather(
        *(store.circuit("s", "o", "probe", COUNT, token=f"w{n}") for n in range(20))
    )
    winners = [n for n, (_, granted) in enumerate(claims) if granted]
    assert len(winners) == 1
    # A result with another token has no say; the winner's failure re-opens.
    view, _ = await store.circuit("s", "o", "result", COUNT, failures=1, token="nobody")
    assert view.state is CircuitState.HALF_OPEN
    view, _ = await store.circuit("s", "o", "result", COUNT, failures=1, token=f"w{winners[0]}")
    assert view.state is CircuitState.OPEN
    await wait_for_state(store, CircuitState.HALF_OPEN)
    _, granted = await store.circuit("s", "o", "probe", COUNT, token="second")
    assert granted
    view, _ = await store.circuit("s", "o", "result", COUNT, token="second")
    assert view.state is CircuitState.CLOSED
    _, granted = await store.circuit("s", "o", "probe", COUNT, token="closed")
    assert granted  # closed: no probe needed, go


async def test_a_dead_probes_claim_ends_with_its_lease(store: StateStore) -> None:
    short = CircuitPolicy(3, 0.05, None, 10, 30.0, 0.1)  # 100 ms leases
    await store.circuit("s", "o", "report", short, failures=3)
    for _ in range(200):
        view, granted = await store.circuit("s", "o", "probe", short, token="dies")
        if granted:
            break
        await asyncio.sleep(0.01)
    assert granted  # the worker holding it never reports
    assert not (await store.circuit("s", "o", "probe", short, token="next"))[1]
    for _ in range(200):
        view, granted = await store.circuit("s", "o", "probe", short, token="next")
        if granted:
            break
        assert view.state is CircuitState.HALF_OPEN
        await asyncio.sleep(0.01)
    assert granted
    # The dead worker's late result has no say; the new holder's does.
    view, _ = await store.circuit("s", "o", "result", short, token="dies")
    assert view.state is CircuitState.HALF_OPEN
    view, _ = await store.circuit("s", "o", "result", short, token="next")
    assert view.state is CircuitState.CLOSED


async def test_a_released_probe_can_be_claimed_again(store: StateStore) -> None:
    await store.circuit("s", "o", "report", COUNT, failures=3)
    await wait_for_state(store, CircuitState.HALF_OPEN)
    assert (await store.circuit("s", "o", "probe", COUNT, token="a"))[1]
    assert not (await store.circuit("s", "o", "probe", COUNT, token="b"))[1]
    await store.circuit("s", "o", "release", COUNT, token="a")
    assert (await store.circuit("s", "o", "probe", COUNT, token="b"))[1]


async def test_rate_mode_opens_on_the_ratio(store: StateStore) -> None:
    view, _ = await store.circuit("s", "r", "report", RATE, successes=3)
    assert view.state is CircuitState.CLOSED
    view, _ = await store.circuit("s", "r", "report", RATE, failures=2)
    assert view.state is CircuitState.CLOSED  # 2 of 5
    view, _ = await store.circuit("s", "r", "report", RATE, failures=1)
    assert view.state is CircuitState.OPEN  # 3 of 6


async def test_a_read_reports_successes_in_the_same_step(store: StateStore) -> None:
    views = await store.read("s", ["r", "idle"], RATE, reports={"r": (3, 0.0)})
    assert views["r"][0].state is CircuitState.CLOSED
    view, _ = await store.circuit("s", "r", "report", RATE, failures=2)
    assert view.state is CircuitState.CLOSED  # 2 of 5: the 3 successes counted
    view, _ = await store.circuit("s", "r", "report", RATE, failures=1)
    assert view.state is CircuitState.OPEN  # 3 of 6


async def test_budget_is_floor_plus_ratio_of_requests(store: StateStore) -> None:
    policy = BudgetPolicy(ratio=0.2, floor=2.0, window=30.0)
    view = await store.budget("s", 10, False, policy)  # counting only
    assert view == (False, 10, 4.0)
    granted = [(await store.budget("s", 0, True, policy)).granted for _ in range(6)]
    assert granted == [True, True, True, True, False, False]  # 2 + 0.2 * 10
    view = await store.budget("s", 5, True, policy)
    assert view == (True, 15, 0.0)  # 2 + 0.2 * 15 = 5 spent
    assert not (await store.budget("s", 0, True, policy)).granted


async def test_budget_grants_as_many_retries_as_fit_at_once(store: StateStore) -> None:
    policy = BudgetPolicy(ratio=0.2, floor=2.0, window=30.0)
    view = await store.budget("s", 10, 3, policy)  # 2 + 0.2 * 10 = 4 allowed
    assert view == (3, 10, 1.0)
    view = await store.budget("s", 0, 5, policy)  # one left
    assert view == (1, 10, 0.0)
    assert (await store.budget("s", 7, 50, policy)).granted == 1  # 0.2 * 7 = 1.4 more


async def test_retries_spent_without_the_store_are_reconciled(store: StateStore) -> None:
    policy = BudgetPolicy(ratio=0.2, floor=2.0, window=30.0)
    await store.budget("s", 20, False, policy)  # 2 + 0.2 * 20 = 6 allowed
    # A worker spent 4 while it could not reach the store; they count now.
    view = await store.budget("s", 0, True, policy, retries=4)
    assert view == (True, 20, 1.0)
    await store.read("s", [], None, requests=0, retries=1, budget=policy)  # and so in a flush
    assert (await store.budget("s", 0, True, policy)) == (False, 20, 0.0)


async def test_a_read_answers_with_the_budget_it_counted_in(store: StateStore) -> None:
    policy = BudgetPolicy(ratio=0.5, floor=2.0, window=30.0)
    await store.budget("s", 4, 3, policy)  # 2 + 0.5 * 4 = 4 allowed, 3 spent
    views = await store.read("s", ["o"], COUNT, requests=2, budget=policy)
    assert isinstance(views, StoreRead)
    assert views.budget == (0, 6, 2.0)  # counted, nothing spent: 2 + 0.5 * 6 - 3
    assert views["o"][0].state is CircuitState.CLOSED
    views = await store.read("s", [], None, budget=policy)  # nothing to count: a read only
    assert isinstance(views, StoreRead)
    assert (views.budget, dict(views)) == ((0, 6, 2.0), {})
    views = await store.read("s", ["o"], COUNT)  # no budget given: none read
    assert isinstance(views, StoreRead)
    assert views.budget is None


async def test_cool_downs_only_grow(store: StateStore) -> None:
    await store.note_cool_down("s", "o", 5.0)
    await store.note_cool_down("s", "o", 1.0)
    views = await store.read("s", ["o", "idle"], COUNT)
    assert 1.0 < views["o"][1] <= 5.0
    assert views["idle"] == (views["idle"][0], 0.0)
    assert views["idle"][0].state is CircuitState.CLOSED


async def test_redis_keys_all_expire_and_stay_few_per_origin(
    redis_server: RedisServer, key: str
) -> None:
    store = RedisStore.from_url(redis_server.url, prefix=f"k{key}", timeout=STORE_TIMEOUT)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        for origin in ("a", "b"):
            await store.circuit("payments", origin, "report", COUNT, failures=1)
            await store.circuit("payments", origin, "report", RATE, failures=1, successes=9)
            await store.note_cool_down("payments", origin, 30.0)
        await store.budget("payments", 10, True, BudgetPolicy(0.2, 1.0, 10.0))
        keys = sorted([k.decode() async for k in client.scan_iter(match=f"k{key}:*")])
        assert keys == [
            f"k{key}:payments:budget",
            f"k{key}:payments:cb:a",
            f"k{key}:payments:cb:b",
            f"k{key}:payments:cd:a",
            f"k{key}:payments:cd:b",
        ]
        for name in keys:
            assert await client.pttl(name) > 0, name
    finally:
        await store.aclose()
        await client.aclose()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout": 0}, r"RedisStore\.timeout must be >= 0\.001"),
        ({"sync_interval": -1}, r"RedisStore\.sync_interval must be >= 0\.001"),
        ({"prefix": ""}, r"RedisStore\.prefix must be a non-empty word"),
    ],
)
def test_invalid_redis_settings_name_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisStore(aioredis.Redis(), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        # Made without connecting (redis-py connects on the first command).
        (
            lambda: aioredis.RedisCluster(host="127.0.0.1", port=1),
            "redis.asyncio.cluster.RedisCluster",
        ),
        (lambda: redis.Redis(host="127.0.0.1", port=1), "redis.client.Redis"),
        (lambda: "redis://127.0.0.1:6379/0", "builtins.str"),
        (lambda: None, "builtins.NoneType"),
    ],
    ids=["RedisCluster", "sync Redis", "a URL", "None"],
)
def test_a_client_other_than_redis_asyncio_redis_is_refused_at_construction(
    make: Callable[[], object], kind: str
) -> None:
    # A RedisCluster failed with "AttributeError: 'RedisCluster' object has no attribute
    # 'connection_pool'"; a URL string with "... 'str' object has no attribute ...".
    client = make()
    with pytest.raises(TypeError) as caught:
        RedisStore(client)  # type: ignore[arg-type]
    assert str(caught.value) == (
        "RedisStore.client must be a redis.asyncio.Redis client (redis.asyncio.RedisCluster "
        f"and the synchronous redis.Redis are not supported), got {kind}"
    )


def test_invalid_memory_settings_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"MemoryStore\.probe_lease must be >= 0\.001"):
        MemoryStore(probe_lease=0)


def test_stores_satisfy_the_protocol() -> None:
    assert isinstance(MemoryStore(), StateStore)
    assert isinstance(RedisStore(aioredis.Redis()), StateStore)


def test_invalid_max_connections_name_the_field() -> None:
    for value, error in (
        (0, ValueError),
        (10_001, ValueError),
        (2.5, TypeError),
        (True, TypeError),
    ):
        with pytest.raises(error, match=r"RedisStore\.max_connections must be "):
            RedisStore.from_url("redis://127.0.0.1:1/0", max_connections=value)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"RedisStore\.max_connections must be >= 1 and <= 10000"):
        RedisStore.from_url("redis://127.0.0.1:1/0", max_connections=-3)


async def test_from_url_bounds_its_connections(redis_server: RedisServer, key: str) -> None:
    store = RedisStore.from_url(redis_server.url, prefix=f"m{key}", timeout=STORE_TIMEOUT,
                                max_connections=3)  # fmt: skip
    default = RedisStore.from_url(redis_server.url)
    counter = aioredis.Redis.from_url(redis_server.url)
    try:
        assert (store.max_connections, default.max_connections) == (3, 10)
        await counter.ping()
        before = (await counter.info("stats"))["total_connections_received"]
        # 40 calls at once share 3 connections: the others wait for one (within the timeout).
        views = await asyncio.gather(
            *(store.circuit("s", f"o{n}", "report", COUNT, failures=1) for n in range(40))
        )
        assert [view.failures for view, _ in views] == [1] * 40
        after = (await counter.info("stats"))["total_connections_received"]
        assert after - before == 3
    finally:
        await store.aclose()
        await default.aclose()
        await counter.aclose()


async def test_calls_cancelled_while_waiting_for_a_connection_leak_none(
    redis_server: RedisServer, key: str
) -> None:
    # One connection; a slow Redis (5 s) keeps it busy while 20 more calls wait for it. They are
    # cancelled while they wait (half by a cancel scope, which anyio delivers again at every
    # await until the scope exits; half by Task.cancel, once), and then the call that held it.
    # None of them may keep the connection: the next calls get it.
    with DelayProxy(redis_server.port) as proxy:
        store = RedisStore.from_url(proxy.url, prefix=f"c{key}", timeout=STORE_TIMEOUT,
                                    max_connections=1)  # fmt: skip
        try:
            await store.circuit("s", "o", "read", COUNT)  # the connection is open
            proxy.delay = 5.0
            holder = asyncio.ensure_future(store.circuit("s", "o", "read", COUNT))
            scopes: list[anyio.CancelScope] = []
            waiting: list[asyncio.Task[object]] = []

            async def in_scope() -> object:
                with anyio.CancelScope() as scope:
                    scopes.append(scope)
                    return await store.circuit("s", "o", "read", COUNT)
                return None

            for n in range(20):
                call = in_scope() if n % 2 else store.circuit("s", "o", "read", COUNT)
                waiting.append(asyncio.ensure_future(call))
            await asyncio.sleep(0.05)  # all 21 started; one has the connection
            assert not holder.done()  # 5 s of delay: it holds the connection
            assert not any(task.done() for task in waiting)  # they wait for it
            for scope in scopes:
                scope.cancel()
            for task in waiting[::2]:
                task.cancel()
            results = await asyncio.gather(*waiting, return_exceptions=True)
            assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results)
            holder.cancel()  # in flight: redis-py drops that connection
            with pytest.raises(asyncio.CancelledError):
                await holder
            proxy.delay = 0.0
            # The connection is free again: one call, then 5 at once, all answered.
            view, _ = await store.circuit("s", "o", "report", COUNT, failures=1)
            assert view.failures == 1
            views = await asyncio.gather(
                *(store.circuit("s", "o", "report", COUNT, failures=0) for _ in range(5))
            )
            assert [view.failures for view, _ in views] == [1] * 5
        finally:
            await store.aclose()


async def test_a_store_works_again_after_more_failed_connects_than_connections(key: str) -> None:
    # Redis down (killed: every connect refused) for more calls than the pool has
    # connections, then back: the store answers again. No failed connect may keep its
    # connection checked out of the pool.
    with RedisServer(redis_server_or_skip()) as server:  # its own: this test kills it
        store = RedisStore.from_url(server.url, prefix=f"d{key}", timeout=0.5,
                                    max_connections=2)  # fmt: skip
        try:
            await store.circuit("s", "o", "read", COUNT)  # connected
            server.kill()
            for _ in range(6):
                with (
                    anyio.fail_after(10),
                    pytest.raises(
                        (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
                    ),
                ):
                    await store.circuit("s", "o", "read", COUNT)
            server.start()
            with anyio.fail_after(10):
                view, _ = await store.circuit("s", "o", "report", COUNT, failures=1)
            assert view.failures == 1
        finally:
            await store.aclose()
