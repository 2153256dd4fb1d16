"""The transport's link to a store (`_fleet.py`) with a `MemoryStore` and a fake clock: the
fallback to local state when the store fails, and what the happy path asks of the store.
Real servers and a real redis-server: test_fleet_real.py."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

from httpx_resilience import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    CoolDownStart,
    Hook,
    MemoryStore,
    Origin,
    ResilientTransport,
    RetryConfig,
    StoreAvailability,
)
from httpx_resilience._fleet import Fleet, SharedBudget

pytestmark = pytest.mark.anyio

NO_RETRY = RetryConfig(max_retries=0, budget_ratio=None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FlakyStore(MemoryStore):
    """A MemoryStore that fails every call while ``down``, and counts the calls."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.down = False
        self.calls: list[str] = []

    async def circuit(self, scope: str, origin: str, op: Any, policy: Any, **kw: Any) -> Any:
        self.calls.append(op)
        if self.down:
            raise ConnectionError("store down")
        return await super().circuit(scope, origin, op, policy, **kw)

    async def budget(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append("budget")
        if self.down:
            raise ConnectionError("store down")
        return await super().budget(*args, **kwargs)

    async def read(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append("read")
        if self.down:
            raise ConnectionError("store down")
        return await super().read(*args, **kwargs)


def upstream(status: int) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(status))


async def test_the_happy_path_never_waits_on_the_store() -> None:
    clock = Clock()
    store = FlakyStore(clock=clock)
    transport = ResilientTransport(
        upstream(200), retry=NO_RETRY, circuit_breaker=CircuitBreaker(), state_store=store,
        clock=clock,
    )  # fmt: skip
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(100):
            for host in ("a", "b"):
                assert (await client.get(f"http://{host}.example/")).status_code == 200
    # The first request to each origin asks the fleet's circuit before it goes (it knows
    # nothing of it yet); then only background reads (at most one per sync_interval: the
    # clock never moved).
    assert store.calls.count("read") <= 1
    assert [c for c in store.calls if c != "read"] == ["admit", "admit"]


async def test_a_failing_store_falls_back_to_local_state_and_says_so(caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="httpx_resilience")
    clock = Clock()
    events: list[tuple[bool, str]] = []
    store = FlakyStore(
        clock=clock, retry_interval=5.0,
        on_availability=lambda ok, error: events.append((ok, type(error).__name__)),
    )  # fmt: skip
    store.down = True
    breaker = CircuitBreaker(failure_threshold=3, recovery_time=60.0, clock=clock)
    hook = AvailabilityEvents()
    transport = ResilientTransport(
        upstream(500), retry=NO_RETRY, circuit_breaker=breaker, state_store=store, clock=clock,
        hooks=[hook],
    )  # fmt: skip
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(3):
            assert (await client.get("http://a.example/")).status_code == 500
        with pytest.raises(CircuitOpenError):  # the local breaker still works
            await client.get("http://a.example/")
        assert events == [(False, "ConnectionError")]
        calls = len(store.calls)
        assert calls == 1  # one failed call, then local state for retry_interval
        assert "using local state, trying again in 5.0s" in caplog.text

        clock.now += 5.0
        store.down = False
        with pytest.raises(CircuitOpenError):
            await client.get("http://a.example/")  # starts a background sync
        for _ in range(100):  # let it run
            if events[-1][0]:
                break
            await anyio.sleep(0.01)
    assert events[-1] == (True, "NoneType")
    assert "sharing state with the fleet resumed" in caplog.text
    # The same, as hook events.
    down, up = hook.changes
    assert (down.store, down.available, down.retry_in) == ("MemoryStore()", False, 5.0)
    assert isinstance(down.error, ConnectionError)
    assert up == StoreAvailability("MemoryStore()", True, None, 0.0)


class AvailabilityEvents(Hook):
    def __init__(self) -> None:
        self.changes: list[StoreAvailability] = []
        self.cool_downs: list[CoolDownStart] = []

    def on_store_availability(self, change: StoreAvailability) -> None:
        self.changes.append(change)

    def on_cool_down_start(self, start: CoolDownStart) -> None:
        self.cool_downs.append(start)


async def test_a_cool_down_from_the_fleet_is_a_hook_event() -> None:
    store = MemoryStore(sync_interval=0.001)

    def throttle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"retry-after": "30"})

    first = ResilientTransport(httpx.MockTransport(throttle), retry=NO_RETRY, state_store=store)
    hook = AvailabilityEvents()
    second = ResilientTransport(upstream(200), retry=NO_RETRY, state_store=store, hooks=[hook])
    async with httpx.AsyncClient(transport=first) as a, httpx.AsyncClient(transport=second) as b:
        assert (await b.get("http://a.example/")).status_code == 200  # b uses the origin too
        assert (await a.get("http://a.example/")).status_code == 429
        for _ in range(100):  # b's background syncs read the fleet's cool-down
            if hook.cool_downs:
                break
            await anyio.sleep(0.01)
            await b.get("http://b.example/")
    [start] = hook.cool_downs
    assert (start.origin, start.status) == (Origin("http", "a.example", 80), None)
    assert 25.0 < start.seconds <= 30.0


async def test_a_closed_fleet_starts_nothing_in_the_background() -> None:
    # A request still in flight when its transport closes reports its outcome after aclose():
    # nothing may be left running that no one cancels.
    store = FlakyStore()
    transport = ResilientTransport(
        upstream(200), retry=NO_RETRY, circuit_breaker=CircuitBreaker(), state_store=store
    )
    fleet = transport._fleet
    assert fleet is not None
    origin = Origin("http", "a.example", 80)
    fleet.share_cool_down(origin, 5.0)
    assert len(fleet._tasks) == 1  # the check can fail: an open fleet does spawn
    await transport.aclose()
    assert fleet._tasks == set()
    fleet.share_cool_down(origin, 5.0)
    fleet.started(origin)
    assert fleet._tasks == set()


async def test_a_store_is_checked_on_construction() -> None:
    with pytest.raises(TypeError, match=r"ResilientTransport\.state_store must be a StateStore"):
        ResilientTransport(state_store=object())  # type: ignore[arg-type]


async def test_without_the_store_the_fleet_stays_within_its_retry_budget() -> None:
    clock = Clock()  # never moves: no budget window slides
    store = FlakyStore(clock=clock, retry_interval=600.0)
    retry = RetryConfig(
        max_retries=3, base_delay=0.0, max_delay=0.0, budget_ratio=0.2,
        budget_min_per_second=0.1, budget_window=10.0,
    )  # fmt: skip
    hits = [0]

    def busy(request: httpx.Request) -> httpx.Response:
        hits[0] += 1
        return httpx.Response(503)

    transports = [
        ResilientTransport(httpx.MockTransport(busy), retry=retry, state_store=store, clock=clock)
        for _ in range(4)
    ]
    clients = [httpx.AsyncClient(transport=transport) for transport in transports]
    retries = []
    for down in (False, True, False):
        store.down = down
        before = hits[0]
        for _ in range(10):
            for client in clients:
                assert (await client.get("http://a.example/")).status_code == 503
        retries.append(hits[0] - before - 40)
    for client in clients:
        await client.aclose()
    # The fleet's allowance: a floor of 1, plus 20 % of its requests.
    assert retries[0] == 1 + 0.2 * 40  # shared: exactly the allowance
    # Store down: each worker spends only its share of what was left (nothing) plus 20 % of
    # its own requests since: 2 each. Its own budget would have allowed 1 + 0.2 * 20 = 5.
    assert retries[1] == 4 * 2
    assert sum(retries[:2]) <= 1 + 0.2 * 80
    # Back: the retries spent meanwhile were reported, so the fleet's budget counts them.
    assert sum(retries) <= 1 + 0.2 * 120
    view = await store.budget("default", 0, False, retry_budget_policy(retry))
    assert view.left == 1 + 0.2 * 120 - sum(retries)


async def test_a_store_that_never_answered_leaves_only_the_ratio() -> None:
    clock = Clock()
    store = FlakyStore(clock=clock, retry_interval=600.0)
    store.down = True
    retry = RetryConfig(
        max_retries=3, base_delay=0.0, max_delay=0.0, budget_ratio=0.2,
        budget_min_per_second=0.1, budget_window=10.0,
    )  # fmt: skip
    hits = [0]

    def busy(request: httpx.Request) -> httpx.Response:
        hits[0] += 1
        return httpx.Response(503)

    for _ in range(4):
        transport = ResilientTransport(
            httpx.MockTransport(busy), retry=retry, state_store=store, clock=clock
        )
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(10):
                assert (await client.get("http://a.example/")).status_code == 503
    # 20 % of each worker's 10 requests, without the floor of 1 each worker's own budget
    # would add: the fleet's floor is not multiplied by its size.
    assert hits[0] - 40 == 4 * 2


def retry_budget_policy(retry: RetryConfig) -> Any:
    from httpx_resilience._stores._protocol import BudgetPolicy

    assert retry.budget_ratio is not None
    return BudgetPolicy(
        retry.budget_ratio, retry.budget_min_per_second * retry.budget_window, retry.budget_window
    )


async def test_rate_mode_flushes_every_origins_successes_in_one_call() -> None:
    clock = Clock()
    store = FlakyStore(clock=clock)
    breaker = CircuitBreaker(failure_rate_threshold=0.5, minimum_calls=4, clock=clock)
    transport = ResilientTransport(
        upstream(200), retry=NO_RETRY, circuit_breaker=breaker, state_store=store, clock=clock
    )
    hosts = ("a", "b", "c")
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(3):  # three sync intervals
            for host in hosts:
                for _ in range(5):
                    assert (await client.get(f"http://{host}.example/")).status_code == 200
            clock.now += store.sync_interval
            await synced(transport)
        await client.get("http://a.example/")  # a last sync: flushes the third round
        await synced(transport)
    # One call per sync, whatever the number of origins: no per-origin reports.
    assert set(store.calls) == {"read"}
    assert len(store.calls) == 4
    # Every success reached the fleet's window (15 per origin, and the last request's if
    # it ended before the sync read its count).
    calls = {h: store._circuits[("default", f"http://{h}.example:80")].counts.first for h in hosts}
    assert calls["b"] == calls["c"] == 15
    assert calls["a"] in (15, 16)


async def synced(transport: ResilientTransport) -> None:
    """Wait (bounded) until the transport's background sync, if one runs, is done."""
    fleet = transport._fleet
    assert fleet is not None
    for _ in range(200):
        await anyio.sleep(0.001)
        if fleet._sync_task is None:
            return
    raise AssertionError("the background sync never ended")


async def test_a_request_held_at_the_in_flight_limit_waits_at_most_sync_interval() -> None:
    store = FlakyStore(sync_interval=0.02)
    breaker = CircuitBreaker(failure_threshold=4, recovery_time=60.0)
    transport = ResilientTransport(
        upstream(500), retry=NO_RETRY, circuit_breaker=breaker, state_store=store
    )
    policy = transport._fleet._circuit_policy  # type: ignore[union-attr]
    assert policy is not None
    assert policy.in_flight_limit == 5
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get("http://a.example/")).status_code == 500  # the run: 1
        # Other workers' requests hold the 4 other places and never answer (until their
        # leases end).
        for n in range(4):
            _, granted = await store.circuit("default", "http://a.example:80", "admit", policy,
                                             token=f"elsewhere{n}")  # fmt: skip
            assert granted
        store.calls.clear()
        # Held: it asks again and again, then goes without a place (it is not refused).
        assert (await client.get("http://a.example/")).status_code == 500
    asked = [call for call in store.calls if call != "read"]  # background reads aside
    # Asked again while held (5, 10, 20 ms...), then the failure's report (no place to give
    # back).
    assert asked[-1] == "report"
    assert 2 <= len(asked) - 1 <= 10
    assert set(asked[:-1]) == {"admit"}


class SlowReadStore(FlakyStore):
    """A FlakyStore whose reads take their snapshot at once and answer only once ``answer``
    is set: a background sync whose answer comes after later calls' answers."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.read_taken = anyio.Event()
        self.answer = anyio.Event()

    async def read(self, *args: Any, **kwargs: Any) -> Any:
        views = await super().read(*args, **kwargs)
        self.read_taken.set()
        await self.answer.wait()
        return views


async def test_a_read_answered_late_does_not_hide_a_failure_reported_since() -> None:
    # The background sync reads the fleet (no failures yet), this worker's request fails and
    # its report is answered (the run: 1), then the read's answer comes. It must not make the
    # worker forget the run: the next request still reserves its in-flight place first.
    store = SlowReadStore(timeout=10.0, sync_interval=60.0)
    breaker = CircuitBreaker(failure_threshold=8, recovery_time=60.0)

    async def fail_after_the_read(request: httpx.Request) -> httpx.Response:
        await store.read_taken.wait()  # the read saw the fleet before this failure
        return httpx.Response(500)

    transport = ResilientTransport(
        httpx.MockTransport(fail_after_the_read), retry=NO_RETRY, circuit_breaker=breaker,
        state_store=store,
    )  # fmt: skip
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get("http://a.example/")).status_code == 500
        assert store.calls == ["admit", "read", "report"]
        store.answer.set()  # the read's stale answer: no failures
        await synced(transport)
        store.calls.clear()
        assert (await client.get("http://a.example/")).status_code == 500
    # It asked the fleet before it went (before the fix it went without asking); both
    # failures are in the fleet's run.
    assert store.calls == ["admit", "report"]
    assert store._circuits[("default", "http://a.example:80")].fails == 2


class GatedStore(FlakyStore):
    """A FlakyStore that records each ``report``'s failures and each ``admit``, and how many
    ``admit`` calls were in flight at once; reports wait for ``gate`` while it is unset."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = anyio.Event()
        self.reported: list[int] = []
        self.admitting = self.most_admitting = 0

    async def circuit(self, scope: str, origin: str, op: Any, policy: Any, **kw: Any) -> Any:
        if op == "report" and kw.get("failures"):
            self.reported.append(kw["failures"])
            await self.gate.wait()
        if op != "admit":
            return await super().circuit(scope, origin, op, policy, **kw)
        self.admitting += 1
        self.most_admitting = max(self.most_admitting, self.admitting)
        try:
            await anyio.lowlevel.checkpoint()  # a round trip: others may ask meanwhile
            return await super().circuit(scope, origin, op, policy, **kw)
        finally:
            self.admitting -= 1


async def test_failures_that_come_at_once_are_reported_in_few_calls() -> None:
    # 50 requests to an origin that looked healthy fail at once: the first failure's report
    # is in flight (held at the gate) while the others come; they go as one more call.
    store = GatedStore(timeout=10.0, sync_interval=60.0)
    breaker = CircuitBreaker(failure_threshold=5, recovery_time=60.0)
    ok, release = True, anyio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if ok:
            return httpx.Response(200)
        if request.url.path != "/first":
            await release.wait()
        return httpx.Response(500)

    transport = ResilientTransport(
        httpx.MockTransport(handler), retry=NO_RETRY, circuit_breaker=breaker, state_store=store
    )
    results: list[int] = []
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get("http://a.example/")).status_code == 200
        ok = False

        async def send(path: str = "/") -> None:
            results.append((await client.get(f"http://a.example{path}")).status_code)

        async with anyio.create_task_group() as group:
            group.start_soon(send, "/first")
            for _ in range(49):
                group.start_soon(send)
            await anyio.wait_all_tasks_blocked()  # the first failed: its report is out
            assert store.reported == [1]
            release.set()
            await anyio.wait_all_tasks_blocked()  # the other 49 failed meanwhile
            assert store.reported == [1]
            store.gate.set()
        assert results == [500] * 50
        # One more call carried the other 49 failures, and the fleet's circuit opened: the
        # local one follows it.
        assert store.reported == [1, 49]
        with pytest.raises(CircuitOpenError):
            await client.get("http://a.example/")
    assert store._circuits[("default", "http://a.example:80")].open_until > 0


async def test_requests_held_at_the_in_flight_limit_ask_one_at_a_time() -> None:
    # The fleet counts 4 failures of 8 (10 places): 50 requests at once to an upstream that
    # answers only when told. At most 10 ask for a place at once: 6 go, the others are held;
    # one held request at a time asks again, the others wait their turn and, once the 6
    # failed and the circuit opened, fail fast without asking.
    store = GatedStore(timeout=10.0, sync_interval=5.0)
    store.gate.set()
    breaker = CircuitBreaker(failure_threshold=8, recovery_time=60.0)
    upstream_gate = anyio.Event()
    sent = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal sent
        sent += 1
        await upstream_gate.wait()
        return httpx.Response(500)

    transport = ResilientTransport(
        httpx.MockTransport(handler), retry=NO_RETRY, circuit_breaker=breaker, state_store=store
    )
    policy = transport._fleet._circuit_policy  # type: ignore[union-attr]
    assert policy is not None
    results: list[int | str] = []
    async with httpx.AsyncClient(transport=transport) as client:
        upstream_gate.set()
        for _ in range(4):
            assert (await client.get("http://a.example/")).status_code == 500
        upstream_gate, sent = anyio.Event(), 0
        store.calls.clear()

        async def send() -> None:
            try:
                results.append((await client.get("http://a.example/")).status_code)
            except CircuitOpenError:
                results.append("open")

        async with anyio.create_task_group() as group:
            for _ in range(50):
                group.start_soon(send)
            for _ in range(500):  # until the seventh has been refused once
                if store.calls.count("admit") > 6:
                    break
                await anyio.sleep(0.001)
            assert sent == 6
            upstream_gate.set()
    assert sorted(results, key=str) == [500] * 6 + ["open"] * 44
    # At most the in-flight limit ask at once (the places fill in one round trip); once
    # refused, one held request asks again at a time.
    assert 1 < store.most_admitting <= policy.in_flight_limit
    # The first 10 (6 places, 4 refused), then one held request's few asks (5, 10, 20 ms...
    # apart) until the circuit opened: far fewer than the requests held (before: each asked
    # every few ms).
    assert store.calls.count("admit") < 50


class GatedBudgetStore(FlakyStore):
    """A FlakyStore whose budget calls that want retries record how many, and wait for
    ``gate`` (counting only, as `MemoryStore.read` flushes, goes through)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = anyio.Event()
        self.wanted: list[int] = []

    async def budget(self, scope: str, requests: int, want: int, *args: Any, **kw: Any) -> Any:
        if want:
            self.wanted.append(want)
            await self.gate.wait()
        return await super().budget(scope, requests, want, *args, **kw)


async def test_retries_wanted_at_once_are_asked_for_in_few_calls() -> None:
    # 30 requests fail at once (502); the first asks the fleet's budget (held at the gate)
    # while the other 29 come: they are asked for in one more call, which grants what fits:
    # floor 1 + 20 % of 30 requests = 7 retries in all.
    store = GatedBudgetStore(timeout=10.0, sync_interval=60.0)
    retry = RetryConfig(max_retries=1, base_delay=0.0, max_delay=0.0, budget_ratio=0.2,
                        budget_min_per_second=0.1, budget_window=10.0)  # fmt: skip
    release, sent = anyio.Event(), 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal sent
        sent += 1
        if sent > 30:  # the retries
            return httpx.Response(200)
        if request.url.path != "/first":
            await release.wait()
        return httpx.Response(502)

    transport = ResilientTransport(httpx.MockTransport(handler), retry=retry, state_store=store)
    results: list[int] = []
    async with httpx.AsyncClient(transport=transport) as client:

        async def send(path: str = "/") -> None:
            results.append((await client.get(f"http://a.example{path}")).status_code)

        async with anyio.create_task_group() as group:
            group.start_soon(send, "/first")
            for _ in range(29):
                group.start_soon(send)
            await anyio.wait_all_tasks_blocked()  # the first failed: its budget call is out
            assert store.wanted == [1]
            release.set()
            await anyio.wait_all_tasks_blocked()  # the other 29 failed meanwhile
            assert store.wanted == [1]
            store.gate.set()
    assert store.wanted == [1, 29]
    assert sorted(results) == [200] * 7 + [502] * 23  # 7 retries, each answered 200
    assert sent == 37


class AnswerHeldStore(FlakyStore):
    """A FlakyStore whose next failure ``report`` (after `hold_next`) reaches the store at once
    and has its answer held until ``gate`` is set: a report in flight on its way back."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = anyio.Event()
        self.holding = False
        self.reported: list[tuple[int, float | None]] = []

    async def circuit(self, scope: str, origin: str, op: Any, policy: Any, **kw: Any) -> Any:
        answer = await super().circuit(scope, origin, op, policy, **kw)
        if op == "report" and kw.get("failures"):
            self.reported.append((kw["failures"], kw.get("success_age")))
            if self.holding:
                self.holding = False
                await self.gate.wait()
        return answer


async def test_failures_before_a_success_do_not_count_in_the_run_after_it() -> None:
    # Count mode, 3 in a row open the circuit. F0 fails and its report is out (the store
    # counted it; its answer is on the way back); meanwhile F1 fails, S succeeds, then F2 and
    # F3 fail. No 3 failures came in a row (F0 F1 | S | F2 F3): the fleet's run is F2 F3, and
    # the circuit stays closed, as it does here locally.
    store = AnswerHeldStore(timeout=10.0, sync_interval=60.0)
    breaker = CircuitBreaker(failure_threshold=3, recovery_time=60.0)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200 if request.url.path == "/s" else 500)

    transport = ResilientTransport(
        httpx.MockTransport(handler), retry=NO_RETRY, circuit_breaker=breaker, state_store=store
    )
    results: dict[str, int] = {}
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get("http://a.example/s")).status_code == 200  # the origin known

        async def send(path: str) -> None:
            results[path] = (await client.get(f"http://a.example{path}")).status_code

        async with anyio.create_task_group() as group:
            store.holding = True
            group.start_soon(send, "/f0")
            await anyio.wait_all_tasks_blocked()  # F0's report is out, its answer held
            assert store.reported == [(1, store.reported[0][1])]
            for path in ("/f1", "/s", "/f2", "/f3"):  # one after the other
                group.start_soon(send, path)
                await anyio.wait_all_tasks_blocked()
            store.gate.set()
        assert results == {"/f0": 500, "/f1": 500, "/s": 200, "/f2": 500, "/f3": 500}
        assert breaker.state(Origin("http", "a.example", 80)) is CircuitState.CLOSED
        fleet_run = store._circuits[("default", "http://a.example:80")]
        assert (fleet_run.fails, fleet_run.open_until) == (2, 0)
        assert (await client.get("http://a.example/s")).status_code == 200


class SlowAdmitStore(FlakyStore):
    """A FlakyStore whose ``admit`` calls take ``delay`` seconds (within its timeout)."""

    def __init__(self, delay: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.delay = delay

    async def circuit(self, scope: str, origin: str, op: Any, policy: Any, **kw: Any) -> Any:
        if op == "admit":
            await anyio.sleep(self.delay)
        return await super().circuit(scope, origin, op, policy, **kw)


async def test_a_burst_to_an_origin_with_failures_stays_within_the_in_flight_limit() -> None:
    # Count mode, 8 in a row open the circuit: 10 places while the fleet counts failures.
    # The fleet counts 1 failure; then 60 requests at once to the upstream, which fails each
    # in 0.05 s, with a store that answers an ``admit`` in 0.1 s (within its 1 s timeout;
    # sync_interval 0.3 s).
    # At most 9 go and fail, the circuit opens, the others fail fast: the upstream sees at
    # most the limit, however slow each place is to grant.
    store = SlowAdmitStore(0.1, timeout=1.0, sync_interval=0.3)
    breaker = CircuitBreaker(failure_threshold=8, recovery_time=60.0)
    sent = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal sent
        sent += 1
        await anyio.sleep(0.05)  # the upstream takes a moment to fail
        return httpx.Response(500)

    transport = ResilientTransport(
        httpx.MockTransport(handler), retry=NO_RETRY, circuit_breaker=breaker, state_store=store
    )
    policy = transport._fleet._circuit_policy  # type: ignore[union-attr]
    assert policy is not None
    assert policy.in_flight_limit == 10
    results: list[int | str] = []
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get("http://a.example/")).status_code == 500  # the fleet's 1st
        sent = 0

        async def send() -> None:
            try:
                results.append((await client.get("http://a.example/")).status_code)
            except CircuitOpenError:
                results.append("open")

        with anyio.fail_after(20):
            async with anyio.create_task_group() as group:
                for _ in range(60):
                    group.start_soon(send)
    assert len(results) == 60
    assert sent <= policy.in_flight_limit - 1  # the places left by the first failure
    assert results.count(500) == sent


async def test_requests_cancelled_while_held_leave_no_turn_taken() -> None:
    # The fleet is at its limit (8 failures counted of 10 places, 2 reserved elsewhere): 30
    # requests at once are held (one asks again, the others wait their turn). All are
    # cancelled while held. Then a place frees: the next request asks and goes at once.
    store = FlakyStore(timeout=10.0, sync_interval=30.0)
    breaker = CircuitBreaker(failure_threshold=9, recovery_time=60.0)
    transport = ResilientTransport(upstream(200), retry=NO_RETRY, circuit_breaker=breaker,
                                   state_store=store)  # fmt: skip
    fleet = transport._fleet
    assert fleet is not None
    policy = fleet._circuit_policy
    assert policy is not None
    assert policy.in_flight_limit == 11
    name, origin = "http://a.example:80", Origin("http", "a.example", 80)
    store.circuit_now("default", name, "report", policy, failures=8)
    for token in ("x", "y", "z"):
        assert store.circuit_now("default", name, "admit", policy, token=token)[1]
    async with httpx.AsyncClient(transport=transport) as client:
        with anyio.move_on_after(0.3) as scope:  # well before sync_interval
            async with anyio.create_task_group() as group:
                for _ in range(30):
                    group.start_soon(client.get, "http://a.example/")
        assert scope.cancelled_caught
        local = fleet._origins[origin]
        assert local.full
        assert local.asking is not None
        assert local.polling is not None
        assert not local.polling.locked()
        assert local.asking.value == policy.in_flight_limit  # none left taken
        store.circuit_now("default", name, "release", policy, token="x")  # a place frees
        calls = len(store.calls)
        with anyio.fail_after(5):  # far less than sync_interval: it did not wait its turn
            assert (await client.get("http://a.example/")).status_code == 200
        assert store.calls[calls:].count("admit") <= 2


async def test_a_first_burst_to_an_origin_asks_the_fleet_once() -> None:
    # Count mode: a transport's first requests to an origin ask the fleet's circuit first.
    # 50 at once: one asks; its answer (no failures) lets the others go without asking.
    store = GatedStore(timeout=10.0, sync_interval=60.0)
    store.gate.set()
    transport = ResilientTransport(upstream(200), retry=NO_RETRY,
                                   circuit_breaker=CircuitBreaker(), state_store=store)  # fmt: skip
    results: list[int] = []
    async with httpx.AsyncClient(transport=transport) as client:

        async def send() -> None:
            results.append((await client.get("http://a.example/")).status_code)

        async with anyio.create_task_group() as group:
            for _ in range(50):
                group.start_soon(send)
    assert results == [200] * 50
    assert store.calls.count("admit") == 1


class WantStore(MemoryStore):
    """A MemoryStore that records how many retries each budget call asks for (0: counting
    only, as the background flushes do)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wanted: list[int] = []

    async def budget(self, scope: str, requests: int, want: int, *args: Any, **kw: Any) -> Any:
        if want:
            self.wanted.append(want)
        return await super().budget(scope, requests, want, *args, **kw)


#: One retry per request; a budget floor of 100 retries per window, never the limit here.
RETRY_ONCE = RetryConfig(
    max_retries=1, base_delay=0.0, max_delay=0.0, budget_ratio=0.2,
    budget_min_per_second=10.0, budget_window=10.0,
)  # fmt: skip


async def fleet_spent(store: MemoryStore, retry: RetryConfig) -> float:
    """The retries the fleet's budget counts as spent (granted to a worker, used or not)."""
    policy = retry_budget_policy(retry)
    view = await store.budget("default", 0, 0, policy)
    spent: float = policy.floor + policy.ratio * view.requests - view.left
    return spent


def fleet_of(transport: ResilientTransport) -> Any:
    fleet = transport._fleet
    assert fleet is not None
    return fleet


def _always(status: int, headers: dict[str, str] | None = None) -> Any:
    return lambda request: httpx.Response(status, headers=headers)


def _raise(error: type[httpx.TransportError]) -> Any:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error("no", request=request)

    return handler


# Requests whose failed attempt the policy does not retry, whatever the budget: the method,
# the upstream's behaviour, the config, and the transport's options (made for each run).
NOT_RETRIED: dict[str, tuple[str, Any, RetryConfig, Callable[[], dict[str, Any]]]] = {
    "POST answered 503 (method not retried)": (
        "POST", _always(503), RETRY_ONCE, dict,
    ),
    "POST whose read failed (the server may have acted)": (
        "POST", _raise(httpx.ReadError), RETRY_ONCE, dict,
    ),
    "an error no retry can help": (
        "GET", _raise(httpx.UnsupportedProtocol), RETRY_ONCE, dict,
    ),
    "its last attempt (max_retries=0)": (
        "GET", _always(503), RETRY_ONCE.replace(max_retries=0), dict,
    ),
    "a wait that would pass total_timeout": (
        "GET", _always(503),
        RETRY_ONCE.replace(base_delay=5.0, max_delay=5.0, jitter=0.0, total_timeout=1.0), dict,
    ),
    "a Retry-After above retry_after_cap": (
        "GET", _always(503, {"Retry-After": "120"}), RETRY_ONCE, lambda: {"cool_down": None},
    ),
    "a failure that opened the circuit": (
        "GET", _always(503), RETRY_ONCE,
        lambda: {"circuit_breaker": CircuitBreaker(failure_threshold=1, recovery_time=600.0)},
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(NOT_RETRIED))
async def test_a_request_that_will_not_be_retried_takes_no_fleet_retry_token(case: str) -> None:
    # Before, each failed attempt had a token of the fleet's budget at hand before its retry
    # decision (a store call when none was), even when the decision then said no retry: the
    # token stayed unused in this worker, counted as spent fleet-wide.
    method, handler, retry, options = NOT_RETRIED[case]
    clock = Clock()
    store = WantStore(clock=clock, sync_interval=600.0)
    hits = [0]

    def counted(request: httpx.Request) -> httpx.Response:
        hits[0] += 1
        response: httpx.Response = handler(request)
        return response

    transport = ResilientTransport(
        httpx.MockTransport(counted), retry=retry, state_store=store, clock=clock, **options()
    )
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(10):
            with contextlib.suppress(httpx.HTTPError):
                await client.request(method, "http://a.example/")
    # Each request sent once (after an opened circuit, none at all), no retry token asked
    # for, none at hand, none spent in the fleet's budget.
    assert hits[0] == (1 if "circuit" in case else 10)
    assert store.wanted == []
    assert fleet_of(transport).retry_tokens == 0
    assert await fleet_spent(store, retry) == 0


async def test_retries_still_take_and_use_fleet_tokens_and_last_attempts_take_none() -> None:
    # Ten GETs, every answer 503, one retry each: each first attempt asks for a token and its
    # retry spends it; each second attempt (the last) asks for none. Before: the last attempts
    # asked too, leaving a token unused at hand and 11 spent fleet-wide.
    clock = Clock()
    store = WantStore(clock=clock, sync_interval=600.0)
    hits = [0]

    def busy(request: httpx.Request) -> httpx.Response:
        hits[0] += 1
        return httpx.Response(503)

    transport = ResilientTransport(
        httpx.MockTransport(busy), retry=RETRY_ONCE, state_store=store, clock=clock
    )
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(10):
            response = await client.get("http://a.example/")
            assert response.status_code == 503
            assert [a.reason for a in response.extensions["retry_history"]] == [
                "status 503", "retries exhausted",
            ]  # fmt: skip
    assert hits[0] == 20
    assert store.wanted == [1] * 10
    assert fleet_of(transport).retry_tokens == 0
    assert await fleet_spent(store, RETRY_ONCE) == 10


async def test_a_burst_asks_the_fleet_only_for_the_retries_it_will_make() -> None:
    # 30 POSTs and 30 GETs at once, every answer 503 after all 60 are in: the POSTs are not
    # retried, the GETs once each. The GETs' first failures ask for 30 tokens (in a few
    # calls), their second failures and the POSTs for none; every token granted is spent.
    # Before: all 60 first failures asked (60 tokens granted, 30 of them left unused at hand).
    clock = Clock()
    store = WantStore(clock=clock, sync_interval=600.0, timeout=10.0)
    release = anyio.Event()
    hits = {"GET": 0, "POST": 0}

    async def handler(request: httpx.Request) -> httpx.Response:
        hits[request.method] += 1
        if sum(hits.values()) == 60:
            release.set()
        await release.wait()
        return httpx.Response(503)

    transport = ResilientTransport(
        httpx.MockTransport(handler), retry=RETRY_ONCE, state_store=store, clock=clock
    )
    results: list[int] = []
    async with httpx.AsyncClient(transport=transport) as client:

        async def send(method: str) -> None:
            results.append((await client.request(method, "http://a.example/")).status_code)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                for _ in range(30):
                    group.start_soon(send, "POST")
                    group.start_soon(send, "GET")
    assert results == [503] * 60
    assert hits == {"GET": 60, "POST": 30}
    assert sum(store.wanted) == 30
    assert fleet_of(transport).retry_tokens == 0
    assert await fleet_spent(store, RETRY_ONCE) == 30


class SlowBudgetStore(MemoryStore):
    """A MemoryStore whose budget calls that want retries never answer."""

    async def budget(self, scope: str, requests: int, want: int, *args: Any, **kw: Any) -> Any:
        if want:
            await anyio.sleep_forever()
        return await super().budget(scope, requests, want, *args, **kw)


async def test_a_retry_whose_token_does_not_come_in_time_is_not_made() -> None:
    store = SlowBudgetStore(timeout=0.05, sync_interval=600.0, retry_interval=600.0)
    hits = [0]

    def busy(request: httpx.Request) -> httpx.Response:
        hits[0] += 1
        return httpx.Response(503)

    transport = ResilientTransport(httpx.MockTransport(busy), retry=RETRY_ONCE, state_store=store)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get("http://a.example/")
    assert response.status_code == 503
    assert hits[0] == 1
    [attempt] = response.extensions["retry_history"]
    assert attempt.reason == "retry budget exhausted"


class AnsweredBudgetStore(MemoryStore):
    """A MemoryStore whose budget calls that want retries wait for ``gate`` and set
    ``answered`` just before they answer."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = anyio.Event()
        self.answered = anyio.Event()
        self.wanted: list[int] = []

    async def budget(self, scope: str, requests: int, want: int, *args: Any, **kw: Any) -> Any:
        if want:
            self.wanted.append(want)
            await self.gate.wait()
        answer = await super().budget(scope, requests, want, *args, **kw)
        if want:
            self.answered.set()
        return answer


async def test_a_retry_granted_to_a_waiting_request_is_not_taken_by_another() -> None:
    # A request waits for the fleet's answer to its budget call. The answer is in, and before
    # the request resumes, another request wants a retry: it must ask for its own, not take
    # the one granted to the first (which then went without its retry, the budget having
    # room: seen against a real redis-server as 2-6 of 40 retries refused in 2 of 5 runs).
    store = AnsweredBudgetStore(timeout=10.0, sync_interval=600.0)
    fleet = Fleet(store, breaker=None, cool_down=None, retry=RETRY_ONCE)
    budget = SharedBudget(fleet, RETRY_ONCE)
    spent: dict[str, bool] = {}

    async def retry(name: str) -> None:
        await fleet.reserve_retry()
        spent[name] = budget.try_spend(0.0)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(retry, "waiting")
            await anyio.wait_all_tasks_blocked()  # its budget call is out, held at the gate
            assert store.wanted == [1]
            store.gate.set()
            await store.answered.wait()  # resumed before the waiting request is
            assert "waiting" not in spent
            await retry("another")
    assert spent == {"waiting": True, "another": True}
    assert store.wanted == [1, 1]
    assert fleet.retry_tokens == 0
    assert await fleet_spent(store, RETRY_ONCE) == 2


# --- what stats() reports of a shared budget ------------------------------------------------

#: A floor of 5 retries per 10 s window plus half the requests; one retry per request.
HALF = RetryConfig(max_retries=1, base_delay=0.0, max_delay=0.0, budget_ratio=0.5,
                   budget_min_per_second=0.5, budget_window=10.0)  # fmt: skip


class PlainReadStore(FlakyStore):
    """A store whose reads answer a plain dict, without the budget (the `StateStore`
    protocol allows it: a store of one's own written before `StoreRead`)."""

    async def read(self, *args: Any, **kwargs: Any) -> Any:
        return dict(await super().read(*args, **kwargs))


async def idle(transport: ResilientTransport) -> None:
    """Let the transport's background read finish (bounded)."""
    fleet = transport._fleet
    assert fleet is not None
    for _ in range(100):
        if fleet._sync_task is None:
            return
        await anyio.sleep(0.001)
    raise AssertionError("the background read never ended")


@pytest.mark.parametrize("store_class", [FlakyStore, PlainReadStore])
async def test_stats_report_the_fleets_budget_from_its_latest_answer(
    store_class: type[FlakyStore],
) -> None:
    clock = Clock()
    store = store_class(clock=clock)
    transport = ResilientTransport(upstream(503), retry=HALF, state_store=store, clock=clock)
    before = transport.stats()
    assert (before.budget_left, before.budget_source, before.budget_age) == (None, "fleet", None)
    async with httpx.AsyncClient(transport=transport) as client:
        # A POST answered 503 is not retried: no budget call, only the background read.
        assert (await client.post("http://a.example/")).status_code == 503
        await idle(transport)
        calls = list(store.calls)
        clock.now += 2.0
        stats = transport.stats()
        assert store.calls == calls  # stats() never calls the store
        if store_class is FlakyStore:  # the read answered with the budget: 5 + 0.5 * 1
            assert (stats.budget_left, stats.budget_source, stats.budget_age) == (
                5.5, "fleet", 2.0,
            )  # fmt: skip
        else:  # a plain dict: nothing known of the budget until a budget call
            assert (stats.budget_left, stats.budget_source, stats.budget_age) == (
                None, "fleet", None,
            )  # fmt: skip
        # A GET answered 503 is retried: its budget call answers 5 + 0.5 * 2 - 1 either way.
        assert (await client.get("http://a.example/")).status_code == 503
        # (MemoryStore's read counts the requests through its own ``budget``.)
        assert store.calls.count("budget") - store.calls.count("read") == 1
        await idle(transport)
        stats = transport.stats()
        assert (stats.budget_left, stats.budget_source, stats.budget_age) == (5.0, "fleet", 0.0)


async def test_stats_outside_the_event_loop_leave_sharing_on() -> None:
    # stats() may run anywhere (a health endpoint's thread), before any request: it must not
    # settle which event loop the store runs on (none, there), which would keep the
    # transport to local state for good.
    clock = Clock()
    store = FlakyStore(clock=clock)
    transport = ResilientTransport(upstream(200), retry=HALF, state_store=store, clock=clock)
    stats = await anyio.to_thread.run_sync(transport.stats)
    assert (stats.budget_left, stats.budget_source) == (None, "fleet")
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get("http://a.example/")).status_code == 200
        await idle(transport)
    assert store.calls == ["read", "budget"]  # one background read (its budget count inside)
    assert (transport.stats().budget_left, transport.stats().budget_source) == (5.5, "fleet")


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_on_an_event_loop_the_store_does_not_support_stats_report_the_fallback() -> None:
    clock = Clock()
    store = FlakyStore(clock=clock)
    transport = ResilientTransport(upstream(200), retry=HALF, state_store=store, clock=clock)
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(4):
            assert (await client.get("http://a.example/")).status_code == 200
    assert store.calls == []
    # Local state for good: half of this worker's 4 requests, without the fleet's floor.
    stats = transport.stats()
    assert (stats.budget_left, stats.budget_source, stats.budget_age) == (2.0, "fallback", None)


async def stats_of_a_late_thread(shared: bool) -> None:
    """A health endpoint's thread calls stats(): it reads the clock, and may be preempted
    before it reads the counts while the event loop goes on counting, past a bucket of the
    budget's window and of the stats' window. What it reads with that older ``now`` must
    change nothing: dropping every count (the window taken back in time) would say, and let
    the budget allow, the floor again."""
    clock = Clock()
    store = FlakyStore(clock=clock) if shared else None
    transport = ResilientTransport(upstream(503), retry=HALF, state_store=store, clock=clock)
    async with httpx.AsyncClient(transport=transport) as client:
        clock.now = 1000.5
        # Local: each retried once (5 + 0.5 x 4 - 4 left); the fallback (no floor): the 2nd
        # and the 4th (0.5 x 4 - 2 left).
        for _ in range(4):
            assert (await client.get("http://a.example/")).status_code == 503
        clock.now = 1002.5  # a new second (budget) and a new 6 s bucket (stats)
        assert (await client.get("http://a.example/")).status_code == 503
        before = transport.stats()
        clock.now = 1001.9  # what the late thread read before the loop's latest requests
        await anyio.to_thread.run_sync(transport.stats)
        clock.now = 1002.6
        after = transport.stats()
    assert (after.budget_left, after.budget_source) == (before.budget_left, before.budget_source)
    [origin] = after.origins
    assert (origin.attempts, origin.failures) == (before.origins[0].attempts,) * 2
    assert origin.attempts == (7 if shared else 10)


async def test_stats_from_a_late_thread_drop_no_count() -> None:
    await stats_of_a_late_thread(shared=False)


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_stats_from_a_late_thread_drop_no_count_of_the_fallback() -> None:
    await stats_of_a_late_thread(shared=True)
