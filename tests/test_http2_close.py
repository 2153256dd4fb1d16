"""Connections the server closes in an ordinary way lose no request (issue 6), case by case.

Protocol cases run against `tests.support.h2server.H2Server`, a small h2-based server whose
GOAWAYs, refusals and stream limits are scripted (and `tests.support.scripted_h2` for a server
that sends GOAWAY with every preface); the HTTP/1.1 stale keep-alive case runs
against Hypercorn. The high-volume proof is in ``test_close_stress.py``.
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from httpx_resilience import (
    AsyncConnectionPoolTransport,
    ResilientTransport,
    RetryConfig,
    get_retry_history,
)
from httpx_resilience._classify import FailureKind, classify_error
from tests.support.h2server import H2Server, Plan
from tests.support.scripted_h2 import ScriptedServer
from tests.support.server import FaultApp, ServerThread

pytestmark = pytest.mark.anyio

NOT_PROCESSED = "not processed by the server"
FAST = RetryConfig(base_delay=0.0, max_delay=0.0, budget_ratio=None)


def h2_client(retry: RetryConfig = FAST, **options: object) -> httpx.AsyncClient:
    transport = ResilientTransport(retry=retry, http1=False, http2=True, **options)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, timeout=5.0)


async def post_all(client: httpx.AsyncClient, url: str, paths: list[str]) -> list[httpx.Response]:
    responses: dict[str, httpx.Response] = {}

    async def post(path: str) -> None:
        responses[path] = await client.post(url + path, content=b"payload")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            for path in paths:
                group.start_soon(post, path)
    return [responses[path] for path in paths]


def resends(response: httpx.Response) -> int:
    return sum(1 for a in get_retry_history(response) if a.reason.startswith(NOT_PROCESSED))


async def test_goaway_below_sent_streams_resends_the_rest_and_finishes_the_accepted() -> None:
    # Connection 0 takes three POSTs (streams 1, 3, 5), then says GOAWAY(last_stream_id=1)
    # before answering any: stream 1 is answered after the GOAWAY, 3 and 5 were not processed.
    plans = {0: Plan(goaway_after=3, goaway_last_stream_id=1)}
    with H2Server(lambda index: plans.get(index, Plan())) as server:
        async with h2_client() as client:
            responses = await post_all(client, server.url, ["/a", "/b", "/c"])
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert sorted(p.path for p in server.processed) == ["/a", "/b", "/c"]  # each exactly once
    assert all(p.method == "POST" for p in server.processed)
    first = [p for p in server.processed if p.connection == 0]
    assert [p.stream_id for p in first] == [1]  # finished although it came after the GOAWAY
    assert sorted(resends(r) for r in responses) == [0, 1, 1]
    # Free resends: no ordinary retry was spent.
    assert all(len(get_retry_history(r)) == 1 + resends(r) for r in responses)


async def test_goaway_with_last_stream_id_zero_every_time_is_bounded() -> None:
    retry = FAST.replace(max_unprocessed_retries=2, max_retries=1)
    with H2Server(lambda _: Plan(goaway_after=1, goaway_last_stream_id=0)) as server:
        async with h2_client(retry) as client:
            with pytest.raises(httpx.RemoteProtocolError, match="not processed") as caught:
                await client.post(server.url + "/x", content=b"payload")
    assert server.processed == []
    # 1 attempt + 2 free resends + 1 ordinary retry, each on a fresh connection.
    assert server.connections == 4
    history = get_retry_history(caught.value)
    assert [a.reason.startswith(NOT_PROCESSED) for a in history] == [True, True, False, False]
    assert history[-1].reason == "retries exhausted"


async def test_a_server_that_goes_away_with_every_preface_ends_the_request() -> None:
    """A server being drained that still accepts connections, each preface followed by
    GOAWAY(last_stream_id=0): the connection opened for the request takes no stream, and the
    pool raises "not processed" instead of opening connection after connection for ever (the
    transport's bounded, backed-off resend of unprocessed requests applies)."""
    with ScriptedServer(goaway_at_once=True) as server:
        transport = AsyncConnectionPoolTransport(http1=False, http2=True)
        async with httpx.AsyncClient(
            transport=transport, base_url=server.url, timeout=httpx.Timeout(3.0)
        ) as client:
            outcome: Any = None
            with anyio.move_on_after(10):
                try:
                    outcome = (await client.get("/ok")).status_code
                except httpx.TransportError as exc:
                    outcome = exc
            connections = server.connections
    assert isinstance(outcome, httpx.TransportError), (outcome, connections)
    assert connections <= 10, connections
    assert classify_error(outcome) is FailureKind.NOT_PROCESSED, repr(outcome)


async def test_a_server_that_goes_away_with_every_preface_is_resent_a_bounded_number_of_times() -> (
    None
):
    """Through the resilient transport, the "not processed" of a connection that took no
    stream is resent for a POST too, within ``max_unprocessed_retries``: one connection per
    attempt, then the error."""
    retry = FAST.replace(max_unprocessed_retries=2, max_retries=0)
    with ScriptedServer(goaway_at_once=True) as server:
        async with h2_client(retry) as client:
            with anyio.fail_after(20):
                with pytest.raises(httpx.RemoteProtocolError, match="not processed"):
                    await client.post(server.url + "/ok", content=b"payload")
    assert server.connections == 3
    assert server.arrived == []


async def test_refused_stream_is_resent_even_for_post() -> None:
    with H2Server(lambda index: Plan(refuse=frozenset({1})) if index == 0 else Plan()) as server:
        async with h2_client() as client:
            response = await client.post(server.url + "/refused", content=b"payload")
    assert response.status_code == 200
    assert [(p.method, p.path, p.stream_id) for p in server.processed] == [("POST", "/refused", 3)]
    assert resends(response) == 1


async def test_refused_stream_is_not_a_breaker_failure_nor_budget_spend() -> None:
    from httpx_resilience import CircuitBreaker

    breaker = CircuitBreaker(failure_threshold=1)
    retry = FAST.replace(budget_ratio=0.0, budget_min_per_second=0.0)  # no budget at all
    with H2Server(lambda index: Plan(refuse=frozenset({1})) if index == 0 else Plan()) as server:
        async with h2_client(retry, circuit_breaker=breaker) as client:
            response = await client.post(server.url + "/r", content=b"payload")
            assert response.status_code == 200
            assert (await client.get(server.url + "/next")).status_code == 200
    assert resends(response) == 1
    assert breaker.state(server.url).name == "CLOSED"


async def test_idle_connection_closed_with_goaway_is_not_written_to() -> None:
    with H2Server(lambda _: Plan(close_when_idle_for=0.05)) as server:
        async with h2_client() as client:
            assert (await client.get(server.url + "/first")).status_code == 200
            await anyio.sleep(0.3)  # the server sends GOAWAY and closes meanwhile
            response = await client.post(server.url + "/second", content=b"payload")
    assert response.status_code == 200
    assert len(get_retry_history(response)) == 1  # noticed before sending: nothing to resend
    assert [(p.connection, p.path) for p in server.processed] == [(0, "/first"), (1, "/second")]


async def test_beyond_max_concurrent_streams_another_connection_opens() -> None:
    with H2Server(lambda _: Plan(max_concurrent_streams=2, delay=0.3)) as server:
        async with h2_client() as client:
            responses: list[httpx.Response] = []

            async def get(index: int) -> None:
                responses.append(await client.get(f"{server.url}/s{index}"))

            with anyio.fail_after(10):
                async with anyio.create_task_group() as group:
                    for index in range(6):
                        group.start_soon(get, index)
    assert [r.status_code for r in responses] == [200] * 6
    assert server.max_active <= 2
    assert server.connections == 3
    assert sorted(p.path for p in server.processed) == [f"/s{i}" for i in range(6)]


async def test_http11_keepalive_connection_closed_between_requests(anyio_backend: str) -> None:
    app = FaultApp()
    with ServerThread(app, keep_alive_timeout=0.1) as server:
        transport = ResilientTransport(retry=FAST)
        async with httpx.AsyncClient(transport=transport, timeout=5.0) as client:
            for index in range(5):
                response = await client.post(f"{server.url}/ok/stale{index}", content=b"x")
                assert response.status_code == 200
                assert len(get_retry_history(response)) == 1
                await anyio.sleep(0.25)  # longer than the server's keep-alive timeout
    assert [app.hits(f"stale{index}") for index in range(5)] == [1] * 5


async def test_a_servers_request_limit_is_learned_from_its_goaway() -> None:
    # Every connection takes three requests, then GOAWAY(last_stream_id=5) -- like nginx's
    # keepalive_requests. The first burst overfills connection 0 and three requests are resent;
    # after that the pool never gives a connection more than three.
    with H2Server(lambda _: Plan(goaway_after=3, goaway_last_stream_id=5)) as server:
        async with h2_client() as client:
            first = await post_all(client, server.url, [f"/a{i}" for i in range(6)])
            second = await post_all(client, server.url, [f"/b{i}" for i in range(6)])
    assert [r.status_code for r in first + second] == [200] * 12
    assert sum(resends(r) for r in first) == 3
    assert sum(resends(r) for r in second) == 0
    paths = sorted(p.path for p in server.processed)
    assert paths == sorted([f"/a{i}" for i in range(6)] + [f"/b{i}" for i in range(6)])
    assert server.connections == 4


# --- Evidence beats inference (issue 10) -------------------------------------------------------

BIG_BODY = b"x" * 200_000  # more than the initial flow-control window: written in many frames


async def test_response_headers_then_goaway_zero_is_processed_not_resent() -> None:
    # The server answers stream 1 with HEADERS and part of the body, then GOAWAY(0) and closes:
    # contradictory, but its HEADERS prove it processed the POST. Plain httpx semantics: one
    # error, nothing sent twice, and no "not processed" claim.
    plan = Plan(goaway_mid_response=frozenset({1}))
    with H2Server(lambda _: plan) as server:
        async with h2_client() as client:
            with pytest.raises(httpx.RemoteProtocolError) as caught:
                await client.post(server.url + "/once", content=b"payload")
    assert NOT_PROCESSED not in str(caught.value)
    assert "not processed" not in repr(caught.value.__cause__)
    assert [(p.method, p.path) for p in server.processed] == [("POST", "/once")]
    assert server.connections == 1


async def test_response_headers_then_goaway_zero_through_the_facade_is_processed_once() -> None:
    # The facade reads the body inside the retry scope: the body-read failure must be judged
    # by the HEADERS received (processed), not by GOAWAY's last_stream_id (not processed).
    from httpx_resilience import APIConnectionError, AsyncAPIClient

    plan = Plan(goaway_mid_response=frozenset({1}))
    with H2Server(lambda _: plan) as server:
        transport = ResilientTransport(retry=FAST, http1=False, http2=True)
        http = httpx.AsyncClient(transport=transport, timeout=5.0)
        async with http, AsyncAPIClient(server.url, client=http) as api:
            with pytest.raises(APIConnectionError) as caught:
                await api.post("/once", content=b"payload")
    assert [(p.method, p.path) for p in server.processed] == [("POST", "/once")]
    cause = caught.value.__cause__  # the transport's error, which carries the history
    assert isinstance(cause, httpx.RemoteProtocolError)
    history = get_retry_history(cause)
    assert len(history) == 1
    assert not history[0].reason.startswith(NOT_PROCESSED)


async def test_idempotent_request_answered_then_goaway_zero_follows_the_ordinary_rules() -> None:
    # A GET that was answered (processed) may be retried, but as an ordinary retry: it spends
    # max_retries, and max_retries=0 means it is sent once.
    plan = Plan(goaway_mid_response=frozenset({1}))
    with H2Server(lambda _: plan) as server:
        async with h2_client(FAST.replace(max_retries=0)) as client:
            request = client.build_request("GET", server.url + "/get")
            request.extensions["read_body"] = True
            with pytest.raises(httpx.RemoteProtocolError):
                await client.send(request)
    assert [p.path for p in server.processed] == ["/get"]


async def test_goaway_already_received_before_a_write_error_is_resent_once() -> None:
    # Connection 0: on the request's HEADERS, GOAWAY(0) and an abrupt close (RST, the body
    # still arriving). The client's body write fails; the GOAWAY that preceded the reset says
    # the POST was not processed, so it is resent once, on connection 1.
    plans = {0: Plan(goaway_on_headers=True, abrupt_close=True)}
    with H2Server(lambda index: plans.get(index, Plan())) as server:
        async with h2_client() as client:
            response = await client.post(server.url + "/big", content=BIG_BODY)
    assert response.status_code == 200
    assert resends(response) == 1
    assert [(p.connection, p.path) for p in server.processed] == [(1, "/big")]


async def test_abrupt_close_after_goaway_never_processes_a_post_twice() -> None:
    # Like the learned-limit case, but the server resets the connection instead of closing it
    # gracefully: some requests may fail (their fate is unknown), none is processed twice.
    plan = Plan(goaway_after=3, goaway_last_stream_id=5, abrupt_close=True)
    paths = [f"/p{i}" for i in range(6)]
    outcomes: dict[str, httpx.Response | Exception] = {}
    with H2Server(lambda _: plan) as server:
        async with h2_client() as client:

            async def post(path: str) -> None:
                try:
                    outcomes[path] = await client.post(server.url + path, content=b"payload")
                except httpx.TransportError as exc:
                    outcomes[path] = exc

            with anyio.fail_after(10):
                async with anyio.create_task_group() as group:
                    for path in paths:
                        group.start_soon(post, path)
    processed = [p.path for p in server.processed]
    assert sorted(set(processed)) == sorted(processed)  # no POST processed twice
    for path in paths:
        outcome = outcomes[path]
        if isinstance(outcome, httpx.Response):
            assert outcome.status_code == 200
            assert processed.count(path) == 1
        else:  # an error is never a lie about the server not having processed it
            assert processed.count(path) == 0 or NOT_PROCESSED not in str(outcome)


@pytest.mark.parametrize(
    "plan",
    [
        Plan(violation="window_overflow"),
        Plan(violation="push_promise"),
        Plan(violation="continuation_flood"),
        Plan(max_concurrent_streams=0),
    ],
    ids=["window-overflow", "push-promise", "continuation-flood", "max-streams-zero"],
)
async def test_a_servers_protocol_violation_is_a_remote_failure(plan: Plan) -> None:
    from httpx_resilience import CircuitBreaker

    breaker = CircuitBreaker(failure_threshold=1)
    with H2Server(lambda _: plan) as server:
        async with h2_client(FAST.replace(max_retries=0), circuit_breaker=breaker) as client:
            with pytest.raises(httpx.RemoteProtocolError) as caught:
                await client.get(server.url + "/violation")
    assert not isinstance(caught.value, httpx.LocalProtocolError)
    assert breaker.state(server.url).name == "OPEN"  # counted as the upstream failing
