"""Quick start: plain httpx vs. ResilientTransport against a flaky local HTTP/2 server.

Starts Hypercorn on 127.0.0.1 (HTTP/2 over TLS, certificate from a throwaway trustme CA) whose
endpoints fail a few times before they succeed, then sends the same requests through a plain
``httpx.AsyncClient`` and through one with ``ResilientTransport``, and prints what happened.

    python examples/quickstart.py
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import trustme
from hypercorn.asyncio import serve
from hypercorn.config import Config

from httpx_resilience import ResilientTransport, RetryConfig, get_retry_history

hits: Counter[str] = Counter()


async def app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    """``/flaky/<id>``: 503 twice, then 200. ``/limited/<id>``: 429 + Retry-After: 1, then 200.
    ``/order/<id>`` (POST): 503 once, then 201 — counts how often each order arrived."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):  # read the request body before answering
        pass
    path = scope["path"]
    hits[path] += 1
    kind = path.split("/")[1]
    status, headers = 200, []
    if kind == "flaky" and hits[path] <= 2:
        status = 503
    elif kind == "limited" and hits[path] == 1:
        status, headers = 429, [(b"retry-after", b"1")]
    elif kind == "order":
        status = 503 if hits[path] == 1 else 201
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": f"{status}\n".encode()})


async def send_all(client: httpx.AsyncClient, base: str, label: str) -> None:
    print(f"\n{label}")
    requests = [
        ("GET", f"{base}/flaky/{label}"),
        ("GET", f"{base}/limited/{label}"),
        ("POST", f"{base}/order/{label}"),
    ]
    for method, url in requests:
        response = await client.request(method, url)
        path = httpx.URL(url).path
        attempts = get_retry_history(response)
        story = ", ".join(
            f"{a.status} (wait {a.wait:.2f}s)" if a.retried else str(a.status) for a in attempts
        ) or str(response.status_code)
        print(
            f"  {method:4} {path:22} -> {response.status_code} over {response.http_version}; "
            f"server saw it {hits[path]}x; attempts: {story}"
        )


async def main() -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    with tempfile.NamedTemporaryFile(suffix=".pem") as pem:
        cert.private_key_and_cert_chain_pem.write_to_path(pem.name)
        config = Config()
        config.certfile = config.keyfile = pem.name
        config.alpn_protocols = ["h2", "http/1.1"]
        config.accesslog = config.errorlog = None
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        config.bind = [f"fd://{sock.fileno()}"]
        base = f"https://127.0.0.1:{sock.getsockname()[1]}"
        stop = asyncio.Event()
        server = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
        await asyncio.sleep(0.3)

        verify = ssl.create_default_context()
        ca.configure_trust(verify)
        try:
            async with httpx.AsyncClient(http2=True, verify=verify) as plain:
                await send_all(plain, base, "plain-httpx")
            # A short base_delay keeps the example quick; the defaults are in docs/transport.md.
            transport = ResilientTransport(verify=verify, retry=RetryConfig(base_delay=0.1))
            async with httpx.AsyncClient(transport=transport) as resilient:
                await send_all(resilient, base, "resilient")
        finally:
            stop.set()
            await server
            sock.detach()  # Hypercorn owned and closed the descriptor
    print("\nThe POST was not retried: the server may have acted on it. Send an Idempotency-Key")
    print("header, or add POST to RetryConfig.retry_methods, to make it retryable.")


if __name__ == "__main__":
    asyncio.run(main())
