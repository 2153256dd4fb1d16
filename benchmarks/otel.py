"""Cost of instrumentation: ResilientTransport with the default hooks vs. with OpenTelemetryHook.

A Hypercorn server in a child process answers 200 on 127.0.0.1 over HTTP/1.1. This process sends
the same GETs through ``httpx.AsyncClient`` over (A) ``ResilientTransport()`` with the default
hooks (one ``LoggingHook``, which does no work for a request that succeeds), (B) the same with
an ``OpenTelemetryHook`` and no SDK configured (the API's no-op providers), and (C) the same with
an ``OpenTelemetryHook`` recording into opentelemetry-sdk (spans batched to an exporter that
drops them, metrics aggregated in memory: what a service pays before its exporter's I/O),
alternating A, B and C in rounds. It reports client CPU per request (process time) from the
median round, and the ratios B / A and C / A. A second section times ``handle_async_request``
over an instant in-memory transport: the hook's own cost in microseconds.

    python benchmarks/otel.py [--requests 2000] [--rounds 7] [--concurrency 1]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time
from collections.abc import Sequence

import httpx
from _server import child_server
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from overhead import app, run_round

from httpx_resilience import OpenTelemetryHook, ResilientTransport

VARIANTS = ("default hooks", "OpenTelemetryHook, no SDK", "OpenTelemetryHook + SDK")


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def hooks_for(variant: int) -> list[object]:
    if variant == 0:
        return []
    if variant == 1:
        return [OpenTelemetryHook()]  # no SDK configured: the global providers are no-ops
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(_Drop()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return [OpenTelemetryHook(tracer_provider=tracer_provider, meter_provider=meter_provider)]


async def network(url: str, requests: int, rounds: int, concurrency: int) -> list[float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    clients = [
        httpx.AsyncClient(transport=ResilientTransport(limits=limits, hooks=hooks_for(v)))
        for v in range(len(VARIANTS))
    ]
    try:
        for client in clients:  # warm up: connections, caches
            await run_round(client, url, min(requests, 200), concurrency)
        samples: list[list[float]] = [[] for _ in clients]
        for _ in range(rounds):
            for client, client_samples in zip(clients, samples, strict=True):
                client_samples.append((await run_round(client, url, requests, concurrency)).cpu)
    finally:
        for client in clients:
            await client.aclose()
    return [statistics.median(s) for s in samples]


async def in_memory(requests: int, rounds: int) -> list[float]:
    class Instant(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(200)

    request = httpx.Request("GET", "http://in-memory.test/")
    transports = [ResilientTransport(Instant(), hooks=hooks_for(v)) for v in range(len(VARIANTS))]

    async def timed(transport: httpx.AsyncBaseTransport) -> float:
        started = time.perf_counter()
        for _ in range(requests):
            await transport.handle_async_request(request)
        return (time.perf_counter() - started) / requests

    samples: list[list[float]] = [[] for _ in transports]
    for _ in range(rounds):
        for transport, transport_samples in zip(transports, samples, strict=True):
            transport_samples.append(await timed(transport))
    return [statistics.median(s) for s in samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds per variant")
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()

    with child_server(app) as url:
        cpu = asyncio.run(network(url, args.requests, args.rounds, args.concurrency))
    memory = asyncio.run(in_memory(20_000, args.rounds))

    print(
        f"httpx {httpx.__version__}, Python {platform.python_version()}; {args.rounds} rounds x "
        f"{args.requests} GETs, concurrency {args.concurrency}, Hypercorn HTTP/1.1 on 127.0.0.1"
    )
    for name, value in zip(VARIANTS, cpu, strict=True):
        print(f"  client CPU per request, ResilientTransport(), {name:26}: {value * 1e6:7.1f} us")
    for name, value in zip(VARIANTS[1:], cpu[1:], strict=True):
        ratio = value / cpu[0]
        print(f"  ratio {name} / default: {ratio:.3f}  (overhead {100 * (ratio - 1):+.1f} %)")
    print("instant in-memory inner transport, 20,000 calls per round:")
    for name, value in zip(VARIANTS, memory, strict=True):
        extra = "" if value is memory[0] else f" (+{(value - memory[0]) * 1e6:.2f} us)"
        print(f"  {name:26}: {value * 1e6:7.2f} us per call{extra}")


if __name__ == "__main__":
    main()
