"""CircuitBreaker as a pure state machine with a fake clock: no sockets, no waiting."""

from __future__ import annotations

import logging

import pytest

from httpx_resilience import CircuitBreaker, CircuitState, Origin

A = Origin("https", "a.test", 443)
B = Origin("https", "b.test", 443)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **kwargs: object) -> tuple[CircuitBreaker, list[tuple[str, str, str]]]:
    changes: list[tuple[str, str, str]] = []
    cb = CircuitBreaker(
        clock=clock,
        on_state_change=lambda o, old, new: changes.append((str(o), old.value, new.value)),
        **kwargs,  # type: ignore[arg-type]
    )
    return cb, changes


def fail(cb: CircuitBreaker, origin: Origin = A, times: int = 1) -> None:
    for _ in range(times):
        assert cb.admit(origin) is None
        cb.record_failure(origin)


def test_count_mode_full_cycle() -> None:
    clock = Clock()
    cb, changes = breaker(clock, failure_threshold=3, recovery_time=30.0)
    fail(cb, times=2)
    assert cb.state(A) is CircuitState.CLOSED
    fail(cb)
    assert cb.state(A) is CircuitState.OPEN
    assert changes == [("https://a.test:443", "closed", "open")]
    assert cb.admit(A) == 30.0
    clock.now += 10
    assert cb.admit(A) == 20.0
    assert cb.retry_in(A) == 20.0
    clock.now += 20
    assert cb.state(A) is CircuitState.HALF_OPEN
    assert cb.admit(A) is None  # the probe
    assert cb.admit(A) == 0.0  # a concurrent caller fails fast while the probe is out
    cb.record_success(A)
    assert cb.state(A) is CircuitState.CLOSED
    assert changes[1:] == [
        ("https://a.test:443", "open", "half-open"),
        ("https://a.test:443", "half-open", "closed"),
    ]
    assert cb.states() == {}  # healthy again: no state kept


def test_a_success_resets_the_consecutive_count() -> None:
    cb, _ = breaker(Clock(), failure_threshold=3)
    fail(cb, times=2)
    assert cb.admit(A) is None
    cb.record_success(A)
    fail(cb, times=2)
    assert cb.state(A) is CircuitState.CLOSED


def test_probe_failure_reopens_for_a_full_recovery_time() -> None:
    clock = Clock()
    cb, changes = breaker(clock, failure_threshold=1, recovery_time=5.0)
    fail(cb)
    clock.now += 5
    assert cb.admit(A) is None
    clock.now += 1
    cb.record_failure(A)
    assert cb.state(A) is CircuitState.OPEN
    assert cb.retry_in(A) == 5.0
    assert [new for _, _, new in changes] == ["open", "half-open", "open"]


def test_half_open_admits_exactly_max_calls_under_concurrency() -> None:
    clock = Clock()
    cb, _ = breaker(clock, failure_threshold=1, recovery_time=1.0, half_open_max_calls=3)
    fail(cb)
    clock.now += 1
    admitted = [cb.admit(A) for _ in range(10)]
    assert admitted.count(None) == 3
    assert admitted[3:] == [0.0] * 7
    cb.record_ignored(A)  # a probe cancelled: its slot frees, nothing decided
    assert cb.state(A) is CircuitState.HALF_OPEN
    assert cb.admit(A) is None
    cb.record_success(A)
    assert cb.state(A) is CircuitState.CLOSED


def test_stragglers_do_not_disturb_an_open_circuit() -> None:
    clock = Clock()
    cb, changes = breaker(clock, failure_threshold=2)
    assert cb.admit(A) is None
    assert cb.admit(A) is None
    assert cb.admit(A) is None  # three in flight while closed
    cb.record_failure(A)
    cb.record_failure(A)
    assert cb.state(A) is CircuitState.OPEN
    cb.record_success(A)  # the third answers late
    cb.record_failure(A)
    assert cb.state(A) is CircuitState.OPEN
    assert len(changes) == 1


def test_origins_are_independent() -> None:
    cb, _ = breaker(Clock(), failure_threshold=1)
    fail(cb, A)
    assert cb.state(A) is CircuitState.OPEN
    assert cb.state(B) is CircuitState.CLOSED
    assert cb.admit(B) is None


def test_rate_mode_needs_minimum_calls_and_the_ratio() -> None:
    clock = Clock()
    cb, _ = breaker(clock, failure_rate_threshold=0.5, minimum_calls=10, window=10.0)
    for _ in range(4):
        fail(cb)  # 4 failures of 4 calls: ratio 1.0, but too few calls
    assert cb.state(A) is CircuitState.CLOSED
    for _ in range(5):
        assert cb.admit(A) is None
        cb.record_success(A)
    assert cb.state(A) is CircuitState.CLOSED  # 4 of 9
    fail(cb)  # 5 of 10: at the threshold
    assert cb.state(A) is CircuitState.OPEN


def test_rate_mode_window_expiry() -> None:
    clock = Clock()
    cb, _ = breaker(clock, failure_rate_threshold=0.5, minimum_calls=4, window=10.0)
    fail(cb, times=3)
    clock.now += 11  # the three failures slide out of the window
    for _ in range(3):
        assert cb.admit(A) is None
        cb.record_success(A)
    fail(cb)  # 1 of 4 in the window
    assert cb.state(A) is CircuitState.CLOSED


def test_very_long_durations() -> None:
    clock = Clock()
    cb, _ = breaker(clock, failure_threshold=1, recovery_time=10**9)
    fail(cb)
    clock.now += 10**8
    assert cb.admit(A) == pytest.approx(9 * 10**8)
    clock.now += 9 * 10**8
    assert cb.admit(A) is None


def test_zero_recovery_time_probes_at_once() -> None:
    cb, _ = breaker(Clock(), failure_threshold=1, recovery_time=0.0)
    fail(cb)
    assert cb.state(A) is CircuitState.HALF_OPEN
    assert cb.admit(A) is None


def test_memory_stays_bounded() -> None:
    clock = Clock()
    cb, _ = breaker(clock, failure_threshold=3, max_origins=1000)
    for n in range(100_000):  # seen once, healthy: no state at all
        origin = Origin("https", f"host{n}.test", 443)
        assert cb.admit(origin) is None
        cb.record_success(origin)
    assert len(cb._circuits) == 0
    for n in range(100_000):  # seen once, failing once: bounded by max_origins
        origin = Origin("https", f"host{n}.test", 443)
        fail(cb, origin)
    assert len(cb._circuits) == 1000
    fail(cb, A, times=3)  # an open circuit survives eviction of closed ones
    for n in range(5000):
        fail(cb, Origin("https", f"other{n}.test", 443))
    assert cb.state(A) is CircuitState.OPEN
    assert len(cb._circuits) == 1000


def test_state_by_url() -> None:
    cb, _ = breaker(Clock(), failure_threshold=1)
    fail(cb, Origin("https", "api.test", 443))
    assert cb.state("https://api.test/any/path") is CircuitState.OPEN
    assert cb.state("https://api.test:8443/") is CircuitState.CLOSED


def test_logs_warning_on_open_and_info_on_close(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="httpx_resilience")
    clock = Clock()
    cb, _ = breaker(clock, failure_threshold=1, recovery_time=2.0, name="billing")
    fail(cb)
    clock.now += 2
    assert cb.admit(A) is None
    cb.record_success(A)
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert records == [
        (
            "WARNING",
            "Circuit 'billing' opened for https://a.test:443 (was closed); failing fast for 2.0s",
        ),
        ("DEBUG", "Circuit 'billing' half-open for https://a.test:443"),
        ("INFO", "Circuit 'billing' closed for https://a.test:443"),
    ]


@pytest.mark.parametrize(
    ("kwargs", "message", "error"),
    [
        ({"failure_threshold": 0}, "failure_threshold must be >= 1", ValueError),
        ({"failure_threshold": 2.5}, "failure_threshold must be an int", TypeError),
        ({"recovery_time": -1}, "recovery_time must be >= 0", ValueError),
        ({"recovery_time": float("nan")}, "recovery_time must be a finite number", ValueError),
        (
            {"failure_rate_threshold": 1.5},
            "failure_rate_threshold must be >= 0.0 and <= 1.0",
            ValueError,
        ),
        ({"failure_rate_threshold": 0}, "failure_rate_threshold must be > 0", ValueError),
        ({"window": 0}, "window must be >= 0.001", ValueError),
        ({"minimum_calls": 0}, "minimum_calls must be >= 1", ValueError),
        ({"half_open_max_calls": 0}, "half_open_max_calls must be >= 1", ValueError),
        ({"max_origins": 0}, "max_origins must be >= 1", ValueError),
        (
            {"failure_statuses": [700]},
            "failure_statuses must hold status codes 100-599",
            ValueError,
        ),
        ({"name": 5}, "name must be a str", TypeError),
    ],
)
def test_invalid_values_name_the_field(
    kwargs: dict[str, object], message: str, error: type[Exception]
) -> None:
    with pytest.raises(error, match=f"^CircuitBreaker.{message}"):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]


def test_defaults() -> None:
    cb = CircuitBreaker()
    assert (cb.failure_threshold, cb.recovery_time, cb.half_open_max_calls) == (5, 30.0, 1)
    assert cb.failure_statuses == frozenset(range(500, 600))
    assert cb.failure_rate_threshold is None
    assert repr(CircuitBreaker(name="x")) == (
        "CircuitBreaker(name='x', failure_threshold=5, recovery_time=30.0)"
    )
