"""Requests lost when a server closes connections in the ordinary way (issue 6's baseline).

Hypercorn on 127.0.0.1 closes each connection after ``--limit`` requests (on HTTP/2 with a
GOAWAY frame). The same GETs and POSTs, at concurrency 100, go through stock
``httpx.AsyncHTTPTransport`` and through ``ResilientTransport`` in one run, over HTTP/1.1 and
over HTTP/2 with TLS; the script prints how many failed, and with what. Waits are skipped
(``set_testing``), so only failures that retries cannot fix remain.

    python benchmarks/goaway.py [--requests 2000] [--limit 50]
"""

from __future__ import annotations

import argparse
import collections
import ssl
import sys
from pathlib import Path

import anyio
import httpx
import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from httpx_resilience import ResilientTransport, RetryConfig, set_testing
from tests.support.server import FaultApp, ServerThread

CONCURRENCY = 100


async def load(
    transport: httpx.AsyncBaseTransport, url: str, method: str, requests: int
) -> collections.Counter[str]:
    errors: collections.Counter[str] = collections.Counter()
    async with httpx.AsyncClient(transport=transport, timeout=10.0) as client:

        async def worker(first: int) -> None:
            for index in range(first, requests, CONCURRENCY):
                content = b"x" if method == "POST" else None
                try:
                    response = await client.request(method, f"{url}/ok/k{index}", content=content)
                    if response.status_code != 200:
                        errors[f"status {response.status_code}"] += 1
                except httpx.HTTPError as exc:
                    errors[f"{type(exc).__name__}: {str(exc)[:40]}"] += 1

        async with anyio.create_task_group() as group:
            for first in range(CONCURRENCY):
                group.start_soon(worker, first)
    return errors


async def main(requests: int, limit: int) -> None:
    set_testing(True)
    ca = trustme.CA()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    print(f"{requests} requests per row, concurrency {CONCURRENCY}, "
          f"server closes each connection after {limit} requests")  # fmt: skip
    for protocol in ("HTTP/1.1", "HTTP/2"):
        tls = protocol == "HTTP/2"
        options: dict[str, object] = {"http2": True, "verify": context} if tls else {}
        server = ServerThread(FaultApp(), ca=ca if tls else None, keep_alive_max_requests=limit)
        server.start()
        try:
            for method in ("GET", "POST"):
                for label in ("stock httpx", "ResilientTransport"):
                    transport: httpx.AsyncBaseTransport = (
                        httpx.AsyncHTTPTransport(**options)  # type: ignore[arg-type]
                        if label == "stock httpx"
                        else ResilientTransport(retry=RetryConfig(budget_ratio=None), **options)  # type: ignore[arg-type]
                    )
                    errors = await load(transport, server.url, method, requests)
                    top = "; ".join(f"{n}x {kind}" for kind, n in errors.most_common(2))
                    print(f"  {protocol:8} {method:4} {label:18} failed {sum(errors.values()):5d}"
                          f"  {top}")  # fmt: skip
        finally:
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--limit", type=int, default=50)
    args = parser.parse_args()
    anyio.run(main, args.requests, args.limit)
