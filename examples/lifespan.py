"""One shared ``AsyncAPIClient`` for a whole Starlette (or FastAPI) app, opened and closed by the
app's lifespan.

Every request handler uses the same client: one connection pool, one retry budget and one
circuit breaker for the whole process. A client per request would throw all three away.

    python examples/lifespan.py USERS_API_URL

serves the app with Hypercorn on 127.0.0.1 (lifespan included), sends it two requests and prints
what they got. ``USERS_API_URL`` must serve ``GET /users/<id>`` (404 for an unknown id), as this
project's test server does. In production, build the app with ``create_app(...)`` in your
module and serve it with any ASGI server.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

import httpx
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from httpx_resilience import (
    APIClientError,
    AsyncAPIClient,
    CircuitBreaker,
    ResourceNotFoundError,
    RetryConfig,
)


# --8<-- [start:app]
class State(TypedDict):
    users: AsyncAPIClient


async def get_user(request: Request) -> JSONResponse:
    users: AsyncAPIClient = request.state.users
    try:
        user = await users.get_json(f"/users/{request.path_params['user_id']}")
    except ResourceNotFoundError:
        return JSONResponse({"detail": "no such user"}, status_code=404)
    except APIClientError:  # down, timed out, circuit open, 5xx: after the retries
        unavailable = {"detail": "the users service is unavailable"}
        return JSONResponse(unavailable, status_code=503)
    return JSONResponse(user)


def create_app(users_api: str) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        async with AsyncAPIClient(
            users_api,
            retry=RetryConfig(max_retries=2, total_timeout=5.0),
            circuit_breaker=CircuitBreaker(name="users"),
        ) as users:
            # Lifespan state: request.state.users in every handler.
            yield {"users": users}

    routes = [Route("/users/{user_id:int}", get_user)]
    return Starlette(routes=routes, lifespan=lifespan)


# --8<-- [end:app]


async def main(users_api: str) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = config.errorlog = None
    stop = asyncio.Event()
    app = create_app(users_api)
    server = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        async with httpx.AsyncClient(base_url=base_url) as client:
            for path in ("/users/7", "/users/0"):
                response = await _get_when_up(client, path)
                print(f"GET {path} -> {response.status_code} {response.json()}")
    finally:
        stop.set()
        await server
        sock.detach()  # Hypercorn owned and closed the descriptor


async def _get_when_up(client: httpx.AsyncClient, path: str) -> httpx.Response:
    for _ in range(100):
        try:
            return await client.get(path)
        except httpx.ConnectError:  # the server is still starting
            await asyncio.sleep(0.05)
    return await client.get(path)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1]))
