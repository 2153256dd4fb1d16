"""OpenTelemetryHook against the real test servers, exported through opentelemetry-sdk's in-memory
span exporter and metric reader: one CLIENT span per attempt, trace context per attempt, the
metrics, and the composition with opentelemetry-instrumentation-httpx.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from httpx_resilience import (
    CircuitBreaker,
    CircuitOpenError,
    CoolDown,
    CoolDownError,
    MemoryStore,
    OpenTelemetryHook,
    ResilientTransport,
    RetryConfig,
)
from tests.support.h2server import H2Server, Plan
from tests.support.server import ServerInfo, ServerThread
from tests.test_transport_real import Sleeper

pytestmark = pytest.mark.anyio

NO_JITTER = RetryConfig(base_delay=0.25, jitter=False, budget_ratio=None)
SCOPE = "httpx_resilience"


@dataclass
class OTel:
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    provider: TracerProvider
    hook: OpenTelemetryHook

    @property
    def tracer(self) -> trace.Tracer:
        return self.provider.get_tracer("tests")

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def attempts(self) -> list[ReadableSpan]:
        """Our CLIENT spans, in the order they started."""
        ours = [s for s in self.spans() if s.instrumentation_scope.name == SCOPE]  # type: ignore[union-attr]
        return sorted(ours, key=lambda s: s.start_time or 0)

    def metrics(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """Metric name -> [(attributes, data point)]."""
        data = self.reader.get_metrics_data()
        found: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        found.setdefault(metric.name, []).append(
                            (dict(point.attributes or {}), point)
                        )
        return found


@pytest.fixture
def otel() -> Iterator[OTel]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    hook = OpenTelemetryHook(tracer_provider=provider, meter_provider=meters)
    yield OTel(exporter, reader, provider, hook)
    provider.shutdown()
    meters.shutdown()


def client_for(server: ServerInfo, **kwargs: Any) -> httpx.AsyncClient:
    kwargs.setdefault("retry", NO_JITTER)
    kwargs.setdefault("sleep", Sleeper())
    transport = ResilientTransport(**server.client_kwargs, **kwargs)
    return httpx.AsyncClient(transport=transport, base_url=server.url, timeout=5.0)


def traceparent(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


async def test_503_503_200_three_client_spans(server: ServerInfo, key: str, otel: OTel) -> None:
    sleeper = Sleeper()
    async with client_for(server, hooks=[otel.hook], sleep=sleeper) as client:
        with otel.tracer.start_as_current_span("checkout") as parent:
            response = await client.get(f"/flaky/{key}?fail=2&token=abc123")
    assert response.status_code == 200
    spans = otel.attempts()
    assert [(s.name, s.kind) for s in spans] == [("GET", trace.SpanKind.CLIENT)] * 3
    # Each a child of the request's span: no span of ours wraps them all.
    parent_id = parent.get_span_context().span_id
    assert [s.parent.span_id for s in spans] == [parent_id] * 3  # type: ignore[union-attr]
    attributes = [dict(s.attributes or {}) for s in spans]
    version = "1.1" if server.http_version == "HTTP/1.1" else "2"
    url = f"{server.url}/flaky/{key}?fail=2&token=[redacted]"
    port = int(server.url.rsplit(":", 1)[1])
    for attrs in attributes:
        assert attrs["http.request.method"] == "GET"
        assert attrs["url.full"] == url
        assert attrs["server.address"] == "127.0.0.1"
        assert attrs["server.port"] == port
        assert attrs["network.protocol.version"] == version
    assert [a.get("http.request.resend_count") for a in attributes] == [None, 1, 2]
    assert [a["http.response.status_code"] for a in attributes] == [503, 503, 200]
    assert [a.get("error.type") for a in attributes] == ["503", "503", None]
    assert [s.status.status_code for s in spans] == [
        trace.StatusCode.ERROR,
        trace.StatusCode.ERROR,
        trace.StatusCode.UNSET,
    ]
    assert [a["httpx_resilience.outcome"] for a in attributes] == ["retry", "retry", "final"]
    # The waits before the retries, and their reason, as span events.
    events = [[(e.name, dict(e.attributes or {})) for e in s.events] for s in spans]

    def retry(wait: float) -> tuple[str, dict[str, Any]]:
        attributes = {"httpx_resilience.wait": wait, "httpx_resilience.reason": "status 503"}
        return ("httpx_resilience.retry", attributes)

    assert events == [[retry(0.25)], [retry(0.5)], []]
    assert sleeper.waits == [0.25, 0.5]
    # Each attempt carried its own traceparent, and the server saw it.
    seen = [r.headers["traceparent"] for r in server.app.received[key]]
    assert seen == [traceparent(s) for s in spans]
    assert len(set(seen)) == 3
    assert "abc123" not in repr([s.to_json() for s in otel.spans()])

    metrics = otel.metrics()
    durations = metrics["http.client.request.duration"]
    assert sorted((a["http.response.status_code"], p.count) for a, p in durations) == [
        (200, 1),
        (503, 2),
    ]
    for attrs, _ in durations:
        assert attrs["network.protocol.version"] == version
        assert attrs["url.scheme"] == server.url.split(":")[0]
    [(retry_attrs, retries)] = metrics["httpx_resilience.retries"]
    assert retries.value == 2
    assert retry_attrs["httpx_resilience.reason"] == "status 503"


async def test_goaway_resend_span(otel: OTel) -> None:
    # Connection 0 takes the POST, then says GOAWAY(last_stream_id=0): not processed.
    plans = {0: Plan(goaway_after=1, goaway_last_stream_id=0)}
    retry = RetryConfig(base_delay=0.0, max_delay=0.0, budget_ratio=None)
    with H2Server(lambda index: plans.get(index, Plan())) as server:
        transport = ResilientTransport(retry=retry, http1=False, http2=True, hooks=[otel.hook])
        async with httpx.AsyncClient(transport=transport, timeout=5.0) as client:
            response = await client.post(server.url + "/pay", content=b"payload")
    assert response.status_code == 200
    assert [(p.connection, p.path) for p in server.processed] == [(1, "/pay")]
    first, second = otel.attempts()
    a, b = dict(first.attributes or {}), dict(second.attributes or {})
    assert a["httpx_resilience.outcome"] == "resend"
    assert a["error.type"] == "httpx.RemoteProtocolError"
    assert "http.request.resend_count" not in a
    [event] = first.events
    assert event.name == "httpx_resilience.resend"
    reason = (event.attributes or {})["httpx_resilience.reason"]
    assert isinstance(reason, str)
    assert reason.startswith("not processed by the server")
    assert b["http.request.resend_count"] == 1
    assert (b["http.response.status_code"], b["network.protocol.version"]) == (200, "2")
    assert b["http.request.method"] == "POST"
    [(_, resends)] = otel.metrics()["httpx_resilience.resends"]
    assert resends.value == 1
    assert "httpx_resilience.retries" not in otel.metrics()  # a free resend is no retry


async def test_open_circuit_refusal_is_recorded_without_a_span(
    h1_server: ServerThread, key: str, otel: OTel
) -> None:
    breaker = CircuitBreaker(failure_threshold=1, recovery_time=60.0)
    transport = ResilientTransport(
        retry=NO_JITTER.replace(max_retries=0), circuit_breaker=breaker, hooks=[otel.hook]
    )
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get(f"{h1_server.url}/status/{key}?code=500")).status_code == 500
        otel.exporter.clear()
        with otel.tracer.start_as_current_span("checkout"), pytest.raises(CircuitOpenError):
            await client.get(f"{h1_server.url}/status/{key}?code=500")
    assert h1_server.app.hits(key) == 1  # type: ignore[attr-defined]
    [parent] = otel.spans()  # no CLIENT span: nothing went on the wire
    assert parent.name == "checkout"
    [event] = parent.events
    assert event.name == "httpx_resilience.circuit_open"
    attrs = dict(event.attributes or {})
    assert (attrs["server.port"], attrs["httpx_resilience.attempt"]) == (h1_server.port, 1)
    assert 0 < attrs["httpx_resilience.retry_in"] <= 60.0  # type: ignore[operator]
    metrics = otel.metrics()
    [(_, fail_fasts)] = metrics["httpx_resilience.fail_fasts"]
    assert fail_fasts.value == 1
    [(change, transitions)] = metrics["httpx_resilience.circuit_transitions"]
    assert transitions.value == 1
    assert change["httpx_resilience.circuit.state"] == "open"
    assert change["httpx_resilience.circuit.previous_state"] == "closed"


async def test_budget_refusal_and_give_up_counted(
    h1_server: ServerThread, key: str, otel: OTel
) -> None:
    no_budget = NO_JITTER.replace(budget_ratio=0.0, budget_min_per_second=0.0)
    transport = ResilientTransport(retry=no_budget, hooks=[otel.hook])
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get(f"{h1_server.url}/status/{key}?code=503")).status_code == 503
    metrics = otel.metrics()
    [(_, refusals)] = metrics["httpx_resilience.budget_refusals"]
    [(attrs, give_ups)] = metrics["httpx_resilience.give_ups"]
    assert (refusals.value, give_ups.value) == (1, 1)
    assert attrs["httpx_resilience.reason"] == "retry budget exhausted"


async def test_cancelled_attempt_ends_its_span_and_restores_the_context(
    h1_server: ServerThread, key: str, otel: OTel
) -> None:
    transport = ResilientTransport(retry=NO_JITTER, hooks=[otel.hook])
    async with httpx.AsyncClient(transport=transport) as client:
        with otel.tracer.start_as_current_span("caller") as parent:
            with anyio.move_on_after(0.2):
                await client.get(f"{h1_server.url}/slow/{key}?delay=5")
            assert trace.get_current_span() is parent
    [attempt] = otel.attempts()
    assert dict(attempt.attributes or {})["httpx_resilience.outcome"] == "cancelled"
    assert attempt.end_time is not None


async def test_attempt_spans_are_children_of_instrument_client_span(
    server: ServerInfo, key: str, otel: OTel
) -> None:
    async with client_for(server, hooks=[otel.hook]) as client:
        HTTPXClientInstrumentor.instrument_client(client, tracer_provider=otel.provider)
        try:
            response = await client.get(f"/flaky/{key}?fail=1")
        finally:
            HTTPXClientInstrumentor.uninstrument_client(client)
    assert response.status_code == 200
    theirs = [s for s in otel.spans() if s.instrumentation_scope.name != SCOPE]  # type: ignore[union-attr]
    [outer] = theirs
    assert outer.kind is trace.SpanKind.CLIENT
    ours = otel.attempts()
    assert len(ours) == 2
    outer_id = outer.get_span_context().span_id  # type: ignore[union-attr]
    assert [s.parent.span_id for s in ours] == [outer_id] * 2  # type: ignore[union-attr]
    # The server saw the attempts' trace context, not the outer span's.
    seen = [r.headers["traceparent"] for r in server.app.received[key]]
    assert seen == [traceparent(s) for s in ours]


async def test_what_global_instrument_sees(h1_server: ServerThread, key: str, otel: OTel) -> None:
    instrumentor = HTTPXClientInstrumentor()
    instrumentor.instrument(tracer_provider=otel.provider)
    try:
        # instrument() patches httpx.AsyncHTTPTransport, which ResilientTransport builds only
        # for proxies (and wraps when given one): there it sees each attempt, with no
        # resend_count.
        async with client_for_h1(h1_server, inner=httpx.AsyncHTTPTransport()) as client:
            await client.get(f"/flaky/{key}?fail=1")
        plain = otel.spans()
        assert len(plain) == 2
        assert all("http.request.resend_count" not in (s.attributes or {}) for s in plain)
        otel.exporter.clear()
        # With the hook: its spans only, one per attempt; the inner instrumentation is
        # suppressed inside each attempt.
        inner = httpx.AsyncHTTPTransport()
        async with client_for_h1(h1_server, inner=inner, hooks=[otel.hook]) as client:
            await client.get(f"/flaky/{key}-2?fail=1")
        assert [s.instrumentation_scope.name for s in otel.spans()] == [SCOPE, SCOPE]  # type: ignore[union-attr]
        otel.exporter.clear()
        # Direct requests (HTTP/2 by default, or http2=False) go through the transport's own
        # connection layer: instrument() sees nothing, the hook sees each attempt.
        for http2 in (True, False):
            async with client_for_h1(h1_server, http2=http2) as client:
                await client.get(f"/flaky/{key}-3-{http2}?fail=1")
            assert otel.spans() == []
            async with client_for_h1(h1_server, http2=http2, hooks=[otel.hook]) as client:
                await client.get(f"/flaky/{key}-4-{http2}?fail=1")
            assert len(otel.attempts()) == 2
            otel.exporter.clear()
    finally:
        instrumentor.uninstrument()


def client_for_h1(
    h1_server: ServerThread, inner: httpx.AsyncBaseTransport | None = None, **kwargs: Any
) -> httpx.AsyncClient:
    transport = ResilientTransport(inner, retry=NO_JITTER, sleep=Sleeper(), **kwargs)
    return httpx.AsyncClient(transport=transport, base_url=h1_server.url, timeout=5.0)


def test_importing_the_package_does_not_import_opentelemetry() -> None:
    code = (
        "import sys, httpx_resilience\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] == 'opentelemetry']\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_without_opentelemetry_the_hook_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ImportError, match=r"pip install 'httpx-resilience\[otel\]'"):
        OpenTelemetryHook()


def test_invalid_providers_are_refused_at_construction() -> None:
    with pytest.raises(TypeError, match=r"OpenTelemetryHook.tracer_provider must be .* got int"):
        OpenTelemetryHook(tracer_provider=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"OpenTelemetryHook.meter_provider must be .* got str"):
        OpenTelemetryHook(meter_provider="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"OpenTelemetryHook.propagate must be a bool"):
        OpenTelemetryHook(propagate="yes")  # type: ignore[arg-type]


class _DownStore(MemoryStore):
    """A store that never answers: every call fails."""

    async def read(self, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("store down")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # stores work on asyncio only
async def test_cool_downs_refusals_and_store_failures_counted(
    h1_server: ServerThread, key: str, otel: OTel
) -> None:
    transport = ResilientTransport(
        retry=NO_JITTER.replace(max_retries=0), cool_down=CoolDown(max_wait=1.0),
        state_store=_DownStore(), hooks=[otel.hook],
    )  # fmt: skip
    async with httpx.AsyncClient(transport=transport) as client:
        url = f"{h1_server.url}/throttle/{key}?period=60&ms=30000"
        assert (await client.get(url)).status_code == 429
        otel.exporter.clear()
        with otel.tracer.start_as_current_span("checkout"), pytest.raises(CoolDownError):
            await client.get(f"{h1_server.url}/ok/{key}")
        for _ in range(100):  # the background sync fails: the store is unavailable
            if "httpx_resilience.store_unavailable" in otel.metrics():
                break
            await anyio.sleep(0.01)
    [parent] = otel.spans()  # nothing went on the wire
    [event] = parent.events
    assert event.name == "httpx_resilience.cool_down"
    attrs = dict(event.attributes or {})
    assert (attrs["httpx_resilience.reason"], attrs["httpx_resilience.attempt"]) == ("max_wait", 1)
    metrics = otel.metrics()
    [(started, cool_downs)] = metrics["httpx_resilience.cool_downs"]
    assert (cool_downs.value, started["httpx_resilience.shared"]) == (1, False)
    [(refused, refusals)] = metrics["httpx_resilience.cool_down_refusals"]
    assert (refusals.value, refused["httpx_resilience.reason"]) == (1, "max_wait")
    [(failed, unavailable)] = metrics["httpx_resilience.store_unavailable"]
    assert (unavailable.value, failed["error.type"]) == (1, "ConnectionError")
