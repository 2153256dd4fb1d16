"""The ASGI plumbing the demo's upstream (and the test suite's fault app) are built from.

Typed aliases for the ASGI callables and a few helpers: read a request body, answer with a
body, sleep unless the client goes away, and answer lifespan events. No server imports here.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

__all__ = [
    "ABORT_EXTENSION",
    "ASGIApp",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "drop_connection",
    "lifespan",
    "read_body",
    "request_body",
    "respond",
    "respond_json",
    "sleep_unless_disconnected",
    "wait_for_disconnect",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Name of the ASGI scope extension the demo's servers (`servers.ServerThread`) add to every
#: HTTP scope: ``scope["extensions"][ABORT_EXTENSION]["abort"]()`` cuts the underlying TCP
#: connection at once (FIN to the client, no more bytes).
ABORT_EXTENSION = "httpx_resilience.demo.abort_connection"


async def respond(
    send: Send,
    status: int,
    body: bytes,
    *,
    content_type: bytes = b"text/plain; charset=utf-8",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send a whole response: status, content type and length, ``headers``, then ``body``."""
    all_headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode("ascii")),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def respond_json(
    send: Send,
    status: int,
    payload: dict[str, Any],
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send ``payload`` as a JSON response."""
    body = json.dumps(payload).encode("utf-8")
    await respond(send, status, body, content_type=b"application/json", headers=headers)


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or ``None`` if the client went away first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        if message["type"] == "http.request":
            chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                return b"".join(chunks)


async def wait_for_disconnect(receive: Receive) -> None:
    """Return once the client has gone away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def sleep_unless_disconnected(receive: Receive, delay: float) -> bool:
    """Sleep ``delay`` seconds; return True early if the client disconnects."""
    with anyio.move_on_after(delay):
        await wait_for_disconnect(receive)
        return True
    return False


async def drop_connection(scope: Scope, receive: Receive) -> bool:
    """Cut the connection without answering, as a crashing upstream does, and wait (5 s at
    most) until the server has noticed. False if the server offers no `ABORT_EXTENSION`."""
    abort = scope.get("extensions", {}).get(ABORT_EXTENSION, {}).get("abort")
    if abort is None:
        return False
    abort()
    with anyio.move_on_after(5.0):
        await wait_for_disconnect(receive)
    return True


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer an ASGI lifespan scope: start up and shut down at once."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def request_body(scope: Scope, receive: Receive, send: Send) -> bytes | None:
    """An app's first step: answer a lifespan scope, ignore any other that is not HTTP, and
    return the whole body of an HTTP request; None when there is no request to answer."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return None
    if scope["type"] != "http":
        return None
    return await read_body(receive)
