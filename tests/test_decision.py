"""The pure retry decision and backoff: exact sequences, the decision table, caps and deadlines."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from httpx_resilience import RetryConfig
from httpx_resilience._budget import RetryBudget
from httpx_resilience._classify import FailureKind, classify_error
from httpx_resilience._decision import Decision, backoff_delay, decide, spend_budget

NO_JITTER = RetryConfig(jitter=False, budget_ratio=None)


def fixed(value: float) -> Callable[[], float]:
    return lambda: value


def run(config: RetryConfig = NO_JITTER, **kwargs: Any) -> Decision:
    arguments: dict[str, Any] = {
        "attempt": 1,
        "method_retryable": True,
        "replayable": True,
        "now": 100.0,
        "wall_now": 1_000_000.0,
        "deadline": None,
        "random": fixed(0.5),
        "budget": None,
    }
    arguments.update(kwargs)
    if arguments.get("error") is not None and "kind" not in arguments:
        arguments["kind"] = classify_error(arguments["error"])
    return decide(config, **arguments)


def test_exact_backoff_sequence_without_jitter() -> None:
    config = RetryConfig(base_delay=0.5, backoff_factor=2.0, max_delay=5.0, jitter=False)
    waits = [backoff_delay(config, n, fixed(0.99)) for n in range(1, 8)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_full_jitter_draws_from_zero_to_the_delay() -> None:
    config = RetryConfig(base_delay=1.0, backoff_factor=3.0, max_delay=100.0)
    assert [backoff_delay(config, n, fixed(0.0)) for n in (1, 2, 3)] == [1.0, 3.0, 9.0]
    assert [backoff_delay(config, n, fixed(0.5)) for n in (1, 2, 3)] == [0.5, 1.5, 4.5]


def test_partial_jitter_keeps_a_floor() -> None:
    config = RetryConfig(base_delay=2.0, jitter=0.25)
    assert backoff_delay(config, 1, fixed(1.0)) == 1.5
    assert backoff_delay(config, 1, fixed(0.0)) == 2.0


def test_huge_retry_numbers_do_not_overflow() -> None:
    config = RetryConfig(max_retries=10**6, backoff_factor=10.0, max_delay=7.0, jitter=False)
    assert backoff_delay(config, 10**6, fixed(0.5)) == 7.0


@given(
    base=st.floats(min_value=0, max_value=100),
    factor=st.floats(min_value=1, max_value=100),
    extra=st.floats(min_value=0, max_value=1000),
    jitter=st.floats(min_value=0, max_value=1),
    retry=st.integers(min_value=1, max_value=5000),
    draw=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_backoff_is_never_negative_nor_above_max_delay(
    base: float, factor: float, extra: float, jitter: float, retry: int, draw: float
) -> None:
    config = RetryConfig(
        base_delay=base, backoff_factor=factor, max_delay=base + extra, jitter=jitter
    )
    wait = backoff_delay(config, retry, fixed(draw))
    assert 0.0 <= wait <= config.max_delay


def conn_error(cause: BaseException | None = None) -> httpx.ConnectError:
    exc = httpx.ConnectError("boom")
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (conn_error(), FailureKind.NOT_SENT),
        (conn_error(ConnectionRefusedError()), FailureKind.NOT_SENT),
        (httpx.ConnectTimeout("t"), FailureKind.NOT_SENT),
        (httpx.PoolTimeout("t"), FailureKind.NOT_SENT),
        (conn_error(ssl.SSLCertVerificationError("bad cert")), FailureKind.FATAL),
        (conn_error(ssl.SSLError("wrong version")), FailureKind.FATAL),
        (conn_error(ssl.SSLEOFError("eof during handshake")), FailureKind.NOT_SENT),
        (httpx.ReadError("r"), FailureKind.MAYBE_PROCESSED),
        (httpx.WriteError("w"), FailureKind.MAYBE_PROCESSED),
        (httpx.ReadTimeout("r"), FailureKind.MAYBE_PROCESSED),
        (httpx.WriteTimeout("w"), FailureKind.MAYBE_PROCESSED),
        (httpx.RemoteProtocolError("Server disconnected"), FailureKind.MAYBE_PROCESSED),
        (httpx.LocalProtocolError("bad header"), FailureKind.FATAL),
        (httpx.UnsupportedProtocol("ftp"), FailureKind.FATAL),
        (httpx.ProxyError("p"), FailureKind.FATAL),
        (httpx.InvalidURL("u"), FailureKind.FATAL),
        (ValueError("bug"), FailureKind.FATAL),
    ],
)
def test_classification(error: BaseException, kind: FailureKind) -> None:
    assert classify_error(error) is kind


# The decision table: failure kind x method -> retried?
@pytest.mark.parametrize(
    ("outcome", "method_retryable", "retried"),
    [
        ({"error": httpx.ConnectError("refused")}, False, True),
        ({"error": httpx.ConnectError("refused")}, True, True),
        ({"error": httpx.PoolTimeout("pool")}, False, True),
        ({"error": httpx.ReadError("reset")}, False, False),
        ({"error": httpx.ReadError("reset")}, True, True),
        ({"error": httpx.ReadTimeout("slow")}, False, False),
        ({"error": httpx.ReadTimeout("slow")}, True, True),
        ({"error": httpx.RemoteProtocolError("gone")}, False, False),
        ({"error": httpx.RemoteProtocolError("gone")}, True, True),
        ({"error": conn_error(ssl.SSLCertVerificationError("x"))}, True, False),
        ({"error": httpx.UnsupportedProtocol("x")}, True, False),
        ({"status": 503}, True, True),
        ({"status": 503}, False, False),
        ({"status": 429}, True, True),
        ({"status": 500}, True, True),
        ({"status": 404}, True, False),
        ({"status": 400}, True, False),
        ({"status": 501}, True, False),
    ],
)
def test_decision_table(outcome: dict[str, Any], method_retryable: bool, retried: bool) -> None:
    assert run(method_retryable=method_retryable, **outcome).retry is retried


def test_unreplayable_body_is_not_retried() -> None:
    decision = run(status=503, replayable=False)
    assert decision == Decision(False, 0.0, "request body cannot be replayed")


def test_retries_run_out() -> None:
    config = RetryConfig(max_retries=2, jitter=False, budget_ratio=None)
    assert run(config, status=503, attempt=2).retry
    assert run(config, status=503, attempt=3) == Decision(False, 0.0, "retries exhausted")
    assert not run(RetryConfig(max_retries=0), status=503).retry


def test_reasons_name_the_cause() -> None:
    assert run(status=503).reason == "status 503"
    assert run(error=httpx.ConnectError("x")).reason == "ConnectError (not sent)"
    assert run(error=httpx.ReadError("x")).reason == "ReadError (maybe processed)"


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_replace_backoff_exactly(status: int) -> None:
    # Full jitter would draw the backoff down; Retry-After is used as given.
    config = RetryConfig(base_delay=0.5, budget_ratio=None)
    assert run(config, status=status, retry_after="7", random=fixed(0.99)).wait == 7.0


def test_retry_after_date_in_both_directions() -> None:
    assert run(status=503, retry_after="Mon, 12 Jan 1970 13:46:50 GMT").wait == 10.0
    assert run(status=503, retry_after="Thu, 01 Jan 1970 00:00:00 GMT").wait == 0.0  # past: now


def test_unparseable_retry_after_falls_back_to_backoff() -> None:
    assert run(status=503, retry_after="soon").wait == 0.5


def test_retry_after_ignored_for_other_statuses_and_when_disabled() -> None:
    assert run(status=500, retry_after="9").wait == 0.5
    config = RetryConfig(jitter=False, respect_retry_after=False, budget_ratio=None)
    assert run(config, status=503, retry_after="9").wait == 0.5


def test_retry_after_above_cap_returns_at_once() -> None:
    config = RetryConfig(retry_after_cap=30.0, budget_ratio=None)
    assert run(config, status=429, retry_after="30").wait == 30.0
    assert run(config, status=429, retry_after="31") == Decision(
        False, 0.0, "Retry-After above retry_after_cap"
    )


def test_a_wait_past_the_deadline_is_not_started() -> None:
    assert run(status=503, now=100.0, deadline=100.6).retry  # waits 0.5
    assert run(status=503, now=100.0, deadline=100.5) == Decision(
        False, 0.0, "wait would pass total_timeout"
    )
    assert not run(status=503, retry_after="3", now=100.0, deadline=102.0).retry


def test_budget_is_spent_only_when_retrying() -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.2, window=10.0)  # two retries in all
    assert not run(status=404, budget=budget).retry
    assert not run(status=503, method_retryable=False, budget=budget).retry
    assert run(status=503, budget=budget).retry
    assert run(status=503, budget=budget).retry
    assert run(status=503, budget=budget) == Decision(False, 0.0, "retry budget exhausted")


def test_spend_budget_is_the_last_step_alone() -> None:
    # What a shell does when the budget must be fetched first (a fleet's): decide without
    # it, fetch only for a retry, then spend. The result is what decide() with the budget
    # gives; a stop spends nothing.
    budget = RetryBudget(ratio=0.0, min_per_second=0.1, window=10.0)  # one retry in all
    stop = run(status=503, method_retryable=False)
    assert spend_budget(stop, budget, 100.0, None) is stop
    assert budget.available(100.0) == 1.0
    retry = run(status=503)
    assert retry == Decision(True, 0.5, "status 503")
    # The fetch took so long that the wait no longer fits the deadline: a stop, nothing spent.
    assert spend_budget(retry, budget, 101.6, 102.0) == Decision(
        False, 0.0, "wait would pass total_timeout"
    )
    assert budget.available(101.6) == 1.0
    assert spend_budget(retry, budget, 100.0, 102.0) is retry
    assert budget.available(100.0) == 0.0
    assert spend_budget(retry, budget, 100.0, None) == Decision(
        False, 0.0, "retry budget exhausted"
    )
    assert spend_budget(retry, None, 100.0, None) is retry


@given(
    header=st.one_of(st.text(), st.integers(min_value=-10, max_value=10**9).map(str)),
    cap=st.floats(min_value=0, max_value=3600),
)
def test_waits_are_never_negative_nor_above_their_cap(header: str, cap: float) -> None:
    config = RetryConfig(retry_after_cap=cap, max_delay=20.0, budget_ratio=None)
    decision = run(config, status=503, retry_after=header, random=fixed(0.3))
    assert decision.wait >= 0.0
    if decision.retry:
        assert decision.wait <= max(cap, config.max_delay)


def test_what_counts_against_the_upstream() -> None:
    from httpx_resilience import CircuitOpenError, DeadlineExceeded, Origin
    from httpx_resilience._classify import counts_against_upstream

    assert counts_against_upstream(httpx.ConnectError("refused"))
    assert counts_against_upstream(httpx.ReadTimeout("slow"))
    assert counts_against_upstream(httpx.RemoteProtocolError("gone"))
    assert not counts_against_upstream(httpx.PoolTimeout("local"))
    assert not counts_against_upstream(DeadlineExceeded("ours"))
    assert not counts_against_upstream(CircuitOpenError(Origin("http", "a", 80), 1.0))
    assert not counts_against_upstream(conn_error(ssl.SSLCertVerificationError("bad cert")))
