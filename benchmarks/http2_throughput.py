"""HTTP/2 over TLS throughput: stock httpx against this package's connection layer, one run.

A local nginx (``listen ... ssl http2``, a trustme certificate) serves a small JSON file. This
process sends GETs through stock ``httpx.AsyncClient(http2=True)``, `AsyncConnectionPoolTransport`
(``http2=True``) and `ResilientTransport` on it, at each concurrency and in bursts (all requests
at once), and prints requests per second, client CPU µs per request (``time.process_time``)
and the layer's ratio to stock httpx. Every answer is checked (200, HTTP/2). Last, it times
h2 alone, without sockets: the client CPU of encoding a request's HEADERS and decoding an
nginx-like response (the part of every figure that is h2's and hpack's).

    python benchmarks/http2_throughput.py [--concurrency 1 10 50 128] [--burst 1000 10000]
        [--requests 3000]

`benchmarks/throughput.py` is the HTTP/1.1 counterpart (with aiohttp).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import httpx
import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
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
    keepalive_requests 1000000;
    http2_max_concurrent_streams 128;
    server {{
        listen 127.0.0.1:{port} ssl http2 backlog=16384;
        ssl_certificate {dir}/cert.pem;
        ssl_certificate_key {dir}/key.pem;
        location / {{
            root {dir}/www;
            default_type application/json;
        }}
    }}
}}
"""
_BODY = b'{"id": 1, "name": "Ada Lovelace", "email": "ada@example.com", "active": true}\n'


@contextlib.contextmanager
def nginx(ca: trustme.CA) -> Iterator[str]:
    """nginx serving ``/data.json`` over HTTP/2 and TLS on 127.0.0.1; yields its URL."""
    executable = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(executable, os.X_OK):
        raise SystemExit("nginx is not installed (apt-get install nginx-light)")
    directory = Path(tempfile.mkdtemp(prefix="bench-nginx-h2-"))
    (directory / "www").mkdir()
    (directory / "www" / "data.json").write_bytes(_BODY)
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(directory / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
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
        yield f"https://127.0.0.1:{port}/data.json"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


async def measure(
    client: httpx.AsyncClient, url: str, requests: int, concurrency: int | None
) -> tuple[float, float]:
    """Wall and CPU seconds for ``requests`` GETs: ``concurrency`` workers, or all at once."""

    async def one() -> None:
        response = await client.get(url)
        if response.status_code != 200 or response.http_version != "HTTP/2":
            raise RuntimeError(f"unexpected answer {response.status_code} {response.http_version}")

    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one()

    wall, cpu = time.perf_counter(), time.process_time()
    if concurrency is None:
        await asyncio.gather(*(one() for _ in range(requests)))
    else:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - wall, time.process_time() - cpu


async def run(args: argparse.Namespace) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    timeout = httpx.Timeout(120.0, pool=None)
    clients: dict[str, Callable[[], httpx.AsyncClient]] = {
        "stock httpx": lambda: httpx.AsyncClient(http2=True, verify=context, timeout=timeout),
        "layer": lambda: httpx.AsyncClient(
            transport=AsyncConnectionPoolTransport(http2=True, verify=context), timeout=timeout
        ),
        "Resilient on layer": lambda: httpx.AsyncClient(
            transport=ResilientTransport(verify=context, retry=RetryConfig()), timeout=timeout
        ),
    }
    workloads: list[tuple[str, int, int | None]] = [
        (f"c{n}", args.requests, n) for n in args.concurrency
    ] + [(f"burst{n}", n, None) for n in args.burst]
    print(f"HTTP/2 over TLS, nginx, {len(_BODY)}-byte JSON; req/s (client CPU µs/request)")
    print("| workload | " + " | ".join(clients) + " | layer / stock |")
    print("|---" * (len(clients) + 2) + "|")
    with nginx(ca) as url:
        for name, requests, concurrency in workloads:
            rates: list[float] = []
            cells: list[str] = []
            for make in clients.values():
                async with make() as client:
                    await measure(client, url, 50, 5)  # warm up: connection, caches
                    wall, cpu = await measure(client, url, requests, concurrency)
                rates.append(requests / wall)
                cells.append(f"{requests / wall:,.0f} ({cpu / requests * 1e6:,.0f} µs)")
            print(f"| {name} | " + " | ".join(cells) + f" | {rates[1] / rates[0]:.2f}x |")


def h2_alone(requests: int = 3000) -> float:
    """Client CPU µs per request spent in h2 and hpack, with an in-memory h2 server."""
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 10, 50, 128])
    parser.add_argument("--burst", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--requests", type=int, default=3000)
    asyncio.run(run(parser.parse_args()))
    print(f"h2 and hpack alone, no sockets: {h2_alone():.0f} µs of client CPU per request")


if __name__ == "__main__":
    main()
