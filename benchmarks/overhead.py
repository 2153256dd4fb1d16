"""Happy-path cost of ResilientTransport: the inner transport alone vs. wrapped, in one run.

A Hypercorn server in a child process answers 200 on 127.0.0.1 over HTTP/1.1. This process sends
the same requests through ``httpx.AsyncClient`` over (A) a plain ``httpx.AsyncHTTPTransport`` and
(B) the same kind of transport wrapped in ``ResilientTransport``, and (C) ``ResilientTransport``
building its own transport (the default use: this package's connection layer, ``_connection``),
alternating A, B and C in rounds so that machine noise hits all alike. It reports client CPU
seconds per request (process time, so the server's work and waiting on the network do not
count) and the ratios B / A and C / A, from the median round. A second section times the
wrapper alone over an instant in-memory transport, to show its absolute cost in microseconds.

Given several concurrency levels, it measures each in turn and also prints the requests per
second of each client (wall clock, median round) as a Markdown table; with ``--chart PATH`` it
draws the same numbers as an SVG chart (``_chart.py``), as docs/performance.md shows them:

    python benchmarks/overhead.py [--requests 2000] [--rounds 7] [--concurrency 1 [10 ...]]
        [--chart docs/images/throughput.svg]

``--in-memory-only`` skips the network section (no server): only the wrapper's own cost,
``--calls`` calls per round (50,000 by default).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import date
from typing import Any, NamedTuple

import httpx
from _chart import write_chart
from _server import child_server

from httpx_resilience import ResilientTransport

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})


CLIENTS = (
    "AsyncHTTPTransport alone",
    "wrapped in ResilientTransport",
    "ResilientTransport() own pool",
)


class Round(NamedTuple):
    cpu: float  # client CPU seconds per request
    rate: float  # requests per second, wall clock


async def run_round(client: httpx.AsyncClient, url: str, requests: int, concurrency: int) -> Round:
    """Client CPU seconds per request, and requests per second, for one round."""

    async def worker(count: int) -> None:
        for _ in range(count):
            response = await client.get(url)
            assert response.status_code == 200

    share = requests // concurrency
    started, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(share) for _ in range(concurrency)))
    sent = share * concurrency
    return Round((time.process_time() - started) / sent, sent / (time.perf_counter() - wall))


async def network(url: str, requests: int, rounds: int, concurrency: int) -> list[Round]:
    """The median round of each client (CPU per request, and requests per second)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    plain = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(limits=limits))
    wrapped = httpx.AsyncClient(
        transport=ResilientTransport(httpx.AsyncHTTPTransport(limits=limits))
    )
    own_pool = httpx.AsyncClient(transport=ResilientTransport(limits=limits))
    clients = (plain, wrapped, own_pool)
    async with plain, wrapped, own_pool:
        for client in clients:  # warm up: connections, caches
            await run_round(client, url, min(requests, 200), concurrency)
        samples: list[list[Round]] = [[], [], []]
        for _ in range(rounds):
            for client, client_samples in zip(clients, samples, strict=True):
                client_samples.append(await run_round(client, url, requests, concurrency))
    return [
        Round(statistics.median(r.cpu for r in s), statistics.median(r.rate for r in s))
        for s in samples
    ]


async def in_memory(requests: int, rounds: int) -> tuple[float, float]:
    """Seconds per call of handle_async_request: an instant transport alone vs. wrapped."""

    class Instant(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(200)

    request = httpx.Request("GET", "http://in-memory.test/")
    plain, wrapped = Instant(), ResilientTransport(Instant())

    async def timed(transport: httpx.AsyncBaseTransport) -> float:
        started = time.perf_counter()
        for _ in range(requests):
            await transport.handle_async_request(request)
        return (time.perf_counter() - started) / requests

    a_times, b_times = [], []
    for _ in range(rounds):
        a_times.append(await timed(plain))
        b_times.append(await timed(wrapped))
    return statistics.median(a_times), statistics.median(b_times)


def print_in_memory(alone: float, wrapped: float, calls: int, rounds: int) -> None:
    print(f"instant in-memory inner transport, {calls:,} calls per round, {rounds} rounds:")
    print(
        f"  alone {alone * 1e6:.2f} us, wrapped {wrapped * 1e6:.2f} us per call: "
        f"the wrapper adds {(wrapped - alone) * 1e6:.2f} us"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds per variant")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1], metavar="N")
    parser.add_argument("--chart", metavar="PATH", help="write requests/s as an SVG chart")
    only = "only the instant in-memory section: the wrapper's own cost"
    parser.add_argument("--in-memory-only", action="store_true", help=only)
    parser.add_argument("--calls", type=int, default=50_000, help="in-memory calls per round")
    args = parser.parse_args()

    if args.in_memory_only:
        m_a, m_b = asyncio.run(in_memory(args.calls, args.rounds))
        print(f"httpx {httpx.__version__}, Python {platform.python_version()}")
        print_in_memory(m_a, m_b, args.calls, args.rounds)
        return
    results: dict[int, list[Round]] = {}
    with child_server(app) as url:
        for concurrency in args.concurrency:
            results[concurrency] = asyncio.run(
                network(url, args.requests, args.rounds, concurrency)
            )
    m_a, m_b = asyncio.run(in_memory(args.calls, args.rounds))

    setup = (
        f"httpx {httpx.__version__}, Python {platform.python_version()}; {args.rounds} rounds x "
        f"{args.requests} GETs, Hypercorn HTTP/1.1 on 127.0.0.1 (other process)"
    )
    print(setup)
    for concurrency, (a, b, c) in results.items():
        print(f"concurrency {concurrency}:")
        print(f"  client CPU per request, AsyncHTTPTransport alone : {a.cpu * 1e6:8.1f} us")
        print(f"  client CPU per request, wrapped (ResilientTransport): {b.cpu * 1e6:8.1f} us")
        print(f"  client CPU per request, ResilientTransport() own pool: {c.cpu * 1e6:8.1f} us")
        for name, ratio in (("wrapped", b.cpu / a.cpu), ("own pool", c.cpu / a.cpu)):
            print(f"  ratio {name} / alone: {ratio:.3f}  (overhead {100 * (ratio - 1):+.1f} %)")
    print_in_memory(m_a, m_b, args.calls, args.rounds)
    print("\nrequests per second (median round):\n")
    print("| client | " + " | ".join(f"concurrency {c}" for c in results) + " |")
    print("|---|" + "---|" * len(results))
    for index, name in enumerate(CLIENTS):
        cells = " | ".join(f"{rounds[index].rate:,.0f}" for rounds in results.values())
        print(f"| {name} | {cells} |")
    if args.chart:
        series = {
            name: [(c, round(rounds[index].rate)) for c, rounds in results.items()]
            for index, name in enumerate(CLIENTS)
        }
        note = f"{setup}; {date.today().isoformat()}"
        write_chart(args.chart, "httpx clients against a local Hypercorn: requests/s", series,
                    note=note)  # fmt: skip
        print(f"\nwrote {args.chart}")


if __name__ == "__main__":
    main()
