"""HTTP/1.1 throughput against a local nginx: stock httpx, this package's connection layer alone,
`ResilientTransport` on it, and aiohttp, in one process run.

nginx (from the system; ``apt-get install nginx-light``) serves a small JSON file over plain
HTTP/1.1 on 127.0.0.1 with its default ``keepalive_requests`` (1000). Each client runs each
workload in turn (clients alternate per workload, so machine noise hits all alike):

* ``cN``: N workers, each sending its share of ``--requests`` one after another;
* ``burstN``: N requests started at once (``asyncio.gather``).

For each it prints requests per second, the client's CPU time per request in microseconds
(``time.process_time``: this process only, so nginx's work does not count), and the ratios the
issue sets as targets. All clients use their default pool limits (httpx: 100 connections, 20
kept alive; aiohttp: 100), with no pool timeout so that bursts measure queueing, not failures.

    python benchmarks/throughput.py [--requests 3000] [--burst 1000 10000] [--previous]

``--previous`` adds `ResilientTransport` on the previous (httpcore-based) layer. ``--trio``
runs the concurrency workloads under trio instead, for stock httpx and the layer only (aiohttp
is asyncio-only): the layer must not be slower there than stock httpx.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from httpx_resilience import AsyncConnectionPoolTransport, ResilientTransport, RetryConfig

_CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=16384;
        location / {{
            root {dir}/www;
            default_type application/json;
        }}
    }}
}}
"""
_BODY = b'{"id": 1, "name": "Ada Lovelace", "email": "ada@example.com", "active": true}\n'

Send = Callable[[], Awaitable[None]]


@contextlib.contextmanager
def nginx() -> Iterator[str]:
    """nginx serving ``/data.json`` on 127.0.0.1; yields the file's URL."""
    executable = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(executable, os.X_OK):
        raise SystemExit("nginx is not installed (apt-get install nginx-light)")
    directory = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    (directory / "www").mkdir()
    (directory / "www" / "data.json").write_bytes(_BODY)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = directory / "nginx.conf"
    config.write_text(_CONFIG.format(dir=directory, port=port))
    process = subprocess.Popen(
        [executable, "-p", str(directory), "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.02)
        else:
            raise SystemExit("nginx did not start")
        yield f"http://127.0.0.1:{port}/data.json"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


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


def httpx_sender(client: httpx.AsyncClient, url: str) -> Send:
    async def send() -> None:
        response = await client.get(url)
        if response.status_code != 200 or len(response.content) != len(_BODY):
            raise RuntimeError(f"unexpected answer {response.status_code}")

    return send


async def run(args: argparse.Namespace) -> None:
    import aiohttp

    timeout = httpx.Timeout(60.0, pool=None)
    clients: dict[str, httpx.AsyncClient] = {
        "stock httpx": httpx.AsyncClient(timeout=timeout),
        "layer": httpx.AsyncClient(transport=AsyncConnectionPoolTransport(), timeout=timeout),
        "Resilient on layer": httpx.AsyncClient(
            transport=ResilientTransport(http2=False, retry=RetryConfig()), timeout=timeout
        ),
    }
    if args.previous:
        clients["Resilient, previous layer"] = httpx.AsyncClient(
            transport=ResilientTransport(http2=True), timeout=timeout
        )
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600))
    workloads = [f"c{n}" for n in args.concurrency] + [f"burst{n}" for n in args.burst]
    results: dict[str, dict[str, Result]] = {}
    with nginx() as url:

        async def aiohttp_send() -> None:
            async with session.get(url) as response:
                body = await response.read()
                if response.status != 200 or len(body) != len(_BODY):
                    raise RuntimeError(f"unexpected answer {response.status}")

        senders: dict[str, Send] = {name: httpx_sender(c, url) for name, c in clients.items()}
        senders["aiohttp"] = aiohttp_send
        try:
            for send in senders.values():  # warm up: connections, imports, caches
                await measure(send, "c10", 500)
            for workload in workloads:
                for name, send in senders.items():
                    slow = name in ("stock httpx", "Resilient, previous layer")
                    if slow and workload.startswith("burst") and int(workload[5:]) > 1000:
                        continue  # minutes of queueing in httpcore's pool: not run
                    result = await measure(send, workload, args.requests)
                    results.setdefault(name, {})[workload] = result
                    print(
                        f"  {workload:>10} {name:<26} {result.rate:>9,.0f} req/s "
                        f"{result.cpu_us:>7,.0f} µs/req  {result.wall:6.2f} s",
                        flush=True,
                    )
        finally:
            for client in clients.values():
                await client.aclose()
            await session.close()
    report(results, workloads)


def report(results: dict[str, dict[str, Result]], workloads: list[str]) -> None:
    print()
    header = f"| client | {' | '.join(workloads)} |"
    print(header)
    print("|" + "---|" * (len(workloads) + 1))
    for name, row in results.items():
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
    print()
    layer, stock, aio = results["layer"], results["stock httpx"], results["aiohttp"]
    resilient = results["Resilient on layer"]
    checks: list[tuple[str, float, str, bool]] = []
    if "c50" in layer:
        ratio = layer["c50"].rate / stock["c50"].rate
        checks.append(("c50 req/s, layer / stock httpx", ratio, ">= 10", ratio >= 10))
        ratio = layer["c50"].rate / aio["c50"].rate
        checks.append(("c50 req/s, layer / aiohttp", ratio, ">= 0.40", ratio >= 0.40))
        ratio = layer["c50"].cpu_us / aio["c50"].cpu_us
        checks.append(("c50 CPU/req, layer / aiohttp", ratio, "<= 2.5", ratio <= 2.5))
        ratio = resilient["c50"].cpu_us / layer["c50"].cpu_us
        checks.append(("c50 CPU/req, Resilient / layer", ratio, "<= 1.05", ratio <= 1.05))
    if "c10" in layer and "c128" in layer:
        ratio = layer["c128"].rate / layer["c10"].rate
        checks.append(("layer req/s, c128 / c10", ratio, ">= 0.9", ratio >= 0.9))
    if "burst1000" in layer:
        ratio = layer["burst1000"].wall / aio["burst1000"].wall
        checks.append(("burst of 1,000 wall, layer / aiohttp", ratio, "<= 3", ratio <= 3))
    for label, ratio, target, met in checks:
        print(f"  {label:<40} {ratio:7.2f}  (target {target}: {'met' if met else 'NOT met'})")


async def run_trio(args: argparse.Namespace, url: str) -> None:
    import trio

    timeout = httpx.Timeout(60.0, pool=None)
    clients = {
        "stock httpx": httpx.AsyncClient(timeout=timeout),
        "layer": httpx.AsyncClient(transport=AsyncConnectionPoolTransport(), timeout=timeout),
    }

    async def measure_trio(send: Send, concurrency: int, total: int) -> Result:
        share = max(1, total // concurrency)

        async def worker() -> None:
            for _ in range(share):
                await send()

        started, cpu = time.perf_counter(), time.process_time()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        return Result(share * concurrency, time.perf_counter() - started, time.process_time() - cpu)

    senders = {name: httpx_sender(client, url) for name, client in clients.items()}
    try:
        for send in senders.values():
            await measure_trio(send, 10, 500)
        for concurrency in args.concurrency:
            for name, send in senders.items():
                result = await measure_trio(send, concurrency, args.requests)
                print(
                    f"  trio c{concurrency:<4} {name:<12} {result.rate:>9,.0f} req/s "
                    f"{result.cpu_us:>7,.0f} µs/req",
                    flush=True,
                )
    finally:
        for client in clients.values():
            await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="per concurrency workload")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 50, 128])
    parser.add_argument("--burst", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--previous", action="store_true", help="add the previous layer")
    parser.add_argument("--trio", action="store_true", help="trio: stock httpx and the layer")
    args = parser.parse_args()
    if args.trio:
        import trio

        with nginx() as url:
            trio.run(run_trio, args, url)
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
