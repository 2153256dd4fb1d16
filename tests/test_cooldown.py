"""Per-origin cool-downs after 429/503 with Retry-After: the pure table (fake clock), header
parsing, and 50 concurrent callers against a real rate-limiting Hypercorn upstream."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import anyio
import anyio.lowlevel
import httpx
import pytest

from httpx_resilience import (
    CoolDown,
    CoolDownEnd,
    CoolDownError,
    CoolDownRefusal,
    CoolDownStart,
    Hook,
    Origin,
    ResilienceError,
    ResilientTransport,
    RetryConfig,
    get_retry_history,
)
from httpx_resilience._cooldown import GateKind, server_wait
from httpx_resilience._decision import decide
from httpx_resilience._retry_after import parse_retry_after_ms
from tests.support.server import ServerThread

ORIGIN = Origin("https", "api.example", 443)
OTHER = Origin("https", "other.example", 443)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- the pure table ----------------------------------------------------------------------------


def test_no_state_means_send() -> None:
    cool = CoolDown(clock=Clock())
    assert cool.gate(ORIGIN).kind is GateKind.SEND
    assert cool.retry_in(ORIGIN) == 0.0
    assert cool.cooling() == {}


def test_idle_says_whether_any_origin_has_a_window_through_every_change() -> None:
    # The transport asks the gate only while `idle` is False: it must be False whenever any
    # origin has state (a window running, or passed and waiting for its probe's answer).
    clock = Clock()
    cool = CoolDown(clock=clock, max_origins=2)

    def state() -> tuple[bool, bool]:
        """``idle``, and whether the table is empty: the two must agree."""
        return cool.idle, cool.cooling() == {}

    busy = (False, False)
    assert state() == (True, True)
    cool.note(ORIGIN, 2.0, 429)
    assert state() == busy
    cool.hold(OTHER, 5.0)  # a window from the fleet
    assert state() == busy
    cool.note(Origin("https", "third.example", 443), 1.0, 503)  # the oldest entry dropped
    assert state() == busy
    assert ORIGIN not in cool.cooling()
    clock.now += 10.0  # every window passed: still state until each probe's answer
    assert state() == busy
    for origin in list(cool.cooling()):
        assert cool.gate(origin).kind is GateKind.PROBE
        cool.probe_done(origin, answered=False)  # no answer: the next request probes
        assert state() == busy
        assert cool.gate(origin).kind is GateKind.PROBE
        cool.probe_done(origin, answered=True)
        assert state() in (busy, (True, True))
    assert state() == (True, True)
    cool.hold(ORIGIN, 1.0)
    assert state() == busy


def test_window_holds_then_one_probe_then_release() -> None:
    clock = Clock()
    started: list[tuple[Origin, float]] = []
    cool = CoolDown(clock=clock, on_cool_down=lambda o, s: started.append((o, s)))
    cool.note(ORIGIN, 2.0, 429)
    assert started == [(ORIGIN, 2.0)]
    assert cool.gate(ORIGIN) == (GateKind.WAIT, 2.0)
    assert cool.gate(OTHER).kind is GateKind.SEND  # per origin
    clock.now += 2.0
    assert cool.gate(ORIGIN).kind is GateKind.PROBE
    assert cool.gate(ORIGIN).kind is GateKind.WAIT_PROBE  # only one probe per window
    cool.probe_done(ORIGIN, answered=True)
    assert cool.gate(ORIGIN).kind is GateKind.SEND
    assert cool.cooling() == {}


def test_probe_asked_again_starts_a_new_window() -> None:
    clock = Clock()
    started: list[float] = []
    cool = CoolDown(clock=clock, on_cool_down=lambda o, s: started.append(s))
    cool.note(ORIGIN, 1.0, 503)
    clock.now += 1.0
    assert cool.gate(ORIGIN).kind is GateKind.PROBE
    cool.note(ORIGIN, 3.0, 429)
    assert started == [1.0, 3.0]
    assert cool.gate(ORIGIN) == (GateKind.WAIT, 3.0)


def test_answers_in_flight_extend_but_start_no_window() -> None:
    clock = Clock()
    started: list[float] = []
    cool = CoolDown(clock=clock, on_cool_down=lambda o, s: started.append(s))
    cool.note(ORIGIN, 2.0, 429)
    clock.now += 1.0
    cool.note(ORIGIN, 5.0, 429)  # extends to now + 5
    cool.note(ORIGIN, 0.5, 429)  # never shortens
    assert started == [2.0]
    assert cool.retry_in(ORIGIN) == 5.0


def test_failed_probe_hands_the_probe_to_the_next_request() -> None:
    clock = Clock()
    cool = CoolDown(clock=clock)
    cool.note(ORIGIN, 1.0, 429)
    clock.now += 1.0
    assert cool.gate(ORIGIN).kind is GateKind.PROBE
    signal = cool.probe_signal(ORIGIN, list)
    assert signal == []
    assert cool.probe_done(ORIGIN, answered=False) is signal  # the shell sets it
    assert cool.gate(ORIGIN).kind is GateKind.PROBE


def test_a_retry_that_waited_goes_as_the_probe() -> None:
    clock = Clock()
    cool = CoolDown(clock=clock)
    cool.note(ORIGIN, 10.0, 429)
    window = cool.window(ORIGIN)
    assert window > 0
    waited = cool.waited(ORIGIN, 10.0)  # the retry sleeps the 10 s its answer asked for
    assert waited == (window, clock.now + 10.0)
    # The sleep is trusted, not the clock (an injected sleeper does not move it).
    assert cool.gate(ORIGIN, waited=waited).kind is GateKind.PROBE
    assert cool.gate(ORIGIN, waited=waited).kind is GateKind.WAIT  # not a second probe
    cool.note(ORIGIN, 10.0, 429)  # the probe asked again: a new window
    assert cool.window(ORIGIN) != window
    # A request that waited for the old window does not probe the new one early.
    assert cool.gate(ORIGIN, waited=waited) == (GateKind.WAIT, 10.0)


def test_a_retry_waits_for_what_extended_its_window() -> None:
    clock = Clock()
    cool = CoolDown(clock=clock)
    cool.note(ORIGIN, 1.0, 429)
    waited = cool.waited(ORIGIN, 1.0)  # its retry sleeps 1 s
    assert waited is not None
    cool.note(ORIGIN, 30.0, 429)  # an answer of a request in flight extends the window
    assert cool.window(ORIGIN) == waited.window  # the same window, extended
    assert cool.gate(ORIGIN, waited=waited) == (GateKind.WAIT, 29.0)
    # Once it has slept those 29 s too, it is the probe.
    assert cool.gate(ORIGIN, waited=waited._replace(until=waited.until + 29.0)).kind is (
        GateKind.PROBE
    )


def test_a_retry_that_waited_less_than_its_answer_asked_waits_the_rest() -> None:
    # A status the retry policy does not take Retry-After from (a custom cool-down status):
    # the retry slept its backoff, 0.5 s, of a 20 s window.
    clock = Clock()
    cool = CoolDown(clock=clock, statuses=(429, 529))
    cool.note(ORIGIN, 20.0, 529)
    waited = cool.waited(ORIGIN, 0.5)
    assert cool.gate(ORIGIN, waited=waited) == (GateKind.WAIT, 19.5)


@pytest.mark.anyio
async def test_a_retry_is_not_sent_before_the_window_its_answer_started_ends() -> None:
    # MockTransport: the retry loop's decisions, on a clock that moves only when it sleeps.
    clock = Clock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    sent_at: list[float] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        sent_at.append(clock.now)
        if len(sent_at) == 1:  # a custom cool-down status: the retry policy backs off 0.5 s
            return httpx.Response(529, headers={"retry-after": "20"})
        return httpx.Response(200)

    transport = ResilientTransport(
        httpx.MockTransport(upstream),
        retry=RetryConfig(retry_on_status={529}, base_delay=0.5, jitter=False, budget_ratio=None),
        cool_down=CoolDown(statuses=(429, 529), clock=clock),
        clock=clock,
        sleep=sleep,
    )
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get("https://api.example/")).status_code == 200
    # The backoff, then the rest of the 20 s window the 529 started; then the retry probes.
    assert slept == [0.5, 19.5]
    assert sent_at == [100.0, 120.0]


@pytest.mark.anyio
async def test_a_retry_after_date_is_read_once_for_the_window_and_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An HTTP-date is turned into seconds against the wall clock. The cool-down's window and
    # the retry's wait must come from one reading of it: two readings differ by the time
    # between them (and by float rounding), and the retry, having waited the shorter of the
    # two, was held again for the difference (CI saw a second, tiny wait).
    import email.utils
    import time

    clock = Clock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    wall = [1_800_000_000.0]

    def wall_time() -> float:  # each reading a millisecond later than the one before
        wall[0] += 0.001
        return wall[0]

    monkeypatch.setattr(time, "time", wall_time)
    when = email.utils.formatdate(1_800_000_030.0, usegmt=True)
    answers = iter([httpx.Response(503, headers={"retry-after": when}), httpx.Response(200)])
    transport = ResilientTransport(
        httpx.MockTransport(lambda request: next(answers)),
        retry=RetryConfig(jitter=False, budget_ratio=None),
        cool_down=CoolDown(clock=clock),
        clock=clock,
        sleep=sleep,
    )
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get("https://api.example/")).status_code == 200
    [wait] = slept
    assert 29.9 < wait < 30.0


def test_window_is_capped_and_origins_are_bounded() -> None:
    clock = Clock()
    cool = CoolDown(clock=clock, max_cool_down=30.0, max_origins=2)
    cool.note(ORIGIN, 3600.0, 429)
    assert cool.retry_in(ORIGIN) == 30.0
    cool.note(OTHER, 1.0, 429)
    third = Origin("http", "third.example", 80)
    cool.note(third, 1.0, 429)
    assert set(cool.cooling()) == {OTHER, third}


def test_an_endless_wait_is_cut_to_max_cool_down() -> None:
    cool = CoolDown(clock=Clock(), max_cool_down=120.0)
    cool.note(ORIGIN, server_wait(None, "9" * 400, 0.0) or 0.0, 429)  # overflows to inf
    assert cool.retry_in(ORIGIN) == 120.0


def test_a_broken_hook_does_not_break_requests() -> None:
    def hook(origin: Origin, seconds: float) -> None:
        raise RuntimeError("boom")

    cool = CoolDown(clock=Clock(), on_cool_down=hook)
    cool.note(ORIGIN, 1.0, 429)
    assert cool.retry_in(ORIGIN) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_wait": -1}, r"CoolDown\.max_wait must be >= 0\.0"),
        ({"max_cool_down": 0}, r"CoolDown\.max_cool_down must be >= 0\.001"),
        ({"max_origins": 0}, r"CoolDown\.max_origins must be >= 1"),
        ({"statuses": [99]}, r"CoolDown\.statuses must hold status codes 100-599"),
    ],
)
def test_invalid_configuration_names_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CoolDown(**kwargs)  # type: ignore[arg-type]


def test_transport_rejects_a_wrong_cool_down_type() -> None:
    with pytest.raises(TypeError, match=r"ResilientTransport\.cool_down must be a CoolDown, True"):
        ResilientTransport(cool_down=5)  # type: ignore[arg-type]


# --- headers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1500", 1.5), (b"250.5", 0.2505), ("0", 0.0), ("-1", None), ("soon", None),
     ("9" * 400, math.inf), ("", None)],
)  # fmt: skip
def test_parse_retry_after_ms(value: str | bytes, expected: float | None) -> None:
    assert parse_retry_after_ms(value) == expected


def test_retry_after_ms_takes_precedence() -> None:
    assert server_wait("30", "1500", 0.0) == 1.5
    assert server_wait("30", "junk", 0.0) == 30.0
    assert server_wait(None, None, 0.0) is None
    config = RetryConfig(jitter=False)
    decision = decide(
        config, attempt=1, status=429, retry_after="30", retry_after_ms="1500",
        method_retryable=True, replayable=True, now=0.0, wall_now=0.0, deadline=None,
        random=lambda: 0.0, budget=None,
    )  # fmt: skip
    assert (decision.retry, decision.wait) == (True, 1.5)


# --- against a real rate-limiting upstream -----------------------------------------------------


async def _fifty_callers(client: httpx.AsyncClient, url: str) -> list[int]:
    statuses: list[int] = []

    async def caller() -> None:
        response = await client.get(url)
        statuses.append(response.status_code)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            for _ in range(50):
                group.start_soon(caller)
    return statuses


def _recorder(windows: list[float]) -> Callable[[Origin, float], None]:
    def record(origin: Origin, seconds: float) -> None:
        windows.append(seconds)

    return record


@pytest.mark.anyio
async def test_fifty_callers_collect_one_429_per_window(h1_server: ServerThread, key: str) -> None:
    """One run, two phases against the same throttled upstream: 50 concurrent callers with and
    without cool-down. A first request alone gets the first 429 (so no caller is already in
    flight when the window starts: those could not be recalled)."""
    app = h1_server.app
    retry = RetryConfig(max_retries=20, budget_ratio=None)
    counts: dict[str, int] = {}
    for mode in ("without", "with"):
        windows: list[float] = []
        cool = CoolDown(on_cool_down=_recorder(windows))
        transport = ResilientTransport(retry=retry, cool_down=cool if mode == "with" else None)
        url = f"{h1_server.url}/throttle/{key}-{mode}?period=2.0&ms=400"
        async with httpx.AsyncClient(transport=transport, timeout=10.0) as client:
            first = await client.get(url, extensions={"retry": None})
            assert first.status_code == 429
            statuses = await _fifty_callers(client, url)
        assert statuses == [200] * 50
        counts[mode] = app.throttled[f"{key}-{mode}"]  # type: ignore[attr-defined]
        if mode == "with":
            # Every 429 the upstream sent started a window of its own: one per window.
            assert counts[mode] == len(windows)
            assert len(windows) >= 2  # the first request's window, then at least one probe's
    # Without: every caller collects its own 429s.
    assert counts["without"] >= 51
    assert counts["without"] > counts["with"]


@pytest.mark.anyio
async def test_wait_above_max_wait_fails_at_once(h1_server: ServerThread, key: str) -> None:
    cool = CoolDown(max_wait=5.0)
    transport = ResilientTransport(retry=RetryConfig(max_retries=0), cool_down=cool)
    url = f"{h1_server.url}/throttle/{key}?period=60&ms=30000"
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(url)
        assert response.status_code == 429
        with pytest.raises(CoolDownError) as caught:
            await client.get(f"{h1_server.url}/ok/{key}")
    error = caught.value
    assert isinstance(error, httpx.TransportError)
    assert isinstance(error, ResilienceError)
    assert error.reason == "max_wait"
    assert error.origin == Origin("http", "127.0.0.1", h1_server.port)
    assert 0 < error.retry_in <= 30.0
    assert "CoolDown.max_wait" in str(error)
    assert get_retry_history(error) == ()
    assert h1_server.app.hits(key) == 1  # type: ignore[attr-defined]  # nothing more was sent


@pytest.mark.anyio
async def test_wait_past_the_deadline_fails_at_once(h1_server: ServerThread, key: str) -> None:
    retry = RetryConfig(max_retries=0, total_timeout=1.0)
    transport = ResilientTransport(retry=retry)  # the default cool-down
    assert isinstance(transport.cool_down, CoolDown)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(f"{h1_server.url}/throttle/{key}?period=60&ms=5000")
        assert response.status_code == 429
        with pytest.raises(CoolDownError, match="total_timeout") as caught:
            await client.get(f"{h1_server.url}/ok/{key}")
    assert caught.value.reason == "total_timeout"
    assert h1_server.app.hits(key) == 1  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_off_and_respect_retry_after_false_send_anyway(
    h1_server: ServerThread, key: str
) -> None:
    url = f"{h1_server.url}/throttle/{key}?period=60&ms=30000"
    no_retry = RetryConfig(max_retries=0)
    ignoring = RetryConfig(max_retries=0, respect_retry_after=False)
    async with httpx.AsyncClient(transport=ResilientTransport(retry=no_retry)) as client:
        assert (await client.get(url)).status_code == 429
        response = await client.get(url, extensions={"retry": ignoring})
        assert response.status_code == 429  # sent: this request ignores Retry-After
    transport = ResilientTransport(retry=no_retry, cool_down=None)
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get(url)).status_code == 429
        assert (await client.get(url)).status_code == 429
    assert h1_server.app.throttled[key] == 4  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_retry_waits_retry_after_ms(h1_server: ServerThread, key: str) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await anyio.lowlevel.checkpoint()

    transport = ResilientTransport(retry=RetryConfig(max_retries=2), sleep=sleep)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(f"{h1_server.url}/throttle/{key}?period=60&ms=300")
    assert response.status_code == 429
    assert waits == [0.3, 0.3]  # retry-after-ms, not Retry-After: 1


class CoolDownEvents(Hook):
    def __init__(self) -> None:
        self.events: list[object] = []

    def on_cool_down_start(self, start: CoolDownStart) -> None:
        self.events.append(start)

    def on_cool_down_end(self, end: CoolDownEnd) -> None:
        self.events.append(end)

    def on_cool_down_refusal(self, refusal: CoolDownRefusal) -> None:
        self.events.append(refusal)


@pytest.mark.anyio
async def test_hooks_hear_a_window_start_refuse_and_end(
    h1_server: ServerThread, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="httpx_resilience")
    hook = CoolDownEvents()
    cool = CoolDown(max_wait=0.1, name="api")
    transport = ResilientTransport(retry=RetryConfig(max_retries=0), cool_down=cool, hooks=[hook])
    origin = Origin("http", "127.0.0.1", h1_server.port)
    async with httpx.AsyncClient(transport=transport) as client:
        # The throttle lasts 0.5 s and asks for 0.5 s: above max_wait, so refused at once.
        assert (
            await client.get(f"{h1_server.url}/throttle/{key}?period=0.5&ms=500")
        ).status_code == 429
        with pytest.raises(CoolDownError):
            await client.get(f"{h1_server.url}/ok/{key}")
        for _ in range(200):  # until the window has passed
            if cool.retry_in(origin) == 0:
                break
            await anyio.sleep(0.01)
        # The probe: the throttle is over (200), so the cool-down ends.
        assert (await client.get(f"{h1_server.url}/throttle/{key}")).status_code == 200
    start, refusal, end = hook.events
    assert isinstance(start, CoolDownStart)
    assert (start.origin, start.status, start.cool_down) == (origin, 429, "api")
    assert 0 < start.seconds <= 0.5
    assert isinstance(refusal, CoolDownRefusal)
    assert (refusal.method, refusal.origin, refusal.attempt, refusal.reason) == (
        "GET",
        origin,
        1,
        "max_wait",
    )
    assert 0 < refusal.retry_in <= 0.5
    assert refusal.url == f"{h1_server.url}/ok/{key}"
    assert end == CoolDownEnd(origin, "api")
    # The default LoggingHook's lines.
    assert f"Cool-down 'api' for {origin}: 429 with Retry-After" in caplog.text
    assert f"Cool-down 'api' ended for {origin}" in caplog.text
