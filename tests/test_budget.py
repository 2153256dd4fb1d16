"""RetryBudget: retries capped at a share of recent requests plus a floor, over a sliding window."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from httpx_resilience._budget import RetryBudget


def spend_all(budget: RetryBudget, now: float) -> int:
    spent = 0
    while spent < 10_000 and budget.try_spend(now):
        spent += 1
    return spent


def test_floor_only_without_traffic() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=0.3, window=10.0)
    assert spend_all(budget, now=0.0) == 3  # 0.3/s over 10 s


def test_ratio_of_requests_plus_floor() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=0.0, window=10.0)
    for _ in range(100):
        budget.record_request(1.0)
    assert budget.available(1.0) == 20.0
    assert spend_all(budget, now=1.0) == 20
    assert budget.available(1.0) == 0.0
    budget.record_request(1.0)
    budget.record_request(1.0)
    budget.record_request(1.0)
    budget.record_request(1.0)
    budget.record_request(1.0)
    assert spend_all(budget, now=1.0) == 1  # five more requests earn one retry


def test_old_traffic_slides_out_of_the_window() -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=0.0, window=10.0)
    for _ in range(10):
        budget.record_request(0.5)
    assert spend_all(budget, now=0.5) == 5
    # 9 s later the requests and the retries are both still inside the window.
    assert spend_all(budget, now=9.4) == 0
    # After the window has passed, both have slid out: nothing earned, nothing owed.
    assert budget.available(10.6) == 0.0
    for _ in range(4):
        budget.record_request(10.6)
    assert spend_all(budget, now=10.6) == 2


def test_partial_slide_keeps_recent_buckets() -> None:
    budget = RetryBudget(ratio=1.0, min_per_second=0.0, window=10.0)
    budget.record_request(0.0)
    budget.record_request(5.0)
    assert budget.available(5.0) == 2.0
    assert budget.available(10.5) == 1.0  # the request at t=0 left, the one at t=5 stays
    assert budget.available(15.5) == 0.0


def test_long_idle_and_clock_going_backwards_reset() -> None:
    budget = RetryBudget(ratio=1.0, min_per_second=0.0, window=10.0)
    budget.record_request(100.0)
    assert budget.available(100.0) == 1.0
    assert budget.available(10_000_000.0) == 0.0
    budget.record_request(10_000_000.0)
    # A read changes nothing (stats() may run in another thread, with a `now` read before
    # the latest count): the totals as of the latest call.
    assert budget.available(5.0) == 1.0
    assert not budget.try_spend(5.0)  # counting backwards: start again rather than miscount
    assert budget.available(5.0) == 0.0


@given(
    st.lists(
        st.tuples(st.booleans(), st.floats(min_value=0, max_value=1000, allow_nan=False)),
        max_size=300,
    )
)
def test_retries_in_window_never_exceed_the_allowance(events: list[tuple[bool, float]]) -> None:
    """Whatever the order of calls, a retry is granted only while the retries in the window,
    it included, respect ratio and floor. (Later, as old requests slide out of the window, the
    retries granted on their account may exceed what the window now allows: a budget cannot
    take back a retry it has granted.)"""
    budget = RetryBudget(ratio=0.2, min_per_second=0.1, window=10.0)
    now = 0.0
    for is_request, step in events:
        now += step / 100
        if is_request:
            budget.record_request(now)
        elif budget.try_spend(now):
            assert budget._counts.second <= 1.0 + 0.2 * budget._counts.first
        assert budget.available(now) >= 0.0
