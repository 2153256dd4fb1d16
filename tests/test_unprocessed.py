"""Requests the server provably did not process: classification and the free-resend bound.

Pure decision logic over an in-memory transport; the protocol cases that raise these errors
are proven against real servers in test_http2_close.py and test_close_stress.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from httpx_resilience import CircuitBreaker, ResilientTransport, RetryConfig, get_retry_history
from httpx_resilience._classify import FailureKind, classify_error, counts_against_upstream
from httpx_resilience._connection.errors import StreamNotProcessed, is_not_processed
from tests.test_transport_unit import FAST, Script

pytestmark = pytest.mark.anyio


def not_processed() -> httpx.RemoteProtocolError:
    """What httpx raises for a `StreamNotProcessed` from the connection layer."""
    error = httpx.RemoteProtocolError("HTTP/2 stream 5 is above the last_stream_id (3)")
    error.__cause__ = StreamNotProcessed("stream 5 not processed")
    return error


def test_classified_apart_from_maybe_processed() -> None:
    assert classify_error(not_processed()) is FailureKind.NOT_PROCESSED
    assert classify_error(httpx.RemoteProtocolError("Server disconnected")) is (
        FailureKind.MAYBE_PROCESSED
    )
    assert is_not_processed(not_processed())
    assert not is_not_processed(httpx.RemoteProtocolError("x"))
    # An orderly refusal is not the upstream failing.
    assert not counts_against_upstream(not_processed())


def test_bound_is_validated() -> None:
    with pytest.raises(ValueError, match="max_unprocessed_retries must be >= 0"):
        RetryConfig(max_unprocessed_retries=-1)
    with pytest.raises(TypeError, match="max_unprocessed_retries"):
        RetryConfig(max_unprocessed_retries=1.5)  # type: ignore[arg-type]
    assert RetryConfig().max_unprocessed_retries == 10


async def test_post_resent_at_once_without_spending_retries_or_budget() -> None:
    script = Script(not_processed(), not_processed(), 200)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    # No ordinary retries and an empty budget: only the free resends can help.
    config = FAST.replace(max_retries=0, budget_ratio=0.0, budget_min_per_second=0.0)
    transport = ResilientTransport(script.transport(), retry=config, sleep=sleep)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.post("http://upstream.test/x", content=b"body")
    assert response.status_code == 200
    assert [r.method for r in script.requests] == ["POST"] * 3
    assert script.bodies == [b"body"] * 3
    assert waits == []  # sent again at once
    assert [a.reason.startswith("not processed") for a in get_retry_history(response)] == [
        True,
        True,
        False,
    ]


async def test_past_the_bound_ordinary_rules_apply_and_count() -> None:
    script = Script(not_processed())
    config = FAST.replace(max_unprocessed_retries=2, max_retries=1)
    async with httpx.AsyncClient(
        transport=ResilientTransport(script.transport(), retry=config)
    ) as client:
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            await client.post("http://upstream.test/x", content=b"body")
    # 1 + 2 free + 1 ordinary retry (a never-processed failure retries for POST too).
    assert len(script.requests) == 4
    reasons = [a.reason for a in get_retry_history(caught.value)]
    assert reasons[2] == "RemoteProtocolError (not processed)"
    assert reasons[3] == "retries exhausted"


async def test_streamed_body_already_sent_is_not_resent() -> None:
    script = Script(not_processed(), 200)

    async def body() -> AsyncIterator[bytes]:
        yield b"chunk"

    async with httpx.AsyncClient(
        transport=ResilientTransport(script.transport(), retry=FAST)
    ) as client:
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            await client.post("http://upstream.test/x", content=body())
    assert len(script.requests) == 1
    [attempt] = get_retry_history(caught.value)
    assert attempt.reason == "request body cannot be replayed"


async def test_breaker_ignores_refusals() -> None:
    script = Script(not_processed(), not_processed(), 200)
    breaker = CircuitBreaker(failure_threshold=1)
    transport = ResilientTransport(script.transport(), retry=FAST, circuit_breaker=breaker)
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.post("http://upstream.test/x", content=b"b")).status_code == 200
    assert breaker.state("http://upstream.test").name == "CLOSED"
