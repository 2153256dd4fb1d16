"""`OpenTelemetryHook`: one CLIENT span per attempt, trace context per attempt, and metrics.

Follows the stable HTTP client semantic conventions: a span per attempt on the wire (none
wrapping them all), named after the method, with ``http.request.method``, ``url.full``
(redacted), ``server.address``, ``server.port``, ``network.protocol.version``,
``http.response.status_code``, ``error.type`` and, from the second attempt on,
``http.request.resend_count``; and the ``http.client.request.duration`` histogram per attempt.
What the conventions have no name for is under ``httpx_resilience.*``.

OpenTelemetry is imported when a hook is made, never when this module is: the package works,
and this module imports, without the ``otel`` extra.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from ._hooks import (
    AttemptEnd,
    AttemptEndHook,
    AttemptOutcome,
    AttemptStart,
    BudgetRefusal,
    CircuitChange,
    CoolDownRefusal,
    CoolDownStart,
    FailFast,
    GiveUp,
    Hook,
    StoreAvailability,
)

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider

__all__ = ["METRICS", "OpenTelemetryHook"]

_SCOPE = "httpx_resilience"
_SCHEMA_URL = "https://opentelemetry.io/schemas/1.27.0"
_KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)
# The conventions' advisory buckets for http.client.request.duration, in seconds.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
_CIRCUIT_OPEN = "circuit open"

#: Every instrument the hook creates: name -> (kind, unit, description).
METRICS: Mapping[str, tuple[str, str, str]] = {
    "http.client.request.duration": (
        "histogram", "s", "Duration of HTTP client requests: one per attempt on the wire.",
    ),
    "httpx_resilience.retries": (
        "counter", "{retry}", "Retries after a failed attempt, by reason.",
    ),
    "httpx_resilience.resends": (
        "counter", "{resend}", "Requests the server did not process, resent at once for free.",
    ),
    "httpx_resilience.give_ups": (
        "counter", "{request}", "Requests that failed for good, by reason.",
    ),
    "httpx_resilience.fail_fasts": (
        "counter", "{request}", "Attempts an open circuit refused (nothing sent).",
    ),
    "httpx_resilience.budget_refusals": (
        "counter", "{retry}", "Retries the retry budget refused.",
    ),
    "httpx_resilience.circuit_transitions": (
        "counter", "{transition}", "Circuit state changes, by origin and new state.",
    ),
    "httpx_resilience.cool_downs": (
        "counter", "{window}", "Cool-down windows started after 429/503 with Retry-After.",
    ),
    "httpx_resilience.cool_down_refusals": (
        "counter", "{request}", "Requests a cool-down failed at once (nothing sent).",
    ),
    "httpx_resilience.store_unavailable": (
        "counter", "{event}", "Times a shared state store stopped answering (local state used).",
    ),
}  # fmt: skip


class OpenTelemetryHook(Hook):
    """Reports every attempt to OpenTelemetry: spans, trace context, metrics.

    Register it globally (``add_hook(OpenTelemetryHook())``) or on one transport
    (``ResilientTransport(hooks=[OpenTelemetryHook()])``). Needs the ``otel`` extra
    (``opentelemetry-api``); without an SDK configured, spans and metrics are no-ops.

    Each attempt gets a CLIENT span, a child of whatever span is current when the request is
    made (such as opentelemetry-instrumentation-httpx's ``instrument_client()`` span), and its
    own ``traceparent`` header. The span is current while the attempt runs, with HTTP
    instrumentation below it suppressed, so httpx's transport instrumented by
    ``HTTPXClientInstrumentor().instrument()`` adds no second span per attempt.

    Args:
        tracer_provider: Where spans go; the global provider by default.
        meter_provider: Where metrics go; the global provider by default.
        propagate: Inject trace context (the global propagator's headers, W3C
            ``traceparent`` by default) into each attempt. Default True.
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        propagate: bool = True,
    ) -> None:
        try:
            from opentelemetry import context, metrics, trace
            from opentelemetry import propagate as propagation
        except ImportError as error:  # pragma: no cover - the otel extra is installed in tests
            raise ImportError(
                "OpenTelemetryHook needs OpenTelemetry: pip install 'httpx-resilience[otel]'"
            ) from error
        from .. import __version__
        from .._validate import check_bool

        check_bool("OpenTelemetryHook", "propagate", propagate)
        for name, provider, kind, method in (
            ("tracer_provider", tracer_provider, "TracerProvider", "get_tracer"),
            ("meter_provider", meter_provider, "MeterProvider", "get_meter"),
        ):
            if provider is not None and not callable(getattr(provider, method, None)):
                raise TypeError(
                    f"OpenTelemetryHook.{name} must be an OpenTelemetry {kind} (with a "
                    f"{method}() method) or None, got {type(provider).__name__}"
                )

        self._context = context
        self._trace = trace
        self._inject = propagation.inject if propagate else None
        self._client = trace.SpanKind.CLIENT
        self._error = trace.Status(trace.StatusCode.ERROR)
        # The key every HTTP instrumentation checks before making a span of its own.
        self._suppress_key = getattr(context, "_SUPPRESS_HTTP_INSTRUMENTATION_KEY", None)
        self._tracer = trace.get_tracer(
            _SCOPE, __version__, tracer_provider, schema_url=_SCHEMA_URL
        )
        meter = metrics.get_meter(_SCOPE, __version__, meter_provider, schema_url=_SCHEMA_URL)
        instruments: dict[str, Any] = {}
        for name, (kind, unit, description) in METRICS.items():
            if kind == "histogram":
                instruments[name] = meter.create_histogram(
                    name, unit, description, explicit_bucket_boundaries_advisory=_DURATION_BUCKETS
                )
            else:
                instruments[name] = meter.create_counter(name, unit, description)
        self._duration = instruments["http.client.request.duration"]
        self._retries = instruments["httpx_resilience.retries"]
        self._resends = instruments["httpx_resilience.resends"]
        self._give_ups = instruments["httpx_resilience.give_ups"]
        self._fail_fasts = instruments["httpx_resilience.fail_fasts"]
        self._budget_refusals = instruments["httpx_resilience.budget_refusals"]
        self._transitions = instruments["httpx_resilience.circuit_transitions"]
        self._cool_downs = instruments["httpx_resilience.cool_downs"]
        self._cool_down_refusals = instruments["httpx_resilience.cool_down_refusals"]
        self._store_unavailable = instruments["httpx_resilience.store_unavailable"]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # --- spans ------------------------------------------------------------------------------

    def on_attempt(self, start: AttemptStart) -> AttemptEndHook:
        method = start.method if start.method in _KNOWN_METHODS else "_OTHER"
        origin = start.origin
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "server.address": origin.host,
            "server.port": origin.port,
        }
        metric_attributes = {**attributes, "url.scheme": origin.scheme}
        attributes["url.full"] = start.url
        if method == "_OTHER":
            attributes["http.request.method_original"] = start.method
        if start.attempt > 1:
            attributes["http.request.resend_count"] = start.attempt - 1
        span = self._tracer.start_span(
            method if method != "_OTHER" else "HTTP", kind=self._client, attributes=attributes
        )
        context = self._trace.set_span_in_context(span)
        if self._inject is not None:
            self._inject(start.headers, context=context)
        if self._suppress_key is not None:
            context = self._context.set_value(self._suppress_key, True, context)
        token = self._context.attach(context)
        return partial(self._end, span, token, metric_attributes, time.perf_counter())

    def _end(
        self,
        span: Span,
        token: object,
        attributes: dict[str, Any],
        started: float,
        end: AttemptEnd,
    ) -> None:
        duration = time.perf_counter() - started
        self._context.detach(token)  # type: ignore[arg-type]
        error_type = None
        if end.status is not None:
            attributes["http.response.status_code"] = end.status
            if end.status >= 400:
                error_type = str(end.status)
        elif end.error is not None:
            error_type = _error_type(end.error)
        if end.http_version is not None:
            attributes["network.protocol.version"] = _protocol_version(end.http_version)
        if error_type is not None:
            attributes["error.type"] = error_type
        span.set_attributes(
            {
                **attributes,
                "httpx_resilience.outcome": end.outcome.value,
                "httpx_resilience.reason": end.reason,
            }
        )
        outcome = end.outcome
        if outcome is AttemptOutcome.RETRY:
            span.add_event(
                "httpx_resilience.retry",
                {"httpx_resilience.wait": end.wait or 0.0, "httpx_resilience.reason": end.reason},
            )
        elif outcome is AttemptOutcome.RESEND:
            span.add_event("httpx_resilience.resend", {"httpx_resilience.reason": end.reason})
        elif outcome is AttemptOutcome.GIVE_UP and end.reason == _CIRCUIT_OPEN:
            span.add_event("httpx_resilience.circuit_open", {"httpx_resilience.reason": end.reason})
        if error_type is not None:
            span.set_status(self._error)
        span.end()
        self._duration.record(duration, attributes)

    # --- counters ---------------------------------------------------------------------------

    def on_retry(self, end: AttemptEnd) -> None:
        self._retries.add(1, _request_attributes(end, reason=end.reason))

    def on_resend(self, end: AttemptEnd) -> None:
        self._resends.add(1, _request_attributes(end))

    def on_give_up(self, give_up: GiveUp) -> None:
        self._give_ups.add(1, _request_attributes(give_up, reason=give_up.reason))

    def on_budget_refusal(self, refusal: BudgetRefusal) -> None:
        self._budget_refusals.add(1, _request_attributes(refusal))

    def on_fail_fast(self, refusal: FailFast) -> None:
        self._fail_fasts.add(1, _request_attributes(refusal))
        # No span on the wire: the refusal is an event on the span the request was made in.
        span = self._trace.get_current_span()
        if span.is_recording():
            span.add_event(
                "httpx_resilience.circuit_open",
                {
                    "server.address": refusal.origin.host,
                    "server.port": refusal.origin.port,
                    "http.request.method": refusal.method,
                    "url.full": refusal.url,
                    "httpx_resilience.retry_in": refusal.retry_in,
                    "httpx_resilience.attempt": refusal.attempt,
                },
            )

    def on_circuit_change(self, change: CircuitChange) -> None:
        self._transitions.add(
            1,
            {
                "server.address": change.origin.host,
                "server.port": change.origin.port,
                "url.scheme": change.origin.scheme,
                "httpx_resilience.circuit.state": change.new.value,
                "httpx_resilience.circuit.previous_state": change.old.value,
            },
        )

    def on_cool_down_start(self, start: CoolDownStart) -> None:
        self._cool_downs.add(
            1,
            {
                "server.address": start.origin.host,
                "server.port": start.origin.port,
                "url.scheme": start.origin.scheme,
                # From a response here, or from another worker through a shared store.
                "httpx_resilience.shared": start.status is None,
            },
        )

    def on_cool_down_refusal(self, refusal: CoolDownRefusal) -> None:
        self._cool_down_refusals.add(1, _request_attributes(refusal, reason=refusal.reason))
        span = self._trace.get_current_span()
        if span.is_recording():
            span.add_event(
                "httpx_resilience.cool_down",
                {
                    "server.address": refusal.origin.host,
                    "server.port": refusal.origin.port,
                    "http.request.method": refusal.method,
                    "url.full": refusal.url,
                    "httpx_resilience.retry_in": refusal.retry_in,
                    "httpx_resilience.reason": refusal.reason,
                    "httpx_resilience.attempt": refusal.attempt,
                },
            )

    def on_store_availability(self, change: StoreAvailability) -> None:
        if not change.available:
            error = "" if change.error is None else _error_type(change.error)
            self._store_unavailable.add(1, {"error.type": error or "unknown"})


def _request_attributes(
    record: AttemptEnd | GiveUp | FailFast | BudgetRefusal | CoolDownRefusal,
    reason: str | None = None,
) -> dict[str, Any]:
    method = record.method if record.method in _KNOWN_METHODS else "_OTHER"
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "server.address": record.origin.host,
        "server.port": record.origin.port,
        "url.scheme": record.origin.scheme,
    }
    if reason is not None:
        attributes["httpx_resilience.reason"] = reason
    return attributes


def _protocol_version(http_version: str) -> str:
    """``"HTTP/1.1"`` -> ``"1.1"``, ``"HTTP/2"`` -> ``"2"``."""
    return http_version.rpartition("/")[2]


def _error_type(error: BaseException) -> str:
    """The exception's class by its public path: ``httpx.ConnectError``, ``TimeoutError``."""
    cls = type(error)
    parts = []
    for part in cls.__module__.split("."):
        if part.startswith("_"):
            break
        parts.append(part)
    if parts == ["builtins"]:
        return cls.__qualname__
    return ".".join([*parts, cls.__qualname__])
