"""Circuit breaking: the cost of failing fast, and the load a full outage puts on the upstream.

Part 1 — fail-fast cost: ``handle_async_request`` on a transport whose circuit is open (raises
``CircuitOpenError`` without touching the network) vs. a request that succeeds over an instant
in-memory transport, in microseconds per call.

Part 2 — load under a full outage: a Hypercorn server in a child process answers every request
with 503. The same caller requests go through ``httpx.AsyncClient`` with (a) retries only,
(b) retries and the retry budget, (c) retries, budget and a circuit breaker; an inner-transport
counter tells how many requests reached the upstream per caller request.

    python benchmarks/breaker.py [--requests 600] [--concurrency 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import time
from typing import Any

import httpx
from _server import child_server

from httpx_resilience import (
    CircuitBreaker,
    CircuitOpenError,
    Origin,
    ResilientTransport,
    RetryConfig,
)

NO_WAIT = RetryConfig(base_delay=0.0, max_delay=0.0)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-length", b"4")]})  # fmt: skip
    await send({"type": "http.response.body", "body": b"down"})


class Counting(httpx.AsyncBaseTransport):
    """Counts the requests that reach the wrapped transport, i.e. the upstream."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.sent = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Instant(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)


async def fail_fast_cost(calls: int, rounds: int) -> tuple[float, float, float]:
    breaker = CircuitBreaker(failure_threshold=1, recovery_time=3600.0)
    request = httpx.Request("GET", "http://down.test/")
    open_transport = ResilientTransport(Instant(), circuit_breaker=breaker)
    breaker.record_failure(breaker.admit(Origin("http", "down.test", 80)))  # opens it
    ok_transport = ResilientTransport(Instant(), circuit_breaker=CircuitBreaker())
    bare_transport = ResilientTransport(Instant())
    ok_request = httpx.Request("GET", "http://up.test/")

    async def timed_open() -> float:
        started = time.perf_counter()
        for _ in range(calls):
            with contextlib.suppress(CircuitOpenError):
                await open_transport.handle_async_request(request)
        return (time.perf_counter() - started) / calls

    async def timed_ok(transport: httpx.AsyncBaseTransport) -> float:
        started = time.perf_counter()
        for _ in range(calls):
            await transport.handle_async_request(ok_request)
        return (time.perf_counter() - started) / calls

    opens, oks, bares = [], [], []
    for _ in range(rounds):
        opens.append(await timed_open())
        oks.append(await timed_ok(ok_transport))
        bares.append(await timed_ok(bare_transport))
    return statistics.median(opens), statistics.median(oks), statistics.median(bares)


async def outage(url: str, requests: int, concurrency: int) -> list[tuple[str, int, int, float]]:
    variants = {
        "retries only (max_retries=3)": (NO_WAIT.replace(budget_ratio=None), None),
        "retries + budget (20 %)": (NO_WAIT.replace(budget_min_per_second=0.0), None),
        "retries + budget + breaker": (
            NO_WAIT.replace(budget_min_per_second=0.0),
            CircuitBreaker(failure_threshold=5, recovery_time=0.5),
        ),
    }
    rows = []
    for label, (config, breaker) in variants.items():
        counter = Counting(httpx.AsyncHTTPTransport())
        transport = ResilientTransport(counter, retry=config, circuit_breaker=breaker)
        failed_fast = 0
        async with httpx.AsyncClient(transport=transport) as client:

            async def worker(count: int) -> None:
                nonlocal failed_fast
                for _ in range(count):
                    try:
                        await client.get(url)
                    except CircuitOpenError:
                        failed_fast += 1

            started = time.perf_counter()
            await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
        rows.append((label, counter.sent, failed_fast, elapsed))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()

    logging.getLogger("httpx_resilience").setLevel(logging.ERROR)  # keep the output a table
    open_cost, ok_cost, bare_cost = asyncio.run(fail_fast_cost(50_000, 7))
    print("fail-fast path, 50,000 calls x 7 rounds (median), instant in-memory inner transport:")
    print(f"  open circuit -> CircuitOpenError : {open_cost * 1e6:.2f} us per call")
    print(f"  closed circuit, success          : {ok_cost * 1e6:.2f} us per call")
    print(f"  no breaker, success              : {bare_cost * 1e6:.2f} us per call")

    with child_server(app) as url:
        rows = asyncio.run(outage(url, args.requests, args.concurrency))
    total = args.requests // args.concurrency * args.concurrency
    print(
        f"\nfull outage (every answer 503), {total} caller requests, "
        f"concurrency {args.concurrency}, no backoff waits:"
    )
    print(
        f"  {'variant':32} {'upstream requests':>18} {'per caller':>11} {'failed fast':>12} "
        f"{'seconds':>8}"
    )
    for label, sent, fast, elapsed in rows:
        print(f"  {label:32} {sent:18d} {sent / total:11.2f} {fast:12d} {elapsed:8.2f}")


if __name__ == "__main__":
    main()
