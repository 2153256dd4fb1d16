"""The instrumentation hook protocol: records, registration, safety, the logging adapter, stats.

Headline behaviour runs against the real Hypercorn servers (HTTP/1.1 and HTTP/2 over TLS); the
pure bookkeeping (registration, validation, the connection-stats extension point) runs over
in-memory transports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping

import httpx
import pytest

from httpx_resilience import (
    AttemptEnd,
    AttemptOutcome,
    AttemptStart,
    BudgetRefusal,
    CircuitBreaker,
    CircuitChange,
    CircuitOpenError,
    CircuitState,
    ConnectionStats,
    FailFast,
    GiveUp,
    Hook,
    LoggingHook,
    Origin,
    ResilientTransport,
    RetryConfig,
    add_hook,
    get_hooks,
    set_hooks,
)
from httpx_resilience._instrument._hooks import HookSet
from tests.support.server import ServerInfo, ServerThread
from tests.test_transport_real import Sleeper
from tests.test_transport_unit import FAST, Script

pytestmark = pytest.mark.anyio

NO_JITTER = RetryConfig(base_delay=0.25, jitter=False, budget_ratio=None)


@pytest.fixture(autouse=True)
def default_global_hooks() -> Iterator[None]:
    set_hooks(None)
    yield
    set_hooks(None)


class Recorder(Hook):
    """Keeps every record it is handed, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def on_attempt(self, start: AttemptStart) -> Callable[[AttemptEnd], None]:
        self.events.append(("start", start))
        return lambda end: self.events.append(("end", end))

    def on_retry(self, end: AttemptEnd) -> None:
        self.events.append(("retry", end))

    def on_resend(self, end: AttemptEnd) -> None:
        self.events.append(("resend", end))

    def on_give_up(self, give_up: GiveUp) -> None:
        self.events.append(("give_up", give_up))

    def on_circuit_change(self, change: CircuitChange) -> None:
        self.events.append(("circuit", change))

    def on_fail_fast(self, refusal: FailFast) -> None:
        self.events.append(("fail_fast", refusal))

    def on_budget_refusal(self, refusal: BudgetRefusal) -> None:
        self.events.append(("budget", refusal))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]

    def of(self, kind: str) -> list[object]:
        return [record for k, record in self.events if k == kind]


def client_for(server: ServerInfo, **kwargs: object) -> httpx.AsyncClient:
    kwargs.setdefault("retry", NO_JITTER)
    kwargs.setdefault("sleep", Sleeper())
    transport = ResilientTransport(**server.client_kwargs, **kwargs)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url=server.url, timeout=5.0)


async def test_records_of_503_503_200(server: ServerInfo, key: str) -> None:
    recorder = Recorder()
    async with client_for(server, hooks=[recorder]) as client:
        response = await client.get(f"/flaky/{key}?fail=2&token=abc123")
    assert response.status_code == 200
    assert recorder.kinds() == ["start", "end", "retry", "start", "end", "retry", "start", "end"]
    starts = recorder.of("start")
    ends = recorder.of("end")
    url = f"{server.url}/flaky/{key}?fail=2&token=[redacted]"
    assert [(s.attempt, s.resend_count, s.url, s.method) for s in starts] == [  # type: ignore[attr-defined]
        (1, 0, url, "GET"),
        (2, 1, url, "GET"),
        (3, 2, url, "GET"),
    ]
    assert [(e.outcome, e.status, e.wait, e.reason) for e in ends] == [  # type: ignore[attr-defined]
        (AttemptOutcome.RETRY, 503, 0.25, "status 503"),
        (AttemptOutcome.RETRY, 503, 0.5, "status 503"),
        (AttemptOutcome.FINAL, 200, None, "final response"),
    ]
    version = "HTTP/1.1" if server.http_version == "HTTP/1.1" else "HTTP/2"
    assert {e.http_version for e in ends} == {version}  # type: ignore[attr-defined]
    assert recorder.of("retry") == ends[:2]
    # The server saw every attempt; no credential reached a record's repr.
    assert server.app.hits(key) == 3
    assert "abc123" not in repr(recorder.events)


async def test_give_up_and_budget_refusal(h1_server: ServerThread, key: str) -> None:
    recorder = Recorder()
    no_budget = NO_JITTER.replace(budget_ratio=0.0, budget_min_per_second=0.0)
    transport = ResilientTransport(retry=no_budget, sleep=Sleeper(), hooks=[recorder])
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(f"{h1_server.url}/status/{key}?code=503")
    assert response.status_code == 503
    assert recorder.kinds() == ["start", "end", "budget", "give_up"]
    [end] = recorder.of("end")
    assert end.outcome is AttemptOutcome.GIVE_UP  # type: ignore[attr-defined]
    [refusal] = recorder.of("budget")
    assert isinstance(refusal, BudgetRefusal)
    assert refusal.attempt == 1
    # Without a store: the transport's own budget (no floor, no ratio here).
    assert (refusal.available, refusal.source) == (0.0, "local")
    [give_up] = recorder.of("give_up")
    assert isinstance(give_up, GiveUp)
    assert (give_up.attempts, give_up.status, give_up.reason) == (
        1,
        503,
        "retry budget exhausted",
    )


async def test_circuit_change_and_fail_fast(h1_server: ServerThread, key: str) -> None:
    recorder = Recorder()
    breaker = CircuitBreaker(failure_threshold=2, recovery_time=60.0, name="up")
    transport = ResilientTransport(
        retry=NO_JITTER, sleep=Sleeper(), circuit_breaker=breaker, hooks=[recorder]
    )
    async with httpx.AsyncClient(transport=transport) as client:
        # Two 503s open the circuit: the retry loop stops there.
        with pytest.raises(CircuitOpenError):
            await client.get(f"{h1_server.url}/status/{key}?code=503")
        # The next request is refused before anything is sent.
        with pytest.raises(CircuitOpenError):
            await client.get(f"{h1_server.url}/status/{key}?code=503")
    assert h1_server.app.hits(key) == 2  # type: ignore[attr-defined]
    assert recorder.kinds() == [
        "start", "end", "retry",
        "start", "circuit", "end", "fail_fast", "give_up",  # the second 503 opened it
        "fail_fast",  # the second request: no attempt, no give-up
    ]  # fmt: skip
    [change] = recorder.of("circuit")
    assert isinstance(change, CircuitChange)
    origin = Origin("http", "127.0.0.1", h1_server.port)
    assert (change.origin, change.old, change.new, change.breaker, change.retry_in) == (
        origin,
        CircuitState.CLOSED,
        CircuitState.OPEN,
        "up",
        60.0,
    )
    first, second = recorder.of("fail_fast")
    assert isinstance(first, FailFast)
    assert isinstance(second, FailFast)
    assert (first.attempt, second.attempt) == (3, 1)
    assert 0 < second.retry_in <= 60.0
    [give_up] = recorder.of("give_up")
    assert give_up.reason == "circuit open"  # type: ignore[attr-defined]


async def test_free_resend_is_reported(h1_server: ServerThread) -> None:
    from tests.test_unprocessed import not_processed

    recorder = Recorder()
    script = Script(not_processed(), 200)
    async with httpx.AsyncClient(transport=ResilientTransport(
        script.transport(), retry=FAST, hooks=[recorder]
    )) as client:  # fmt: skip
        response = await client.post("http://upstream.test/x", content=b"body")
    assert response.status_code == 200
    assert recorder.kinds() == ["start", "end", "resend", "start", "end"]
    end = recorder.of("resend")[0]
    assert isinstance(end, AttemptEnd)
    assert end.outcome is AttemptOutcome.RESEND
    assert end.reason.startswith("not processed by the server")
    assert end.wait == 0.0


class Raising(Hook):
    """Raises from every method, and from the end callback it returns."""

    def on_attempt(self, start: AttemptStart) -> Callable[[AttemptEnd], None]:
        if start.attempt == 1:
            raise RuntimeError("tracing backend down")

        def end(record: AttemptEnd) -> None:
            raise RuntimeError("still down")

        return end

    def on_retry(self, end: AttemptEnd) -> None:
        raise RuntimeError("metrics backend down")


async def test_a_raising_hook_does_not_fail_the_request(
    server: ServerInfo, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="httpx_resilience")
    recorder = Recorder()
    async with client_for(server, hooks=[Raising(), recorder]) as client:
        first = await client.get(f"/flaky/{key}?fail=2")
        second = await client.get(f"/flaky/{key}-2?fail=1")
    assert (first.status_code, second.status_code) == (200, 200)
    # The hook after the raising one still heard everything.
    assert recorder.kinds().count("end") == 5
    failures = [r for r in caplog.records if "Instrumentation hook" in r.getMessage()]
    # Logged once per hook and event, with the traceback, however often it raised.
    events = sorted(r.getMessage().split(" raised in ")[1].split(";")[0] for r in failures)
    assert events == ["on_attempt", "on_attempt's end callback", "on_retry"]
    assert all(r.exc_info is not None for r in failures)


async def test_global_hooks_see_every_transport_own_hooks_only_theirs(
    h1_server: ServerThread, key: str
) -> None:
    everywhere, mine = Recorder(), Recorder()
    add_hook(everywhere)
    add_hook(everywhere)  # twice is once
    assert get_hooks()[1:] == (everywhere,)
    a = ResilientTransport(hooks=[mine])
    b = ResilientTransport()
    async with httpx.AsyncClient(transport=a) as ca, httpx.AsyncClient(transport=b) as cb:
        await ca.get(f"{h1_server.url}/ok/{key}")
        await cb.get(f"{h1_server.url}/ok/{key}")
        # A hook both global and the transport's own hears each event once.
        add_hook(mine)
        await ca.get(f"{h1_server.url}/ok/{key}")
    assert everywhere.kinds() == ["start", "end"] * 3
    assert mine.kinds() == ["start", "end"] * 2


async def test_logging_is_an_adapter_that_can_be_removed(
    h1_server: ServerThread, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="httpx_resilience")
    assert [type(h) for h in get_hooks()] == [LoggingHook]
    async with client_for_h1(h1_server) as client:
        await client.get(f"/flaky/{key}?fail=1")
        set_hooks([])
        await client.get(f"/flaky/{key}-quiet?fail=1")
        set_hooks(None)
        await client.get(f"/status/{key}?code=503")
    lines = [r.getMessage() for r in caplog.records if r.name == "httpx_resilience"]
    url = f"{h1_server.url}/flaky/{key}?fail=1"
    assert lines[0] == f"Retrying GET {url} after attempt 1 of 4: status 503; waiting 0.250s"
    assert not any("-quiet" in line for line in lines)
    assert lines[-1] == (
        # "code" may be an OAuth code: the redactor hides it.
        f"Giving up on GET {h1_server.url}/status/{key}?code=[redacted] after 4 attempt(s): "
        "retries exhausted"
    )


def client_for_h1(h1_server: ServerThread) -> httpx.AsyncClient:
    transport = ResilientTransport(retry=NO_JITTER, sleep=Sleeper())
    return httpx.AsyncClient(transport=transport, base_url=h1_server.url)


def test_the_default_hooks_do_no_work_on_the_happy_path() -> None:
    hooks = HookSet(get_hooks())
    assert hooks.on_attempt == ()  # nothing runs for an attempt that succeeds
    assert hooks.after  # but failures are logged
    assert HookSet([]).after is False


def test_invalid_hooks_are_refused() -> None:
    with pytest.raises(TypeError, match=r"ResilientTransport.hooks must hold hooks.*on_attempt"):
        ResilientTransport(hooks=[object()])
    with pytest.raises(TypeError, match=r"ResilientTransport\.hooks must be an iterable"):
        ResilientTransport(hooks=Recorder())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"set_hooks\(hooks\) must hold hooks"):
        set_hooks([Hook()])  # implements nothing
    with pytest.raises(TypeError, match=r"add_hook\(hook\) must hold hooks"):
        add_hook("LoggingHook")


def test_duck_typed_hooks_work() -> None:
    class OnlyRetries:
        def on_retry(self, end: AttemptEnd) -> None:
            pass

    hooks = HookSet([OnlyRetries()])
    assert len(hooks.on_retry) == 1
    assert hooks.on_attempt == ()


async def test_stats_per_origin(h1_server: ServerThread, key: str) -> None:
    breaker = CircuitBreaker(failure_threshold=1, recovery_time=60.0)
    config = NO_JITTER.replace(max_retries=0, budget_ratio=0.2)
    transport = ResilientTransport(retry=config, circuit_breaker=breaker, sleep=Sleeper())
    origin = Origin("http", "127.0.0.1", h1_server.port)
    assert transport.stats().origins == ()
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(3):
            assert (await client.get(f"{h1_server.url}/ok/{key}")).status_code == 200
        assert (await client.get(f"{h1_server.url}/status/{key}?code=500")).status_code == 500
    stats = transport.stats()
    [entry] = stats.origins
    assert entry.origin == origin
    assert (entry.circuit, entry.attempts, entry.failures) == (CircuitState.OPEN, 4, 1)
    assert entry.failure_rate == 0.25
    assert 0 < entry.retry_in <= 60.0
    assert entry.connections is None  # httpx's transport does not report its pool
    # Without a store: the transport's own budget, exact now: a floor of 3/s over 10 s plus
    # 20 % of its 4 requests, no retry.
    assert (stats.budget_left, stats.budget_source, stats.budget_age) == (30.8, "local", None)
    data = stats.as_dict()
    assert (data["budget_left"], data["budget_source"], data["budget_age"]) == (30.8, "local", None)
    assert data["origins"][str(origin)]["circuit"] == "open"
    assert data["origins"][str(origin)]["failure_rate"] == 0.25


async def test_stats_take_connection_counts_from_the_connection_layer() -> None:
    origin = Origin("http", "pool.test", 80)

    class Reporting(httpx.MockTransport):
        def connection_stats(self) -> Mapping[Origin, ConnectionStats]:
            return {origin: ConnectionStats(in_use=2, idle=1, waiting=5)}

    transport = ResilientTransport(Reporting(lambda request: httpx.Response(200)))
    [entry] = transport.stats().origins
    assert entry.connections == ConnectionStats(in_use=2, idle=1, waiting=5)
    assert (entry.attempts, entry.failure_rate) == (0, None)
    assert transport.stats().as_dict()["origins"]["http://pool.test:80"]["connections"] == {
        "in_use": 2,
        "idle": 1,
        "waiting": 5,
    }


async def test_stats_report_the_own_connection_layers_pool(
    h1_server: ServerThread, key: str
) -> None:
    # http2=False: the transport's own HTTP/1.1 connection layer, which reports its pool.
    transport = ResilientTransport(http2=False)
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get(f"{h1_server.url}/ok/{key}")).status_code == 200
        stats = transport.stats()
    assert stats.pool == ConnectionStats(in_use=0, idle=1, waiting=0)
    assert stats.as_dict()["pool"] == {"in_use": 0, "idle": 1, "waiting": 0}
    # HTTP/2 (the default) goes through the same layer and reports its pool too; httpx's own
    # transport (proxies) reports none.
    assert ResilientTransport().stats().pool == ConnectionStats(in_use=0, idle=0, waiting=0)
    assert ResilientTransport(proxy="http://127.0.0.1:9").stats().pool is None
