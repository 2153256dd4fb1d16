"""CircuitBreaker as a pure state machine with a fake clock: no sockets, no waiting."""

from __future__ import annotations

import logging

import pytest

from httpx_resilience import CircuitBreaker, CircuitOpenError, CircuitState, Origin
from httpx_resilience._breaker import Permit

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


def refused(cb: CircuitBreaker, origin: Origin = A) -> float:
    """Seconds until the next probe that the refusal reports; fails if admitted."""
    with pytest.raises(CircuitOpenError) as caught:
        cb.admit(origin)
    assert caught.value.origin == origin
    return caught.value.retry_in


def fail(cb: CircuitBreaker, origin: Origin = A, times: int = 1) -> None:
    for _ in range(times):
        cb.record_failure(cb.admit(origin))


def succeed(cb: CircuitBreaker, origin: Origin = A, times: int = 1) -> None:
    for _ in range(times):
        cb.record_success(cb.admit(origin))


def test_count_mode_full_cycle() -> None:
    clock = Clock()
    cb, changes = breaker(clock, failure_threshold=3, recovery_time=30.0)
    fail(cb, times=2)
    assert cb.state(A) is CircuitState.CLOSED
    fail(cb)
    assert cb.state(A) is CircuitState.OPEN
    assert changes == [("https://a.test:443", "closed", "open")]
    assert refused(cb) == 30.0
    clock.now += 10
    assert refused(cb) == 20.0
    assert cb.retry_in(A) == 20.0
    clock.now += 20
    assert cb.state(A) is CircuitState.HALF_OPEN
    probe = cb.admit(A)
    assert refused(cb) == 0.0  # a concurrent caller fails fast while the probe is out
    cb.record_success(probe)
    assert cb.state(A) is CircuitState.CLOSED
    assert changes[1:] == [
        ("https://a.test:443", "open", "half-open"),
        ("https://a.test:443", "half-open", "closed"),
    ]
    assert cb.states() == {}  # healthy again: no state kept
    assert cb._circuits == {}


def test_a_success_resets_the_consecutive_count() -> None:
    cb, _ = breaker(Clock(), failure_threshold=3)
    fail(cb, times=2)
    succeed(cb)
    fail(cb, times=2)
    assert cb.state(A) is CircuitState.CLOSED


def test_probe_failure_reopens_for_a_full_recovery_time() -> None:
    clock = Clock()
    cb, changes = breaker(clock, failure_threshold=1, recovery_time=5.0)
    fail(cb)
    clock.now += 5
    probe = cb.admit(A)
    clock.now += 1
    cb.record_failure(probe)
    assert cb.state(A) is CircuitState.OPEN
    assert cb.retry_in(A) == 5.0
    assert [new for _, _, new in changes] == ["open", "half-open", "open"]


def test_half_open_admits_exactly_max_calls_under_concurrency() -> None:
    clock = Clock()
    cb, _ = breaker(clock, failure_threshold=1, recovery_time=1.0, half_open_max_calls=3)
    fail(cb)
    clock.now += 1
    probes: list[Permit] = []
    refusals = 0
    for _ in range(10):
        try:
            probes.append(cb.admit(A))
        except CircuitOpenError:
            refusals += 1
    assert (len(probes), refusals) == (3, 7)
    cb.record_ignored(probes[0])  # a probe cancelled: its slot frees, nothing decided
    assert cb.state(A) is CircuitState.HALF_OPEN
    probes.append(cb.admit(A))
    cb.record_success(probes[1])
    assert cb.state(A) is CircuitState.CLOSED


def test_late_probes_of_an_earlier_phase_hold_no_slot() -> None:
    clock = Clock()
    cb, _ = breaker(clock, failure_threshold=1, recovery_time=1.0, half_open_max_calls=3)
    fail(cb)
    clock.now += 1
    first, second, third = cb.admit(A), cb.admit(A), cb.admit(A)
    cb.record_failure(first)  # re-opens
    cb.record_success(second)  # late: no say in the open circuit
    cb.record_ignored(third)
    assert cb.state(A) is CircuitState.OPEN
    clock.now += 1
    new_phase = [cb.admit(A) for _ in range(3)]  # all three slots are free again
    assert len(new_phase) == 3
    refused(cb)


def test_a_request_admitted_while_closed_is_no_probe() -> None:
    clock = Clock()
    cb, _ = breaker(clock, failure_threshold=1, recovery_time=1.0)
    straggler = cb.admit(A)
    fail(cb)  # opens
    clock.now += 1
    probe = cb.admit(A)
    cb.record_ignored(straggler)  # must not free the probe's slot
    refused(cb)
    cb.record_success(straggler)  # must not close the circuit
    assert cb.state(A) is CircuitState.HALF_OPEN
    cb.record_success(probe)
    assert cb.state(A) is CircuitState.CLOSED


def test_stragglers_do_not_disturb_an_open_circuit() -> None:
    cb, changes = breaker(Clock(), failure_threshold=2)
    permits = [cb.admit(A) for _ in range(3)]  # three in flight while closed
    cb.record_failure(permits[0])
    cb.record_failure(permits[1])
    assert cb.state(A) is CircuitState.OPEN
    cb.record_success(permits[2])  # the third answers late
    assert cb.state(A) is CircuitState.OPEN
    assert len(changes) == 1


def test_origins_are_independent() -> None:
    cb, _ = breaker(Clock(), failure_threshold=1)
    fail(cb, A)
    assert cb.state(A) is CircuitState.OPEN
    assert cb.state(B) is CircuitState.CLOSED
    assert cb.admit(B) == Permit(B, 0)


def test_rate_mode_needs_minimum_calls_and_the_ratio() -> None:
    cb, _ = breaker(Clock(), failure_rate_threshold=0.5, minimum_calls=10, window=10.0)
    fail(cb, times=4)  # 4 failures of 4 calls: ratio 1.0, but too few calls
    assert cb.state(A) is CircuitState.CLOSED
    succeed(cb, times=5)
    assert cb.state(A) is CircuitState.CLOSED  # 4 of 9
    fail(cb)  # 5 of 10: at the threshold
    assert cb.state(A) is CircuitState.OPEN


def test_rate_mode_counts_successes_before_the_first_failure() -> None:
    cb, _ = breaker(Clock(), failure_rate_threshold=0.5, minimum_calls=10, window=10.0)
    succeed(cb, times=90)
    fail(cb, times=10)  # a 10 % failure rate
    assert cb.state(A) is CircuitState.CLOSED
    fail(cb, times=79)  # 89 of 179: still below half
    assert cb.state(A) is CircuitState.CLOSED
    fail(cb)  # 90 of 180
    assert cb.state(A) is CircuitState.OPEN


def test_rate_mode_window_expiry() -> None:
    clock = Clock()
    cb, _ = breaker(clock, failure_rate_threshold=0.5, minimum_calls=4, window=10.0)
    fail(cb, times=3)
    clock.now += 11  # the three failures slide out of the window
    succeed(cb, times=3)
    fail(cb)  # 1 of 4 in the window: enough calls, too few failures
    assert cb.state(A) is CircuitState.CLOSED
    fail(cb, times=2)  # 3 of 6
    assert cb.state(A) is CircuitState.OPEN


def test_very_long_durations() -> None:
    clock = Clock()
    cb, _ = breaker(clock, failure_threshold=1, recovery_time=10**9)
    fail(cb)
    clock.now += 10**8
    assert refused(cb) == pytest.approx(9 * 10**8)
    clock.now += 9 * 10**8
    assert cb.admit(A).generation == 1


def test_zero_recovery_time_probes_at_once() -> None:
    cb, _ = breaker(Clock(), failure_threshold=1, recovery_time=0.0)
    fail(cb)
    assert cb.state(A) is CircuitState.HALF_OPEN
    assert cb.admit(A).generation == 1


def test_a_broken_hook_does_not_break_requests(caplog: pytest.LogCaptureFixture) -> None:
    def hook(origin: Origin, old: CircuitState, new: CircuitState) -> None:
        raise RuntimeError("metrics backend down")

    cb = CircuitBreaker(failure_threshold=1, on_state_change=hook)
    fail(cb)
    assert cb.state(A) is CircuitState.OPEN
    assert "on_state_change hook raised" in caplog.text


def test_memory_stays_bounded() -> None:
    cb, _ = breaker(Clock(), failure_threshold=3, max_origins=1000)
    for n in range(100_000):  # seen once, healthy: no state at all
        succeed(cb, Origin("https", f"host{n}.test", 443))
    assert len(cb._circuits) == 0
    for n in range(100_000):  # seen once, failing once: bounded by max_origins
        fail(cb, Origin("https", f"host{n}.test", 443))
    assert len(cb._circuits) == 1000
    fail(cb, A, times=3)  # an open circuit survives eviction of closed ones
    for n in range(5000):
        fail(cb, Origin("https", f"other{n}.test", 443))
    assert cb.state(A) is CircuitState.OPEN
    assert len(cb._circuits) == 1000
    rate, _ = breaker(Clock(), failure_rate_threshold=0.5, max_origins=1000)
    for n in range(100_000):  # rate mode keeps counts, still bounded
        succeed(rate, Origin("https", f"host{n}.test", 443))
    assert len(rate._circuits) == 1000


def test_states_lists_only_circuits_that_are_not_closed() -> None:
    clock = Clock()
    cb, _ = breaker(clock, failure_threshold=2, recovery_time=5.0)
    fail(cb, A)  # one failure: tracked, but closed
    fail(cb, B, times=2)
    assert cb.states() == {B: CircuitState.OPEN}
    clock.now += 5
    assert cb.states() == {B: CircuitState.HALF_OPEN}


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
    succeed(cb)
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert records == [
        (
            "WARNING",
            "Circuit 'billing' opened for https://a.test:443 (was closed); failing fast for 2.0s",
        ),
        ("DEBUG", "Circuit 'billing' half-open for https://a.test:443"),
        ("INFO", "Circuit 'billing' closed for https://a.test:443"),
    ]


def test_refusal_message() -> None:
    cb, _ = breaker(Clock(), failure_threshold=1, recovery_time=12.0, name="billing")
    fail(cb)
    with pytest.raises(CircuitOpenError) as caught:
        cb.admit(A)
    assert str(caught.value) == (
        "circuit 'billing' open for https://a.test:443: failing fast; next probe in 12.0s"
    )
    assert caught.value.breaker_name == "billing"


@pytest.mark.parametrize(
    ("kwargs", "message", "error"),
    [
        ({"failure_threshold": 0}, "failure_threshold must be >= 1", ValueError),
        ({"failure_threshold": 2.5}, "failure_threshold must be an int", TypeError),
        ({"recovery_time": -1}, "recovery_time must be >= 0", ValueError),
        ({"recovery_time": float("nan")}, "recovery_time must be a finite number", ValueError),
        (
            {"failure_rate_threshold": 1.5},
            r"failure_rate_threshold must be >= 0\.0 and <= 1\.0",
            ValueError,
        ),
        ({"failure_rate_threshold": 0}, "failure_rate_threshold must be > 0", ValueError),
        ({"window": 0}, r"window must be >= 0\.001", ValueError),
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
    with pytest.raises(error, match=rf"^CircuitBreaker\.{message}"):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]


def test_defaults() -> None:
    cb = CircuitBreaker()
    assert (cb.failure_threshold, cb.recovery_time, cb.half_open_max_calls) == (5, 30.0, 1)
    assert cb.failure_statuses == frozenset(range(500, 600))
    assert cb.failure_rate_threshold is None
    assert repr(CircuitBreaker(name="x")) == (
        "CircuitBreaker(name='x', failure_threshold=5, recovery_time=30.0)"
    )
