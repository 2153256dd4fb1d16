"""ResilientTransport's shell over an in-memory transport: wiring, history, overrides, logging.

These pin the plumbing; the behaviours themselves are proven against real servers in
test_transport_real.py.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from httpx_resilience import (
    HISTORY_EXTENSION,
    READ_BODY_EXTENSION,
    AsyncConnectionPoolTransport,
    AttemptStart,
    DeadlineExceeded,
    Origin,
    ResilientTransport,
    RetryConfig,
    get_retry_history,
    set_testing,
)

pytestmark = pytest.mark.anyio

FAST = RetryConfig(base_delay=0.0, max_delay=0.0, budget_ratio=None)


class Script:
    """An inner transport answering from a list: a status code or an exception per call."""

    def __init__(self, *outcomes: int | Exception) -> None:
        self.outcomes = list(outcomes)
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []
        self.closed = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.bodies.append(b"".join([chunk async for chunk in request.stream]))  # type: ignore[union-attr]
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, Exception):
            raise outcome
        return httpx.Response(outcome, content=b"body")


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def make(script: Script, config: RetryConfig = FAST, **kwargs: object) -> ResilientTransport:
    return ResilientTransport(script.transport(), retry=config, **kwargs)  # type: ignore[arg-type]


async def test_history_on_success_after_retries() -> None:
    script = Script(503, httpx.ConnectError("refused"), 200)
    async with httpx.AsyncClient(transport=make(script)) as client:
        response = await client.get("http://upstream.test/x")
    assert response.status_code == 200
    history = get_retry_history(response)
    assert response.extensions[HISTORY_EXTENSION] == history
    assert [a.number for a in history] == [1, 2, 3]
    assert [a.status for a in history] == [503, None, 200]
    assert isinstance(history[1].error, httpx.ConnectError)
    assert [a.retried for a in history] == [True, True, False]
    assert history[0].reason == "status 503"
    assert history[2].reason == "final response"


async def test_history_on_the_error_after_the_last_attempt() -> None:
    script = Script(httpx.ReadError("reset"))
    config = FAST.replace(max_retries=2)
    async with httpx.AsyncClient(transport=make(script, config)) as client:
        with pytest.raises(httpx.ReadError) as caught:
            await client.get("http://upstream.test/x")
    history = get_retry_history(caught.value)
    assert len(history) == 3 == len(script.requests)
    assert history[-1].reason == "retries exhausted"
    assert history[-1].error is caught.value


async def test_last_response_returned_when_retries_run_out_and_is_readable() -> None:
    script = Script(503)
    async with httpx.AsyncClient(transport=make(script, FAST.replace(max_retries=1))) as client:
        response = await client.get("http://upstream.test/x")
    assert response.status_code == 503
    assert response.content == b"body"
    assert len(script.requests) == 2


@pytest.mark.parametrize("off", [None, False])
async def test_per_request_override_off(off: bool | None) -> None:
    script = Script(503)
    async with httpx.AsyncClient(transport=make(script)) as client:
        response = await client.get("http://upstream.test/x", extensions={"retry": off})
    assert response.status_code == 503
    assert len(script.requests) == 1
    [attempt] = get_retry_history(response)  # the history is there all the same
    assert (attempt.status, attempt.reason) == (503, "retries exhausted")


async def test_per_request_override_config() -> None:
    script = Script(503)
    async with httpx.AsyncClient(transport=make(script)) as client:
        override = FAST.replace(max_retries=5)
        await client.get("http://upstream.test/x", extensions={"retry": override})
        assert len(script.requests) == 6
        override = FAST.replace(retry_methods={"POST"})
        await client.post("http://upstream.test/x", content=b"x", extensions={"retry": override})
        assert len(script.requests) == 6 + 4


async def test_per_request_override_of_the_wrong_type() -> None:
    async with httpx.AsyncClient(transport=make(Script(200))) as client:
        with pytest.raises(TypeError, match='extensions\\["retry"\\] must be a RetryConfig'):
            await client.get("http://upstream.test/x", extensions={"retry": 3})


async def test_idempotency_key_makes_post_retryable() -> None:
    script = Script(503, 200)
    async with httpx.AsyncClient(transport=make(script)) as client:
        response = await client.post(
            "http://upstream.test/x", json={"a": 1}, headers={"Idempotency-Key": "k1"}
        )
    assert response.status_code == 200
    assert script.bodies == [b'{"a":1}', b'{"a":1}']  # the byte body was replayed intact


async def test_async_iterator_body_is_never_replayed() -> None:
    script = Script(503, 200)

    async def body() -> AsyncIterator[bytes]:
        yield b"chunk"

    async with httpx.AsyncClient(transport=make(script)) as client:
        response = await client.put("http://upstream.test/x", content=body())
    assert response.status_code == 503  # the original response, not StreamConsumed
    assert len(script.requests) == 1
    assert get_retry_history(response)[0].reason == "request body cannot be replayed"


async def test_async_iterator_body_is_retried_when_it_never_left() -> None:
    bodies: list[bytes] = []

    class RefuseOnce(httpx.AsyncBaseTransport):
        """Fails the first attempt before reading the body, as a refused connection does."""

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if not bodies:
                bodies.append(b"<refused>")
                raise httpx.ConnectError("refused")
            bodies.append(b"".join([c async for c in request.stream]))  # type: ignore[union-attr]
            return httpx.Response(200)

    async def body() -> AsyncIterator[bytes]:
        yield b"payload"

    async with httpx.AsyncClient(transport=ResilientTransport(RefuseOnce(), retry=FAST)) as client:
        response = await client.post("http://upstream.test/x", content=body())
    assert response.status_code == 200
    assert bodies == [b"<refused>", b"payload"]


async def test_seekable_multipart_is_replayed(tmp_path: object) -> None:
    import io

    script = Script(503, 200)
    files = {"upload": ("a.txt", io.BytesIO(b"file-content"), "text/plain")}
    async with httpx.AsyncClient(transport=make(script)) as client:
        response = await client.put("http://upstream.test/x", files=files)
    assert response.status_code == 200
    assert len(script.bodies) == 2
    assert script.bodies[0] == script.bodies[1]
    assert b"file-content" in script.bodies[1]


async def test_non_seekable_multipart_of_known_length_is_replayed_from_memory() -> None:
    import io

    class OneShotFile:
        """A file that can be read once and not rewound (a socket or a pipe, say)."""

        def __init__(self, data: bytes) -> None:
            self._data = data

        def read(self, size: int = -1) -> bytes:
            data, self._data = self._data, b""
            return data

        def tell(self) -> int:
            return 0

        def seek(self, offset: int, whence: int = 0) -> int:
            if whence == 2:  # httpx measures the length this way
                return 12
            if offset == 0 and self._data:
                return 0  # not moved yet
            raise io.UnsupportedOperation("not seekable")

        def seekable(self) -> bool:
            return False

        def __iter__(self) -> Iterator[bytes]:
            yield self.read()

    script = Script(503, 200)
    files = {"upload": ("a.txt", OneShotFile(b"file-content"), "text/plain")}
    async with httpx.AsyncClient(transport=make(script)) as client:
        response = await client.put("http://upstream.test/x", files=files)  # type: ignore[arg-type]
    assert response.status_code == 200
    assert len(script.bodies) == 2
    assert script.bodies[0] == script.bodies[1]
    assert b"file-content" in script.bodies[1]


async def test_multipart_larger_than_the_replay_limit_is_sent_once() -> None:
    import io

    from httpx_resilience._transport import MULTIPART_REPLAY_BYTES

    script = Script(503, 200)
    big = io.BytesIO(b"x" * (MULTIPART_REPLAY_BYTES + 1))
    async with httpx.AsyncClient(transport=make(script)) as client:
        response = await client.put("http://upstream.test/x", files={"upload": big})
    assert response.status_code == 503  # not buffered, so not replayed
    assert len(script.requests) == 1
    assert get_retry_history(response)[0].reason == "request body cannot be replayed"


async def test_waits_go_through_the_injected_sleeper_and_testing_switch() -> None:
    config = RetryConfig(base_delay=1.0, backoff_factor=2.0, jitter=False, budget_ratio=None)
    sleeps = Sleeps()
    async with httpx.AsyncClient(transport=make(Script(503), config, sleep=sleeps)) as client:
        await client.get("http://upstream.test/x")
    assert sleeps.waits == [1.0, 2.0, 4.0]

    sleeps.waits.clear()
    set_testing(True)
    try:
        async with httpx.AsyncClient(transport=make(Script(503), config, sleep=sleeps)) as client:
            response = await client.get("http://upstream.test/x")
    finally:
        set_testing(False)
    assert sleeps.waits == [0.0, 0.0, 0.0]
    assert [a.wait for a in get_retry_history(response)] == [1.0, 2.0, 4.0, None]


async def test_budget_stops_retries_across_requests() -> None:
    config = RetryConfig(
        base_delay=0.0, max_delay=0.0, budget_ratio=0.0, budget_min_per_second=0.2
    )  # two retries per 10 s window, whatever the traffic
    script = Script(503)
    async with httpx.AsyncClient(transport=make(script, config, clock=lambda: 5.0)) as client:
        first = await client.get("http://upstream.test/x")
        second = await client.get("http://upstream.test/x")
    assert len(get_retry_history(first)) == 3
    assert get_retry_history(first)[-1].reason == "retry budget exhausted"
    assert len(get_retry_history(second)) == 1
    assert len(script.requests) == 4


async def test_retry_log_line_redacts_credentials(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="httpx_resilience")
    async with httpx.AsyncClient(transport=make(Script(503, 200))) as client:
        await client.get("http://alice:hunter2@upstream.test/x?api_key=s3cr3t&page=2")
    [record] = caplog.records
    message = record.getMessage()
    assert "GET http://upstream.test/x?api_key=[redacted]&page=2 " in message
    assert "attempt 1 of 4" in message
    assert "status 503" in message
    assert "waiting" in message
    for secret in ("alice", "hunter2", "s3cr3t"):
        assert secret not in message


def test_constructor_rejects_options_with_a_given_transport() -> None:
    with pytest.raises(TypeError, match="verify, http2 configure the transport it builds"):
        ResilientTransport(
            httpx.MockTransport(lambda r: httpx.Response(200)), http2=False, verify=False
        )
    with pytest.raises(TypeError, match="retry must be a RetryConfig"):
        ResilientTransport(retry=3)  # type: ignore[arg-type]


async def test_builds_an_http2_transport_by_default_and_closes_it_once() -> None:
    transport = ResilientTransport()
    inner = transport.transport
    assert isinstance(inner, AsyncConnectionPoolTransport)
    assert inner._pool is not None
    assert inner._pool._http2 is True
    await transport.aclose()
    await transport.aclose()


async def test_async_with_closes_the_inner_transport() -> None:
    closed: list[bool] = []

    class Inner(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(200)

        async def aclose(self) -> None:
            closed.append(True)

    async with ResilientTransport(Inner()) as transport:
        assert isinstance(transport, ResilientTransport)
    assert closed == [True]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "http://u:p@h.test/cb?a=1;session=S3SS#access_token=T0K",
            "http://h.test/cb?a=1;session=[redacted]",
        ),
        ("http://h.test/x?password=pw&q=ok", "http://h.test/x?password=[redacted]&q=ok"),
        ("http://h.test/x?q=ok", "http://h.test/x?q=ok"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    from httpx_resilience._redact import redact_url

    assert redact_url(url) == shown


async def test_a_bad_retry_after_never_escapes_the_loop() -> None:
    class Weird(httpx.AsyncBaseTransport):
        calls = 0

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            Weird.calls += 1
            return httpx.Response(503, headers={"retry-after": "Mon, 01 Jan 0000 00:00:00 GMT"})

    async with httpx.AsyncClient(transport=ResilientTransport(Weird(), retry=FAST)) as client:
        response = await client.get("http://upstream.test/x")
    assert response.status_code == 503
    assert Weird.calls == 4  # fell back to backoff and retried


async def test_deadline_error_names_no_secret() -> None:
    import anyio

    async def slow(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(5)
        return httpx.Response(200)

    transport = ResilientTransport(
        httpx.MockTransport(slow), retry=FAST.replace(total_timeout=0.05)
    )
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(DeadlineExceeded) as caught:
            await client.get("http://bob:pa55@upstream.test/x?token=s3cr3t")
    assert str(caught.value) == (
        "total_timeout ran out during attempt 1 of GET http://upstream.test/x?token=[redacted]"
    )


async def test_a_final_response_reads_the_wall_clock_not_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The wall clock serves only a Retry-After date: a response that needs no retry decision and
    # starts no cool-down leaves it alone; one that does reads it once (see test_cooldown.py).
    import sys
    import time

    readings: list[str] = []
    real_time = time.time

    def counted() -> float:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("httpx_resilience"):
            readings.append(caller)
        return real_time()

    monkeypatch.setattr(time, "time", counted)
    script = Script(200, 404, 503, 200)
    async with httpx.AsyncClient(transport=make(script)) as client:
        assert (await client.get("http://upstream.test/a")).status_code == 200
        assert (await client.get("http://upstream.test/b")).status_code == 404
        assert readings == []
        assert (await client.get("http://upstream.test/c")).status_code == 200  # 503, then 200
    assert readings == ["httpx_resilience._transport"]  # the 503's, for its retry decision


async def test_one_origin_object_per_origin_and_the_table_is_bounded() -> None:
    from httpx_resilience._transport import _MAX_ORIGINS

    seen: list[object] = []

    class Origins:
        def on_attempt(self, start: AttemptStart) -> None:
            seen.append(start.origin)

    transport = ResilientTransport(Script(200).transport(), retry=FAST, hooks=[Origins()])
    async with httpx.AsyncClient(transport=transport) as client:
        await client.get("http://upstream.test/a")
        await client.get("http://UPSTREAM.test:80/b")
        assert seen[0] == Origin("http", "upstream.test", 80)
        assert seen[1] is seen[0]
        for number in range(_MAX_ORIGINS + 10):
            await client.get(f"http://host{number}.test/")
    assert len(transport._origins) <= _MAX_ORIGINS
    assert len(transport.stats().origins) == 1000  # stats keep their own (MAX_ORIGINS) bound
    assert seen[-1] == Origin("http", f"host{_MAX_ORIGINS + 9}.test", 80)


async def test_the_inner_transports_method_is_looked_up_per_request() -> None:
    """A wrapper put on the inner transport's ``handle_async_request`` after the
    `ResilientTransport` was built (instrumentation, ``mock.patch.object``) sees every attempt,
    as with httpx's own clients: the method is not captured at construction."""
    inner = httpx.MockTransport(lambda request: httpx.Response(200))
    transport = ResilientTransport(transport=inner)
    seen: list[str] = []
    original = inner.handle_async_request

    async def wrapped(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return await original(request)

    inner.handle_async_request = wrapped  # type: ignore[method-assign]
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get("http://example.test/a")).status_code == 200
        extensions = {READ_BODY_EXTENSION: True}  # the attempt reads the body (`_attempt`)
        request = client.build_request("GET", "http://example.test/b", extensions=extensions)
        assert (await client.send(request)).status_code == 200
    assert seen == ["http://example.test/a", "http://example.test/b"]
