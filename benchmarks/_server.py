"""A Hypercorn server in a child process on 127.0.0.1, for benchmarks (HTTP/1.1, no TLS)."""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def _serve(app: ASGIApp, sock: socket.socket) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = config.errorlog = None
    config.keep_alive_timeout = 60
    asyncio.run(serve(app, config))  # type: ignore[arg-type]


@contextmanager
def child_server(app: ASGIApp) -> Iterator[str]:
    """Serve ``app`` from a child process; yield its base URL once it answers (10 s at most)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    child = multiprocessing.get_context("fork").Process(
        target=_serve, args=(app, sock), daemon=True
    )
    child.start()
    sock.close()
    try:
        for _ in range(100):
            try:
                httpx.get(url, timeout=1.0)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url
    finally:
        child.terminate()
        child.join(10)
