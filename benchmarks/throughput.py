"""Throughput against a local nginx, HTTP/1.1 and HTTP/2, in one process run: stock httpx, this
package's connection layer alone, `ResilientTransport` on it, and (HTTP/1.1) aiohttp.

nginx (from the system; ``apt-get install nginx-light``) serves a small JSON file on 127.0.0.1
(`tests.support.nginx.NginxFiles`): over plain HTTP/1.1 with its default ``keepalive_requests``
(1000), and over TLS with HTTP/2 (a certificate from a throwaway trustme CA; a per-connection
request limit high enough that no GOAWAY comes during the run). Each client runs each workload in
turn (clients alternate per workload, so machine noise hits all alike):

* ``cN``: N workers, each sending its share of ``--requests`` one after another;
* ``burstN``: N requests started at once (``asyncio.gather``).

For each it prints requests per second and the client's CPU time per request in microseconds
(``time.process_time``: this process only, so nginx's work does not count), then the tables
and a verdict on each of the connection-layer issue's targets. Each workload a target reads
(c10, c50, c128, burst1000) runs in ``--target-rounds`` alternated rounds (5; the clients in
reverse order every other round) and counts by its median round. At c50 the run also measures
httpx's client alone, over an instant in-memory transport that answers with a copy of nginx's
response: no transport can take httpx.AsyncClient past the rate it reaches there (the client
runs on one core), and the verdicts print the ratio that ceiling allows next to each req/s
target on the layer. All clients use their default pool limits (httpx: 100 connections, 20
kept alive; aiohttp: 100), with no pool timeout so that bursts measure queueing, not failures.
Stock httpx skips bursts above 1,000 (its pool's queue makes them take minutes).

    python benchmarks/throughput.py [--requests 3000] [--burst 1000 10000] [--http 1.1 2]

The HTTP/2 clients are built as ``http2=True``: ``AsyncConnectionPoolTransport(http2=True)``
and ``ResilientTransport(http2=True)`` (each row names the route it took). ``--trio`` runs the
concurrency workloads under trio instead, over the ``--http`` protocols, for stock httpx and the
layer only (aiohttp is asyncio-only): the layer must not be slower there than stock httpx.
``--parts`` shows where a request's client CPU goes (HTTP/1.1, at the first ``--concurrency``):
the layer alone, httpx's client over an instant transport that returns nginx's own response, the
two together, and aiohttp, alternated over ``--rounds`` rounds; and what h2 and hpack alone cost
per HTTP/2 request, without sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ssl
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import httpx
import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from httpx_resilience import AsyncConnectionPoolTransport, ResilientTransport, RetryConfig
from httpx_resilience._connection import http2 as layer_http2
from httpx_resilience._connection.hpack import install as install_hpack
from tests.support.nginx import NginxFiles, find_nginx

_BODY = b'{"id": 1, "name": "Ada Lovelace", "email": "ada@example.com", "active": true}\n'
_PATH = "/data.json"
#: Bursts above this are not run through httpcore's pool (stock httpx): its queue is
#: O(requests x connections) per event, which makes them take minutes.
_HTTPCORE_BURST_LIMIT = 1000
#: The workload the connection-layer targets compare clients at (`TARGETS`).
_TARGET_WORKLOAD = "c50"
#: The row of httpx's client over an instant transport (c50 only): no transport can make
#: httpx.AsyncClient faster than that.
_CLIENT_ALONE = "httpx client alone"

Send = Callable[[], Awaitable[None]]


def serve() -> NginxFiles:
    """nginx serving ``/data.json`` (plain HTTP/1.1 and TLS with HTTP/2), not yet started."""
    executable = find_nginx()
    if executable is None:
        raise SystemExit("nginx is not installed (apt-get install nginx-light)")
    return NginxFiles({_PATH.lstrip("/"): _BODY}, ca=_CA, executable=executable)


_CA = trustme.CA()


def trusting_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    _CA.configure_trust(context)
    return context


@dataclass
class Result:
    requests: int
    wall: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.requests / self.wall

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.requests * 1e6


async def measure(send: Send, workload: str, total: int) -> Result:
    # Each round starts with the garbage collector's generations empty: else a full
    # collection (tens of ms in this process, whose heap holds every client) lands in one
    # round and not another, by the allocation counts the earlier rounds left behind.
    gc.collect()
    if workload.startswith("burst"):
        count = int(workload.removeprefix("burst"))
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(send() for _ in range(count)))
        return Result(count, time.perf_counter() - started, time.process_time() - cpu)
    concurrency = int(workload.removeprefix("c"))
    share = max(1, total // concurrency)

    async def worker() -> None:
        for _ in range(share):
            await send()

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(share * concurrency, time.perf_counter() - started, time.process_time() - cpu)


def httpx_sender(client: httpx.AsyncClient, url: str, http_version: str) -> Send:
    async def send() -> None:
        response = await client.get(url)
        if response.status_code != 200 or len(response.content) != len(_BODY):
            raise RuntimeError(f"unexpected answer {response.status_code}")
        if response.http_version != http_version:
            raise RuntimeError(f"expected {http_version}, got {response.http_version}")

    return send


def http1_transports() -> dict[str, httpx.AsyncBaseTransport | None]:
    """The HTTP/1.1 clients' transports (None: httpx's default)."""
    return {
        "stock httpx": None,
        "layer": AsyncConnectionPoolTransport(),
        "Resilient on layer": ResilientTransport(http2=False, retry=RetryConfig()),
    }


def http2_transports(verify: ssl.SSLContext) -> dict[str, httpx.AsyncBaseTransport | None]:
    """The HTTP/2 clients' transports (None: httpx's default, with ``http2=True``)."""
    return {
        "stock httpx": None,
        "layer": AsyncConnectionPoolTransport(http2=True, verify=verify),
        "Resilient on layer": ResilientTransport(http2=True, verify=verify, retry=RetryConfig()),
    }


def make_client(transport: httpx.AsyncBaseTransport | None, **kwargs: object) -> httpx.AsyncClient:
    timeout = httpx.Timeout(60.0, pool=None)
    if transport is None:
        return httpx.AsyncClient(timeout=timeout, **kwargs)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, timeout=timeout)


def route(transport: httpx.AsyncBaseTransport | None) -> str:
    """Which connection layer a transport sends through, for the report."""
    if isinstance(transport, AsyncConnectionPoolTransport):
        own = transport.pool_stats is not None
    elif isinstance(transport, ResilientTransport):
        own = transport.stats().pool is not None
    else:
        return "httpx's AsyncHTTPTransport (httpcore)"
    return "this package's pool" if own else "httpx's AsyncHTTPTransport (a proxy route)"


Results = dict[str, dict[str, dict[str, Result]]]  # protocol -> client -> workload -> result
#: Every round of each workload run in rounds: protocol -> client -> workload -> results.
Rounds = dict[str, dict[str, dict[str, list[Result]]]]


class Instant(httpx.AsyncBaseTransport):
    """Answers at once with a copy of a real response (nginx's status, headers and body, in the
    shape this package's layer returns them): what is left is httpx's client alone."""

    def __init__(self, sample: httpx.Response) -> None:
        self._status = sample.status_code
        self._headers = list(sample.headers.raw)
        self._body = sample.content
        self._extensions = {"http_version": sample.http_version.encode("ascii")}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = httpx.Response(
            self._status, stream=httpx.ByteStream(self._body), extensions=self._extensions
        )
        response.headers = httpx.Headers(self._headers, "ascii")
        return response


async def client_alone(through: httpx.AsyncClient, url: str, http_version: str) -> Send:
    """A sender through httpx's client over an `Instant` copy of ``through``'s answer."""
    instant = make_client(Instant(await through.get(url)))
    return httpx_sender(instant, url, http_version)


async def run(args: argparse.Namespace) -> None:
    import aiohttp

    workloads = [f"c{n}" for n in args.concurrency] + [f"burst{n}" for n in args.burst]
    results: Results = {}
    every_round: Rounds = {}
    all_routes: dict[str, dict[str, str]] = {}
    with serve() as server:
        # (protocol, senders, clients to close, each client's route)
        plans: list[tuple[str, dict[str, Send], list[httpx.AsyncClient], dict[str, str]]] = []
        session: aiohttp.ClientSession | None = None
        if "1.1" in args.http:
            h1_url = server.http_url + _PATH
            transports = http1_transports()
            clients = {n: make_client(t) for n, t in transports.items()}
            senders = {n: httpx_sender(c, h1_url, "HTTP/1.1") for n, c in clients.items()}
            session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600))

            async def aiohttp_send() -> None:
                assert session is not None
                async with session.get(h1_url) as response:
                    body = await response.read()
                    if response.status != 200 or len(body) != len(_BODY):
                        raise RuntimeError(f"unexpected answer {response.status}")

            senders["aiohttp"] = aiohttp_send
            senders[_CLIENT_ALONE] = await client_alone(clients["layer"], h1_url, "HTTP/1.1")
            routes = {n: route(t) for n, t in transports.items()} | {
                "aiohttp": "aiohttp",
                _CLIENT_ALONE: "an instant in-memory transport",
            }
            plans.append(("HTTP/1.1", senders, list(clients.values()), routes))
        if "2" in args.http:
            h2_url = server.https_url + _PATH
            verify = trusting_context()
            transports = http2_transports(verify)
            clients = {n: make_client(t, http2=True, verify=verify) for n, t in transports.items()}
            senders = {n: httpx_sender(c, h2_url, "HTTP/2") for n, c in clients.items()}
            senders[_CLIENT_ALONE] = await client_alone(clients["layer"], h2_url, "HTTP/2")
            routes = {n: route(t) for n, t in transports.items()}
            routes[_CLIENT_ALONE] = "an instant in-memory transport"
            plans.append(("HTTP/2", senders, list(clients.values()), routes))
        try:
            for protocol, senders, _, routes in plans:
                for name in senders:
                    print(f"  {protocol:<8} {name}: {routes[name]}")
                for send in senders.values():  # warm up: connections, TLS, imports, caches
                    await measure(send, "c10", 500)
                rows = results[protocol] = {}
                all_routes[protocol] = routes
                for workload in workloads:
                    # The workloads a target reads run in alternated rounds, and count by their
                    # median round: one round's noise on a shared machine is a few per cent,
                    # as large as the 5 % the ResilientTransport target allows.
                    rounds = args.target_rounds if workload in _TARGET_WORKLOADS else 1
                    runs: dict[str, list[Result]] = {}
                    for round_number in range(rounds):
                        # Every other round in the reverse order: no client always runs
                        # right after the same other one (the layer before
                        # `ResilientTransport`, whose ratio is a target).
                        order = list(senders.items())
                        if round_number % 2:
                            order.reverse()
                        for name, send in order:
                            burst = int(workload[5:]) if workload.startswith("burst") else 0
                            if "httpcore" in routes[name] and burst > _HTTPCORE_BURST_LIMIT:
                                continue
                            if name == _CLIENT_ALONE and workload != _TARGET_WORKLOAD:
                                continue
                            result = await measure(send, workload, args.requests)
                            runs.setdefault(name, []).append(result)
                            print(
                                f"  {protocol:<8} {workload:>10} {name:<26} "
                                f"{result.rate:>9,.0f} req/s {result.cpu_us:>7,.0f} µs/req  "
                                f"{result.wall:6.2f} s",
                                flush=True,
                            )
                    for name, measured in runs.items():
                        rows.setdefault(name, {})[workload] = median_result(measured)
                        every_round.setdefault(protocol, {}).setdefault(name, {})[workload] = (
                            measured
                        )
        finally:
            for _, _, owned, _ in plans:
                for client in owned:
                    await client.aclose()
            if session is not None:
                await session.close()
    for protocol, rows in results.items():
        print(f"\n{protocol}\n")
        print_table(rows, workloads)
        print("\n" + "; ".join(f"{n}: {r}" for n, r in all_routes[protocol].items()))
    print()
    print_verdicts(results, every_round)


def median_result(results: list[Result]) -> Result:
    """One result from several rounds: the median rate and the median CPU per request."""
    if len(results) == 1:
        return results[0]
    rates = sorted(r.rate for r in results)
    cpus = sorted(r.cpu_us for r in results)
    requests = results[0].requests
    middle = len(results) // 2
    return Result(requests, requests / rates[middle], cpus[middle] * requests / 1e6)


def print_table(rows: dict[str, dict[str, Result]], workloads: list[str]) -> None:
    print(f"| client | {' | '.join(workloads)} |")
    print("|" + "---|" * (len(workloads) + 1))
    for name, row in rows.items():
        cells = []
        for workload in workloads:
            result = row.get(workload)
            if result is None:
                cells.append("not run")
            elif workload.startswith("burst"):
                cells.append(f"{result.wall:.2f} s ({result.cpu_us:,.0f} µs)")
            else:
                cells.append(f"{result.rate:,.0f} ({result.cpu_us:,.0f} µs)")
        print(f"| {name} | {' | '.join(cells)} |")


#: The connection-layer issue's targets: (protocol, label, numerator, denominator, bound, at
#: least?), each side (client, workload, "rate" | "cpu_us" | "wall").
TARGETS = [
    ("HTTP/1.1", "c50 req/s, layer / stock httpx",
     ("layer", "c50", "rate"), ("stock httpx", "c50", "rate"), 10, True),
    ("HTTP/1.1", "c50 req/s, layer / aiohttp",
     ("layer", "c50", "rate"), ("aiohttp", "c50", "rate"), 0.40, True),
    ("HTTP/1.1", "c50 CPU per request, layer / aiohttp",
     ("layer", "c50", "cpu_us"), ("aiohttp", "c50", "cpu_us"), 2.5, False),
    ("HTTP/1.1", "c50 CPU per request, Resilient / layer",
     ("Resilient on layer", "c50", "cpu_us"), ("layer", "c50", "cpu_us"), 1.05, False),
    ("HTTP/1.1", "no collapse: layer req/s, c128 / c10",
     ("layer", "c128", "rate"), ("layer", "c10", "rate"), 0.9, True),
    ("HTTP/1.1", "burst of 1,000: wall time, layer / aiohttp",
     ("layer", "burst1000", "wall"), ("aiohttp", "burst1000", "wall"), 3, False),
    ("HTTP/2", "c50 req/s, layer / stock httpx",
     ("layer", "c50", "rate"), ("stock httpx", "c50", "rate"), 3, True),
    ("HTTP/2", "c50 CPU per request, Resilient / layer",
     ("Resilient on layer", "c50", "cpu_us"), ("layer", "c50", "cpu_us"), 1.05, False),
    ("HTTP/2", "no collapse: layer req/s, c128 / c10",
     ("layer", "c128", "rate"), ("layer", "c10", "rate"), 0.9, True),
]  # fmt: skip


#: Every workload a target reads: these run in ``--target-rounds`` rounds.
_TARGET_WORKLOADS = frozenset(side[1] for target in TARGETS for side in target[2:4])


def verdicts(
    results: Results, every_round: Rounds | None = None
) -> list[tuple[str, str, float, bool, float | None, float | None]]:
    """(target, bound, measured ratio, met, ceiling, paired) for each target this run has the
    numbers for. The ratio (the verdict's) is that of the two sides' medians. The ceiling, for a
    target on the layer's req/s, is the ratio a transport that cost nothing would reach: what
    httpx's client alone reached over an instant transport. Paired, for two clients measured in
    the same rounds: the median of the ratios within each round (both sides under the same
    load), shown beside the verdict, which it does not change."""
    found = []
    for protocol, label, (a, wa, qa), (b, wb, qb), bound, at_least in TARGETS:
        rows = results.get(protocol, {})
        left, right = rows.get(a, {}).get(wa), rows.get(b, {}).get(wb)
        if left is None or right is None:
            continue
        ratio = getattr(left, qa) / getattr(right, qb)
        met = ratio >= bound if at_least else ratio <= bound
        alone = rows.get(_CLIENT_ALONE, {}).get(wa)
        ceiling = None
        if alone is not None and a == "layer" and qa == "rate" and qb == "rate":
            ceiling = alone.rate / right.rate
        paired = None
        if every_round is not None and wa == wb:
            sides = every_round.get(protocol, {})
            left_rounds = sides.get(a, {}).get(wa, [])
            right_rounds = sides.get(b, {}).get(wb, [])
            if len(left_rounds) == len(right_rounds) > 1:
                paired = statistics.median(
                    getattr(x, qa) / getattr(y, qb)
                    for x, y in zip(left_rounds, right_rounds, strict=True)
                )
        found.append(
            (
                f"{protocol} {label}",
                f"{'≥' if at_least else '≤'} {bound:g}",
                ratio,
                met,
                ceiling,
                paired,
            )
        )
    return found


def print_verdicts(results: Results, every_round: Rounds | None = None) -> None:
    print(
        "| target | bound | measured (medians' ratio) | verdict "
        "| ceiling: httpx's client alone | per-round ratios' median |"
    )
    print("|---|---|---|---|---|---|")
    for label, bound, ratio, met, ceiling, paired in verdicts(results, every_round):
        most = "" if ceiling is None else f"{ceiling:.2f}"
        pair = "" if paired is None else f"{paired:.3f}"
        print(
            f"| {label} | {bound} | {ratio:.3f} | {'met' if met else 'NOT met'} | {most} | {pair} |"
        )


async def run_trio(args: argparse.Namespace, server: NginxFiles) -> None:
    import trio

    async def measure_trio(send: Send, concurrency: int, total: int) -> Result:
        share = max(1, total // concurrency)

        async def worker() -> None:
            for _ in range(share):
                await send()

        gc.collect()  # as in `measure`
        started, cpu = time.perf_counter(), time.process_time()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        return Result(share * concurrency, time.perf_counter() - started, time.process_time() - cpu)

    for protocol in args.http:
        if protocol == "2":
            url, version, verify = server.https_url + _PATH, "HTTP/2", trusting_context()
            clients = {
                "stock httpx": make_client(None, http2=True, verify=verify),
                "layer": make_client(AsyncConnectionPoolTransport(http2=True, verify=verify)),
            }
        else:
            url, version = server.http_url + _PATH, "HTTP/1.1"
            clients = {
                "stock httpx": make_client(None),
                "layer": make_client(AsyncConnectionPoolTransport()),
            }
        senders = {name: httpx_sender(client, url, version) for name, client in clients.items()}
        try:
            for send in senders.values():
                await measure_trio(send, 10, 500)
            for concurrency in args.concurrency:
                for name, send in senders.items():
                    result = await measure_trio(send, concurrency, args.requests)
                    print(
                        f"  trio {version:<8} c{concurrency:<4} {name:<12} "
                        f"{result.rate:>9,.0f} req/s {result.cpu_us:>7,.0f} µs/req",
                        flush=True,
                    )
        finally:
            for client in clients.values():
                await client.aclose()


async def run_parts(args: argparse.Namespace) -> None:
    """Where a request's client CPU goes, HTTP/1.1 at one concurrency: the layer alone
    (`handle_async_request` to the end of the body), httpx's client over an instant transport
    that returns nginx's own response, both together, and aiohttp. Alternated in rounds; the
    median round of each."""
    import aiohttp

    workload = f"c{args.concurrency[0]}"
    with serve() as server:
        url = server.http_url + _PATH
        layer = AsyncConnectionPoolTransport()
        through = make_client(AsyncConnectionPoolTransport())
        request = through.build_request("GET", url)
        sample = await through.get(url)
        status, headers, body = sample.status_code, sample.headers.raw, sample.content

        class Instant(httpx.AsyncBaseTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body))

        instant = make_client(Instant())
        session = aiohttp.ClientSession()

        async def layer_alone() -> None:
            response = await layer.handle_async_request(request)
            assert isinstance(response.stream, httpx.AsyncByteStream)
            received = b"".join([chunk async for chunk in response.stream])
            await response.stream.aclose()
            if len(received) != len(_BODY):
                raise RuntimeError("unexpected answer")

        async def aiohttp_send() -> None:
            async with session.get(url) as response:
                if len(await response.read()) != len(_BODY):
                    raise RuntimeError("unexpected answer")

        senders: dict[str, Send] = {
            "the layer alone (handle_async_request)": layer_alone,
            "httpx.AsyncClient over an instant transport": httpx_sender(instant, url, "HTTP/1.1"),
            "httpx.AsyncClient on the layer": httpx_sender(through, url, "HTTP/1.1"),
            "aiohttp": aiohttp_send,
        }
        rounds: dict[str, list[float]] = {name: [] for name in senders}
        try:
            for send in senders.values():
                await measure(send, "c10", 500)
            for _ in range(args.rounds):
                for name, send in senders.items():
                    rounds[name].append((await measure(send, workload, args.requests)).cpu_us)
        finally:
            await layer.aclose()
            await through.aclose()
            await instant.aclose()
            await session.close()
    print(f"client CPU per request, HTTP/1.1 {workload}, median of {args.rounds} rounds:")
    for name, values in rounds.items():
        values.sort()
        median, low, high = values[len(values) // 2], values[0], values[-1]
        print(f"  {name:<45} {median:7.1f} µs  (rounds: {low:.1f}-{high:.1f})")
    print("HTTP/2, no sockets (a request's HEADERS encoded, an nginx-like response decoded):")
    print(f"  h2 with hpack's codec, as httpcore uses it       {h2_alone(ours=False):7.1f} µs")
    print(f"  h2 as the layer sets it up (its HPACK codec)     {h2_alone(ours=True):7.1f} µs")


def h2_alone(requests: int = 3000, *, ours: bool) -> float:
    """Client CPU µs per request spent in h2 and HPACK, with an in-memory h2 server: with
    hpack's codec (httpcore's way), or set up as the layer's connections are (``ours``: its
    HPACK codec, h2's outbound checks off)."""
    if ours:
        client = h2.connection.H2Connection(layer_http2.H2_CONFIG)
        install_hpack(client)
    else:
        client = h2.connection.H2Connection(
            h2.config.H2Configuration(header_encoding=None, validate_inbound_headers=False)
        )
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    client.initiate_connection()
    client.increment_flow_control_window(1 << 24)
    server.initiate_connection()
    for _ in range(2):
        server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())
    request = [
        (b":method", b"GET"), (b":authority", b"127.0.0.1:8443"), (b":scheme", b"https"),
        (b":path", b"/data.json"), (b"accept", b"*/*"), (b"accept-encoding", b"gzip, deflate"),
        (b"user-agent", b"python-httpx/0.28.1"),
    ]  # fmt: skip
    response = [
        (":status", "200"), ("server", "nginx/1.22.1"), ("date", "Mon, 30 Nov 2026 09:20:00 GMT"),
        ("content-type", "application/json"), ("content-length", str(len(_BODY))),
        ("last-modified", "Mon, 30 Nov 2026 09:19:00 GMT"), ("etag", '"6789-4e"'),
        ("accept-ranges", "bytes"),
    ]  # fmt: skip
    spent = 0.0
    for _ in range(requests):
        start = time.process_time()
        stream_id = client.get_next_available_stream_id()
        client.send_headers(stream_id, request, end_stream=True)
        client.increment_flow_control_window(1 << 24, stream_id=stream_id)
        out = client.data_to_send()
        spent += time.process_time() - start
        server.receive_data(out)
        server.send_headers(stream_id, response)
        server.send_data(stream_id, _BODY, end_stream=True)
        back = server.data_to_send()
        start = time.process_time()
        for event in client.receive_data(back):
            if isinstance(event, h2.events.DataReceived):
                client.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
        client.data_to_send()
        spent += time.process_time() - start
    return spent / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="per concurrency workload")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 50, 128])
    parser.add_argument("--burst", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--http", nargs="+", choices=["1.1", "2"], default=["1.1", "2"])
    parser.add_argument("--trio", action="store_true", help="trio: stock httpx and the layer")
    parser.add_argument(
        "--parts", action="store_true", help="where the CPU goes (first --concurrency only)"
    )
    parser.add_argument("--rounds", type=int, default=7, help="with --parts")
    parser.add_argument(
        "--target-rounds",
        type=int,
        default=5,
        help="alternated rounds of each workload a target reads (their median counts)",
    )
    args = parser.parse_args()
    if args.parts:
        asyncio.run(run_parts(args))
    elif args.trio:
        import trio

        with serve() as server:
            trio.run(run_trio, args, server)
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
